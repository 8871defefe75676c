"""Prometheus metrics of the drop-in proxy, in a registry owned by one proxy.

Why its own registry: tests and benchmarks run several proxies in one process,
and prometheus-client's global registry refuses a second copy of a series.
Series names follow :mod:`secondpass.service.metrics` where they mean the same
thing (``secondpass_cache_hits``, ``secondpass_cache_misses``, the batch and
queue series of the shared :class:`~secondpass.pipeline.engine.ScoringEngine`,
the latency buckets), and are ``secondpass_proxy_*`` where they are the proxy's
own. The
reason label is the text after ``reason=`` in ``X-SecondPass-Rerank`` with its
figures replaced by ``N`` (the engine's status code excepted); the number of
distinct reasons is capped so a stream of odd requests cannot grow the series
without bound.
"""

from __future__ import annotations

import re
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from secondpass.pipeline.batcher import BatchReport

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_PAIR_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
_REQUEST_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64)
_MAX_REASONS = 64
"""Distinct ``reason`` label values kept; later new reasons are counted as ``other``."""
_MAX_REASON_CHARS = 80
_NUMBER = re.compile(r"(?<!answered )\b\d+(?:\.\d+)?\b")

OUTCOMES = ("ok", "partial", "skipped", "failed")


class ProxyMetrics:
    """All the series the proxy exports; one instance per :class:`~secondpass.proxy.RerankProxy`.

    Hits reranked and cache use are read from each search's
    :class:`~secondpass.types.SearchResult`; batches, queue depth, queue wait,
    refusals and model failures come from the scoring engine through
    :class:`EngineSeries`, the engine's observer.

    Example:
        >>> m = ProxyMetrics()
        >>> m.search_outcome("search", "skipped; reason=no hits")
        >>> m.registry.get_sample_value(
        ...     "secondpass_proxy_searches_total",
        ...     {"endpoint": "search", "outcome": "skipped", "reason": "no hits"})
        1.0
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        r = self.registry
        self.searches = Counter(
            "secondpass_proxy_searches",
            "Searches answered, by endpoint (search, msearch: one per item), rerank outcome "
            "(ok, partial, skipped, failed) and reason (empty for ok).",
            ["endpoint", "outcome", "reason"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            "secondpass_proxy_upstream_duration_seconds",
            "Time from sending a request upstream to the engine's response headers, "
            "by kind (search, msearch, other).",
            ["kind"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "secondpass_proxy_upstream_errors",
            "Upstream requests that got no answer (connect error, timeout, full pool), by kind.",
            ["kind"],
            registry=r,
        )
        self.rerank_latency = Histogram(
            "secondpass_proxy_rerank_duration_seconds",
            "Time to rerank one search's window once the engine answered (cache, queue, model).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.reranked_hits = Histogram(
            "secondpass_proxy_reranked_hits",
            "Hits reranked per search (the window the engine returned).",
            buckets=_PAIR_BUCKETS,
            registry=r,
        )
        self.cache_hits = Counter(
            "secondpass_cache_hits", "Pair scores served from the score cache.", registry=r
        )
        self.cache_misses = Counter(
            "secondpass_cache_misses", "Pair scores the model had to compute.", registry=r
        )
        self.ready = Gauge(
            "secondpass_ready", "1 when /_secondpass/readyz last answered 200, else 0.", registry=r
        )
        self.engine = EngineSeries(r)
        self._reasons: set[str] = set()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ searches

    def search_outcome(self, endpoint: str, status: str) -> None:
        """Count one search under the ``X-SecondPass-Rerank`` value it was answered with."""
        outcome, _, rest = status.partition(";")
        outcome = outcome.strip()
        if outcome not in OUTCOMES:
            outcome, rest = "failed", f" reason={outcome}"
        reason = rest.strip().removeprefix("reason=").strip()
        self.searches.labels(endpoint, outcome, self._bounded(reason)).inc()

    def answered(self, endpoint: str, statuses: str) -> None:
        """Count every search of one answer (an ``_msearch`` joins its items with ``, ``)."""
        for status in statuses.split(", "):
            if status:
                self.search_outcome(endpoint, status)

    def _bounded(self, reason: str) -> str:
        # "reranked 37 of 100" and "reranked 12 of 100" are one reason; an engine's
        # status code ("engine answered 503") is kept, there are few of them.
        reason = _NUMBER.sub("N", reason)[:_MAX_REASON_CHARS]
        with self._lock:
            if reason in self._reasons:
                return reason
            if len(self._reasons) >= _MAX_REASONS:
                return "other"
            self._reasons.add(reason)
        return reason

    def reranked(self, *, hits: int, cache_hits: int, cache_misses: int) -> None:
        """Observe what one search's rerank scored: its window and its cache use."""
        if hits:
            self.reranked_hits.observe(hits)
        self.cache_hits.inc(cache_hits)
        self.cache_misses.inc(cache_misses)


class EngineSeries:
    """The scoring engine's batch and queue series; the engine's ``BatchObserver``.

    The batcher lives in ``pipeline/`` and reports through its observer
    protocol only; these series carry the service's names (``secondpass_batch_*``,
    ``secondpass_queue_depth_*``, ``secondpass_rejected_requests``,
    ``secondpass_model_failures``, ``secondpass_stage_duration_seconds``), so one
    dashboard reads both. Every method is cheap and never raises, as the
    protocol asks.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.batch_pairs = Histogram(
            "secondpass_batch_pairs", "Pairs scored per forward batch.",
            buckets=_PAIR_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_requests = Histogram(
            "secondpass_batch_requests",
            "Searches served by one forward batch (>1 means batching mixed them).",
            buckets=_REQUEST_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_tokens = Histogram(
            "secondpass_batch_tokens", "Passage tokens the model saw per batch.",
            buckets=_TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_pairs = Gauge(
            "secondpass_queue_depth_pairs", "Pairs waiting in the batching queue.", registry=r
        )
        self.queue_requests = Gauge(
            "secondpass_queue_depth_requests",
            "Searches with pairs waiting in the batching queue.",
            registry=r,
        )
        self.stage = Histogram(
            "secondpass_stage_duration_seconds",
            "Time per scoring stage: queue_wait (admitted to batch start), batch (one whole "
            "forward call), tokenize and model (as the scorer reports them).",
            ["stage"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.refusals = Counter(
            "secondpass_rejected_requests",
            "Searches the engine refused or dropped before scoring, by reason "
            "(queue_full, over_time, deadline); they are answered in engine order.",
            ["reason"], registry=r,
        )  # fmt: skip
        self.model_failures = Counter(
            "secondpass_model_failures", "Forward batches that raised.", registry=r
        )

    def rejected(self, reason: str) -> None:
        """Count one search refused or dropped before scoring, under ``reason``."""
        self.refusals.labels(reason).inc()

    def queue_depth(self, pairs: int, requests: int) -> None:
        """Set the queue depth, in pairs and in searches."""
        self.queue_pairs.set(pairs)
        self.queue_requests.set(requests)

    def queue_wait(self, seconds: float) -> None:
        """Observe how long a search's pairs waited for their first batch."""
        self.stage.labels("queue_wait").observe(seconds)

    def batch_done(self, report: BatchReport) -> None:
        """Observe one successful forward batch."""
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
