"""Prometheus metrics of the service, in a registry owned by one app.

A registry per app (rather than prometheus-client's global one) lets tests and the
load benchmark build several apps in one process without "duplicated timeseries"
errors. Endpoint labels are route templates, never raw paths, so a scanner hitting
random URLs cannot blow up the number of series.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from secondpass.pipeline.batcher import BatchReport

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_PAIR_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
_REQUEST_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64)


class ServiceMetrics:
    """All the series the service exports; one instance per app.

    Stages (``stage`` label): ``queue_wait`` (enqueue to batch start), ``tokenize``
    and ``model`` (as reported by the scorer), ``cache`` (lookups and writes),
    ``first_stage`` (engine round trips of /v1/search), ``batch`` (one whole
    ``score_pairs`` call in the model thread).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        r = self.registry
        self.requests = Counter(
            "secondpass_http_requests",
            "HTTP requests served, by route template, method and status code.",
            ["endpoint", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "secondpass_http_request_duration_seconds",
            "Wall time from request start to the end of the response, by route template.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "secondpass_http_requests_in_flight", "Requests being handled now.", registry=r
        )
        self.stage = Histogram(
            "secondpass_stage_duration_seconds",
            "Time spent per pipeline stage (see ServiceMetrics docstring for stage names).",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_pairs = Histogram(
            "secondpass_batch_pairs",
            "Pairs scored per forward batch.",
            buckets=_PAIR_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "secondpass_batch_requests",
            "Distinct HTTP requests served by one forward batch (>1 means batching mixed them).",
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "secondpass_batch_tokens",
            "Passage tokens the model saw per batch (sum of PassageScore.tokens_scored).",
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.queue_pairs = Gauge(
            "secondpass_queue_depth_pairs", "Pairs waiting in the batching queue.", registry=r
        )
        self.queue_requests = Gauge(
            "secondpass_queue_depth_requests",
            "Requests with pairs waiting in the batching queue.",
            registry=r,
        )
        self.rejected = Counter(
            "secondpass_rejected_requests",
            "Requests refused before scoring, by reason "
            "(queue_full, over_time, deadline, body_too_large, validation, draining).",
            ["reason"],
            registry=r,
        )
        self.cache_hits = Counter(
            "secondpass_cache_hits", "Pair scores served from the score cache.", registry=r
        )
        self.cache_misses = Counter(
            "secondpass_cache_misses", "Pair scores the model had to compute.", registry=r
        )
        self.degraded = Counter(
            "secondpass_degraded_responses",
            "Responses whose reranking was partial, skipped or failed, by endpoint and status.",
            ["endpoint", "status"],
            registry=r,
        )
        self.model_failures = Counter(
            "secondpass_model_failures", "Forward batches that raised.", registry=r
        )
        self.ready = Gauge("secondpass_ready", "1 when /readyz answers 200, else 0.", registry=r)

    def add_callback_gauges(
        self, name: str, doc: str, read: Callable[[], Mapping[str, float]]
    ) -> None:
        """Export numbers read at scrape time (cache backend stats), one label ``key``."""
        self.registry.register(_CallbackCollector(name, doc, read))

    def enable_gpu_memory(self) -> None:
        """Export CUDA memory per device at scrape time, when torch has CUDA."""
        self.registry.register(_GpuMemoryCollector())


class BatchMetrics:
    """The shared batcher's reports written to the service's series.

    The batcher lives in ``pipeline/`` and knows only its ``BatchObserver``
    protocol; this adapter keeps the series the service has always exported.
    """

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._m = metrics

    def rejected(self, reason: str) -> None:
        """Count a refusal before scoring under ``reason``."""
        self._m.rejected.labels(reason).inc()

    def queue_depth(self, pairs: int, requests: int) -> None:
        """Set the queue depth gauges."""
        self._m.queue_pairs.set(pairs)
        self._m.queue_requests.set(requests)

    def queue_wait(self, seconds: float) -> None:
        """Observe the ``queue_wait`` stage."""
        self._m.stage.labels("queue_wait").observe(seconds)

    def batch_done(self, report: BatchReport) -> None:
        """Observe one successful batch: its stages, pairs, requests and tokens."""
        m = self._m
        m.stage.labels("batch").observe(report.seconds)
        m.stage.labels("tokenize").observe(report.tokenize_s)
        m.stage.labels("model").observe(report.model_s)
        m.batch_pairs.observe(report.pairs)
        m.batch_requests.observe(report.requests)
        m.batch_tokens.observe(report.tokens)

    def model_failed(self) -> None:
        """Count a forward batch that raised."""
        self._m.model_failures.inc()


class _CallbackCollector(Collector):
    def __init__(self, name: str, doc: str, read: Callable[[], Mapping[str, float]]) -> None:
        self._name = name
        self._doc = doc
        self._read = read

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(self._name, self._doc, labels=["key"])
        try:
            values = self._read()
        except Exception:  # a scrape must not fail because a stats source did
            values = {}
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                family.add_metric([str(key)], float(value))
        yield family

    def describe(self) -> Iterable[Metric]:
        return []


class _GpuMemoryCollector(Collector):
    """Reads torch.cuda memory counters; never imports torch itself (cheap when absent)."""

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "secondpass_gpu_memory_bytes",
            "CUDA memory held by this process, by device and kind (allocated, reserved).",
            labels=["device", "kind"],
        )
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                family.add_metric([str(i), "allocated"], float(torch.cuda.memory_allocated(i)))
                family.add_metric([str(i), "reserved"], float(torch.cuda.memory_reserved(i)))
        yield family

    def describe(self) -> Iterable[Metric]:
        return []
