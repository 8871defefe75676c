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
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from secondpass.scoring_metrics import LATENCY_BUCKETS, EngineSeries


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
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "secondpass_http_requests_in_flight", "Requests being handled now.", registry=r
        )
        # the engine's series, shared with the proxy; the names below keep this
        # class's attributes, and the service observes its own stages and refusals on them
        self.scoring = EngineSeries(r)
        self.stage = self.scoring.stage
        self.batch_pairs = self.scoring.batch_pairs
        self.batch_requests = self.scoring.batch_requests
        self.batch_tokens = self.scoring.batch_tokens
        self.queue_pairs = self.scoring.queue_pairs
        self.queue_requests = self.scoring.queue_requests
        self.rejected = self.scoring.refusals
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
        self.model_failures = self.scoring.model_failures
        self.ready = Gauge("secondpass_ready", "1 when /readyz answers 200, else 0.", registry=r)

    def add_cache_backend(self, read: Callable[[], Mapping[str, float]]) -> None:
        """Export the cache backend's own counters, read at scrape time.

        As ``secondpass_cache_backend_events_total{event}`` (errors, writes,
        corrupt, evictions, bypassed): counters, not gauges, so ``rate()`` works
        on them. Its hits and misses are left out: ``secondpass_cache_hits_total``
        and ``secondpass_cache_misses_total`` count those already.
        """
        self.registry.register(_CacheBackendCollector(read))

    def enable_gpu_memory(self) -> None:
        """Export CUDA memory per device at scrape time, when torch has CUDA."""
        self.registry.register(_GpuMemoryCollector())


class _CacheBackendCollector(Collector):
    _SERIES = "secondpass_cache_backend_events"
    _ALREADY_COUNTED = frozenset({"hits", "misses"})

    def __init__(self, read: Callable[[], Mapping[str, float]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            self._SERIES,
            "Events of the score cache backend since start, by event (errors, writes, "
            "corrupt, evictions, bypassed).",
            labels=["event"],
        )
        try:
            values = self._read()
        except Exception:  # a scrape must not fail because a stats source did
            values = {}
        for key, value in values.items():
            if key in self._ALREADY_COUNTED:
                continue
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
