"""The rerank service as a Ray Serve application: same HTTP API, Ray's replicas and autoscaler.

Why reuse the FastAPI app rather than write Ray-specific routes: clients keep
``/v1/rerank``, ``/v2/rerank``, ``/rerank`` and ``/v1/search`` byte for byte,
and the validation, limits, API keys and metrics stay in one place
(``secondpass.service.app``). Each replica builds that app itself
(``@serve.ingress`` with a builder function), so the model loads in the
replica's own process, on its own GPU share.

Batching is ours, not Ray's ``@serve.batch``: each replica's
:class:`~secondpass.pipeline.engine.ScoringEngine` already batches across
requests by token budget (Ray batches by request count, which packs a
1000-passage request and a 3-passage one alike), and it owns the cache lookup,
admission and deadlines. ``max_ongoing_requests`` must therefore be large
enough for several requests to meet in one replica's queue (default 32, Ray's
own default is 5).

A replica becomes RUNNING (and receives traffic) only after a real forward pass
succeeded, and Ray's health check fails while the model does not answer, so
Ray replaces a replica whose model broke. Each answer carries
``X-SecondPass-Replica`` (Ray's replica id) so spreading can be observed.

Run it with ``serve run``, arguments as ``key=value``::

    export SECONDPASS_RERANK_MODEL=BAAI/bge-reranker-v2-m3
    serve run secondpass.deploy.ray:app_builder num_replicas=2 num_gpus=0.5
    serve run secondpass.deploy.ray:app_builder min_replicas=1 max_replicas=4

or from Python::

    >>> from ray import serve  # doctest: +SKIP
    >>> serve.run(build_application(options=RayServeOptions(num_replicas=2)))  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from secondpass.errors import ConfigurationError, MissingDependencyError
from secondpass.service.settings import ServiceSettings

__all__ = ["REPLICA_HEADER", "RayServeOptions", "app_builder", "build_application"]

REPLICA_HEADER = "x-secondpass-replica"
"""Response header naming the Ray Serve replica that answered."""

_RAY_METRICS_INTERVAL_S = 10.0
"""Ray Serve's default ``metrics_interval_s`` (``ray.serve.config``), for validating the window."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class RayServeOptions(BaseModel):
    """How many replicas, what each may use, and how Ray scales them.

    Either a fixed ``num_replicas`` or autoscaling between ``min_replicas`` and
    ``max_replicas`` on ``target_ongoing_requests`` per replica (Ray's
    autoscaler; ``upscale_delay_s``/``downscale_delay_s`` are how long the load
    must stay above/below target before it acts). How soon it can see the load
    at all is set by ``metrics_interval_s`` (how often replicas and proxies
    push their ongoing-request counts; Ray's default 10 s) and
    ``look_back_period_s`` (the window those counts are averaged over; Ray's
    default 30 s): a scale-up lands roughly ``upscale_delay_s`` plus one push
    interval plus part of the window after the load arrives, so shorten them
    together with ``upscale_delay_s`` when a spike must be met fast. Left
    unset, Ray's defaults apply. ``num_gpus`` may be a fraction: ``0.5``
    packs two replicas on one GPU (each then needs half its memory; see
    docs/scaling.md for the token budget to pair with it).

    Example:
        >>> RayServeOptions(min_replicas=1, max_replicas=4).autoscaling_config()["max_replicas"]
        4
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default="secondpass", min_length=1, description="deployment name")
    num_replicas: int | None = Field(default=None, ge=1, description="fixed replica count")
    min_replicas: int | None = Field(default=None, ge=0)
    max_replicas: int | None = Field(default=None, ge=1)
    target_ongoing_requests: float = Field(default=16.0, gt=0)
    upscale_delay_s: float = Field(default=10.0, ge=0)
    downscale_delay_s: float = Field(default=120.0, ge=0)
    metrics_interval_s: float | None = Field(
        default=None, gt=0, description="how often load is pushed to Ray's autoscaler"
    )
    look_back_period_s: float | None = Field(
        default=None, gt=0, description="window the autoscaler averages the load over"
    )
    num_cpus: float = Field(default=1.0, ge=0, description="CPUs reserved per replica")
    num_gpus: float = Field(default=0.0, ge=0, description="GPUs per replica (fractions allowed)")
    max_ongoing_requests: int = Field(
        default=32, ge=1, description="requests one replica holds at once (its batching pool)"
    )
    load_timeout_s: float = Field(
        default=600.0, gt=0, description="longest a replica may take to load its model"
    )
    health_check_period_s: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _one_scaling_mode(self) -> RayServeOptions:
        autoscaled = self.min_replicas is not None or self.max_replicas is not None
        if autoscaled and self.num_replicas is not None:
            msg = "give either num_replicas or min_replicas/max_replicas (autoscaling), not both"
            raise ValueError(msg)
        if autoscaled and (self.min_replicas or 0) > (self.max_replicas or 1):
            msg = "min_replicas must not exceed max_replicas"
            raise ValueError(msg)
        tuned = self.metrics_interval_s is not None or self.look_back_period_s is not None
        if tuned and not autoscaled:
            msg = "metrics_interval_s/look_back_period_s tune autoscaling: give min_replicas/max_replicas"
            raise ValueError(msg)
        # Ray only warns here, but a window no longer than one push holds at most
        # one sample, so the autoscaler would act on a single reading.
        interval = (
            _RAY_METRICS_INTERVAL_S if self.metrics_interval_s is None else self.metrics_interval_s
        )
        if self.look_back_period_s is not None and self.look_back_period_s <= interval:
            default = " (Ray's default)" if self.metrics_interval_s is None else ""
            msg = (
                f"look_back_period_s={self.look_back_period_s:g} must exceed "
                f"metrics_interval_s={interval:g}{default}"
            )
            raise ValueError(msg)
        return self

    def autoscaling_config(self) -> dict[str, Any] | None:
        """Ray's ``autoscaling_config``, or ``None`` for a fixed replica count."""
        if self.min_replicas is None and self.max_replicas is None:
            return None
        config: dict[str, Any] = {
            "min_replicas": 1 if self.min_replicas is None else self.min_replicas,
            "max_replicas": self.max_replicas or max(1, self.min_replicas or 1),
            "target_ongoing_requests": self.target_ongoing_requests,
            "upscale_delay_s": self.upscale_delay_s,
            "downscale_delay_s": self.downscale_delay_s,
        }
        if self.metrics_interval_s is not None:
            config["metrics_interval_s"] = self.metrics_interval_s
        if self.look_back_period_s is not None:
            config["look_back_period_s"] = self.look_back_period_s
        return config

    def deployment_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``serve.deployment`` for these options."""
        kwargs: dict[str, Any] = {
            "name": self.name,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "max_ongoing_requests": self.max_ongoing_requests,
            "health_check_period_s": self.health_check_period_s,
        }
        autoscaling = self.autoscaling_config()
        if autoscaling is None:
            kwargs["num_replicas"] = 1 if self.num_replicas is None else self.num_replicas
        else:
            kwargs["autoscaling_config"] = autoscaling
        return kwargs


class _ReplicaApp:
    """The service app as one replica runs it: ready before serving, answers name the replica.

    Ray starts routing to a replica once its ASGI lifespan startup has
    completed, but the service loads its model in the background after startup
    (so Kubernetes' ``/livez`` answers during a long load). Here startup is held
    until a real forward pass succeeded; a model that fails to load fails the
    startup, and Ray retries the replica.
    """

    def __init__(self, app: Any, *, load_timeout_s: float, replica_id: str) -> None:
        self.app = app
        self.service = app.state.service
        self.load_timeout_s = load_timeout_s
        self.replica_id = replica_id.encode("ascii", "replace")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._hold_startup(send))
        elif scope["type"] == "http":
            await self.app(scope, receive, self._name_replica(send))
        else:
            await self.app(scope, receive, send)

    def _hold_startup(self, send: Send) -> Send:
        async def forward(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                problem = await self._wait_for_model()
                if problem is not None:
                    message = {"type": "lifespan.startup.failed", "message": problem}
            await send(message)

        return forward

    def _name_replica(self, send: Send) -> Send:
        async def forward(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((REPLICA_HEADER.encode("ascii"), self.replica_id))
                message = {**message, "headers": headers}
            await send(message)

        return forward

    async def _wait_for_model(self) -> str | None:
        """``None`` once the model answered; why not when it failed or took too long."""
        deadline = time.monotonic() + self.load_timeout_s
        while time.monotonic() < deadline:
            if self.service.model_ok:
                return None
            if self.service.load_failed:
                return str(self.service.model_error)
            await self.service.readiness()  # re-probes a loaded model that failed once
            await asyncio.sleep(0.1)
        return f"model not ready after load_timeout_s={self.load_timeout_s:g}"

    async def check_health(self) -> None:
        """Raise while the model cannot score, so Ray replaces the replica.

        Only the model counts: a search engine outage must not make Ray restart
        every replica (``/v1/search`` answers it with ``rerank_status``/503).
        """
        if not self.service.model_ok:
            await self.service.probe(timeout_s=self.service.settings.readiness_timeout_s)
        if not self.service.model_ok:
            msg = f"model not answering: {self.service.model_error}"
            raise RuntimeError(msg)


def _serve() -> Any:
    try:
        from ray import serve
    except ImportError as exc:  # pragma: no cover - depends on the extra
        raise MissingDependencyError(package="ray[serve]", extra="ray") from exc
    return serve


def build_application(
    *, settings: ServiceSettings | None = None, options: RayServeOptions | None = None
) -> Any:
    """A Ray Serve application (``serve.run`` it) of the rerank service.

    ``settings`` are read here, in the driver (``SECONDPASS_*`` variables and
    the config file, as ``secondpass serve`` reads them), and shipped to every
    replica; ``host``, ``port`` and TLS are Ray's proxy's business
    (``serve.start(http_options=...)``), not the settings'.
    """
    serve = _serve()
    settings = ServiceSettings() if settings is None else settings
    options = RayServeOptions() if options is None else options

    def build_replica_app() -> _ReplicaApp:
        from secondpass.service.app import create_app

        replica = serve.get_replica_context().replica_id.unique_id
        return _ReplicaApp(
            create_app(settings), load_timeout_s=options.load_timeout_s, replica_id=replica
        )

    @serve.ingress(build_replica_app)
    class SecondPassReplica:
        """One replica: the service app, its model and its scoring engine."""

        async def check_health(self) -> None:
            await self.app.check_health()  # type: ignore[attr-defined]

    deployment = serve.deployment(**options.deployment_kwargs())(SecondPassReplica)
    return deployment.bind()


def app_builder(args: dict[str, str]) -> Any:
    """Entry point for ``serve run secondpass.deploy.ray:app_builder key=value ...``.

    The keys are :class:`RayServeOptions` fields; service settings come from
    the ``SECONDPASS_*`` environment and config file as for ``secondpass serve``.
    """
    try:
        options = RayServeOptions.model_validate(args)
    except ValidationError as exc:
        msg = f"invalid Ray Serve options: {exc}"
        raise ConfigurationError(msg) from exc
    return build_application(options=options)
