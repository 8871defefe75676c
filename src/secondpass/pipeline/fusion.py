"""Merge several ranked lists of hits into one, for hybrid (lexical + dense) search.

BM25 scores and cosine similarities live on unrelated scales, so they cannot be
added as they come. Two well-known ways around that are offered as pure functions
(no I/O, trivially testable):

* :func:`reciprocal_rank_fusion` ignores scores and adds ``1 / (k + rank)`` per
  list. It needs no tuning and is the safe default.
* :func:`linear_fusion` rescales each list's scores to [0, 1] (min-max) and adds
  them with weights, which keeps how much better one hit was than the next.

Both treat a document as the pair ``(index, id)``, keep each document once
(its best rank within a list), and return fresh :class:`~secondpass.types.Hit`
values ranked 1..n whose ``score`` is the fused score. Ties are broken by the
best rank the document had in any list, then by index and id, so the order is
deterministic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from secondpass.errors import ConfigurationError
from secondpass.types import Hit

RRF_K = 60
"""The constant of Cormack et al. (2009); it damps the weight of the very top ranks."""


def _dedupe(hits: Sequence[Hit]) -> list[Hit]:
    """One hit per document, the best-ranked one, in rank order."""
    best: dict[tuple[str, str], Hit] = {}
    for hit in hits:
        kept = best.get(hit.key)
        if kept is None or hit.rank < kept.rank:
            best[hit.key] = hit
    return sorted(best.values(), key=lambda h: (h.rank, h.index, h.id))


def _check_weights(lists: Sequence[Sequence[Hit]], weights: Sequence[float] | None) -> list[float]:
    if weights is None:
        return [1.0] * len(lists)
    if len(weights) != len(lists):
        msg = f"fusion got {len(lists)} lists but {len(weights)} weights; pass one weight per list"
        raise ConfigurationError(msg)
    if any(w < 0 for w in weights):
        msg = "fusion weights must be >= 0"
        raise ConfigurationError(msg)
    return [float(w) for w in weights]


def _rank_fused(
    fused: dict[tuple[str, str], float],
    first_seen: dict[tuple[str, str], Hit],
    best_rank: dict[tuple[str, str], int],
) -> list[Hit]:
    """Order by fused score desc, then best rank in any list, then (index, id)."""
    order = sorted(fused, key=lambda key: (-fused[key], best_rank[key], key[0], key[1]))
    return [
        dataclasses.replace(first_seen[key], score=fused[key], rank=position)
        for position, key in enumerate(order, start=1)
    ]


def _collect(
    lists: Sequence[Sequence[Hit]],
) -> tuple[list[list[Hit]], dict[tuple[str, str], Hit], dict[tuple[str, str], int]]:
    """Dedupe every list and remember each document's first hit and best rank.

    The first hit seen (earliest list first) supplies ``fields`` and ``source`` of
    the fused hit, so the lexical hit's highlighted/filtered source wins when the
    lexical list is passed first.
    """
    deduped = [_dedupe(hits) for hits in lists]
    first_seen: dict[tuple[str, str], Hit] = {}
    best_rank: dict[tuple[str, str], int] = {}
    for hits in deduped:
        for position, hit in enumerate(hits, start=1):
            first_seen.setdefault(hit.key, hit)
            best_rank[hit.key] = min(best_rank.get(hit.key, position), position)
    return deduped, first_seen, best_rank


def reciprocal_rank_fusion(
    lists: Sequence[Sequence[Hit]],
    *,
    k: int = RRF_K,
    weights: Sequence[float] | None = None,
) -> list[Hit]:
    """Fuse ranked lists by summing ``weight / (k + rank)`` over the lists a document is in.

    Positions are recomputed after de-duplication, so a list with a duplicate
    does not push the documents after it down.

    Example:
        >>> a = [Hit("i", "x", 9.0, 1), Hit("i", "y", 5.0, 2)]
        >>> b = [Hit("i", "y", 0.9, 1), Hit("i", "z", 0.8, 2)]
        >>> [(h.id, h.rank) for h in reciprocal_rank_fusion([a, b])]
        [('y', 1), ('x', 2), ('z', 3)]
    """
    if k < 0:
        msg = f"RRF constant k must be >= 0, got {k}"
        raise ConfigurationError(msg)
    weight_of = _check_weights(lists, weights)
    deduped, first_seen, best_rank = _collect(lists)
    fused: dict[tuple[str, str], float] = {}
    for weight, hits in zip(weight_of, deduped, strict=True):
        for position, hit in enumerate(hits, start=1):
            fused[hit.key] = fused.get(hit.key, 0.0) + weight / (k + position)
    return _rank_fused(fused, first_seen, best_rank)


def _min_max(hits: Sequence[Hit]) -> list[float]:
    """Rescale one list's scores to [0, 1].

    A list whose scores are all equal (or missing) gives every hit 1.0: they are
    all its best. A missing score within a list counts as that list's minimum.
    """
    present = [h.score for h in hits if h.score is not None]
    if not present:
        return [1.0] * len(hits)
    low, high = min(present), max(present)
    if high == low:
        return [1.0] * len(hits)
    return [0.0 if h.score is None else (h.score - low) / (high - low) for h in hits]


def linear_fusion(
    lists: Sequence[Sequence[Hit]],
    *,
    weights: Sequence[float] | None = None,
) -> list[Hit]:
    """Fuse ranked lists by a weighted sum of min-max normalised scores.

    A document absent from a list gets 0 from it. For the usual two lists
    (lexical, dense), ``weights=(alpha, 1 - alpha)`` blends them with weight
    ``alpha`` on the lexical side.

    Example:
        >>> a = [Hit("i", "x", 9.0, 1), Hit("i", "y", 5.0, 2)]
        >>> b = [Hit("i", "y", 0.9, 1), Hit("i", "z", 0.8, 2)]
        >>> [(h.id, h.score) for h in linear_fusion([a, b], weights=(0.7, 0.3))]
        [('x', 0.7), ('y', 0.3), ('z', 0.0)]
    """
    weight_of = _check_weights(lists, weights)
    deduped, first_seen, best_rank = _collect(lists)
    fused: dict[tuple[str, str], float] = {}
    for weight, hits in zip(weight_of, deduped, strict=True):
        for hit, normalised in zip(hits, _min_max(hits), strict=True):
            fused[hit.key] = fused.get(hit.key, 0.0) + weight * normalised
    return _rank_fused(fused, first_seen, best_rank)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FirstStageFusion:
    """Rank reranked hits by RRF of the first-stage order and the scorer's order.

    Why: a weak reranker can make a good first stage worse. The offline fallback
    (a bi-encoder) moved SciFact's first relevant abstract down in half the
    queries it touched; fused with the first stage's order by
    :func:`reciprocal_rank_fusion`, its signal is added to the first stage's
    instead of replacing it. A scorer asks for this by carrying a
    ``first_stage_fusion`` attribute; the
    :class:`~secondpass.pipeline.retriever.Retriever` honours it after scoring,
    so per-pair scores (and their cache entries) do not change.

    ``first_stage_weight`` and ``scorer_weight`` weigh the two lists; ``k`` is the
    RRF constant. Ties keep the first-stage order.

    Example:
        >>> hits = [Hit("i", "a", 9.0, 1), Hit("i", "b", 8.0, 2), Hit("i", "c", 7.0, 3)]
        >>> fused = FirstStageFusion(k=1).fuse(hits, [0.1, 0.9, 0.5])
        >>> [round(value, 3) for value in fused]
        [0.75, 0.833, 0.583]
    """

    k: int = RRF_K
    first_stage_weight: float = 1.0
    scorer_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.k < 0:
            msg = f"RRF constant k must be >= 0, got {self.k}"
            raise ConfigurationError(msg)
        _check_weights([(), ()], (self.first_stage_weight, self.scorer_weight))
        if self.first_stage_weight + self.scorer_weight <= 0:
            msg = "first_stage_weight and scorer_weight cannot both be 0"
            raise ConfigurationError(msg)

    def fuse(self, hits: Sequence[Hit], values: Sequence[float]) -> list[float]:
        """The fused value of each hit, in input order.

        ``hits`` are distinct documents in first-stage order (their position, not
        their ``rank`` field, is the first-stage rank); ``values`` are the
        scorer's ranking values for them, higher is better.
        """
        if len(hits) != len(values):
            msg = f"fuse got {len(hits)} hits but {len(values)} values"
            raise ConfigurationError(msg)
        first = [dataclasses.replace(hit, rank=n) for n, hit in enumerate(hits, start=1)]
        by_scorer = sorted(range(len(hits)), key=lambda i: (-values[i], i))
        second = [dataclasses.replace(hits[i], rank=n) for n, i in enumerate(by_scorer, start=1)]
        fused = reciprocal_rank_fusion(
            [first, second], k=self.k, weights=(self.first_stage_weight, self.scorer_weight)
        )
        value_of = {hit.key: float(hit.score or 0.0) for hit in fused}
        return [value_of[hit.key] for hit in hits]


def first_stage_fusion(scorer: object) -> FirstStageFusion | None:
    """The :class:`FirstStageFusion` a scorer asks for, or ``None`` (rank by its scores alone).

    Read from an optional ``first_stage_fusion`` attribute rather than a
    protocol member, so every existing scorer keeps satisfying ``Scorer``.
    """
    fusion = getattr(scorer, "first_stage_fusion", None)
    return fusion if isinstance(fusion, FirstStageFusion) else None
