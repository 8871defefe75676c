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
    "AccessGate",
    "AllowList",
    "Admitted",
    "Refusal",
    "error_body",
    "origin_form",
    "parse_rule",
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


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """A request the proxy answers itself: ``status`` (400, 401 or 403) and why."""

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

    def admit(
        self, method: str, raw_path: bytes, query: bytes, headers: Sequence[tuple[bytes, bytes]]
    ) -> Admitted | Refusal:
        """Check the client's key, then (credentials lent) the allow-list and the headers."""
        client = None
        forwarded = list(headers)
        if self.keys:
            client = self.keys.identify(forwarded)
            if client is None:
                reason = (
                    "missing API key for this proxy"
                    if presented_key(forwarded) is None
                    else "invalid API key for this proxy"
                )
                return Refusal(401, f"{reason} (send Authorization: Bearer KEY or X-API-Key: KEY)")
            key = presented_key(forwarded)
            forwarded = [h for h in forwarded if presented_key([h]) != key]
        if self.allow is None:
            return Admitted(raw_path, forwarded, client)
        names = {name.lower() for name, _ in forwarded}
        if names & _METHOD_OVERRIDE or _has_param(query, _OVERRIDE_PARAMS):
            return Refusal(403, "method override headers and parameters are refused by this proxy")
        if names & _IMPERSONATION:
            return Refusal(403, "run-as and impersonation headers are refused by this proxy")
        path = self.allow.check(method, raw_path)
        if isinstance(path, Refusal):
            return path
        kept = [(k, v) for k, v in forwarded if k.lower() not in _CLIENT_IDENTITY]
        return Admitted(path, kept, client)


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
    return headers
