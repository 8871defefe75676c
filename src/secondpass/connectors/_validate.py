"""Index-name checks that run before any request is sent.

An index name ends up in the URL path (``/<index>/_search``), so a name that
carries a wildcard, a comma, ``_all`` or a path character can silently widen a
search to indices the caller never meant to read, or reach another endpoint.
Names are therefore checked against the engines' own naming rules, and patterns
are refused unless the caller opts in with ``allow_index_patterns=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

from secondpass.errors import InvalidIndexNameError

MAX_INDEX_NAME_BYTES = 255
"""Both engines refuse index names longer than 255 bytes (UTF-8)."""

# Characters both engines forbid in index names, plus those that would change the
# URL path or query string. They stay forbidden even when patterns are allowed.
_FORBIDDEN = frozenset('\\/?"<>|# \t\r\n{}[]%&=')
# Characters that only make sense in a pattern or a remote-cluster expression.
_PATTERN_ONLY = frozenset("*,:")


def _reject(name: str, why: str) -> InvalidIndexNameError:
    # repr() keeps control characters visible and the message on one line.
    return InvalidIndexNameError(f"invalid index name {name!r}: {why}")


def validate_index_name(name: str, *, allow_patterns: bool = False) -> str:
    """Return ``name`` unchanged if it is a safe index name, else raise.

    With ``allow_patterns`` the name may be a comma-separated list of names,
    wildcards (``logs-*``), exclusions (``-logs-old``), ``_all`` and
    remote-cluster prefixes (``other:logs``); each part still obeys the
    character and length rules.

    Example:
        >>> validate_index_name("docs-2024")
        'docs-2024'
        >>> validate_index_name("logs-*", allow_patterns=True)
        'logs-*'
    """
    if not isinstance(name, str):
        msg = f"index name must be a string, got {type(name).__name__}"
        raise InvalidIndexNameError(msg)
    if not name:
        raise _reject(name, "it is empty")
    parts = name.split(",") if allow_patterns else [name]
    for part in parts:
        _check_part(name, part, allow_patterns=allow_patterns)
    return name


def _check_part(name: str, part: str, *, allow_patterns: bool) -> None:
    if not part:
        raise _reject(name, "it contains an empty name between commas")
    if any(ord(ch) < 32 or ch in _FORBIDDEN for ch in part):
        raise _reject(name, 'it contains a path or reserved character (\\ / ? " < > | # space ...)')
    if part != part.lower():
        raise _reject(name, "index names must be lowercase")
    if len(part.encode("utf-8")) > MAX_INDEX_NAME_BYTES:
        raise _reject(name, f"it is longer than {MAX_INDEX_NAME_BYTES} bytes")
    if part in {".", ".."}:
        raise _reject(name, "'.' and '..' are not index names")
    if allow_patterns:
        body = part[1:] if part.startswith("-") else part
        if ":" in body:
            body = body.split(":", 1)[1]
        if not body:
            raise _reject(name, "it contains an empty name")
        if body != "_all" and body[0] in "-_+":
            raise _reject(name, "an index name cannot start with '-', '_' or '+'")
        return
    if part == "_all":
        raise _reject(name, "'_all' is a pattern over every index (pass allow_index_patterns=True)")
    found = sorted(_PATTERN_ONLY.intersection(part))
    if found:
        chars = " ".join(found)
        raise _reject(
            name,
            f"it contains pattern characters ({chars}); pass allow_index_patterns=True "
            "to search several indices",
        )
    if part[0] in "-_+":
        raise _reject(name, "an index name cannot start with '-', '_' or '+'")


def validate_indices(
    index: str | Sequence[str], *, allow_patterns: bool = False
) -> tuple[str, ...]:
    """Validate one name or a sequence of names and return them as a tuple.

    A sequence names several concrete indices without needing patterns; each
    element is checked on its own, so a comma smuggled into one element is still
    refused.
    """
    names = (index,) if isinstance(index, str) else tuple(index)
    if not names:
        msg = "at least one index name is required"
        raise InvalidIndexNameError(msg)
    return tuple(validate_index_name(n, allow_patterns=allow_patterns) for n in names)
