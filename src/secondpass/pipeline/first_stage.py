"""The first stage: how the candidate window is fetched before reranking.

The :class:`~secondpass.pipeline.retriever.Retriever` asks a :class:`FirstStage`
for the top-N hits and never cares whether they came from BM25 alone
(:class:`LexicalStage`), kNN alone (:class:`DenseStage`) or BM25 and kNN fused
(:class:`HybridStage`). All three speak to the engine only through the
``Connector``/``AsyncConnector`` protocols and the encoder only through
``DenseEncoder``, and all three apply the caller's ``filters`` inside the
engine's search, so a filtered request still returns up to ``size`` hits.

A stage accepts either a synchronous or an asyncio connector. ``retrieve`` needs a
synchronous one; ``aretrieve`` awaits an async connector directly and runs a
synchronous one (and the encoder, which may be a CPU-bound model) in a worker
thread so the event loop keeps serving other requests.

Every stage takes the caller's ``deadline`` (absolute ``time.monotonic()``
seconds) and puts it on each :class:`~secondpass.types.SearchRequest`, so the
connector bounds its attempts, retries and the engine's own search ``timeout``
by it and raises :class:`~secondpass.errors.SearchDeadlineError` when it runs
out. The :class:`~secondpass.pipeline.retriever.Retriever` passes its
``deadline_ms`` this way; whatever time the first stage leaves is the scoring budget.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol, TypeAlias, cast, runtime_checkable

from secondpass.connectors.base import AsyncConnector, Connector
from secondpass.errors import ConfigurationError
from secondpass.pipeline.fusion import RRF_K, linear_fusion, reciprocal_rank_fusion
from secondpass.pipeline.protocols import DenseEncoder
from secondpass.types import Hit, KnnQuery, SearchRequest

AnyConnector = Connector | AsyncConnector
Filters: TypeAlias = Sequence[Mapping[str, Any]]
"""Query-DSL clauses every hit must match, applied inside the engine's search."""
Body: TypeAlias = Mapping[str, Any] | None
"""The caller's own query DSL (the ``query`` part of a search body), or ``None``."""


@runtime_checkable
class FirstStage(Protocol):
    """Fetches the candidate window for one query, best first, ranks 1..n."""

    def retrieve(
        self,
        query: str,
        *,
        size: int,
        filters: Filters = (),
        body: Body = None,
        deadline: float | None = None,
    ) -> list[Hit]:
        """Return at most ``size`` hits in first-stage order, after applying every filter.

        ``deadline`` (absolute ``time.monotonic()``) bounds the engine calls.
        """
        ...

    async def aretrieve(
        self,
        query: str,
        *,
        size: int,
        filters: Filters = (),
        body: Body = None,
        deadline: float | None = None,
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


def _knn_request(
    query: str,
    vector: Sequence[float],
    *,
    vector_field: str,
    k: int,
    num_candidates: int,
    filters: Filters,
    deadline: float | None,
) -> SearchRequest:
    """A kNN search for ``k`` neighbours; the connector puts ``filters`` inside the kNN clause."""
    knn = KnnQuery(
        field=vector_field,
        vector=tuple(float(x) for x in vector),
        k=k,
        num_candidates=max(num_candidates, k),
    )
    return SearchRequest(query=query, size=k, filters=tuple(filters), knn=knn, deadline=deadline)


class _Stage:
    """The :class:`FirstStage` methods, written once; a stage implements ``_fetch``/``_afetch``."""

    def retrieve(
        self,
        query: str,
        *,
        size: int,
        filters: Filters = (),
        body: Body = None,
        deadline: float | None = None,
    ) -> list[Hit]:
        """Return at most ``size`` hits in first-stage order, by ``deadline`` if given."""
        return self._fetch(query, size, tuple(filters), body, deadline)

    async def aretrieve(
        self,
        query: str,
        *,
        size: int,
        filters: Filters = (),
        body: Body = None,
        deadline: float | None = None,
    ) -> list[Hit]:
        """The asyncio variant of :meth:`retrieve`; never blocks the event loop."""
        return await self._afetch(query, size, tuple(filters), body, deadline)

    def _fetch(
        self, query: str, size: int, filters: Filters, body: Body, deadline: float | None
    ) -> list[Hit]:
        raise NotImplementedError

    async def _afetch(
        self, query: str, size: int, filters: Filters, body: Body, deadline: float | None
    ) -> list[Hit]:
        raise NotImplementedError


class _VectorStage(_Stage):
    """A stage that embeds the query: what :class:`DenseStage` and :class:`HybridStage` share."""

    def __init__(self, connector: AnyConnector, encoder: DenseEncoder, vector_field: str) -> None:
        if not vector_field:
            msg = "vector_field must name the dense_vector/knn_vector field"
            raise ConfigurationError(msg)
        self.connector = connector
        self.encoder = encoder
        self.vector_field = vector_field

    def _embed(self, query: str) -> list[float]:
        """The query's vector; may run a model, so ``_afetch`` calls it in a worker thread."""
        return list(self.encoder.encode([query])[0])


class LexicalStage(_Stage):
    """The engine's own ranking (BM25 ``multi_match``, or the caller's query DSL).

    Example:
        >>> stage = LexicalStage(connector)  # doctest: +SKIP
        >>> stage.retrieve("cheap flights", size=100)  # doctest: +SKIP
    """

    def __init__(self, connector: AnyConnector) -> None:
        self.connector = connector

    def _fetch(
        self, query: str, size: int, filters: Filters, body: Body, deadline: float | None
    ) -> list[Hit]:
        request = SearchRequest(query=query, size=size, filters=filters, body=body, deadline=deadline)
        return _search_sync(self.connector, request)

    async def _afetch(
        self, query: str, size: int, filters: Filters, body: Body, deadline: float | None
    ) -> list[Hit]:
        request = SearchRequest(query=query, size=size, filters=filters, body=body, deadline=deadline)
        return await _search_async(self.connector, request)


class DenseStage(_VectorStage):
    """kNN only: embed the query and ask the engine for its nearest vectors.

    Filters go into the kNN search itself (Elasticsearch ``knn.filter``,
    OpenSearch's k-NN ``filter``), so the engine filters while it walks the
    graph and still returns ``size`` neighbours, as :class:`HybridStage` does
    for its dense side. There is no lexical query for a caller's ``body`` to
    replace, so a ``body`` is refused rather than silently dropped.
    ``num_candidates`` is the engine's candidate list per shard (by default
    ``max(2 * size, 100)``; never below ``size``).

    Example:
        >>> stage = DenseStage(connector, encoder, vector_field="embedding")  # doctest: +SKIP
        >>> stage.retrieve("what do cats eat", size=100, filters=[{"term": {"lang": "en"}}])  # doctest: +SKIP
    """

    def __init__(
        self,
        connector: AnyConnector,
        encoder: DenseEncoder,
        vector_field: str,
        *,
        num_candidates: int | None = None,
    ) -> None:
        super().__init__(connector, encoder, vector_field)
        if num_candidates is not None and num_candidates < 1:
            msg = f"num_candidates must be >= 1, got {num_candidates}"
            raise ConfigurationError(msg)
        self.num_candidates = num_candidates

    def _request(
        self,
        query: str,
        vector: Sequence[float],
        size: int,
        filters: Filters,
        deadline: float | None,
    ) -> SearchRequest:
        candidates = max(2 * size, 100) if self.num_candidates is None else self.num_candidates
        return _knn_request(
            query,
            vector,
            vector_field=self.vector_field,
            k=size,
            num_candidates=candidates,
            filters=filters,
            deadline=deadline,
        )

    @staticmethod
    def _refuse(body: Body) -> None:
        if body is not None:
            msg = "the dense first stage has no lexical query for a body to replace; pass filters instead"
            raise ConfigurationError(msg)

    def _fetch(
        self, query: str, size: int, filters: Filters, body: Body, deadline: float | None
    ) -> list[Hit]:
        self._refuse(body)
        if size <= 0:
            return []
        vector = self._embed(query)
        request = self._request(query, vector, size, filters, deadline)
        return _search_sync(self.connector, request)

    async def _afetch(
        self, query: str, size: int, filters: Filters, body: Body, deadline: float | None
    ) -> list[Hit]:
        self._refuse(body)
        if size <= 0:
            return []
        vector = await asyncio.to_thread(self._embed, query)
        request = self._request(query, vector, size, filters, deadline)
        return await _search_async(self.connector, request)


class HybridStage(_VectorStage):
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
        super().__init__(connector, encoder, vector_field)
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
        filters: Filters,
        body: Body,
        deadline: float | None,
    ) -> tuple[SearchRequest, SearchRequest]:
        per_side = max(size, self.depth)
        candidates = 2 * per_side if self.knn_candidates is None else self.knn_candidates
        lexical = SearchRequest(
            query=query, size=per_side, filters=tuple(filters), body=body, deadline=deadline
        )
        dense = _knn_request(
            query,
            vector,
            vector_field=self.vector_field,
            k=per_side,
            num_candidates=candidates,
            filters=filters,
            deadline=deadline,
        )
        return lexical, dense

    def _fuse(self, lexical: list[Hit], dense: list[Hit], size: int) -> list[Hit]:
        if self.fusion == "rrf":
            fused = reciprocal_rank_fusion([lexical, dense], k=self.rrf_k)
        else:
            fused = linear_fusion([lexical, dense], weights=(self.alpha, 1.0 - self.alpha))
        return fused[:size]

    def _fetch(
        self, query: str, size: int, filters: Filters, body: Body, deadline: float | None
    ) -> list[Hit]:
        if size <= 0:
            return []
        vector = self._embed(query)
        lexical_req, dense_req = self._requests(query, vector, size, filters, body, deadline)
        lexical = _search_sync(self.connector, lexical_req)
        dense = _search_sync(self.connector, dense_req)
        return self._fuse(lexical, dense, size)

    async def _afetch(
        self, query: str, size: int, filters: Filters, body: Body, deadline: float | None
    ) -> list[Hit]:
        # Both searches in flight at once; cancelling this task cancels both.
        if size <= 0:
            return []
        vector = await asyncio.to_thread(self._embed, query)
        lexical_req, dense_req = self._requests(query, vector, size, filters, body, deadline)
        lexical, dense = await asyncio.gather(
            _search_async(self.connector, lexical_req), _search_async(self.connector, dense_req)
        )
        return self._fuse(lexical, dense, size)
