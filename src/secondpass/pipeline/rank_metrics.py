"""Rank-change figures of live and shadow reranking, as Prometheus series and rank log records.

Why one recorder for both front-ends: the proxy and the service must report the
same series (``secondpass_rank_*``, ``secondpass_rerank_score``,
``secondpass_shadow_dropped_total``) with the same ``arm`` label so a dashboard
compares shadow with live whichever front-end served it. The figures come from
:mod:`secondpass.pipeline.rank_change`; records go to a
:class:`~secondpass.pipeline.rank_log.RankLogWriter` when one is given.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram

from secondpass.pipeline import rank_change
from secondpass.pipeline.engine import background_work
from secondpass.pipeline.rank_log import Arm, Outcome, RankLogWriter, RankRecord, query_id
from secondpass.pipeline.rollout import RolloutSettings
from secondpass.types import Hit, SearchResult

__all__ = ["RankRecorder"]

logger = logging.getLogger(__name__)

_TAU_BUCKETS = tuple(x / 10 for x in range(-10, 11))
_OVERLAP_BUCKETS = tuple(x / 10 for x in range(11))
_DISPLACEMENT_BUCKETS = (1, 2, 3, 5, 10, 20, 50, 100, 1000)
_SCORE_BUCKETS = (-10.0, -5.0, -2.0, -1.0, 0.0, 0.25, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)


class RankRecorder:
    """Observe one compared search: histograms always, a log record when sampled.

    Example:
        >>> r = RankRecorder(registry=CollectorRegistry())
        >>> _ = r.record(arm="shadow", request_id="r1", index="docs", query="q",
        ...              first_stage=["a", "b"], reranked=["b", "a"], scores=[2.0, 1.0])
        >>> r.registry.get_sample_value("secondpass_rank_top3_changed_total", {"arm": "shadow"})
        1.0
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry,
        writer: RankLogWriter | None = None,
        log_sample_rate: float = 1.0,
        log_text: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        self.registry = registry
        self.writer = writer
        self.log_sample_rate = log_sample_rate
        self.log_text = log_text
        self._rng = rng or random.Random()  # noqa: S311 - sampling, not security
        r = registry
        self.kendall_tau = Histogram(
            "secondpass_rank_kendall_tau",
            "Kendall tau-b between first-stage and reranked order (shared docs).",
            ["arm"], buckets=_TAU_BUCKETS, registry=r,
        )  # fmt: skip
        self.top10_overlap = Histogram(
            "secondpass_rank_top10_overlap",
            "Share of the reranked top 10 that was in the first-stage top 10.",
            ["arm"], buckets=_OVERLAP_BUCKETS, registry=r,
        )  # fmt: skip
        self.top1_displacement = Histogram(
            "secondpass_rank_top1_displacement",
            "1-based first-stage position of the reranked #1.",
            ["arm"], buckets=_DISPLACEMENT_BUCKETS, registry=r,
        )  # fmt: skip
        self.top3_changed = Counter(
            "secondpass_rank_top3_changed",
            "Reranked searches whose ordered top 3 differs from the first stage.",
            ["arm"], registry=r,
        )  # fmt: skip
        self.compared = Counter(
            "secondpass_rank_compared",
            "Searches compared (denominator of top3_changed), by outcome.",
            ["arm", "outcome"], registry=r,
        )  # fmt: skip
        self.score = Histogram(
            "secondpass_rerank_score",
            "Rerank score of each reranked document.",
            ["arm"], buckets=_SCORE_BUCKETS, registry=r,
        )  # fmt: skip
        self.shadow_dropped = Counter(
            "secondpass_shadow_dropped",
            "Shadow reranks dropped instead of run (reason queue_full).",
            ["reason"], registry=r,
        )  # fmt: skip

    @classmethod
    def from_settings(cls, settings: RolloutSettings, *, registry: CollectorRegistry) -> RankRecorder:
        """The recorder a front-end's rollout settings ask for (the log opens on first record)."""
        writer = (
            None
            if settings.rank_log is None
            else RankLogWriter(path=settings.rank_log, max_bytes=settings.rank_log_max_bytes)
        )
        return cls(
            registry=registry,
            writer=writer,
            log_sample_rate=settings.rank_log_sample_rate,
            log_text=settings.rank_log_text,
        )

    def dropped(self, reason: str) -> None:
        """Count a shadow rerank that was dropped (a :class:`ShadowQueue` ``on_drop``)."""
        self.shadow_dropped.labels(reason=reason).inc()

    def record(
        self,
        *,
        arm: Arm,
        request_id: str,
        index: str,
        query: str,
        first_stage: Sequence[str],
        reranked: Sequence[str] | None,
        scores: Sequence[float] | None,
        outcome: Outcome = "ok",
        rerank_ms: float | None = None,
    ) -> RankRecord:
        """Observe the comparison and queue its log record (if sampled); return the record."""
        change = rank_change.compare(first_stage, reranked if outcome == "ok" else None)
        self.compared.labels(arm=arm, outcome=outcome).inc()
        if change.kendall_tau is not None:
            self.kendall_tau.labels(arm=arm).observe(change.kendall_tau)
        if change.top10_overlap is not None:
            self.top10_overlap.labels(arm=arm).observe(change.top10_overlap)
        if change.top1_from is not None:
            self.top1_displacement.labels(arm=arm).observe(change.top1_from)
        if change.top3_changed:
            self.top3_changed.labels(arm=arm).inc()
        if outcome == "ok" and scores:
            histogram = self.score.labels(arm=arm)
            for value in scores:
                histogram.observe(value)
        record = RankRecord(
            ts=time.time(),
            request_id=request_id,
            arm=arm,
            index=index,
            query_id=query_id(query),
            query=query if self.log_text else None,
            first_stage=list(first_stage),
            reranked=None if reranked is None or outcome != "ok" else list(reranked),
            scores=None if scores is None or outcome != "ok" else [float(s) for s in scores],
            outcome=outcome,
            metrics=change.as_dict(),
            rerank_ms=rerank_ms,
        )
        if self.writer is not None and (
            self.log_sample_rate >= 1.0 or self._rng.random() < self.log_sample_rate
        ):
            self.writer.start()
            self.writer.submit(record)
        return record

    async def shadow(
        self,
        rerank: Callable[[], Awaitable[SearchResult]],
        *,
        request_id: str,
        index: str,
        query: str,
        hits: Sequence[Hit],
    ) -> RankRecord:
        """Run one shadow rerank and record it; a failure is recorded as ``failed``, never raised.

        The client was answered before this runs, so nobody is left to hear an error.
        """
        started = time.perf_counter()
        result: SearchResult | None
        try:
            with background_work():  # never opens (or closes) the breaker live traffic relies on
                result = await rerank()
        except Exception:  # noqa: BLE001 - recorded as failed; the client was answered
            logger.warning("shadow rerank failed", exc_info=True)
            result = None
        return self.record_result(
            arm="shadow", request_id=request_id, index=index, query=query, hits=hits,
            result=result, rerank_ms=(time.perf_counter() - started) * 1000,
        )  # fmt: skip

    def record_result(
        self,
        *,
        arm: Arm,
        request_id: str,
        index: str,
        query: str,
        hits: Sequence[Hit],
        result: SearchResult | None,
        rerank_ms: float | None = None,
    ) -> RankRecord:
        """:meth:`record` for a facade answer: ``hits`` in first-stage order, ``result`` reranked.

        Only the hits the model scored count as reranked (a ``partial`` rerank
        leaves the rest in first-stage order); a ``failed``/``skipped`` result or
        ``None`` (an exception) records outcome ``failed``.
        """
        first = [hit.id for hit in hits]
        if result is None or result.status in ("failed", "skipped"):
            return self.record(
                arm=arm, request_id=request_id, index=index, query=query, first_stage=first,
                reranked=None, scores=None, outcome="failed", rerank_ms=rerank_ms,
            )  # fmt: skip
        scored = [h for h in result.hits if h.score is not None]
        return self.record(
            arm=arm, request_id=request_id, index=index, query=query, first_stage=first,
            reranked=[h.hit.id for h in scored], scores=[float(h.score or 0.0) for h in scored],
            rerank_ms=rerank_ms,
        )  # fmt: skip
