r"""Who may do what through the proxy: client keys, the allow-list and request-target checks.

Why a module of its own: the proxy forwards everything by default, acting with the
client's own credentials. When the operator lends the proxy's credentials
(``lend_credentials``), every client that passes the proxy acts with *their*
authority, so the proxy must decide which requests it lends them to. That decision
is made here, by pure functions over the method, the raw request target and the
headers (no I/O), so every hostile form of a request can be unit tested.

The allow-list matches a *canonical* path: the raw path split on ``/``, each
segment percent-decoded once, and anything whose meaning could differ between
this module and the engine refused (``.``/``..`` and empty segments, an encoded
``/`` or ``\``, double encoding, ``;`` parameters, control characters, case
variants, index names starting with ``_``, ``.``, ``-`` or ``+``). The request is
then forwarded with the canonical path it was checked as, never the client's
spelling, so the engine cannot read it differently. Method override headers,
identity-switching headers (run-as, impersonation) and methods not listed are
refused; when in doubt the answer is 403.

Example:
    >>> allow = AllowList.from_rules(DEFAULT_ALLOWED_REQUESTS)
    >>> allow.check("POST", b"/docs/%5Fsearch/")
    b'/docs/_search'
    >>> allow.check("DELETE", b"/docs").reason
    'DELETE /docs is not on the allow-list of this proxy (allowed_requests)'
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Sequence
from urllib.parse import quote, unquote_to_bytes

from secondpass.service.auth import ApiKeys, presented_key

__all__ = [
    "DEFAULT_ALLOWED_REQUESTS",
    "MAX_RELEASE_BODY_BYTES",
    "check_body_references",
    "AccessGate",
    "AllowList",
    "Admitted",
    "Refusal",
    "check_msearch",
    "check_release",
    "error_body",
    "origin_form",
    "parse_rule",
    "releases",
]

DEFAULT_ALLOWED_REQUESTS: tuple[str, ...] = (
    "GET,POST /_search",
    "GET,POST /{index}/_search",
    "GET,POST /_msearch",
    "GET,POST /{index}/_msearch",
    "GET,POST /_count",
    "GET,POST /{index}/_count",
    "GET,POST,DELETE /_search/scroll",
    "POST /{index}/_pit",
    "DELETE /_pit",
    "POST /{index}/_search/point_in_time",
    "DELETE /_search/point_in_time",
)
"""Read-only searching: search, multi-search, count, scroll and point in time (ES and OpenSearch)."""

INDEX = "{index}"
"""The placeholder of a rule segment that matches one index expression."""

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
FORWARDED_METHODS = _METHODS
"""The only methods the proxy forwards, in any mode: the ones the engines serve.

CONNECT and Upgrade turn a connection into a tunnel and TRACE echoes the request
(credentials included); a method the engines do not know gets nothing from them.
Each of them, forwarded, held an upstream connection that no answer or timeout
would free, so the proxy answers them itself (405) in every mode.
"""
_LITERAL = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
# One part of a comma-separated index expression: lowercase names and wildcards only.
# No leading "_" (_all, _doc...), "." (system and hidden indices), "-"/"+" (pattern
# operators), no ":" (remote clusters), no date math (it needs an encoded "/").
_INDEX_PART = re.compile(r"^[a-z0-9*][a-z0-9_.\-*]*$")
_METHOD_OVERRIDE = frozenset({b"x-http-method-override", b"x-http-method", b"x-method-override"})
_IMPERSONATION = frozenset(
    {
        b"es-security-runas-user",
        b"opendistro_security_impersonate_as",
        b"x-proxy-user",
        b"x-proxy-roles",
    }
)
# Headers that carry a client identity to the engine: replaced by the lent credentials.
_CLIENT_IDENTITY = frozenset({b"authorization", b"x-api-key", b"cookie"})
_OVERRIDE_PARAMS = frozenset({b"_method", b"method"})
_MAX_SEGMENTS = 16
# Query parameters refused with lent credentials, by lower-cased name. ``index`` is
# the engines' path parameter: in a query string it names indices that no path
# check ever saw (``/_search?index=secret``). ``source`` carries a whole request
# body in the URL, past every body check. ``error_trace`` returns stack traces.
_LENT_REFUSED_PARAMS = {
    "index": "the index parameter is refused by this proxy; name indices in the path",
    "source": "the source parameter (a body in the URL) is refused by this proxy; send a body",
    "source_content_type": "the source parameter (a body in the URL) is refused by this proxy",
    "error_trace": "error_trace is refused by this proxy (stack traces of the lent identity)",
    "errortrace": "error_trace is refused by this proxy (stack traces of the lent identity)",
}
_EXPAND_WILDCARDS = frozenset({"expand_wildcards", "expandwildcards"})
_EXPAND_WILDCARDS_KEYS = frozenset({"expand_wildcards", "expandWildcards"})
# Hidden and system indices ("hidden", "all") stay out of reach of wildcards.
_WILDCARD_STATES = frozenset({"open", "closed", "none"})
# The keys the engines accept in an _msearch header line (they reject any other).
_MSEARCH_INDEX_KEYS = frozenset({"index", "indices"})
_MSEARCH_HEADER_KEYS = _MSEARCH_INDEX_KEYS | {
    "type", "types", "search_type", "searchType", "ccs_minimize_roundtrips",
    "ccsMinimizeRoundtrips", "request_cache", "requestCache", "preference", "routing",
    "allow_partial_search_results", "allowPartialSearchResults", "expand_wildcards",
    "expandWildcards", "ignore_unavailable", "ignoreUnavailable", "allow_no_indices",
    "allowNoIndices", "ignore_throttled", "ignoreThrottled",
}  # fmt: skip
_JSON_MEDIA = ("application/json", "application/vnd.elasticsearch+json")
_NDJSON_MEDIA = (*_JSON_MEDIA, "application/x-ndjson", "application/vnd.elasticsearch+x-ndjson")
# DELETE on these paths releases scrolls / points in time; the body key naming the ids.
_RELEASES = {
    ("_search", "scroll"): "scroll_id",
    ("_pit",): "id",
    ("_search", "point_in_time"): "pit_id",
}
_RELEASE_ID_PARAMS = frozenset({"scroll_id", "id", "pit_id"})
# Scroll and PIT ids are base64: no ',', no whitespace, no '*'.
_RELEASE_ID = re.compile(r"^[A-Za-z0-9+/=_\-]+$")
MAX_RELEASE_BODY_BYTES = 64 * 1024
"""The largest scroll/PIT release body the proxy reads and checks with lent credentials."""


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """A request the proxy answers itself: ``status`` (400, 401, 403 or 405) and why."""

    status: int
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class Admitted:
    """A request that may go upstream: the path to forward and the headers to forward."""

    path: bytes
    headers: list[tuple[bytes, bytes]]
    client: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    """``methods`` allowed on a path of literal segments and ``{index}`` placeholders."""

    methods: frozenset[str]
    segments: tuple[str, ...]

    def matches(self, method: str, segments: Sequence[str]) -> bool:
        if method not in self.methods or len(segments) != len(self.segments):
            return False
        for pattern, segment in zip(self.segments, segments, strict=True):
            if pattern == INDEX:
                if not _is_index_expression(segment):
                    return False
            elif pattern != segment:
                return False
        return True


def parse_rule(text: str) -> Rule:
    """``"GET,POST /{index}/_search"`` -> :class:`Rule`; raises ``ValueError`` naming the problem."""
    methods_text, sep, path = text.strip().partition(" ")
    path = path.strip()
    if not sep or not path.startswith("/"):
        msg = f"allowed request {text!r} must be 'METHOD[,METHOD...] /path'"
        raise ValueError(msg)
    methods = frozenset(m.strip() for m in methods_text.split(","))
    unknown = sorted(methods - _METHODS)
    if unknown:
        msg = f"allowed request {text!r}: unknown methods {unknown} (upper case, one of {sorted(_METHODS)})"
        raise ValueError(msg)
    segments = tuple(s for s in path.split("/") if s)
    for segment in segments:
        if segment != INDEX and not _LITERAL.match(segment):
            msg = (
                f"allowed request {text!r}: segment {segment!r} is neither a plain name nor {INDEX}"
            )
            raise ValueError(msg)
    return Rule(methods, segments)


def origin_form(target: bytes) -> bytes | None:
    """The path of a request target, or ``None`` when it has none (``*``, authority-form, junk).

    An absolute-form target (``http://host/path``) keeps only its path: the
    client's authority never chooses where the proxy forwards.
    """
    if target.startswith(b"/"):
        return target
    scheme, sep, rest = target.partition(b"://")
    if sep and scheme.lower() in (b"http", b"https"):
        slash = rest.find(b"/")
        return b"/" if slash < 0 else rest[slash:]
    return None


def canonical_segments(raw_path: bytes) -> tuple[str, ...] | str:
    """The decoded segments of an origin-form path, or the reason it is refused.

    One trailing ``/`` is dropped (the engines ignore it); anything else that two
    readers could take differently is refused rather than normalised.
    """
    if not raw_path.startswith(b"/"):
        return "the request target is not a path"
    parts = raw_path[1:].split(b"/")
    if parts and parts[-1] == b"":
        parts.pop()
    if len(parts) > _MAX_SEGMENTS:
        return "the path has too many segments"
    segments = []
    for part in parts:
        if not part:
            return "the path has an empty segment (//)"
        try:
            text = unquote_to_bytes(part).decode("utf-8")
        except UnicodeDecodeError:
            return "the path is not valid UTF-8 once percent-decoded"
        if text in (".", ".."):
            return "the path has a '.' or '..' segment"
        if any(c in text for c in "/\\%;?#") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
            return "the path has an encoded separator, a ';', '%' or a control character"
        segments.append(text)
    return tuple(segments)


def _is_index_expression(segment: str) -> bool:
    return all(_INDEX_PART.match(part) for part in segment.split(","))


class AllowList:
    """The method and path rules under which lent credentials are used."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = tuple(rules)

    @classmethod
    def from_rules(cls, texts: Iterable[str]) -> AllowList:
        """Parse ``"METHODS /path"`` texts (see :func:`parse_rule`)."""
        return cls(parse_rule(t) for t in texts)

    def check(self, method: str, raw_path: bytes) -> bytes | Refusal:
        """The canonical path to forward, or a 403 :class:`Refusal` naming the problem."""
        segments = canonical_segments(raw_path)
        shown = _shown(raw_path)
        if isinstance(segments, str):
            return Refusal(403, f"{method[:16]} {shown}: {segments}; refused by this proxy")
        if not any(rule.matches(method, segments) for rule in self.rules):
            return Refusal(
                403,
                f"{method[:16]} {shown} is not on the allow-list of this proxy (allowed_requests)",
            )
        return ("/" + "/".join(quote(s, safe="*,") for s in segments)).encode("ascii")


class AccessGate:
    """Decides, per request, whether it goes upstream and with which path and headers.

    ``keys`` switches client authentication on (a request without a valid key gets
    401); the header that carried the key is never forwarded. ``allow`` is set when
    the proxy lends its credentials: then only allowed requests pass, with every
    client identity header removed (the proxy adds its own ``Authorization``) and
    identity-switching or method-override headers refused.
    """

    def __init__(self, *, keys: ApiKeys, allow: AllowList | None) -> None:
        self.keys = keys
        self.allow = allow

    def authenticate(self, headers: Sequence[tuple[bytes, bytes]]) -> str | Refusal | None:
        """The client a valid key names, a 401 without one, ``None`` when keys are off.

        The proxy's own endpoints (``/_secondpass/...``) need only this: they are
        never forwarded, so the allow-list does not apply, but metrics may reveal
        traffic, so they take a client key like everything else.
        """
        if not self.keys:
            return None
        client = self.keys.identify(headers)
        if client is None:
            reason = (
                "missing API key for this proxy"
                if presented_key(headers) is None
                else "invalid API key for this proxy"
            )
            return Refusal(401, f"{reason} (send Authorization: Bearer KEY or X-API-Key: KEY)")
        return client

    def admit(
        self, method: str, raw_path: bytes, query: bytes, headers: Sequence[tuple[bytes, bytes]]
    ) -> Admitted | Refusal:
        """Check the client's key, then (credentials lent) the allow-list and the headers."""
        forwarded = list(headers)
        client = self.authenticate(forwarded)
        if isinstance(client, Refusal):
            return client
        if client is not None:
            key = presented_key(forwarded)
            forwarded = [h for h in forwarded if presented_key([h]) != key]
        if self.allow is None:
            return Admitted(raw_path, forwarded, client)
        names = {name.lower() for name, _ in forwarded}
        if names & _METHOD_OVERRIDE or _has_param(query, _OVERRIDE_PARAMS):
            return Refusal(403, "method override headers and parameters are refused by this proxy")
        if names & _IMPERSONATION:
            return Refusal(403, "run-as and impersonation headers are refused by this proxy")
        refusal = _lent_query_refusal(query)
        if refusal is not None:
            return refusal
        path = self.allow.check(method, raw_path)
        if isinstance(path, Refusal):
            return path
        kept = [(k, v) for k, v in forwarded if k.lower() not in _CLIENT_IDENTITY]
        return Admitted(path, kept, client)


def releases(method: str, path: bytes) -> bool:
    """Whether a (canonical) request releases scrolls or points in time (``DELETE``).

    With lent credentials every client shares one identity, so a release of
    ``_all`` would end every other client's scrolls: :func:`check_release` looks.
    """
    segments = canonical_segments(path)
    if method != "DELETE" or isinstance(segments, str):
        return False
    return any(tuple(segments[: len(base)]) == base for base in _RELEASES)


def check_release(
    path: bytes, query: bytes, content_type: str | None, body: bytes
) -> Refusal | None:
    """``None`` when a release names only given ids, else the 403 to answer.

    Every place an engine reads ids from is looked at (a path segment, the
    ``scroll_id``/``id``/``pit_id`` parameters, the JSON body) and each id must
    be one base64 id: ``_all``, lists with ``_all``, commas, wildcards, another
    body format, duplicate keys or an unreadable body are refused, as is a
    release that names nothing. ``body`` is the decoded body, at most
    :data:`MAX_RELEASE_BODY_BYTES`.

    Example:
        >>> check_release(b"/_search/scroll", b"", "application/json", b'{"scroll_id":"_all"}').status
        403
        >>> check_release(b"/_pit", b"", "application/json", b'{"id":"46ToAwMDaWR5"}') is None
        True
    """
    segments = canonical_segments(path)
    if isinstance(segments, str):
        return Refusal(403, f"DELETE {_shown(path)}: {segments}; refused by this proxy")
    base = next((b for b in _RELEASES if tuple(segments[: len(b)]) == b), None)
    if base is None:
        return None
    ids: list[object] = []
    for segment in segments[len(base) :]:
        ids += segment.split(",")
    for key, value in _params(query):
        if key.lower() in _RELEASE_ID_PARAMS:
            ids += value.split(",")
    if body.strip():
        if not _media_type(content_type, _JSON_MEDIA):
            return _release_refusal("its body is not application/json")
        data = _strict_json(body)
        if not isinstance(data, dict) or set(data) - {_RELEASES[base]}:
            return _release_refusal(f"its body must be a JSON object with only {_RELEASES[base]!r}")
        named = data.get(_RELEASES[base])
        ids += named if isinstance(named, list) else [named]
    if not ids:
        return _release_refusal("it names no id")
    for one in ids:
        if not isinstance(one, str) or not _RELEASE_ID.match(one) or one.lower() == "_all":
            return _release_refusal("every id must be one given id (not _all, a list or a pattern)")
    return None


def check_msearch(content_type: str | None, data: bytes) -> Refusal | None:
    r"""``None`` when every ``_msearch`` header reaches only what a path may, else the 403.

    ``data`` is the decoded body. Lines are split on ``\n`` as the engines do;
    blank lines (which the engines skip or pair differently), an odd number of
    lines, a header that is not one JSON object, duplicate keys and keys the
    engines do not know are refused, so this and the engine cannot pair headers
    and bodies differently. ``index``/``indices`` must pass the path's index rule
    (no ``_``, ``.``, ``-``, ``+`` prefixes, no remote clusters, not empty), and
    ``expand_wildcards`` may only be ``open``, ``closed`` or ``none``.

    Example:
        >>> check_msearch("application/x-ndjson", b'{"index":"docs"}\n{}\n') is None
        True
        >>> check_msearch("application/x-ndjson", b'{"index":".security"}\n{}\n').status
        403
    """
    if not _media_type(content_type, _NDJSON_MEDIA):
        return _msearch_refusal("its body is not NDJSON")
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    if not lines or len(lines) % 2 or any(not line.strip() for line in lines):
        return _msearch_refusal("it is not pairs of non-blank header and body lines")
    for number, line in enumerate(lines[0::2], start=1):
        header = _strict_json(line)
        if not isinstance(header, dict):
            return _msearch_refusal(f"header {number} is not one JSON object")
        unknown = set(header) - _MSEARCH_HEADER_KEYS
        if unknown:
            return _msearch_refusal(f"header {number} has keys the engines do not take")
        for key in _MSEARCH_INDEX_KEYS & set(header):
            names = _strings(header[key])
            if not names or not all(_is_index_expression(n) for n in names):
                return _msearch_refusal(
                    f"header {number} names an index a path may not (_, ., -, + or empty)"
                )
        for key in _EXPAND_WILDCARDS_KEYS & set(header):
            names = _strings(header[key])
            if names is None or not _wildcard_states_ok(names):
                return _msearch_refusal(
                    f"header {number}: expand_wildcards may only be open, closed or none"
                )
    return None


# Keys whose clause reads a document or a shape of another index, or hides the
# query from this check (``wrapper`` is base64 DSL).
_FOREIGN_CLAUSES = frozenset(
    {
        "wrapper",  # base64 DSL: nothing inside can be checked
        "indexed_shape",  # a geo_shape stored in another index
        "percolate",  # with index/id: a stored document
        "target_index",  # a runtime field of type lookup joins another index's fields
        "collate",  # phrase-suggest collate: a templated query in a JSON string
    }
)
_INDEX_KEYS = frozenset({"index", "_index"})
_ID_KEYS = frozenset({"id", "_id"})
_MAX_BODY_DEPTH = 256


def check_body_references(data: bytes, *, ndjson: bool = False) -> Refusal | None:
    r"""``None`` when no query in the body reads a document of another index, else the 403.

    With lent credentials every client acts as the proxy, so a search on an
    allowed index must not fetch a document from any other one: a ``terms``
    lookup (``{"index": ..., "id": ..., "path": ...}``), ``more_like_this`` or
    ``pinned`` documents (``{"_index": ..., "_id": ...}``), an indexed
    ``geo_shape`` or a ``percolate`` of a stored document each name an index and
    an id; a runtime field of type ``lookup`` (``target_index``) joins another
    index's fields into every hit; ``wrapper`` hides its query in base64 and a
    suggester's ``collate`` in a template string. Any object that names an
    index together with a document id, and any of those clause names, is refused,
    wherever it stands. ``ndjson`` checks the body lines of an ``_msearch``
    (header lines are :func:`check_msearch`'s). A body that is not JSON is
    refused: what cannot be read cannot be checked.

    Example:
        >>> lookup = b'{"query":{"terms":{"t":{"index":"secret","id":"1","path":"p"}}}}'
        >>> check_body_references(lookup).status
        403
        >>> check_body_references(b'{"query":{"terms":{"t":["a","b"]}}}') is None
        True
    """
    if not data.strip():
        return None
    documents = data.split(b"\n")[1::2] if ndjson else [data]
    for document in documents:
        if not document.strip():
            continue
        value = _strict_json(document)
        if value is None:
            return Refusal(403, "a body that is not plain JSON cannot be checked by this proxy")
        found = _foreign_reference(value)
        if found is not None:
            return Refusal(
                403,
                f"{found}: a query that reads another index's documents is refused by this "
                "proxy with lent credentials",
            )
    return None


def _foreign_reference(value: object) -> str | None:
    """The key path of the first cross-index reference in ``value``, or ``None``."""
    stack: list[tuple[object, str, int]] = [(value, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if depth > _MAX_BODY_DEPTH:
            return path or "body"
        if isinstance(node, dict):
            keys = {str(k).lower() for k in node}
            if keys & _INDEX_KEYS and keys & _ID_KEYS:
                return path or "body"
            for key, child in node.items():
                here = f"{path}.{key}" if path else str(key)
                if str(key).lower() in _FOREIGN_CLAUSES:
                    return here
                stack.append((child, here, depth + 1))
        elif isinstance(node, list):
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(node))
    return None


def _msearch_refusal(why: str) -> Refusal:
    return Refusal(403, f"_msearch refused by this proxy with lent credentials: {why}")


def _release_refusal(why: str) -> Refusal:
    return Refusal(
        403, f"releasing scrolls or points in time refused by this proxy (shared identity): {why}"
    )


def _strings(value: object) -> list[str] | None:
    """A string or a list of strings as a list; ``None`` for anything else."""
    values = value if isinstance(value, list) else [value]
    out = [v for v in values if isinstance(v, str)]
    return out if len(out) == len(values) else None


def _wildcard_states_ok(values: Iterable[str]) -> bool:
    parts = [p for v in values for p in v.split(",")]
    return bool(parts) and all(p in _WILDCARD_STATES for p in parts)


def _strict_json(data: bytes) -> object:
    """One JSON value, or ``None`` (not JSON, duplicate keys, NaN, nesting too deep)."""

    def pairs(items: list[tuple[str, object]]) -> dict[str, object]:
        keys = [k for k, _ in items]
        if len(set(keys)) != len(keys):
            msg = "duplicate key"
            raise ValueError(msg)
        return dict(items)

    def constant(name: str) -> object:
        msg = f"{name} is not JSON"
        raise ValueError(msg)

    try:
        return json.loads(data, object_pairs_hook=pairs, parse_constant=constant)
    except (ValueError, RecursionError):
        return None


def _media_type(content_type: str | None, accepted: tuple[str, ...]) -> bool:
    """An absent type counts as JSON (the proxy reads it so; the engines refuse it)."""
    if content_type is None:
        return True
    media = content_type.split(";")[0].strip().lower()
    return media in accepted or media == "text/plain"


def _params(query: bytes) -> list[tuple[str, str]]:
    """The decoded (name, value) pairs of a query string, every repeat kept."""
    out = []
    for pair in query.split(b"&"):
        if not pair:
            continue
        key, _, value = pair.partition(b"=")
        out.append(
            (
                unquote_to_bytes(key.replace(b"+", b" ")).decode("utf-8", "replace").strip(),
                unquote_to_bytes(value.replace(b"+", b" ")).decode("utf-8", "replace"),
            )
        )
    return out


def _lent_query_refusal(query: bytes) -> Refusal | None:
    for key, value in _params(query):
        name = key.lower()
        if name in _LENT_REFUSED_PARAMS:
            return Refusal(403, _LENT_REFUSED_PARAMS[name])
        if name in _EXPAND_WILDCARDS and not _wildcard_states_ok([value]):
            return Refusal(
                403, "expand_wildcards may only be open, closed or none through this proxy"
            )
    return None


def _has_param(query: bytes, names: frozenset[bytes]) -> bool:
    for pair in query.split(b"&"):
        key = unquote_to_bytes(pair.partition(b"=")[0].replace(b"+", b" ")).strip().lower()
        if key in names:
            return True
    return False


def _shown(raw_path: bytes) -> str:
    """The path as the reason quotes it: printable, bounded."""
    text = raw_path[:200].decode("ascii", "backslashreplace")
    return "".join(c if " " < c < "\x7f" else f"\\x{ord(c):02x}" for c in text)


def error_body(refusal: Refusal) -> bytes:
    """The engines' error JSON for a refusal, so clients report it as they would the engine's."""
    kind = "illegal_argument_exception" if refusal.status == 400 else "security_exception"  # noqa: PLR2004
    cause = {"type": kind, "reason": refusal.reason}
    body = {"error": {"root_cause": [cause], **cause}, "status": refusal.status}
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


WWW_AUTHENTICATE = b'Bearer realm="secondpass-proxy", charset="UTF-8"'
"""Sent with every 401 of the proxy's own client authentication."""


def refusal_headers(refusal: Refusal) -> list[tuple[bytes, bytes]]:
    """Content type, plus ``WWW-Authenticate`` on a 401."""
    headers = [(b"content-type", b"application/json; charset=UTF-8")]
    if refusal.status == 401:  # noqa: PLR2004
        headers.append((b"www-authenticate", WWW_AUTHENTICATE))
    if refusal.status == 405:  # noqa: PLR2004
        headers.append((b"allow", ",".join(sorted(FORWARDED_METHODS)).encode()))
    return headers


def check_method(method: str) -> Refusal | None:
    """405 for a method outside :data:`FORWARDED_METHODS` (checked before anything else)."""
    if method in FORWARDED_METHODS:
        return None
    shown = method[:16].encode("ascii", "backslashreplace").decode()
    return Refusal(405, f"method [{shown}] is not forwarded by this proxy")


_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
"""Bytes no header value may hold (RFC 9110 5.5: field values are VCHAR, SP, HTAB, obs-text)."""


def check_header_values(headers: Sequence[tuple[bytes, bytes]]) -> Refusal | None:
    """400 naming the first header whose value holds a control byte (checked before forwarding).

    Elasticsearch answers such a header 400 but then never reads another
    request from that connection; forwarded, one anonymous request poisoned a
    pooled upstream connection and the next client on it waited for ever. The
    proxy therefore refuses the whole class itself, in every mode.
    """
    for name, value in headers:
        if _CONTROL_BYTES.search(value):
            shown = name[:64].decode("ascii", "backslashreplace")
            return Refusal(400, f"header [{shown}] holds a control character")
    return None
