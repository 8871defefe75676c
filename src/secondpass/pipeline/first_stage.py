"""The first stage: how the candidate window is fetched before reranking.

The :class:`~secondpass.pipeline.retriever.Retriever` asks a :class:`FirstStage`
for the top-N hits and never cares whether they came from BM25 alone
(:class:`LexicalStage`) or from BM25 and kNN fused (:class:`HybridStage`). Both
speak to the engine only through the ``Connector``/``AsyncConnector`` protocols
and the encoder only through ``DenseEncoder``.

A stage accepts either a synchronous or an asyncio connector. ``retrieve`` needs a
synchronous one; ``aretrieve`` awaits an async connector directly and runs a
synchronous one (and the encoder, which may be a CPU-bound model) in a worker
thread so the event loop keeps serving other requests.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol, cast, runtime_checkable

from secondpass.connectors.base import AsyncConnector, Connector
from secondpass.errors import ConfigurationError
from secondpass.pipeline.fusion import RRF_K, linear_fusion, reciprocal_rank_fusion
from secondpass.pipeline.protocols import DenseEncoder
from secondpass.types import Hit, KnnQuery, SearchRequest

AnyConnector = Connector | AsyncConnector


@runtime_checkable
class FirstStage(Protocol):
    """Fetches the candidate window for one query, best first, ranks 1..n."""

    def retrieve(
        self,
        query: str,
        *,
        size: int,
        filters: Sequence[Mapping[str, Any]] = (),
        body: Mapping[str, Any] | None = None,
    ) -> list[Hit]:
        """Return at most ``size`` hits in first-stage order."""
        ...

    async def aretrieve(
        self,
        query: str,
        *,
        size: int,
        filters: Sequence[Mapping[str, Any]] = (),
        body: Mapping[str, Any] | None = None,
    ) -> list[Hit]:
        """The asyncio variant of :meth:`retrieve`; must not block the event loop."""
        ...


def is_async_connector(connector: object) -> bool:
    """True when ``connector.search`` is a coroutine function (an ``AsyncConnector``).

    The two protocols have the same method names, so ``isinstance`` cannot tell
    them apart; the coroutine check can.
    """
    return inspect.iscoroutinefunction(getattr(connector, "search", None))


def _search_sync(connector: AnyConnector, request: SearchRequest) -> list[Hit]:
    if is_async_connector(connector):
        msg = "this connector is asynchronous: call asearch()/aretrieve() instead of the sync method"
        raise ConfigurationError(msg)
    return list(cast(Connector, connector).search(request))


async def _search_async(connector: AnyConnector, request: SearchRequest) -> list[Hit]:
    if is_async_connector(connector):
        return list(await cast(AsyncConnector, connector).search(request))
    return list(await asyncio.to_thread(cast(Connector, connector).search, request))


class LexicalStage:
    """The engine's own ranking (BM25 ``multi_match``, or the caller's query DSL).

    Example:
        >>> stage = LexicalStage(connector)  # doctest: +SKIP
        >>> stage.retrieve("cheap flights", size=100)  # doctest: +SKIP
    """

    def __init__(self, connector: AnyConnector) -> None:
        self.connector = connector

    def _request(
        self, query: str, size: int, filters: Sequence[Mapping[str, Any]], body: Mapping[str, Any] | None
    ) -> SearchRequest:
        return SearchRequest(query=query, size=size, filters=tuple(filters), body=body)

    def retrieve(
        self,
        query: str,
        *,
        size: int,
        filters: Sequence[Mapping[str, Any]] = (),
        body: Mapping[str, Any] | None = None,
    ) -> list[Hit]:
        """Return the connector's top ``size`` hits."""
        return _search_sync(self.connector, self._request(query, size, filters, body))

    async def aretrieve(
        self,
        query: str,
        *,
        size: int,
        filters: Sequence[Mapping[str, Any]] = (),
        body: Mapping[str, Any] | None = None,
    ) -> list[Hit]:
        """Return the connector's top ``size`` hits without blocking the event loop."""
        return await _search_async(self.connector, self._request(query, size, filters, body))


class HybridStage:
    """BM25 and kNN on one index, fused into one list.

    Two requests go to the engine (a lexical one and a ``knn`` one on
    ``vector_field``) and the lists are merged with reciprocal rank fusion
    (``fusion="rrf"``, constant ``rrf_k``) or a min-max linear blend
    (``fusion="linear"``, weight ``alpha`` on the lexical side). Each side fetches
    ``max(size, depth)`` hits (``knn_candidates`` is the engine's
    ``num_candidates``, by default twice that) and the fused list is cut back to
    ``size``.

    Fused scores depend on how deep each list goes, so ``depth`` is fixed rather
    than following ``size``: asking for 5 or for 50 hits then gives the same
    order for the first 5, which is what keeps the retriever's pages consistent.
    Keep ``depth`` at least the retriever's window.

    Filters apply to both sides; a caller's ``body`` replaces only the lexical
    query. Fusing client-side keeps the stage portable: it needs neither
    Elasticsearch's licensed RRF retriever nor OpenSearch's search pipelines.

    Example:
        >>> stage = HybridStage(connector, encoder, vector_field="embedding")  # doctest: +SKIP
        >>> stage.retrieve("what do cats eat", size=100)  # doctest: +SKIP
    """

    def __init__(
        self,
        connector: AnyConnector,
        encoder: DenseEncoder,
        vector_field: str,
        *,
        fusion: Literal["rrf", "linear"] = "rrf",
        alpha: float = 0.5,
        rrf_k: int = RRF_K,
        depth: int = 100,
        knn_candidates: int | None = None,
    ) -> None:
        if fusion not in ("rrf", "linear"):
            msg = f"fusion must be 'rrf' or 'linear', got {fusion!r}"
            raise ConfigurationError(msg)
        if not 0.0 <= alpha <= 1.0:
            msg = f"alpha must be within [0, 1], got {alpha}"
            raise ConfigurationError(msg)
        if not vector_field:
            msg = "vector_field must name the dense_vector/knn_vector field"
            raise ConfigurationError(msg)
        self.connector = connector
        self.encoder = encoder
        self.vector_field = vector_field
        self.fusion = fusion
        self.alpha = alpha
        if depth < 1:
            msg = f"depth must be >= 1, got {depth}"
            raise ConfigurationError(msg)
        self.rrf_k = rrf_k
        self.depth = depth
        self.knn_candidates = knn_candidates

    def _requests(
        self,
        query: str,
        vector: Sequence[float],
        size: int,
        filters: Sequence[Mapping[str, Any]],
        body: Mapping[str, Any] | None,
    ) -> tuple[SearchRequest, SearchRequest]:
        per_side = max(size, self.depth)
        candidates = 2 * per_side if self.knn_candidates is None else self.knn_candidates
        knn = KnnQuery(
            field=self.vector_field,
            vector=tuple(float(x) for x in vector),
            k=per_side,
            num_candidates=max(candidates, per_side),
        )
        lexical = SearchRequest(query=query, size=per_side, filters=tuple(filters), body=body)
        dense = SearchRequest(query=query, size=per_side, filters=tuple(filters), knn=knn)
        return lexical, dense

    def _fuse(self, lexical: list[Hit], dense: list[Hit], size: int) -> list[Hit]:
        if self.fusion == "rrf":
            fused = reciprocal_rank_fusion([lexical, dense], k=self.rrf_k)
        else:
            fused = linear_fusion([lexical, dense], weights=(self.alpha, 1.0 - self.alpha))
        return fused[:size]

    def _encode(self, query: str) -> list[float]:
        vectors = self.encoder.encode([query])
        return list(vectors[0])

    def retrieve(
        self,
        query: str,
        *,
        size: int,
        filters: Sequence[Mapping[str, Any]] = (),
        body: Mapping[str, Any] | None = None,
    ) -> list[Hit]:
        """Encode the query, run both searches and return the fused top ``size``."""
        if size <= 0:
            return []
        lexical_req, dense_req = self._requests(query, self._encode(query), size, filters, body)
        lexical = _search_sync(self.connector, lexical_req)
        dense = _search_sync(self.connector, dense_req)
        return self._fuse(lexical, dense, size)

    async def aretrieve(
        self,
        query: str,
        *,
        size: int,
        filters: Sequence[Mapping[str, Any]] = (),
        body: Mapping[str, Any] | None = None,
    ) -> list[Hit]:
        """Like :meth:`retrieve`, with both searches in flight at once."""
        if size <= 0:
            return []
        vector = await asyncio.to_thread(self._encode, query)
        lexical_req, dense_req = self._requests(query, vector, size, filters, body)
        lexical, dense = await asyncio.gather(
            _search_async(self.connector, lexical_req), _search_async(self.connector, dense_req)
        )
        return self._fuse(lexical, dense, size)
