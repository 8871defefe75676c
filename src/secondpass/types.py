"""The values that flow between stages.

They are frozen so that a stage can never change what an earlier stage saw, and
they import nothing else from the project so every layer may depend on them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class Hit:
    """One first-stage hit.

    ``rank`` is 1-based and is the engine's own order; it breaks ties after
    reranking. ``fields`` holds the text fields the passage template reads;
    ``source`` is the engine's ``_source`` as returned (possibly filtered).

    Example:
        >>> Hit(index="docs", id="7", score=3.2, rank=1, fields={"title": "Cats"})
        Hit(index='docs', id='7', score=3.2, rank=1, fields={'title': 'Cats'}, source={})
    """

    index: str
    id: str
    score: float | None
    rank: int
    fields: Mapping[str, str] = field(default_factory=dict)
    source: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        """Identity of the document: two hits with the same key are duplicates."""
        return (self.index, self.id)


@dataclass(frozen=True, slots=True)
class KnnQuery:
    """A dense (approximate or exact) nearest-neighbour request on one vector field."""

    field: str
    vector: tuple[float, ...]
    k: int = 100
    num_candidates: int = 200


@dataclass(frozen=True, slots=True)
class SearchRequest:
    """What a connector is asked for.

    ``query`` is the user's text. For the default lexical search it only ever
    becomes a ``multi_match`` value. When ``body`` is given it is the caller's own
    query DSL (the ``query`` part of a search body) and ``query`` is only used for
    reranking. When ``knn`` is given the request is a dense search instead.

    ``deadline`` is the caller's absolute deadline on the ``time.monotonic()``
    clock, or ``None``. A connector sends the time left as both the client's
    request timeout and the engine's search ``timeout``, retries only while time
    is left, and raises :class:`~secondpass.errors.SearchDeadlineError` when it
    runs out, so a paused engine costs the caller its deadline, not the
    connection settings' much longer ``deadline_s``.
    """

    query: str
    size: int = 100
    filters: Sequence[Mapping[str, Any]] = ()
    body: Mapping[str, Any] | None = None
    knn: KnnQuery | None = None
    deadline: float | None = None


EMPTY_PASSAGE_RAW_SCORE = -1.0e6
"""Raw score given to an empty or whitespace-only passage without calling the model.

Finite (so JSON and metrics stay valid) and far below any real logit, so such a
passage always ranks last among reranked hits; its normalised score is 0.0.
"""


@dataclass(frozen=True, slots=True)
class PassageScore:
    """The model's verdict on one passage, plus what was done to the text to fit it.

    ``raw`` is the logit, ``normalized`` the sigmoid of it (or the model's own
    activation). ``tokens_in`` counts the passage's tokens before truncation,
    ``tokens_scored`` those the model saw (for chunked documents, the best chunk).
    """

    raw: float
    normalized: float
    tokens_in: int = 0
    tokens_scored: int = 0
    truncated: bool = False
    chunks: int = 1


RerankStatus = Literal["ok", "partial", "skipped", "failed"]


@dataclass(frozen=True, slots=True)
class RankedHit:
    """A hit in the final order.

    ``score`` is the value that ranked it (the rerank score, raw or normalised as
    configured) or ``None`` when the hit was not reranked (past the window, or the
    rerank stage was skipped or failed); ``rerank`` then is ``None`` too.
    """

    hit: Hit
    rank: int
    score: float | None
    rerank: PassageScore | None = None


@dataclass(frozen=True, slots=True)
class SearchResult:
    """The answer to one search, with what a caller needs to trust it.

    ``status`` says whether reranking happened (``ok``), covered only part of the
    window (``partial``), was not attempted (``skipped``) or failed (``failed``);
    ``reason`` explains anything but ``ok``. ``timings_ms`` keys: ``first_stage``
    (engine round trips), ``cache`` (lookups and writes), ``tokenize``, ``model``
    (forward passes), ``total`` (wall time of the whole call).
    """

    hits: tuple[RankedHit, ...]
    status: RerankStatus
    reason: str | None = None
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    cache_hits: int = 0
    cache_misses: int = 0
    window: int = 0
    reranked: int = 0
