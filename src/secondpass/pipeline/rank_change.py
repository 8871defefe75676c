"""Pure functions that say how much reranking changed a first-stage order.

Used for both live and shadow reranking so the two arms are measured the same
way; the proxy and the service turn the results into Prometheus metrics and rank
log records. No I/O and no state here, so every figure is unit-testable against
an independent computation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import kendalltau

__all__ = [
    "RankChange",
    "compare",
    "kendall_tau",
    "score_summary",
    "top1_from",
    "top3_changed",
    "top_k_overlap",
]


@dataclass(frozen=True, kw_only=True)
class RankChange:
    """The rank-change figures of one search; ``None`` where a figure is undefined."""

    kendall_tau: float | None
    top10_overlap: float | None
    top1_from: int | None
    top3_changed: bool | None

    def as_dict(self) -> dict[str, float | int | bool | None]:
        """Return the figures under the rank log's ``metrics`` keys."""
        return {
            "kendall_tau": self.kendall_tau,
            "top10_overlap": self.top10_overlap,
            "top1_from": self.top1_from,
            "top3_changed": self.top3_changed,
        }


def kendall_tau(first_stage: Sequence[str], reranked: Sequence[str]) -> float | None:
    """Kendall's tau-b between the two orders, over the documents present in both.

    Definition: take the documents that appear in both lists (the shared docs; a
    reranker reorders a prefix of the first stage, so usually all of ``reranked``),
    give each its 0-based position in ``first_stage`` and in ``reranked``, and
    return ``scipy.stats.kendalltau`` of those two position vectors (tau-b; there
    are no ties since positions are distinct). +1 means the reranker kept the
    shared documents' relative order, -1 that it reversed it. Documents present in
    only one list do not count. ``None`` when fewer than two documents are shared
    (tau is undefined).
    """
    rerank_pos = {doc: i for i, doc in reversed(list(enumerate(reranked)))}
    seen: set[str] = set()
    xs: list[int] = []
    ys: list[int] = []
    for i, doc in enumerate(first_stage):
        if doc in rerank_pos and doc not in seen:
            seen.add(doc)
            xs.append(i)
            ys.append(rerank_pos[doc])
    if len(xs) < 2:
        return None
    tau = float(kendalltau(xs, ys).statistic)
    return None if math.isnan(tau) else tau


def top_k_overlap(first_stage: Sequence[str], reranked: Sequence[str], k: int = 10) -> float | None:
    """Share of the reranked top-k that is also in the first-stage top-k.

    ``|top_k(first) ∩ top_k(reranked)| / min(k, len(first), len(reranked))``, in
    [0, 1]; 1.0 means reranking only reordered the top k. ``None`` when either
    list is empty.
    """
    n = min(k, len(first_stage), len(reranked))
    if n == 0:
        return None
    return len(set(first_stage[:k]) & set(reranked[:k])) / n


def top1_from(first_stage: Sequence[str], reranked: Sequence[str]) -> int | None:
    """1-based first-stage position of the reranked #1 (1 = unchanged top); ``None`` if absent."""
    if not reranked:
        return None
    try:
        return list(first_stage).index(reranked[0]) + 1
    except ValueError:
        return None


def top3_changed(first_stage: Sequence[str], reranked: Sequence[str]) -> bool | None:
    """Whether the ordered top 3 differs (a swap within the top 3 counts); ``None`` if reranked is empty."""
    if not reranked:
        return None
    return list(first_stage[:3]) != list(reranked[:3])


def compare(first_stage: Sequence[str], reranked: Sequence[str] | None) -> RankChange:
    """Every rank-change figure of one search; all ``None`` when there is no reranked order."""
    if reranked is None:
        return RankChange(kendall_tau=None, top10_overlap=None, top1_from=None, top3_changed=None)
    return RankChange(
        kendall_tau=kendall_tau(first_stage, reranked),
        top10_overlap=top_k_overlap(first_stage, reranked, 10),
        top1_from=top1_from(first_stage, reranked),
        top3_changed=top3_changed(first_stage, reranked),
    )


def score_summary(scores: Sequence[float]) -> dict[str, float] | None:
    """Min, max, mean and spread (max - min) of one search's rerank scores; ``None`` if empty.

    The per-document scores themselves go to the ``secondpass_rerank_score``
    histogram; this summary is for logs and reports.
    """
    finite = [float(s) for s in scores if math.isfinite(s)]
    if not finite:
        return None
    return {
        "min": min(finite),
        "max": max(finite),
        "mean": sum(finite) / len(finite),
        "spread": max(finite) - min(finite),
    }
