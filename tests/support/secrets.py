"""The forms a secret takes on its way into a log line, for tests that search log output.

Written independently of ``secondpass.redaction`` on purpose: a test that asked
the code under test which forms to look for would miss the forms it forgets.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import quote, quote_plus

__all__ = [
    "API_KEY",
    "CLIENT_KEY",
    "LeakWatch",
    "REDIS_PASSWORD",
    "TEST_SECRETS",
    "WRONG_PASSWORD",
    "find_leaks",
    "secret_forms",
]

# The secrets the reliability suite configures (with SECURE_PASSWORD of tests/fixtures/servers.py).
API_KEY = (
    "c3AtYXBpLWtleS1pZDpzcC1hcGkta2V5LXNlY3JldA=="  # base64("sp-api-key-id:sp-api-key-secret")
)
REDIS_PASSWORD = "sp-redis-Secret-77"
WRONG_PASSWORD = "sp-wrong-Passw0rd-99"
CLIENT_KEY = "sp-client-Key-0123456789"
TEST_SECRETS = (API_KEY, "sp-api-key-secret", REDIS_PASSWORD, WRONG_PASSWORD, CLIENT_KEY)


def _lower_percent(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), text)


def secret_forms(secret: str, *, user: str | None = "elastic") -> list[str]:
    """``secret`` plain, URL-encoded (both hex cases, unreserved characters too), base64, JSON-escaped.

    ``user`` adds the ``Authorization: Basic`` value (base64 of ``user:secret``).
    """
    every_char = "".join(f"%{b:02X}" for b in secret.encode("utf-8", "surrogatepass"))
    encoded = {quote(secret, safe=""), quote(secret), quote_plus(secret), every_char}
    encoded |= {_lower_percent(form) for form in encoded}
    # "-" is unreserved, but some clients escape it anyway (the form that leaked once)
    encoded.add(secret.replace("-", "%2D"))
    raw = secret.encode("utf-8", "surrogatepass")
    forms = {secret, *encoded, base64.b64encode(raw).decode(), json.dumps(secret)[1:-1]}
    if user is not None:
        forms.add(base64.b64encode(f"{user}:".encode() + raw).decode())
    return sorted(forms)


def find_leaks(text: str, secrets: Iterable[str], *, user: str | None = "elastic") -> list[str]:
    """The forms of ``secrets`` found in ``text``, each shortened to 4 characters (safe to print)."""
    found = []
    for secret in secrets:
        for form in secret_forms(secret, user=user):
            if form in text:
                found.append(f"{form[:4]}... (a form of {secret[:3]}...)")
    return found


class LeakWatch(logging.Handler):
    """A root handler at DEBUG that checks every record, as formatted, for known secrets.

    Only the first few leaks are kept (as shortened forms), so a chatty test
    costs no memory. ``extra`` secrets are looked up at each record (the
    redaction registry can grow during a test); those shorter than 6 characters
    are skipped, as they would match ordinary text.
    """

    def __init__(self, secrets: Iterable[str], extra: Callable[[], Iterable[str]] = tuple) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self._base = tuple(secrets)
        self._extra = extra
        self._forms: list[str] = []
        self._known: frozenset[str] = frozenset()
        self.lines = 0
        self.leaks: list[str] = []

    def forms(self) -> list[str]:
        secrets = frozenset(self._base) | {s for s in self._extra() if len(s) >= 6}  # noqa: PLR2004
        if secrets != self._known:
            self._known = secrets
            self._forms = sorted({f for s in secrets for f in secret_forms(s)})
        return self._forms

    def check(self, text: str, where: str) -> None:
        self.lines += text.count("\n") + 1
        for form in self.forms():
            if form in text and len(self.leaks) < 10:  # noqa: PLR2004
                self.leaks.append(f"{form[:4]}... in {where}")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # noqa: BLE001 - an unformattable record is checked by its parts
            text = f"{record.msg!r} {record.args!r}"
        self.check(text, f"a {record.name} record")

    def check_files(self, root: Path, since: float) -> None:
        """Check the ``service*.log``/``proxy*.log`` files under ``root`` written since ``since``."""
        paths = [p for pattern in ("service*.log", "proxy*.log") for p in root.rglob(pattern)]
        for path in paths:
            try:
                if path.stat().st_mtime >= since:
                    self.check(path.read_text(encoding="utf-8", errors="replace"), path.name)
            except OSError:
                continue
