"""Prometheus metrics of the drop-in proxy, in a registry owned by one proxy.

Why its own registry: tests and benchmarks run several proxies in one process,
and prometheus-client's global registry refuses a second copy of a series.
Series names follow :mod:`secondpass.service.metrics` where they mean the same
thing (``secondpass_cache_hits``, ``secondpass_cache_misses``, the latency
buckets; the batch and queue series of the shared
:class:`~secondpass.pipeline.engine.ScoringEngine` are one class,
:class:`secondpass.scoring_metrics.EngineSeries`, used by both), and are
``secondpass_proxy_*`` where they are the proxy's own. The reason label is the text after ``reason=`` in ``X-SecondPass-Rerank`` with its
figures replaced by ``N`` (the engine's status code excepted); the number of
distinct reasons is capped so a stream of odd requests cannot grow the series
without bound.
"""

from __future__ import annotations

import re
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from secondpass.scoring_metrics import LATENCY_BUCKETS, PAIR_BUCKETS, EngineSeries

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
    :class:`~secondpass.scoring_metrics.EngineSeries`, the engine's observer
    (shared with the service).

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
            buckets=LATENCY_BUCKETS,
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
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.reranked_hits = Histogram(
            "secondpass_proxy_reranked_hits",
            "Hits reranked per search (the window the engine returned).",
            buckets=PAIR_BUCKETS,
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
        self.scoring = EngineSeries(r)  # the scoring engine's observer
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
