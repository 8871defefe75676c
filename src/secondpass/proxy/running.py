"""Running the proxy: building it from settings, uvicorn, and a background runner.

Why a module of its own: loading the model and serving under uvicorn are the only
slow, process-level steps of the proxy; the ASGI application
(:class:`~secondpass.proxy.app.RerankProxy`) stays importable and testable without them.
"""

from __future__ import annotations

import threading
from typing import Any

from secondpass.errors import ServerStartError
from secondpass.proxy.app import RerankProxy
from secondpass.proxy.settings import ProxySettings

_START_TIMEOUT_S = 30.0
"""The most :class:`BackgroundProxy` waits for uvicorn to listen."""


def build_proxy(settings: ProxySettings) -> RerankProxy:
    """Load (and warm) the configured scorer and cache, and wrap them in a proxy.

    Loading the model is the slow part of starting the proxy; it happens here,
    before the port opens, so the first search is not the one that pays for it.
    """
    from secondpass.pipeline.cache import build_cache
    from secondpass.pipeline.protocols import Scorer
    from secondpass.pipeline.remote.references import remote_scorer_or_none
    from secondpass.pipeline.scorer import CrossEncoderScorer

    scorer: Scorer | None = remote_scorer_or_none(settings.rerank.model)  # docs/remote-rerankers.md
    if scorer is None:
        local = CrossEncoderScorer(settings=settings.rerank)
        local.warm_up()
        scorer = local
    proxy = RerankProxy(settings, scorer=scorer, cache=build_cache(settings.cache))
    proxy.retriever.engine.calibrate()  # admission plans in seconds from the first search on
    return proxy


def _uvicorn_config(app: RerankProxy, settings: ProxySettings, *, host: str, port: int) -> Any:
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        log_config=None,  # keep the caller's logging set-up
        lifespan="on",
        server_header=False,  # the engine's headers only
        date_header=False,
        ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
        **app.limits.uvicorn_kwargs(),  # h11 pinned, request head capped (431)
    )


class BackgroundProxy:
    """Serve a :class:`RerankProxy` from a daemon thread, for tests, notebooks and benchmarks.

    Entering starts uvicorn on ``host:port`` (``0`` picks a free port) and returns
    the proxy's base URL once it accepts connections; leaving stops it. The proxy's
    retriever and scorer stay the caller's to close.

    Example:
        >>> with BackgroundProxy(RerankProxy(settings, scorer=scorer)) as url:  # doctest: +SKIP
        ...     httpx.get(f"{url}/_cluster/health")
    """

    def __init__(self, proxy: RerankProxy, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.proxy = proxy
        self.host = host
        self.port = port
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> str:
        import uvicorn

        settled = threading.Event()  # set once uvicorn started, or gave up

        class _Server(uvicorn.Server):
            async def startup(self, sockets: Any = None) -> None:
                try:
                    await super().startup(sockets=sockets)
                finally:
                    settled.set()

        def serve() -> None:  # uvicorn installs no signal handlers off the main thread
            try:
                server.run()
            except SystemExit:  # uvicorn logged why (port in use, ...); __enter__ raises
                pass
            finally:  # a failure before startup (bad config) must wake the waiter too
                settled.set()

        server = _Server(
            _uvicorn_config(self.proxy, self.proxy.settings, host=self.host, port=self.port)
        )
        self._server = server
        self._thread = threading.Thread(target=serve, name="secondpass-proxy", daemon=True)
        self._thread.start()
        if not settled.wait(timeout=_START_TIMEOUT_S) or not server.started:
            self.__exit__()
            msg = f"the proxy did not start on {self.host}:{self.port}"
            raise ServerStartError(msg)
        port = server.servers[0].sockets[0].getsockname()[1]
        scheme = "https" if self.proxy.settings.ssl_certfile else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{port}"

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)


def run(settings: ProxySettings, *, proxy: RerankProxy | None = None) -> int:
    """Serve the proxy under uvicorn until a signal; returns the exit code.

    uvicorn's own ``Server`` and ``Date`` headers are off so that responses carry
    the engine's headers only.
    """
    import uvicorn

    app = build_proxy(settings) if proxy is None else proxy
    server = uvicorn.Server(_uvicorn_config(app, settings, host=settings.host, port=settings.port))
    try:
        server.run()
    finally:
        app.retriever.close()
        app.close()
        close = getattr(app.retriever.scorer, "close", None)
        if callable(close):
            close()
    return 0 if server.started else 1
