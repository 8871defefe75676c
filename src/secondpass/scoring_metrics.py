"""The scoring engine's Prometheus series, shared by the service and the proxy.

Why a module of its own: the engine (``pipeline/``) reports through its
``BatchObserver`` protocol and must not import prometheus-client, while both
front-ends export the same batch, queue, stage and refusal series under the same
names, so one dashboard reads either. Keeping the series here means a change to
what a batch reports is made once. It imports nothing of ours but the
``BatchReport`` the observer receives.

Conventions (https://prometheus.io/docs/practices/naming/): every registry also
carries the standard ``process_*``, ``python_info`` and ``python_gc_*`` series
(each front-end has a registry of its own, so the defaults of the global one
would be missing), a ``secondpass_build_info`` gauge whose labels say what runs,
counters only as ``_total`` series (a gauge never mirrors a counter), and no
``_created`` series (prometheus-client's are switched off for the process: they
double the series count and no dashboard of ours reads them).
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from secondpass.pipeline.batcher import BatchReport

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
PAIR_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
REQUEST_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64)

disable_created_metrics()


class EngineSeries:
    """The scoring engine's batch, queue, stage and refusal series; its ``BatchObserver``.

    Series: ``secondpass_batch_pairs``, ``secondpass_batch_requests``,
    ``secondpass_batch_tokens``, ``secondpass_queue_depth_pairs``,
    ``secondpass_queue_depth_requests``, ``secondpass_stage_duration_seconds``
    (``stage``), ``secondpass_rejected_requests`` (``reason``) and
    ``secondpass_model_failures``, and ``secondpass_build_info`` (``version``,
    ``model``, ``backend``, ``device``; set by :meth:`build_info` once the model
    is loaded), plus the standard process, platform and GC collectors. A front-end
    may observe its own stages and refusal reasons on the same series. Every
    observer method is cheap and never raises, as the protocol asks.

    Example:
        >>> registry = CollectorRegistry()
        >>> EngineSeries(registry).rejected("over_time")
        >>> registry.get_sample_value("secondpass_rejected_requests_total", {"reason": "over_time"})
        1.0
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.batch_pairs = Histogram(
            "secondpass_batch_pairs", "Pairs scored per forward batch.",
            buckets=PAIR_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_requests = Histogram(
            "secondpass_batch_requests",
            "Requests (searches, in the proxy) served by one forward batch "
            "(>1 means batching mixed them).",
            buckets=REQUEST_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_tokens = Histogram(
            "secondpass_batch_tokens",
            "Passage tokens the model saw per batch (sum of PassageScore.tokens_scored).",
            buckets=TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_pairs = Gauge(
            "secondpass_queue_depth_pairs", "Pairs waiting in the batching queue.", registry=r
        )
        self.queue_requests = Gauge(
            "secondpass_queue_depth_requests",
            "Requests (searches, in the proxy) with pairs waiting in the batching queue.",
            registry=r,
        )
        self.stage = Histogram(
            "secondpass_stage_duration_seconds",
            "Time per stage: queue_wait (admitted to batch start), batch (one whole forward "
            "call), tokenize and model (as the scorer reports them); the service adds cache, "
            "first_stage and search_*.",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.refusals = Counter(
            "secondpass_rejected_requests",
            "Requests refused or dropped before scoring, by reason (queue_full, over_time, "
            "deadline, and the front-end's own, e.g. validation, draining, rate_limited).",
            ["reason"], registry=r,
        )  # fmt: skip
        self.model_failures = Counter(
            "secondpass_model_failures", "Forward batches that raised.", registry=r
        )
        self.build = Gauge(
            "secondpass_build_info",
            "Always 1; the labels say what runs: package version, model (its public name), "
            "backend (torch, onnx, openvino) and device.",
            ["version", "model", "backend", "device"], registry=r,
        )  # fmt: skip
        # what prometheus-client's global registry carries by default; ours are per app
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

    def build_info(self, *, model: str, backend: str, device: str) -> None:
        """Set ``secondpass_build_info`` (one series: a reloaded model replaces it)."""
        from secondpass import __version__

        self.build.clear()
        self.build.labels(__version__, model, backend, device).set(1)

    def rejected(self, reason: str) -> None:
        """Count one request refused or dropped before scoring, under ``reason``."""
        self.refusals.labels(reason).inc()

    def queue_depth(self, pairs: int, requests: int) -> None:
        """Set the queue depth, in pairs and in requests."""
        self.queue_pairs.set(pairs)
        self.queue_requests.set(requests)

    def queue_wait(self, seconds: float) -> None:
        """Observe how long a request's pairs waited for their first batch."""
        self.stage.labels("queue_wait").observe(seconds)

    def batch_done(self, report: BatchReport) -> None:
        """Observe one successful forward batch: its stages, pairs, requests and tokens."""
        self.batch_pairs.observe(report.pairs)
        self.batch_requests.observe(report.requests)
        self.batch_tokens.observe(report.tokens)
        for stage, seconds in (
            ("batch", report.seconds), ("tokenize", report.tokenize_s), ("model", report.model_s),
        ):  # fmt: skip
            self.stage.labels(stage).observe(seconds)

    def model_failed(self) -> None:
        """Count a forward batch that raised."""
        self.model_failures.inc()
