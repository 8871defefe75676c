"""Protocols the pipeline is written against, so it never imports torch or a cache client."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from secondpass.types import PassageScore


@runtime_checkable
class Scorer(Protocol):
    """Scores (query, passage) pairs; one result per passage, in input order.

    ``fingerprint`` identifies everything that changes a score (model id and
    revision, max length, long-document policy, ...); score caches key on it.
    A scorer that subclasses this protocol explicitly inherits :meth:`score`,
    written once in terms of :meth:`score_pairs`, so it implements only the
    pair-level method that cross-request batching calls anyway.
    """

    @property
    def fingerprint(self) -> str:
        """A stable string naming the model and every setting that changes scores."""
        ...

    def score(
        self,
        query: str,
        passages: Sequence[str],
        *,
        timings: dict[str, float] | None = None,
    ) -> list[PassageScore]:
        """Return one :class:`PassageScore` per passage, in input order.

        When ``timings`` is given, the scorer adds the milliseconds it spent to
        ``timings["tokenize_ms"]`` and ``timings["model_ms"]``.
        """
        return self.score_pairs([(query, passage) for passage in passages], timings=timings)

    def score_pairs(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        timings: dict[str, float] | None = None,
    ) -> list[PassageScore]:
        """Score (query, passage) pairs that may mix queries; used for cross-request batching."""
        ...


@runtime_checkable
class ScoreCache(Protocol):
    """Pair-level score cache. A failing backend reports misses, it never raises."""

    def get_many(self, keys: Sequence[str]) -> dict[str, PassageScore]:
        """Return the cached scores for the keys that are present and valid."""
        ...

    def set_many(self, items: Mapping[str, PassageScore]) -> None:
        """Store scores; failures are logged and counted, not raised."""
        ...


@runtime_checkable
class DenseEncoder(Protocol):
    """Turns texts into vectors for kNN first-stage retrieval."""

    @property
    def dimension(self) -> int:
        """Length of every vector this encoder returns."""
        ...

    def encode(self, texts: Sequence[str]) -> list[list[float]]:
        """Return one normalised vector per text, in input order."""
        ...
