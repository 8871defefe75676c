"""The drop-in proxy's decisions, as pure functions (no I/O, no clock).

Everything the proxy decides about a search lives here so it can be unit tested
without an engine: whether a request may be reranked at all, which text to rerank
with, how the body is rewritten to fetch the rerank window, how the text fields are
read back from each hit, and how the engine's response is cut back to the page the
client asked for. :mod:`secondpass.proxy.plumbing` and :mod:`secondpass.proxy.search`
only move bytes and call these.

The rules, in the words of ``docs/proxy.md``:

* **Pass-through** (no rerank) for ``size: 0``, a ``sort`` on anything but
  ``_score`` descending, ``scroll``, ``search_after``, point in time (``pit``),
  ``retriever``/``rank`` bodies, ``stored_fields: "_none_"``, a body in the URL
  (``source=``), ``filter_path``, a page that starts at or past the rerank window, and when the client
  opts out (``X-SecondPass-Rerank: off`` or ``?secondpass_rerank=off``).
* **Query text**: the ``X-SecondPass-Query`` header when present; otherwise the
  values of the scoring clauses of ``query`` (see :func:`extract_query_text`), or the
  ``q`` URL parameter. No text means pass-through.
* **Window**: the engine is asked for hits ``0 .. max(window, from + size)``; the
  page ``from .. from + size`` is cut from the reranked order.
* **Text fields**: ``_source`` is never changed. When the client's ``_source``
  filter would hide a passage field, the field is added to ``fields`` (the engine's
  fields API) and removed from every hit before the answer leaves, so the client sees
  exactly the hit shape it asked for.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote_plus

from secondpass.connectors.hits import EngineHits, extract_fields, read_hits
from secondpass.types import RankedHit, SearchResult

DEFAULT_SIZE = 10
"""The engines' default page size when neither the body nor the URL sets one."""

OPT_OUT_PARAM = "secondpass_rerank"
"""URL parameter a client sets to ``off`` to skip reranking; never forwarded."""

OPT_OUT_VALUES = frozenset({"off", "false", "0", "no", "none"})

HitAnnotation = Literal["fields", "_secondpass", "none"]
"""Where each reranked hit keeps its first-stage score and rank.

``fields`` adds ``_secondpass.first_stage_score`` and ``_secondpass.first_stage_rank``
(one-element lists, like every ``fields`` value) to the hit's ``fields`` map, which
every client, typed or not, already treats as an open map. ``_secondpass`` adds an
object of that name to the hit; ``none`` adds nothing.
"""

FIRST_STAGE_SCORE = "_secondpass.first_stage_score"
FIRST_STAGE_RANK = "_secondpass.first_stage_rank"

# Parameters that, when present on the URL, mean the request cannot be reranked.
_PASS_THROUGH_PARAMS = {
    "scroll": "scroll",
    "source": "request body given in the URL (source=)",
    # The engine would filter away the ids, scores and text the rerank needs.
    "filter_path": "filter_path",
}
# Body keys with the same effect.
_PASS_THROUGH_KEYS = {
    "search_after": "search_after",
    "pit": "point in time (pit)",
    "retriever": "retriever API",
    "rank": "rank (RRF) section",
    "scroll": "scroll",
}


@dataclass(frozen=True, slots=True)
class Skip:
    """The request passes through untouched; ``reason`` goes in the status header."""

    reason: str


@dataclass(frozen=True, slots=True)
class SourceFilter:
    """What ``_source`` the client's request returns, as the engine would apply it."""

    enabled: bool = True
    includes: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()

    def returns(self, path: str) -> bool:
        """Whether the whole value at ``path`` is present in every returned ``_source``.

        A field is returned when it, or an object above it, matches an include (or
        there are no includes) and neither it, an object above it, nor anything
        inside it matches an exclude. Conservative on purpose: a wrong ``False``
        only costs an extra ``fields`` entry, a wrong ``True`` would lose text.
        """
        if not self.enabled:
            return False
        lineage = _lineage(path)
        if self.includes and not any(
            _wildcard(pattern, node) for pattern in self.includes for node in lineage
        ):
            return False
        for pattern in self.excludes:
            if any(_wildcard(pattern, node) for node in lineage):
                return False
            if pattern.startswith(path + ".") or pattern.startswith("*"):
                return False
        return True


@dataclass(frozen=True, slots=True)
class SearchPlan:
    """How one search is sent upstream and cut back.

    ``body`` and ``query`` are what goes to the engine (``from`` 0, ``size``
    ``fetch``); ``offset``/``size`` are the client's page. Text fields listed in
    ``from_source`` are read from ``_source``, the others from ``fields``;
    ``added_fields`` were added to ``fields`` by the proxy and are removed from the
    hits unless one of ``client_fields`` (the client's own ``fields`` patterns)
    matches them.
    """

    query_text: str
    offset: int
    size: int
    fetch: int
    body: dict[str, Any]
    query: bytes
    text_fields: tuple[str, ...]
    from_source: frozenset[str]
    added_fields: tuple[str, ...] = ()
    client_fields: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class QueryParam:
    """One ``key=value`` piece of a URL query, with its original bytes kept verbatim."""

    key: str
    value: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class IndexText:
    """Which fields of one index (name or ``*`` pattern) form the passage, and how.

    ``template`` is a ``str.format`` template over the fields (``"{title}: {body}"``);
    ``None`` joins the non-empty fields with newlines, as the retriever does.
    """

    pattern: str
    fields: tuple[str, ...]
    template: str | None = None


@dataclass(frozen=True, slots=True)
class RequestTexts:
    """The passage configuration that applies to one request's hits."""

    entries: tuple[IndexText, ...]
    fallback: IndexText | None

    @property
    def fields(self) -> tuple[str, ...]:
        """Every text field any of the entries reads, in configuration order, once."""
        return tuple(dict.fromkeys(f for entry in self.entries for f in entry.fields))

    def for_hit(self, index: str) -> IndexText | None:
        """The entry for a hit from concrete index ``index``."""
        for entry in self.entries:
            if _wildcard(entry.pattern, index):
                return entry
        return self.fallback


@dataclass(frozen=True, slots=True)
class IndexTextRules:
    """Per-index passage configuration, resolved by index name or pattern.

    The request's index expression (``docs``, ``docs,news``, ``docs-*``, an alias,
    or nothing for all indices) decides which entries apply and so which fields are
    fetched; each hit's own ``_index`` then picks its entry. A hit whose concrete
    index matches no entry (the request named an alias) uses the one entry the
    request named when it named exactly one index, else ``default``.

    Example:
        >>> rules = IndexTextRules((IndexText("docs", ("title", "body")),))
        >>> texts = rules.resolve("docs")
        >>> texts.fields, texts.for_hit("docs").pattern
        (('title', 'body'), 'docs')
    """

    indices: tuple[IndexText, ...] = ()
    default: IndexText | None = None

    def resolve(self, expression: str | None) -> RequestTexts:
        """The entries that apply to a request on ``expression`` (``None``: all indices)."""
        parts = [p for p in (expression or "").split(",") if p and not p.startswith("-")]
        if not parts or any(p in ("_all", "*") for p in parts):
            chosen = list(self.indices)
        else:
            chosen = [
                entry
                for entry in self.indices
                if any(_wildcard(entry.pattern, p) or _wildcard(p, entry.pattern) for p in parts)
            ]
        fallback = chosen[0] if len(parts) == 1 and len(chosen) == 1 else self.default
        if self.default is not None:
            chosen.append(self.default)
        return RequestTexts(tuple(chosen), fallback)


# ----------------------------------------------------------------------------- URL


def split_query(raw: bytes) -> list[QueryParam]:
    """Split a raw query string, decoding keys and values but keeping each piece's bytes."""
    params = []
    for piece in raw.split(b"&"):
        if not piece:
            continue
        key, _, value = piece.partition(b"=")
        params.append(
            QueryParam(
                key=unquote_plus(key.decode("latin-1")),
                value=unquote_plus(value.decode("latin-1")),
                raw=piece,
            )
        )
    return params


def join_query(params: Iterable[QueryParam]) -> bytes:
    """Rebuild a query string from pieces, byte for byte for the pieces kept."""
    return b"&".join(p.raw for p in params)


def strip_own_params(raw: bytes) -> bytes:
    """Drop the proxy's own parameters so the engine never sees (and rejects) them."""
    params = split_query(raw)
    kept = [p for p in params if p.key != OPT_OUT_PARAM]
    return raw if len(kept) == len(params) else join_query(kept)


def _param(params: Sequence[QueryParam], key: str) -> str | None:
    values = [p.value for p in params if p.key == key]
    return values[-1] if values else None


def opted_out(params: Sequence[QueryParam], header: str | None) -> bool:
    """Whether the client asked, by URL parameter or header, not to rerank."""
    value = _param(params, OPT_OUT_PARAM)
    if value is not None and value.strip().lower() in OPT_OUT_VALUES:
        return True
    return header is not None and header.strip().lower() in OPT_OUT_VALUES


# ---------------------------------------------------------------------- decisions


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(name)
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        number = int(value)
    else:
        raise ValueError(name)
    if number < 0:
        raise ValueError(name)
    return number


def client_page(body: Mapping[str, Any], params: Sequence[QueryParam]) -> tuple[int, int]:
    """The client's ``(from, size)``: URL parameters win over the body, as in the engines.

    Raises ``ValueError`` naming the parameter when one is not a non-negative integer.
    """
    offset_value = _param(params, "from")
    size_value = _param(params, "size")
    offset = _as_int(offset_value if offset_value is not None else body.get("from", 0), "from")
    size = _as_int(size_value if size_value is not None else body.get("size", DEFAULT_SIZE), "size")
    return offset, size


def is_score_sort(sort: Any) -> bool:
    """Whether a ``sort`` value orders by ``_score`` descending only (what we rerank)."""
    items = sort if isinstance(sort, list) else [sort]
    if not items:
        return True
    for item in items:
        if item == "_score":
            continue
        if isinstance(item, Mapping) and list(item) == ["_score"]:
            spec = item["_score"]
            order = spec.get("order", "desc") if isinstance(spec, Mapping) else spec
            if isinstance(order, str) and order.lower() == "desc":
                continue
        return False
    return True


def _url_sort_is_score(value: str) -> bool:
    return all(part.strip() in ("_score", "_score:desc") for part in value.split(","))


def pass_through_reason(
    body: Mapping[str, Any], params: Sequence[QueryParam], *, window: int
) -> str | None:
    """Why this search must not be reranked, or ``None`` when it may be."""
    for key, reason in _PASS_THROUGH_PARAMS.items():
        if _param(params, key) is not None:
            return reason
    for key, reason in _PASS_THROUGH_KEYS.items():
        if key in body:
            return reason
    url_sort = _param(params, "sort")
    if url_sort is not None and not _url_sort_is_score(url_sort):
        return "sorted by a field"
    if "sort" in body and not is_score_sort(body["sort"]):
        return "sorted by a field"
    stored = _param(params, "stored_fields")
    stored = body.get("stored_fields") if stored is None else stored
    if stored == "_none_" or stored == ["_none_"]:
        return "stored_fields is _none_"
    try:
        offset, size = client_page(body, params)
    except ValueError as exc:
        return f"{exc} is not a non-negative integer"
    if size == 0:
        return "size is 0"
    if offset >= window:
        return f"page starts at {offset}, past the rerank window of {window}"
    return None


# --------------------------------------------------------------------- query text

# Leaf queries whose value is the user's text: {field: "text"} or {field: {"query": "text"}}.
_FIELD_TEXT_QUERIES = ("match", "match_phrase", "match_phrase_prefix", "match_bool_prefix")
# Leaf queries with a top-level "query" string.
_QUERY_KEY_QUERIES = ("multi_match", "combined_fields", "semantic")
# Leaf queries whose "query" is Lucene / simple query syntax, cleaned before use.
_SYNTAX_QUERIES = ("query_string", "simple_query_string")
# Compound queries: key -> the scoring sub-queries (filter/must_not contexts are left out).
_COMPOUND = {
    "bool": ("must", "should"),
    "dis_max": ("queries",),
    "function_score": ("query",),
    "script_score": ("query",),
    "boosting": ("positive",),
    "nested": ("query",),
    "has_child": ("query",),
    "has_parent": ("query",),
    "hybrid": ("queries",),
    "pinned": ("organic",),
}

_FIELD_PREFIX = re.compile(r"(?<![\w\\])[\w.*@]+:(?=[^\s/])")
_NEGATED = re.compile(r"(?:(?<=\s)|^)(?:[-!]|NOT\s+)(?:\"[^\"]*\"|\([^)]*\)|\S+)")
_BOOST = re.compile(r"[~^][\d.]*")
_OPERATORS = re.compile(r"\b(?:AND|OR|NOT|TO)\b|&&|\|\|")
_SYNTAX_CHARS = re.compile(r"[+\-!(){}\[\]\"*?:\\/|&<>=]")
_SPACES = re.compile(r"\s+")


def clean_query_syntax(text: str) -> str:
    """Words of a ``query_string`` / ``simple_query_string`` / ``q=`` value, without syntax.

    Drops field prefixes (``title:``), negated terms (``-dogs``, ``NOT dogs``),
    boosts and fuzziness (``^2``, ``~1``), operators (``AND``, ``||``) and syntax
    characters, because the model reads natural language.

    Example:
        >>> clean_query_syntax('title:(cats AND "big dogs")^2 -mice')
        'cats big dogs'
    """
    text = _FIELD_PREFIX.sub(" ", text)
    text = _NEGATED.sub(" ", text)
    text = _BOOST.sub(" ", text)
    text = _OPERATORS.sub(" ", text)
    text = _SYNTAX_CHARS.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def _walk_query(node: Any, out: list[str]) -> None:
    if isinstance(node, list):
        for item in node:
            _walk_query(item, out)
        return
    if not isinstance(node, Mapping):
        return
    for kind, spec in node.items():
        if kind in _FIELD_TEXT_QUERIES and isinstance(spec, Mapping):
            for value in spec.values():
                text = value.get("query") if isinstance(value, Mapping) else value
                if isinstance(text, str):
                    out.append(text)
        elif kind in _QUERY_KEY_QUERIES and isinstance(spec, Mapping):
            if isinstance(spec.get("query"), str):
                out.append(spec["query"])
        elif kind in _SYNTAX_QUERIES and isinstance(spec, Mapping):
            if isinstance(spec.get("query"), str):
                out.append(clean_query_syntax(spec["query"]))
        elif kind == "neural" and isinstance(spec, Mapping):
            for value in spec.values():
                if isinstance(value, Mapping) and isinstance(value.get("query_text"), str):
                    out.append(value["query_text"])
        elif kind in _COMPOUND and isinstance(spec, Mapping):
            for clause in _COMPOUND[kind]:
                _walk_query(spec.get(clause), out)


def extract_query_text(
    body: Mapping[str, Any], params: Sequence[QueryParam] = (), header: str | None = None
) -> str | None:
    """The text to rerank with, or ``None`` when the request carries none.

    In order: the ``X-SecondPass-Query`` header (percent-decoded, so non-ASCII
    text can travel in a header); the scoring clauses of ``query`` — ``match``,
    ``match_phrase``, ``match_phrase_prefix``, ``match_bool_prefix``,
    ``multi_match``, ``combined_fields``, ``semantic``, OpenSearch ``neural``
    (``query_text``), and ``query_string``/``simple_query_string`` with their syntax
    removed — found depth first through ``bool`` ``must``/``should``, ``dis_max``,
    ``function_score``, ``script_score``, ``boosting`` (positive), ``nested``,
    ``has_child``, ``has_parent``, ``hybrid`` and ``pinned`` (``filter``,
    ``must_not`` and ``constant_score`` are not scoring and are ignored); then the
    ``q`` URL parameter. Several texts are joined with a space, each once.

    Example:
        >>> extract_query_text({"query": {"bool": {
        ...     "must": [{"match": {"title": "cats"}}],
        ...     "filter": [{"match": {"lang": "en"}}],
        ...     "should": [{"multi_match": {"query": "what cats eat"}}]}}})
        'cats what cats eat'
    """
    if header is not None:
        text = _SPACES.sub(" ", unquote_plus(header.replace("+", "%2B"))).strip()
        if text:
            return text
    found: list[str] = []
    _walk_query(body.get("query"), found)
    if not found:
        q = _param(params, "q")
        if q:
            found.append(clean_query_syntax(q))
    unique = list(dict.fromkeys(t for t in (_SPACES.sub(" ", s).strip() for s in found) if t))
    return " ".join(unique) or None


# ------------------------------------------------------------------------ rewrite


def source_filter(body: Mapping[str, Any], params: Sequence[QueryParam]) -> SourceFilter:
    """The ``_source`` filtering the engine will apply: URL parameters win over the body."""
    source = _param(params, "_source")
    url_includes = _param(params, "_source_includes")
    url_excludes = _param(params, "_source_excludes")
    if source is not None or url_includes is not None or url_excludes is not None:
        enabled, includes = True, _split_csv(url_includes)
        if source is not None:
            lowered = source.strip().lower()
            if lowered in ("false", "0", "no", "off"):
                enabled = False
            elif lowered not in ("true", "1", "yes", "on", ""):
                includes = includes + _split_csv(source)
        return SourceFilter(enabled, includes, _split_csv(url_excludes))
    if "_source" not in body:
        stored = _param(params, "stored_fields") or body.get("stored_fields")
        return SourceFilter(enabled=stored is None)
    spec = body["_source"]
    if isinstance(spec, bool):
        return SourceFilter(enabled=spec)
    if isinstance(spec, str):
        return SourceFilter(includes=(spec,))
    if isinstance(spec, list):
        return SourceFilter(includes=tuple(str(s) for s in spec))
    if isinstance(spec, Mapping):
        includes = spec.get("includes", spec.get("include", ()))
        excludes = spec.get("excludes", spec.get("exclude", ()))
        return SourceFilter(includes=_listify(includes), excludes=_listify(excludes))
    return SourceFilter(enabled=False)  # unknown shape: read from fields to be safe


def _client_fields(body: Mapping[str, Any]) -> tuple[str, ...]:
    entries = body.get("fields")
    if entries is None:
        return ()
    out = []
    for entry in entries if isinstance(entries, list) else [entries]:
        if isinstance(entry, str):
            out.append(entry)
        elif isinstance(entry, Mapping) and isinstance(entry.get("field"), str):
            out.append(entry["field"])
    return tuple(out)


def plan_search(
    body: Mapping[str, Any],
    params: Sequence[QueryParam],
    *,
    window: int,
    text_fields: Sequence[str],
    header_query: str | None = None,
) -> SearchPlan | Skip:
    """Decide whether and how to rerank one search (see the module docstring for the rules)."""
    reason = pass_through_reason(body, params, window=window)
    if reason is not None:
        return Skip(reason)
    if not text_fields:
        return Skip("no passage fields configured for this index")
    query_text = extract_query_text(body, params, header_query)
    if query_text is None:
        return Skip("no query text found (set X-SecondPass-Query)")
    offset, size = client_page(body, params)
    fetch = max(window, offset + size)
    rewritten = copy.deepcopy(dict(body))
    rewritten["from"] = 0
    rewritten["size"] = fetch
    sources = source_filter(body, params)
    from_source = frozenset(f for f in text_fields if sources.returns(f))
    client_fields = _client_fields(body)
    added = tuple(
        f
        for f in text_fields
        if f not in from_source and not any(_wildcard(p, f) for p in client_fields)
    )
    if added:
        existing = rewritten.get("fields")
        existing_list = (
            list(existing)
            if isinstance(existing, list)
            else ([] if existing is None else [existing])
        )
        rewritten["fields"] = existing_list + list(added)
    kept = [p for p in params if p.key not in ("from", "size", OPT_OUT_PARAM)]
    return SearchPlan(
        query_text=query_text,
        offset=offset,
        size=size,
        fetch=fetch,
        body=rewritten,
        query=join_query(kept),
        text_fields=tuple(text_fields),
        from_source=from_source,
        added_fields=added,
        client_fields=client_fields,
    )


# ------------------------------------------------------------------- hit reading


def hit_fields(
    raw_hit: Mapping[str, Any], plan: SearchPlan, names: Sequence[str] | None = None
) -> dict[str, str]:
    """The passage fields ``names`` of one engine hit, read from ``_source`` or ``fields``.

    ``names`` (default: every planned text field) sets the order of the result.
    Values are read exactly as the connectors read them
    (:func:`secondpass.connectors.hits.extract_fields`: dotted paths, lists joined,
    missing as ``""``) so the proxy and the facade build the same passage.
    """
    source = raw_hit.get("_source")
    source = source if isinstance(source, Mapping) else {}
    fields = raw_hit.get("fields")
    fields = fields if isinstance(fields, Mapping) else {}
    out = {}
    for name in plan.text_fields if names is None else names:
        text = ""
        if name not in plan.from_source:
            text = extract_fields(fields, [name])[name]
        out[name] = text or extract_fields(source, [name])[name]
    return out


def response_hits(response: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """``hits.hits`` of a search response (empty when absent or malformed)."""
    hits = response.get("hits")
    inner = hits.get("hits") if isinstance(hits, Mapping) else None
    return [h for h in inner if isinstance(h, Mapping)] if isinstance(inner, list) else []


def build_hits(
    response: Mapping[str, Any],
    plan: SearchPlan,
    *,
    fields_for: Callable[[str], Sequence[str]] | None = None,
) -> EngineHits:
    """The engine's window as :class:`~secondpass.types.Hit` objects, rank 1..n.

    Read by :func:`secondpass.connectors.hits.read_hits` (malformed hits are left
    out and named), with each hit's text from ``_source`` or ``fields`` as
    :func:`hit_fields` reads it. ``fields_for(index)`` names the text fields of a
    hit's index (per-index configuration); by default every planned text field.
    """

    def read(raw: Mapping[str, Any]) -> dict[str, str]:
        names = None if fields_for is None else fields_for(str(raw.get("_index", "")))
        return hit_fields(raw, plan, names)

    return read_hits(response, read)


# ------------------------------------------------------------------- responses


def _trim_hit(raw: Mapping[str, Any], plan: SearchPlan) -> dict[str, Any]:
    """A copy of an engine hit without the ``fields`` entries the proxy added."""
    hit = dict(raw)
    if not plan.added_fields or not isinstance(hit.get("fields"), Mapping):
        return hit
    fields = {
        name: value
        for name, value in hit["fields"].items()
        if name not in plan.added_fields or any(_wildcard(p, name) for p in plan.client_fields)
    }
    if fields:
        hit["fields"] = fields
    else:
        del hit["fields"]
    return hit


def engine_order_response(response: Mapping[str, Any], plan: SearchPlan) -> dict[str, Any]:
    """What the engine would have answered to the client's own request.

    The window response, cut to the client's ``from``/``size`` page in engine
    order, with the proxy's extra ``fields`` removed. Used when reranking fails, is
    out of time, or finds no hits, so the client never gets a shape it did not ask for.
    """
    out = dict(response)
    hits = response.get("hits")
    raw = hits.get("hits") if isinstance(hits, Mapping) else None
    if isinstance(hits, Mapping) and isinstance(raw, list):
        # Malformed items stay as the engine sent them: this is the engine's answer.
        page = raw[plan.offset : plan.offset + plan.size]
        trimmed = [_trim_hit(h, plan) if isinstance(h, Mapping) else h for h in page]
        out["hits"] = {**hits, "hits": trimmed}
    return out


def reranked_response(
    response: Mapping[str, Any],
    plan: SearchPlan,
    result: SearchResult,
    *,
    annotation: HitAnnotation = "fields",
) -> dict[str, Any]:
    """The engine's response with ``hits.hits`` in reranked order, cut to the client's page.

    ``result`` holds the whole reranked order (``offset`` 0, ``k`` ``None``).
    ``_score`` becomes the rerank score (``null`` for hits past the window, which
    keep engine order) and ``max_score`` the best rerank score; totals,
    aggregations and everything else are the engine's (:func:`add_took` adds the
    proxy's time to ``took``). Each hit keeps its first-stage score and rank where
    ``annotation`` says.
    """
    raw_hits = response_hits(response)
    by_key = {(str(h.get("_index", "")), str(h.get("_id", ""))): h for h in raw_hits}
    page: list[dict[str, Any]] = []
    for ranked in result.hits[plan.offset : plan.offset + plan.size]:
        raw = by_key.get(ranked.hit.key)
        if raw is None:  # pragma: no cover - the retriever only returns hits it was given
            continue
        page.append(_annotated(_trim_hit(raw, plan), ranked, annotation))
    out = dict(response)
    hits = dict(response["hits"]) if isinstance(response.get("hits"), Mapping) else {}
    scores = [r.score for r in result.hits if r.score is not None]
    if scores:
        hits["max_score"] = max(scores)
    hits["hits"] = page
    out["hits"] = hits
    return out


def add_took(response: Mapping[str, Any], added_ms: float) -> dict[str, Any]:
    """The response with ``took`` grown by ``added_ms`` (the proxy's own time, rounded)."""
    out = dict(response)
    took = response.get("took")
    if isinstance(took, int) and not isinstance(took, bool):
        out["took"] = took + max(0, round(added_ms))
    return out


def _annotated(hit: dict[str, Any], ranked: RankedHit, annotation: HitAnnotation) -> dict[str, Any]:
    first_score = hit.get("_score")
    hit["_score"] = ranked.score
    if annotation == "fields":
        fields = dict(hit.get("fields") or {})
        fields[FIRST_STAGE_SCORE] = [first_score]
        fields[FIRST_STAGE_RANK] = [ranked.hit.rank]
        hit["fields"] = fields
    elif annotation == "_secondpass":
        hit["_secondpass"] = {"first_stage_score": first_score, "first_stage_rank": ranked.hit.rank}
    return hit


# ---------------------------------------------------------------------- msearch


@dataclass(frozen=True, slots=True)
class MsearchItem:
    """One header/body pair of an ``_msearch`` request, as parsed JSON."""

    header: dict[str, Any]
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class MsearchRequest:
    """The items of an ``_msearch`` body; ``None`` from :func:`parse_msearch` if unreadable."""

    items: tuple[MsearchItem, ...] = field(default_factory=tuple)


def parse_msearch(data: bytes) -> MsearchRequest | None:
    """Parse NDJSON header/body pairs; ``None`` when any line is not a JSON object."""
    lines = [line for line in data.split(b"\n") if line.strip()]
    if len(lines) % 2:
        return None
    items = []
    try:
        for head, body in zip(lines[0::2], lines[1::2], strict=True):
            header_obj, body_obj = json.loads(head), json.loads(body)
            if not isinstance(header_obj, dict) or not isinstance(body_obj, dict):
                return None
            items.append(MsearchItem(header_obj, body_obj))
    except ValueError:
        return None
    return MsearchRequest(tuple(items))


def msearch_index(header: Mapping[str, Any], path_index: str | None) -> str | None:
    """The index expression an ``_msearch`` item searches (its header, else the URL's)."""
    index = header.get("index")
    if isinstance(index, list):
        return ",".join(str(i) for i in index)
    if isinstance(index, str):
        return index
    return path_index


def status_header(status: str, reason: str | None = None) -> str:
    """The ``X-SecondPass-Rerank`` value: ``ok`` or ``<status>; reason=<text>`` (ASCII, one line)."""
    if not reason:
        return status
    text = "".join(c if 32 <= ord(c) < 127 and c not in ",;" else " " for c in reason)
    text = _SPACES.sub(" ", text).strip()[:200]
    return f"{status}; reason={text}"


# ------------------------------------------------------------------------ helpers


def _split_csv(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(p.strip() for p in value.split(",") if p.strip())


def _listify(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    return ()


def _lineage(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


_WILDCARD_CACHE: dict[str, re.Pattern[str]] = {}


def _wildcard(pattern: str, text: str) -> bool:
    """Engine-style wildcard match: ``*`` matches any run of characters, nothing else is special."""
    compiled = _WILDCARD_CACHE.get(pattern)
    if compiled is None:
        compiled = re.compile(".*".join(re.escape(p) for p in pattern.split("*")), re.DOTALL)
        if len(_WILDCARD_CACHE) < 1024:
            _WILDCARD_CACHE[pattern] = compiled
    return compiled.fullmatch(text) is not None
