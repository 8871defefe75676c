"""Engine search JSON to :class:`~secondpass.types.Hit` objects: the one way, guarded.

Why a public module: the connectors and the drop-in proxy both turn an engine's
``hits.hits`` into hits to rerank, and they must read them the same way (the
same passage text, the same ranks) or the proxy's order stops being the
facade's. The proxy reads answers of an engine it does not control, so a
malformed hit must never become a crash: a hit that is not an object, has no
``_id``, has a ``_source`` that is not an object or a ``_score`` that is not a
number is left out and named in :attr:`EngineHits.malformed`; the caller
decides what a partial list means (the connectors log it, the proxy answers in
engine order).

Example:
    >>> read = read_hits({"hits": {"hits": [
    ...     {"_index": "docs", "_id": "1", "_score": 2.5, "_source": {"title": "Cats"}},
    ...     {"_index": "docs", "_score": 1.0},
    ... ]}}, ["title"])
    >>> [(h.id, h.rank, h.fields) for h in read.hits], read.malformed
    ([('1', 1, {'title': 'Cats'})], ('hit 2: no _id',))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from secondpass.types import Hit

FieldReader = Callable[[Mapping[str, Any]], dict[str, str]]
"""Reads the passage fields of one raw hit (used where text may come from ``fields``)."""


@dataclasses.dataclass(frozen=True, slots=True)
class EngineHits:
    """The hits read from one search response, and why any were left out.

    ``hits`` keep the engine's order with ranks ``1..n``; ``malformed`` has one
    reason per hit left out (``"hit 3: _source is not an object"``), or one for a
    ``hits.hits`` that is not a list.
    """

    hits: tuple[Hit, ...]
    malformed: tuple[str, ...] = ()


def _lookup(source: Mapping[str, Any], path: str) -> Any:
    if path in source:
        return source[path]
    value: Any = source
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return " ".join(t for t in (_as_text(v) for v in value) if t)
    return str(value)


def extract_fields(source: Mapping[str, Any], text_fields: Sequence[str]) -> dict[str, str]:
    """Read the reranking text fields from ``_source`` (dotted paths; lists joined).

    Every requested field is present in the result; a missing one is ``""`` so a
    passage template never fails on an absent key.

    Example:
        >>> extract_fields({"title": "Cats", "meta": {"tags": ["a", "b"]}}, ["title", "meta.tags", "body"])
        {'title': 'Cats', 'meta.tags': 'a b', 'body': ''}
    """
    return {name: _as_text(_lookup(source, name)) for name in text_fields}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _problem(raw: Any) -> str | None:
    """Why ``raw`` cannot be read as a hit, or ``None`` when it can."""
    if not isinstance(raw, Mapping):
        return "not an object"
    doc_id = raw.get("_id")
    if doc_id is None:
        return "no _id"
    if not isinstance(doc_id, str) and not (isinstance(doc_id, int) and _number(doc_id)):
        return "_id is not a string"
    if not isinstance(raw.get("_index", ""), str):
        return "_index is not a string"
    if not isinstance(raw.get("_source") or {}, Mapping):
        return "_source is not an object"
    score = raw.get("_score")
    if score is not None and not _number(score):
        return "_score is not a number"
    return None


def read_hits(response: Mapping[str, Any], text_fields: Sequence[str] | FieldReader) -> EngineHits:
    """The hits of a search response in the engine's order, malformed ones left out.

    ``text_fields`` names the ``_source`` fields to read (:func:`extract_fields`),
    or is a function that reads them from the raw hit (the proxy also reads the
    engine's ``fields`` API). A response without ``hits.hits`` has no hits.
    """
    outer = response.get("hits")
    raw_hits = outer.get("hits") if isinstance(outer, Mapping) else None
    if raw_hits is None:
        return EngineHits(())
    if not isinstance(raw_hits, list):
        return EngineHits((), ("hits.hits is not a list",))
    hits: list[Hit] = []
    malformed: list[str] = []
    for position, raw in enumerate(raw_hits, start=1):
        problem = _problem(raw)
        if problem is not None:
            malformed.append(f"hit {position}: {problem}")
            continue
        source = raw.get("_source") or {}
        score = raw.get("_score")
        fields = text_fields(raw) if callable(text_fields) else extract_fields(source, text_fields)
        hits.append(
            Hit(
                index=raw.get("_index", ""),
                id=str(raw["_id"]),
                score=None if score is None else float(score),
                rank=len(hits) + 1,
                fields=fields,
                source=source,
            )
        )
    return EngineHits(tuple(hits), tuple(malformed))
