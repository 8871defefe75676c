"""Score a request's passages through a cache: one lookup, one model call, one write.

The facade, the HTTP service and the proxy all need the same dance, and getting
it subtly wrong is easy (a lookup per passage, a model call per miss, caching the
placeholder score of an empty passage, returning scores in cache order), so it
lives here once.

Example:
    >>> from secondpass.pipeline.cache import LRUScoreCache
    >>> class LengthScorer:  # a stand-in: longer passages score higher
    ...     fingerprint = "length/v1"
    ...     def score(self, query, passages, *, timings=None):
    ...         return [PassageScore(raw=float(len(p)), normalized=0.5) for p in passages]
    ...     def score_pairs(self, pairs, *, timings=None):
    ...         return [PassageScore(raw=float(len(p)), normalized=0.5) for _, p in pairs]
    >>> cache = LRUScoreCache()
    >>> items = [("docs", "1", "short"), ("docs", "2", "a longer one")]
    >>> first = score_with_cache(LengthScorer(), cache, "q", items)
    >>> second = score_with_cache(LengthScorer(), cache, "q", items)
    >>> [s.raw for s in second.scores], first.misses, second.hits
    ([5.0, 12.0], 2, 2)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

from secondpass.errors import RerankError
from secondpass.pipeline.cache import cache_keys
from secondpass.pipeline.protocols import ScoreCache, Scorer
from secondpass.types import EMPTY_PASSAGE_RAW_SCORE, PassageScore

logger = logging.getLogger("secondpass.cache")

__all__ = ["CachedScores", "score_with_cache"]


@dataclass(frozen=True, slots=True)
class CachedScores:
    """Scores for one request, in input order, and what the cache saved.

    ``hits``/``misses`` count input items (a duplicate counts each time it
    appears); ``scored`` is how many distinct passages went to the model.
    ``timings_ms`` keys: ``cache`` (the lookup plus the write-back),
    ``scorer`` (wall time of the one ``Scorer.score`` call, 0 when everything
    hit), and ``tokenize``/``model`` as the scorer reported them.
    """

    scores: tuple[PassageScore, ...]
    hits: int
    misses: int
    scored: int
    timings_ms: Mapping[str, float] = field(default_factory=dict)


def _is_empty(text: str) -> bool:
    return not text.strip()


def score_with_cache(
    scorer: Scorer,
    cache: ScoreCache | None,
    query: str,
    items: Sequence[tuple[str, str, str]],
) -> CachedScores:
    """Return a score for every ``(index, id, text)`` item, asking the model only for misses.

    Exactly one ``cache.get_many`` for the whole request, then one
    ``scorer.score`` with every distinct miss (so the scorer's batches are filled
    from the whole request, not per cache hole), then one ``cache.set_many``.
    Empty or whitespace-only passages are never looked up or stored: the scorer
    gives them a fixed placeholder without running the model. A cache that
    breaks its no-raise contract is treated as all misses; errors from the
    scorer propagate (as :class:`~secondpass.errors.RerankError`).

    Args:
        scorer: supplies ``fingerprint`` (part of every key) and the scores.
        cache: any :class:`ScoreCache`; ``None`` scores everything.
        query: the user's query text, exactly as it is scored.
        items: (index, document id, exact passage text) per hit, in the caller's order.
    """
    if not items:
        return CachedScores(scores=(), hits=0, misses=0, scored=0, timings_ms={"cache": 0.0})
    keys: list[str | None] = [None] * len(items)
    cacheable = [i for i, (_, _, text) in enumerate(items) if not _is_empty(text)]
    if cache is not None and cacheable:
        computed = cache_keys(scorer.fingerprint, query, (items[i] for i in cacheable))
        for position, computed_key in zip(cacheable, computed, strict=True):
            keys[position] = computed_key
    unique_keys = list(dict.fromkeys(key for key in keys if key is not None))

    cache_ms = 0.0
    found: dict[str, PassageScore] = {}
    if cache is not None and unique_keys:
        started = time.perf_counter()
        found = _lookup(cache, unique_keys)
        cache_ms += (time.perf_counter() - started) * 1000.0

    # Distinct passages to score: keyed by cache key, or by the text itself for
    # empty passages (and for every passage when there is no cache).
    to_score: dict[Hashable, str] = {}
    for key, (_, _, text) in zip(keys, items, strict=True):
        if key is not None and key in found:
            continue
        to_score.setdefault(key if key is not None else ("text", text), text)

    timings: dict[str, float] = {}
    scorer_ms = 0.0
    fresh: dict[Hashable, PassageScore] = {}
    if to_score:
        started = time.perf_counter()
        results = scorer.score(query, list(to_score.values()), timings=timings)
        scorer_ms = (time.perf_counter() - started) * 1000.0
        if len(results) != len(to_score):
            msg = f"scorer returned {len(results)} scores for {len(to_score)} passages"
            raise RerankError(msg)
        fresh = dict(zip(to_score, results, strict=True))
        writes = {
            key: score
            for key, score in fresh.items()
            if isinstance(key, str) and score.raw != EMPTY_PASSAGE_RAW_SCORE
        }
        if cache is not None and writes:
            started = time.perf_counter()
            _store(cache, writes)
            cache_ms += (time.perf_counter() - started) * 1000.0

    scores: list[PassageScore] = []
    hits = 0
    for key, (_, _, text) in zip(keys, items, strict=True):
        if key is not None and key in found:
            scores.append(found[key])
            hits += 1
        else:
            scores.append(fresh[key if key is not None else ("text", text)])
    return CachedScores(
        scores=tuple(scores),
        hits=hits,
        misses=len(items) - hits,
        scored=len(to_score),
        timings_ms={
            "cache": cache_ms,
            "scorer": scorer_ms,
            "tokenize": timings.get("tokenize_ms", 0.0),
            "model": timings.get("model_ms", 0.0),
        },
    )


def _lookup(cache: ScoreCache, keys: list[str]) -> dict[str, PassageScore]:
    try:
        found = cache.get_many(keys)
    except Exception as exc:  # a cache fault is a miss, whatever the implementation
        logger.warning(
            "score cache %s raised %s on lookup; scoring without it",
            type(cache).__name__,
            type(exc).__name__,
        )
        return {}
    # Only trust what was asked for and has the right type.
    wanted = set(keys)
    return {k: v for k, v in found.items() if k in wanted and isinstance(v, PassageScore)}


def _store(cache: ScoreCache, items: dict[str, PassageScore]) -> None:
    try:
        cache.set_many(items)
    except Exception as exc:  # a cache fault must not lose the scores we already have
        logger.warning(
            "score cache %s raised %s on write; scores kept, not cached",
            type(cache).__name__,
            type(exc).__name__,
        )
