"""Keep credentials out of log output, whatever logger wrote them and in whatever encoding.

Why a second line of defence: settings hide secrets (``SecretStr``) and the
connectors move URL credentials out of URLs, but third-party loggers see what we
hand them. httpx logs every request URL at INFO, so a password in a URL's
userinfo went to the log on each request. :class:`RedactingFilter` rewrites every
record a handler emits (its message, its arguments, its exception and stack
text) before any formatter sees it, and removes:

* the secrets registered with :func:`register_secret` (the CLI registers every
  ``SecretStr`` of the loaded settings and every password in a URL), in each form
  they could take on the way to a log: plain, percent-encoded (``quote``,
  ``quote_plus``, either case of hex digit), base64 (of ``user:secret`` as a
  basic-auth header carries it, of the secret alone, and of the secret inside any
  longer base64 text), JSON- and ``repr``-escaped;
* credentials of known shapes, registered or not: URL userinfo
  (``https://user:***@host``), ``Authorization``/``Proxy-Authorization``/
  ``X-API-Key``/``Cookie`` header values, ``Basic``/``Bearer``/``ApiKey`` tokens and
  ``password=``/``api_key=``/``token=`` style parameters.

All of it is one compiled regular expression, so a record costs one scan; only a
record that had something removed is scanned again (a secret could be rebuilt
from the text around a removal; if one still is, the message is withheld).

Example:
    >>> import logging
    >>> register_secret("hunter2-passw0rd", user="elastic")
    >>> install_log_redaction()  # after logging is configured  # doctest: +SKIP
    >>> redact("GET http://elastic:hunter2-passw0rd@es:9200/ Authorization: ApiKey abc123def456")
    'GET http://elastic:***@es:9200/ Authorization: ApiKey ***'
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import re
import threading
import traceback
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

__all__ = [
    "DEFAULT_REDACTOR",
    "MARK",
    "RedactingFilter",
    "Redactor",
    "install_log_redaction",
    "redact",
    "register_environment_secrets",
    "register_secret",
    "register_secrets_from",
    "registered_secrets",
]

MARK = "***"
"""What a removed credential is replaced with."""

WITHHELD = "[log message withheld: it still contained a secret after redaction]"

_MIN_BASE64_CORE = 8
"""Shortest base64 fragment of a secret looked for inside longer base64 text (fewer chars would
match unrelated text)."""

_MAX_PASSES = 3

# Loggers that may carry handlers of their own (uvicorn's, when a caller gave it a log config).
_LIBRARY_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "httpx", "httpcore")
_CHATTY_HTTP_LOGGERS = ("httpx", "httpcore")

_HEADER_NAMES = (
    r"proxy-authorization|authorization|x-api-key|api-key|x-auth-token|set-cookie|cookie"
)
_PARAM_NAMES = (
    r"password|passwd|pwd|api[_-]?key|access[_-]?token|refresh[_-]?token|client[_-]?secret|"
    r"secret|token"
)
_TOKEN_CHARS = r"[A-Za-z0-9+/=._~-]"
# Each shape keeps a prefix (group ``<name>_keep``) and replaces the rest with MARK.
_SHAPES = {
    # scheme://user:password@  (user kept: it helps debugging and is not a secret)
    "url": r"(?P<url_keep>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:?#]*:)[^\s/@?#]*(?=@)",
    # Authorization: Basic xxx / {'x-api-key': 'xxx'} / (b'authorization', b'Bearer xxx')
    "header": (
        rf"(?P<header_keep>(?i:\b(?:{_HEADER_NAMES}))[\"']?\s*[:=,]\s*(?:b?[\"'])?"
        r"(?:(?i:basic|bearer|apikey|digest|token|negotiate)\s+)?)[^\s\"',;]+"
    ),
    # a bare scheme token: "Bearer eyJhbGciOi...", "ApiKey c3AtYX..." (must look like a token)
    "scheme": (
        rf"(?P<scheme_keep>\b(?:Basic|Bearer|ApiKey|bearer)\s+)"
        rf"(?={_TOKEN_CHARS}*(?:[0-9+/=_-]|[a-z][A-Z])){_TOKEN_CHARS}{{8,}}"
    ),
    # ?password=xxx&...  api_key: "xxx"  "token": "xxx"   (not "password=None", not SecretStr('**'))
    "param": (
        rf"(?P<param_keep>(?i:\b(?:{_PARAM_NAMES}))[\"']?\s*[=:]\s*[\"']?)"
        r"(?!None\b|SecretStr\(|SecretBytes\(|\*)[^\s&\"',;)}\]]+"
    ),
}


def _url_encoded_pattern(secret: str) -> str:
    """A pattern for ``secret`` with any of its characters percent-encoded (either hex case).

    One pattern covers the plain secret, ``quote``, ``quote_plus`` (``+`` for a
    space) and clients that encode more than they must (``-`` as ``%2D``).
    """
    parts = []
    for char in secret:
        escapes = "".join(
            f"%[{h[0]}{h[0].lower()}][{h[1]}{h[1].lower()}]"
            for h in (f"{byte:02X}" for byte in char.encode("utf-8", errors="surrogatepass"))
        )
        alternatives = [re.escape(char), escapes] + (["\\+"] if char == " " else [])
        parts.append(f"(?:{'|'.join(alternatives)})")
    return "".join(parts)


def _base64_forms(data: bytes) -> set[str]:
    """Base64 text that betrays ``data``: its full encoding, and the fragments seen inside longer text.

    Inside ``b64(prefix + data)`` (a basic-auth header of an unknown user) only
    the 3-byte groups wholly inside ``data`` encode the same way, and they start
    at one of three alignments, so those three fragments are looked for.
    """
    forms = {base64.b64encode(data).decode("ascii")}
    for skip in range(3):
        body = data[skip:]
        body = body[: len(body) // 3 * 3]
        core = base64.b64encode(body).decode("ascii")
        if len(core) >= _MIN_BASE64_CORE:
            forms.add(core)
    forms |= {f.replace("+", "-").replace("/", "_") for f in forms}
    return forms


def _secret_patterns(secret: str, user: str | None) -> set[str]:
    """Patterns for every text form of ``secret`` that a log line could carry."""
    raw = secret.encode("utf-8", errors="surrogatepass")
    forms = {json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]}
    forms |= {repr(secret)[1:-1], repr(raw)[2:-1]}
    forms |= _base64_forms(raw)
    if user is not None:
        basic = f"{user}:{secret}".encode("utf-8", errors="surrogatepass")
        forms.add(base64.b64encode(basic).decode("ascii"))
    patterns = {re.escape(f) for f in forms if f and f != secret}
    patterns.add(_url_encoded_pattern(secret))
    return patterns


class _Patterns:
    """The compiled scanner for one set of secrets (immutable; swapped whole on registration)."""

    def __init__(self, patterns: Iterable[str]) -> None:
        ordered = sorted(set(patterns), key=lambda f: (-len(f), f))  # longer forms first
        parts = []
        self.secrets: re.Pattern[str] | None = None
        if ordered:
            parts.append(f"(?P<secret>{'|'.join(ordered)})")
            self.secrets = re.compile(parts[0])
        parts += [f"(?P<{name}>{pattern})" for name, pattern in _SHAPES.items()]
        self.scan = re.compile("|".join(parts))

    def sub(self, text: str) -> str:
        return self.scan.sub(self._replace, text)

    def _replace(self, match: re.Match[str]) -> str:
        name = match.lastgroup
        if name is None or name == "secret":
            return MARK
        kept = match.group(f"{name}_keep")  # a user name, a header name: still no secret in it
        if self.secrets is not None:
            kept = self.secrets.sub(MARK, kept)
        return kept + MARK


@runtime_checkable
class _Secret(Protocol):
    """pydantic's ``SecretStr``/``SecretBytes`` (matched by shape: this module imports nothing)."""

    def get_secret_value(self) -> str | bytes: ...


class Redactor:
    """A set of secrets and the one scanner that removes them (and credential shapes) from text.

    The process has one, used by the functions of this module and by the CLI;
    build another only to keep a test's secrets apart. Registering rebuilds the
    scanner (rare, at start-up); redacting reads it without a lock.

    Example:
        >>> r = Redactor()
        >>> r.register("s3cret-value", user="elastic")
        >>> r.redact("auth ZWxhc3RpYzpzM2NyZXQtdmFsdWU= for s3cret%2Dvalue")
        'auth *** for ***'
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: dict[str, set[str | None]] = {}
        self._patterns: set[str] = set()
        self._scanner = _Patterns(())

    def register(self, secret: str | bytes | _Secret | None, *, user: str | None = None) -> None:
        """Redact ``secret`` (in all its encodings) from now on.

        ``user`` is the basic-auth user name the secret is sent with, if any, so
        the exact ``Authorization: Basic`` value is recognised too. ``None`` and
        empty secrets are ignored, so settings can be passed through unchecked.
        """
        if isinstance(secret, _Secret):
            secret = secret.get_secret_value()
        if isinstance(secret, bytes):
            secret = secret.decode("utf-8", errors="replace")
        if not secret:
            return
        with self._lock:
            users = self._secrets.setdefault(secret, set())
            if user in users:
                return
            users.add(user)
            self._patterns |= _secret_patterns(secret, user)
            self._scanner = _Patterns(self._patterns)

    def register_from(self, value: Any, *, _depth: int = 0) -> None:
        """Register every secret inside ``value``: settings, dicts, lists, URLs with passwords.

        Walks pydantic models (every ``SecretStr`` field, nested areas included),
        mappings, sequences and parsed command lines (``argparse.Namespace``); a
        string that is a URL with a password in its userinfo registers that
        password. A ``username`` next to a ``password`` gives the ``Basic`` form.
        """
        if _depth > 8:  # noqa: PLR2004 - settings are shallow; cycles must not recurse forever
            return
        if isinstance(value, _Secret):
            self.register(value)
        elif isinstance(value, str):
            self._register_url(value)
        elif isinstance(getattr(type(value), "model_fields", None), dict):  # a pydantic model
            fields = {name: getattr(value, name, None) for name in type(value).model_fields}
            self._register_mapping(fields, _depth)
        elif isinstance(value, Mapping):
            self._register_mapping(value, _depth)
        elif isinstance(value, (list, tuple, set, frozenset)):
            for item in value:
                self.register_from(item, _depth=_depth + 1)
        elif isinstance(value, argparse.Namespace):
            self._register_mapping(vars(value), _depth)

    def _register_mapping(self, fields: Mapping[Any, Any], depth: int) -> None:
        user = fields.get("username")
        for name, item in fields.items():
            if isinstance(item, _Secret):
                basic_user = user if isinstance(user, str) and "password" in str(name) else None
                self.register(item, user=basic_user)
            else:
                self.register_from(item, _depth=depth + 1)

    def _register_url(self, text: str) -> None:
        if "://" not in text or "@" not in text:
            return
        try:
            parts = urlsplit(text.strip())
            password = parts.password
        except ValueError:
            return
        if password:
            user = unquote(parts.username) if parts.username else None
            self.register(unquote(password), user=user)
            self.register(password, user=user)

    def register_environment(self, environ: Mapping[str, str] | None = None) -> None:
        """Register ``SECONDPASS_*`` variables that hold secrets, and passwords in their URLs.

        Commands that build their settings from the environment later (``index``,
        ``eval``, ``demo``) are covered before they log anything.
        """
        env = os.environ if environ is None else environ
        for name, value in env.items():
            upper = name.upper()
            if not upper.startswith("SECONDPASS_"):
                continue
            if _SECRET_ENV.search(upper) and not upper.endswith(("_FILE", "_USERNAME")):
                self.register(value)
            self._register_url(value)

    def secrets(self) -> frozenset[str]:
        """The secrets registered so far (for tests that check whole log outputs)."""
        with self._lock:
            return frozenset(self._secrets)

    def redact(self, text: str) -> str:
        """``text`` with registered secrets and credential shapes replaced by :data:`MARK`."""
        scanner = self._scanner
        out = scanner.sub(text)
        if out == text:  # nothing removed: the common case costs one scan
            return out
        for _ in range(_MAX_PASSES):
            again = scanner.sub(out)
            if again == out:
                return out
            out = again
        return WITHHELD


_SECRET_ENV = re.compile(r"PASSWORD|PASSWD|API_KEY|SECRET|TOKEN")

DEFAULT_REDACTOR = Redactor()
"""The process's redactor: what the CLI registers into and what installed filters use."""


def register_secret(secret: str | bytes | _Secret | None, *, user: str | None = None) -> None:
    """Redact ``secret`` from every log record from now on (see :meth:`Redactor.register`)."""
    DEFAULT_REDACTOR.register(secret, user=user)


def register_secrets_from(value: Any) -> None:
    """Register every secret inside settings or other values (see :meth:`Redactor.register_from`)."""
    DEFAULT_REDACTOR.register_from(value)


def register_environment_secrets(environ: Mapping[str, str] | None = None) -> None:
    """Register the secrets of ``SECONDPASS_*`` variables (see :meth:`Redactor.register_environment`)."""
    DEFAULT_REDACTOR.register_environment(environ)


def registered_secrets() -> frozenset[str]:
    """The secrets registered with the process's redactor so far."""
    return DEFAULT_REDACTOR.secrets()


def redact(text: str) -> str:
    """``text`` with the process's secrets and credential shapes replaced by :data:`MARK`."""
    return DEFAULT_REDACTOR.redact(text)


class RedactingFilter(logging.Filter):
    """A handler filter that rewrites each record so no credential reaches a formatter.

    It never drops a record and never raises: a record it cannot render keeps a
    placeholder message instead. Add it to handlers (a logger's own filters do
    not see records propagated from child loggers); :func:`install_log_redaction`
    does that for the root logger's handlers.

    Example:
        >>> handler = logging.StreamHandler()
        >>> handler.addFilter(RedactingFilter())
    """

    def __init__(self, *, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = DEFAULT_REDACTOR if redactor is None else redactor

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite ``record`` in place and keep it (always ``True``)."""
        try:
            self._redact(record)
        except Exception:  # noqa: BLE001 - logging must go on; say only that it was withheld
            record.msg, record.args = WITHHELD, None
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True

    def _redact(self, record: logging.LogRecord) -> None:
        if getattr(record, "_secondpass_redacted_by", None) is self.redactor:
            return  # a second handler of the same record
        redact = self.redactor.redact
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: keep what can be shown safely
            message = f"{record.msg!s} {record.args!r}"
            record.msg, record.args = message, None
        cleaned = redact(message)
        if cleaned != message:
            self._redact_message(record, cleaned)
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.exc_text:
            exc_clean = redact(record.exc_text)
            if exc_clean != record.exc_text:
                # the exception object itself carries the secret: no handler may render it
                record.exc_text, record.exc_info = exc_clean, None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        setattr(record, "_secondpass_redacted_by", self.redactor)  # noqa: B010

    def _redact_message(self, record: logging.LogRecord, cleaned: str) -> None:
        """Redact msg and args in place, keeping their structure (formatters may read args)."""
        args = record.args
        record.msg = self.redactor.redact(str(record.msg))
        if isinstance(args, tuple):
            record.args = tuple(self._redact_arg(a) for a in args)
        elif isinstance(args, Mapping):
            record.args = {k: self._redact_arg(v) for k, v in args.items()}
        try:
            if record.getMessage() == cleaned:
                return
        except Exception:  # noqa: BLE001, S110 - fall through to the flattened message
            pass
        record.msg, record.args = cleaned, None

    def _redact_arg(self, arg: Any) -> Any:
        if isinstance(arg, str):
            return self.redactor.redact(arg)
        if isinstance(arg, (int, float)) or arg is None:
            return arg
        try:
            text = str(arg)
        except Exception:  # noqa: BLE001 - an arg whose __str__ fails is shown as its type
            return f"<{type(arg).__name__}>"
        cleaned = self.redactor.redact(text)
        return arg if cleaned == text else cleaned


_FILTER = RedactingFilter()


def install_log_redaction(
    *, quiet_http_clients: bool = True, loggers: Iterable[str] = _LIBRARY_LOGGERS
) -> RedactingFilter:
    """Add the redacting filter to the handlers of the root logger and of ``loggers``.

    Call it after logging is configured (``logging.basicConfig(...)`` or your own
    ``dictConfig``); calling it again is harmless and covers handlers added
    since. ``quiet_http_clients`` sets httpx and httpcore (which log every URL at
    INFO) to WARNING unless a level was set for them already.
    """
    for name in (None, *loggers):
        for handler in logging.getLogger(name).handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
    if quiet_http_clients:
        for name in _CHATTY_HTTP_LOGGERS:
            logger = logging.getLogger(name)
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.WARNING)
    return _FILTER
