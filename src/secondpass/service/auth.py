"""Client authentication shared by the rerank service and the proxy: API keys.

Why one module: both front-ends must check keys the same way (several keys, each
with a name for logs and metrics, compared in constant time, never logged), and a
second copy would drift. A client presents its key as ``Authorization: Bearer KEY``
(what the Cohere SDK and most HTTP clients send) or ``X-API-Key: KEY``.

Keys come from settings (a list of secrets, e.g. from an environment variable) and/or
a key file: one key per line, optionally ``NAME KEY`` so logs can say which client
it was; blank lines and lines starting with ``#`` are ignored.

Only SHA-256 digests of the keys are kept in memory, and every presented key is
compared with *every* configured digest with :func:`hmac.compare_digest`, so the
time taken does not reveal how much of a key matched, nor which key it was.

Example:
    >>> keys = ApiKeys({"ci": "s3cret-key-000000"})
    >>> keys.identify([(b"authorization", b"Bearer s3cret-key-000000")])
    'ci'
    >>> keys.identify([(b"x-api-key", b"wrong")]) is None
    True
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from pydantic import SecretStr

from secondpass.errors import ConfigurationError
from secondpass.redaction import register_secret

__all__ = ["MIN_KEY_CHARS", "ApiKeys", "presented_key"]

MIN_KEY_CHARS = 16
"""Shorter keys are refused at start-up: they can be guessed."""

_MAX_PRESENTED_CHARS = 4096


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key a request presents, from ``Authorization: Bearer`` or ``X-API-Key``.

    Returns ``None`` when there is none (or it is absurdly long); never raises.
    """
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                candidate = token.strip()
                break
        elif lowered == b"x-api-key" and value.strip():
            candidate = value.strip()
            break
    else:
        return None
    if len(candidate) > _MAX_PRESENTED_CHARS:
        return None
    return candidate.decode("latin-1")


class ApiKeys:
    """The set of accepted client keys; empty means authentication is off.

    ``keys`` maps a display name to the key (the name shows in logs, the key never
    does). Keys shorter than :data:`MIN_KEY_CHARS` are a configuration error.
    """

    def __init__(self, keys: Mapping[str, str]) -> None:
        entries: list[tuple[str, bytes]] = []
        for name, key in keys.items():
            if len(key) < MIN_KEY_CHARS:
                msg = f"API key {name!r} is shorter than {MIN_KEY_CHARS} characters"
                raise ConfigurationError(msg)
            entries.append((name, _digest(key)))
        self._entries = tuple(entries)

    @classmethod
    def from_sources(
        cls, keys: Sequence[SecretStr] = (), key_file: str | Path | None = None
    ) -> ApiKeys:
        """Keys from settings (named ``key-1``, ``key-2``, ...) plus those of ``key_file``."""
        named = {f"key-{i}": k.get_secret_value() for i, k in enumerate(keys, start=1)}
        if key_file is not None:
            try:
                lines = Path(key_file).read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                msg = f"cannot read the API key file {key_file}: {exc.strerror}"
                raise ConfigurationError(msg) from exc
            for number, line in enumerate(lines, start=1):
                text = line.strip()
                if not text or text.startswith("#"):
                    continue
                parts = text.split()
                if len(parts) > 2:  # noqa: PLR2004 - NAME KEY
                    msg = f"{key_file} line {number}: expected KEY or NAME KEY"
                    raise ConfigurationError(msg)
                name = parts[0] if len(parts) == 2 else f"file-{number}"  # noqa: PLR2004
                if name in named:
                    msg = f"{key_file} line {number}: the key name {name!r} is used twice"
                    raise ConfigurationError(msg)
                named[name] = parts[-1]
        for key in named.values():  # a key read from a file must never reach a log either
            register_secret(key)
        return cls(named)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:  # never the keys
        return f"ApiKeys(names={[name for name, _ in self._entries]!r})"

    def identify(self, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """The name of the key the request presents, or ``None`` if it presents no valid key."""
        presented = presented_key(headers)
        if presented is None:
            return None
        digest = _digest(presented)
        found: str | None = None
        for name, expected in self._entries:  # no early exit: same work whichever key matches
            if hmac.compare_digest(digest, expected) and found is None:
                found = name
        return found
