"""Pure functions that build request bodies and read responses (no I/O).

Keeping them apart from the calls that send them makes every body trivially
testable, and makes one rule easy to check by reading: the user's text is only
ever the value of a ``multi_match`` ``query``; it is never parsed as query
syntax (no ``query_string``), so it cannot add clauses, fields or wildcards.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from secondpass.connectors.hits import read_hits
from secondpass.errors import ConfigurationError
from secondpass.types import Hit, KnnQuery, SearchRequest

logger = logging.getLogger("secondpass.connectors")

Engine = Literal["elasticsearch", "opensearch"]

# Top-level keys of a search body. A caller-supplied body whose keys include any
# of these is a complete body; otherwise it is a bare query clause (``{"match":
# ...}``) and is wrapped as ``{"query": body}``.
SEARCH_BODY_KEYS = frozenset(
    {
        "query", "knn", "retriever", "rank", "sub_searches", "sort", "aggs", "aggregations",
        "post_filter", "rescore", "collapse", "highlight", "min_score", "search_after",
        "_source", "size", "from", "track_total_hits", "track_scores", "suggest", "ext",
        "fields", "docvalue_fields", "stored_fields", "script_fields", "runtime_mappings",
        "indices_boost", "explain", "timeout", "terminate_after", "profile", "version",
        "seq_no_primary_term", "stats", "pit", "slice",
    }
)  # fmt: skip

# Body keys whose hits a query-level filter cannot restrict; combining them with
# connector filters would return unfiltered documents, so it is refused.
_UNFILTERABLE_KEYS = frozenset({"knn", "retriever", "rank", "sub_searches"})

# Our similarity names -> (Elasticsearch dense_vector similarity, OpenSearch space_type).
SIMILARITIES: Mapping[str, tuple[str, str]] = {
    "cosine": ("cosine", "cosinesimil"),
    "dot_product": ("dot_product", "innerproduct"),
    "l2_norm": ("l2_norm", "l2"),
    "l2": ("l2_norm", "l2"),
}


def split_boost(field: str) -> str:
    """Return the field name of a ``multi_match`` field spec without its boost.

    Example:
        >>> split_boost("title^2")
        'title'
    """
    return field.split("^", 1)[0]


def check_fields(fields: Sequence[str]) -> tuple[str, ...]:
    """Validate ``multi_match`` field specs (``name`` or ``name^boost``)."""
    if isinstance(fields, str):
        fields = [fields]
    out = tuple(fields)
    if not out:
        msg = "fields must name at least one text field to search"
        raise ConfigurationError(msg)
    for spec in out:
        name, _, boost = spec.partition("^")
        if not name or not isinstance(spec, str):
            msg = f"invalid field {spec!r}: expected 'name' or 'name^boost'"
            raise ConfigurationError(msg)
        if boost:
            try:
                ok = float(boost) >= 0
            except ValueError:
                ok = False
            if not ok:
                msg = f"invalid boost in field {spec!r}: expected a non-negative number"
                raise ConfigurationError(msg)
    return out


def _check_request(request: SearchRequest) -> None:
    if not isinstance(request.query, str):
        msg = f"query must be a string, got {type(request.query).__name__}"
        raise ConfigurationError(msg)
    if isinstance(request.size, bool) or not isinstance(request.size, int) or request.size < 1:
        msg = f"size must be a positive integer, got {request.size!r}"
        raise ConfigurationError(msg)
    for clause in request.filters:
        if not isinstance(clause, Mapping):
            msg = "each filter must be a query-DSL clause (a mapping)"
            raise ConfigurationError(msg)
    if request.body is not None and request.knn is not None:
        msg = "pass either a caller-supplied body or a knn query, not both"
        raise ConfigurationError(msg)


def source_filter(text_fields: Sequence[str], source_includes: Sequence[str] | None) -> Any:
    """The ``_source`` value to send: everything, or the text fields plus extras."""
    if source_includes is None:
        return True
    return {"includes": sorted({*text_fields, *source_includes})}


def server_timeout(seconds: float | None) -> str | None:
    """Format a server-side search timeout for the body (``"1500ms"``)."""
    if seconds is None:
        return None
    return f"{max(1, round(seconds * 1000))}ms"


def _finish(
    body: dict[str, Any], request: SearchRequest, source: Any, timeout: str | None
) -> dict[str, Any]:
    body["size"] = request.size
    body["_source"] = source
    if timeout is not None:
        body.setdefault("timeout", timeout)
    return body


def lexical_body(
    request: SearchRequest,
    *,
    fields: Sequence[str],
    source: Any = True,
    timeout: str | None = None,
) -> dict[str, Any]:
    """BM25 ``multi_match`` over ``fields`` (boosts allowed), filters in ``bool.filter``.

    Example:
        >>> lexical_body(SearchRequest("cats", size=5), fields=["title^2", "body"])["query"]
        {'bool': {'must': [{'multi_match': {'query': 'cats', 'fields': ['title^2', 'body']}}]}}
    """
    _check_request(request)
    match = {"multi_match": {"query": request.query, "fields": list(fields)}}
    query: dict[str, Any] = {"must": [match]}
    if request.filters:
        query["filter"] = [dict(f) for f in request.filters]
    body: dict[str, Any] = {"query": {"bool": query}, "track_total_hits": False}
    return _finish(body, request, source, timeout)


def caller_body(
    request: SearchRequest,
    *,
    source: Any = True,
    timeout: str | None = None,
) -> dict[str, Any]:
    """The caller's own DSL, with only ``size`` and ``_source`` set by us.

    ``request.body`` may be a complete search body (``{"query": ..., "sort":
    ...}``) or a bare query clause (``{"match": ...}``), which is wrapped in
    ``{"query": ...}``. Connector filters, when given, wrap the caller's query in
    ``bool`` with the filters in ``filter`` context, so they restrict hits
    without changing scores. A server-side ``timeout`` is only added when the
    body has none.
    """
    _check_request(request)
    assert request.body is not None
    given = dict(request.body)
    body = given if SEARCH_BODY_KEYS.intersection(given) else {"query": given}
    if request.filters:
        unfilterable = sorted(_UNFILTERABLE_KEYS.intersection(body))
        if unfilterable:
            msg = (
                f"filters cannot be applied to a body with {', '.join(unfilterable)}; "
                "put the filter inside your body instead"
            )
            raise ConfigurationError(msg)
        inner = body.get("query", {"match_all": {}})
        body["query"] = {"bool": {"must": [inner], "filter": [dict(f) for f in request.filters]}}
    return _finish(body, request, source, timeout)


def knn_body(
    request: SearchRequest,
    *,
    engine: Engine,
    source: Any = True,
    timeout: str | None = None,
) -> dict[str, Any]:
    """A dense search: Elasticsearch top-level ``knn``, OpenSearch k-NN ``knn`` query.

    Filters become ``knn.filter`` on Elasticsearch and the k-NN query's
    ``filter`` on OpenSearch, so both engines filter *during* the graph search
    and still return ``k`` neighbours instead of filtering the top ``k`` after.
    """
    _check_request(request)
    knn = request.knn
    assert knn is not None
    _check_knn(knn)
    vector = [float(v) for v in knn.vector]
    filters = [dict(f) for f in request.filters]
    body: dict[str, Any]
    if engine == "elasticsearch":
        es_knn: dict[str, Any] = {
            "field": knn.field,
            "query_vector": vector,
            "k": knn.k,
            "num_candidates": knn.num_candidates,
        }
        if filters:
            es_knn["filter"] = filters
        body = {"knn": es_knn, "track_total_hits": False}
    else:
        os_knn: dict[str, Any] = {"vector": vector, "k": knn.k}
        if filters:
            os_knn["filter"] = {"bool": {"filter": filters}}
        body = {"query": {"knn": {knn.field: os_knn}}, "track_total_hits": False}
    return _finish(body, request, source, timeout)


def _check_knn(knn: KnnQuery) -> None:
    if not knn.field:
        msg = "knn.field must name the vector field"
        raise ConfigurationError(msg)
    if not knn.vector:
        msg = "knn.vector is empty"
        raise ConfigurationError(msg)
    if knn.k < 1:
        msg = f"knn.k must be at least 1, got {knn.k}"
        raise ConfigurationError(msg)
    if knn.num_candidates < knn.k:
        msg = f"knn.num_candidates ({knn.num_candidates}) must be at least knn.k ({knn.k})"
        raise ConfigurationError(msg)


def search_body(
    request: SearchRequest,
    *,
    engine: Engine,
    fields: Sequence[str],
    text_fields: Sequence[str],
    source_includes: Sequence[str] | None = None,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Pick the body for a request: caller's DSL, kNN, or the default lexical one."""
    source = source_filter(text_fields, source_includes)
    timeout = server_timeout(timeout_s)
    if request.body is not None:
        return caller_body(request, source=source, timeout=timeout)
    if request.knn is not None:
        return knn_body(request, engine=engine, source=source, timeout=timeout)
    return lexical_body(request, fields=fields, source=source, timeout=timeout)


def hits_from_response(response: Mapping[str, Any], text_fields: Sequence[str]) -> list[Hit]:
    """Turn a search response into ``Hit``s, ranks 1..n in the engine's order.

    Read by :func:`secondpass.connectors.hits.read_hits`; a partial answer (timed
    out, failed shards) and malformed hits left out are logged, not raised: the
    first stage returns what it could read.
    """
    if response.get("timed_out"):
        logger.warning("the engine timed out; the first-stage results may be partial")
    shards = response.get("_shards") or {}
    if isinstance(shards, Mapping) and shards.get("failed"):
        logger.warning(
            "%s of %s shards failed; the first-stage results may be partial",
            shards.get("failed"),
            shards.get("total"),
        )
    read = read_hits(response, text_fields)
    if read.malformed:
        logger.warning(
            "left out %d malformed hit(s) of the engine's answer: %s",
            len(read.malformed),
            "; ".join(read.malformed[:3]),
        )
    return list(read.hits)


def index_body(
    *,
    engine: Engine,
    text_fields: Iterable[str],
    keyword_fields: Iterable[str] = (),
    vector_field: str | None = None,
    dims: int | None = None,
    similarity: str = "cosine",
) -> dict[str, Any]:
    """Settings and mappings for a new index on either engine.

    Elasticsearch gets an indexed ``dense_vector`` with the similarity; OpenSearch
    gets ``index.knn: true`` and a ``knn_vector`` with an HNSW graph on the Lucene
    engine, which supports filtering inside the graph search and every space type
    we offer.
    """
    properties: dict[str, Any] = {name: {"type": "text"} for name in text_fields}
    properties.update({name: {"type": "keyword"} for name in keyword_fields})
    body: dict[str, Any] = {"mappings": {"properties": properties}}
    if vector_field is None:
        return body
    if dims is None or isinstance(dims, bool) or not isinstance(dims, int) or dims < 1:
        msg = f"dims must be a positive integer when vector_field is set, got {dims!r}"
        raise ConfigurationError(msg)
    if similarity not in SIMILARITIES:
        msg = f"similarity must be one of {', '.join(SIMILARITIES)}, got {similarity!r}"
        raise ConfigurationError(msg)
    es_similarity, os_space = SIMILARITIES[similarity]
    if engine == "elasticsearch":
        properties[vector_field] = {
            "type": "dense_vector",
            "dims": dims,
            "index": True,
            "similarity": es_similarity,
        }
    else:
        body["settings"] = {"index": {"knn": True}}
        properties[vector_field] = {
            "type": "knn_vector",
            "dimension": dims,
            "method": {"name": "hnsw", "engine": "lucene", "space_type": os_space},
        }
    return body
