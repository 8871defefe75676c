"""secondpass.redaction: no credential survives a log record, in any encoding or record part.

Each test builds its own ``Redactor`` (except the ones about the process-wide
install), and checks the rendered output of a real ``logging`` handler, so what
is asserted is what a log file would hold.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import re
from collections.abc import Iterator
from urllib.parse import quote, quote_plus

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from tests.docs_examples import python_blocks
from tests.support.secrets import find_leaks, secret_forms

from secondpass.config import CacheSettings, ConnectionSettings
from secondpass.redaction import (
    MARK,
    RedactingFilter,
    Redactor,
    install_log_redaction,
    registered_secrets,
)

PASSWORD = "sp-unit-Pa ss/w:rd@é+"
API_KEY = "c3AtaWQ6c3Atc2VjcmV0LWtleS0xMjM0"
REDIS = "redis-Secret_77"
SECRETS = {"password": PASSWORD, "api_key": API_KEY, "redis": REDIS}


def _redactor(*secrets: str, user: str | None = "elastic") -> Redactor:
    redactor = Redactor()
    for secret in secrets:
        redactor.register(secret, user=user)
    return redactor


def _lower(text: str) -> str:
    """Lower-case hex digits of the percent escapes only."""
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), text)


ENCODINGS = {
    "plain": lambda s: s,
    "quote": lambda s: quote(s, safe=""),
    "quote_path": quote,
    "quote_plus": quote_plus,
    "quote lower-case hex": lambda s: _lower(quote(s, safe="")),
    "every char escaped": lambda s: "".join(f"%{b:02x}" for b in s.encode()),
    "dash escaped": lambda s: s.replace("-", "%2D"),
    "basic auth": lambda s: base64.b64encode(f"elastic:{s}".encode()).decode(),
    "basic auth, other user": lambda s: base64.b64encode(f"someone-else:{s}".encode()).decode(),
    "base64 alone": lambda s: base64.b64encode(s.encode()).decode(),
    "json": lambda s: json.dumps({"password": s})[14:-2],
    "json ascii": lambda s: json.dumps(s, ensure_ascii=True)[1:-1],
    "bytes repr": lambda s: repr(s.encode())[2:-1],
}


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@pytest.mark.parametrize("kind", sorted(SECRETS))
def test_each_encoding_of_each_registered_secret_is_removed(kind: str, encoding: str) -> None:
    secret = SECRETS[kind]
    encoded = ENCODINGS[encoding](secret)
    text = f"before {encoded} after; again:{encoded}"
    out = _redactor(secret).redact(text)
    assert find_leaks(out, [secret]) == []
    assert encoded not in out
    assert out.startswith("before ")
    assert MARK in out


def test_basic_auth_fragment_of_an_unknown_user_is_removed() -> None:
    redactor = _redactor(PASSWORD, user=None)
    for user in ("a", "ab", "abc", "elastic"):
        header = base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()
        out = redactor.redact(f"x {header} y")
        password_part = base64.b64encode(PASSWORD.encode()[3:9]).decode()
        assert header not in out and password_part not in out, user


@pytest.mark.parametrize(
    ("text", "gone", "kept"),
    [
        (
            "GET http://elastic:pw-123@127.0.0.1:9200/_search",
            "pw-123",
            "http://elastic:***@127.0.0.1",
        ),
        ("https://u:p%40ss@es.example:443/x", "p%40ss", "https://u:***@es.example"),
        ("redis://:redispw@127.0.0.1:6379/0", "redispw", "redis://:***@127.0.0.1"),
        ("HTTP Request: POST HTTP://ELASTIC:Secret1@H/_bulk", "Secret1", "HTTP://ELASTIC:***@H"),
        ("Authorization: Basic ZWxhc3RpYzpwdw==", "ZWxhc3RpYzpwdw==", "Authorization: Basic ***"),
        ("authorization: bearer tok.en-value", "tok.en-value", "authorization: bearer ***"),
        ("Proxy-Authorization: Basic dTpw", "dTpw", "Proxy-Authorization: Basic ***"),
        ("{'authorization': 'ApiKey abcDEF123=='}", "abcDEF123==", "'authorization': 'ApiKey ***'"),
        ("[(b'authorization', b'Bearer sk-live-1')]", "sk-live-1", "b'Bearer ***'"),
        ("headers {'X-API-Key': 'k3y-value-long'}", "k3y-value-long", "'X-API-Key': '***'"),
        ("x-api-key=raw-key-value-99", "raw-key-value-99", "x-api-key=***"),
        ("Cookie: session=abc123", "session=abc123", "Cookie: ***"),
        ("sent Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig", "eyJhbGciOi", "sent Bearer ***"),
        ("ApiKey c3AtYXBpLWtleS1pZDpzcA==", "c3AtYXBp", "ApiKey ***"),
        ("GET /x?user=a&password=hunter22&q=1", "hunter22", "password=***&q=1"),
        ("/search?api_key=AKIA123&q=cat", "AKIA123", "api_key=***&q=cat"),
        ('{"password": "js0n-pw", "user": "u"}', "js0n-pw", '"password": "***"'),
        ("access_token=tok9 refresh_token=tok8", "tok9", "access_token=*** refresh_token=***"),
    ],
)
def test_generic_credential_shapes_are_removed_without_registration(
    text: str, gone: str, kept: str
) -> None:
    out = Redactor().redact(text)
    assert gone not in out
    assert kept in out


@pytest.mark.parametrize(
    "text",
    [
        "password authentication failed for user elastic",
        "hosts carry credentials that differ from username",
        "password=None api_key=SecretStr('**********')",
        "tokens_in=512 max_token=3",
        "Basic information about the index",
        "GET http://127.0.0.1:9200/docs/_search?q=a@b 200",
        "user@example.com wrote mailto:someone@example.com",
        "rerank_status=partial reranked 37 of 100 in 12.5 ms",
    ],
)
def test_ordinary_lines_are_left_alone(text: str) -> None:
    assert Redactor().redact(text) == text


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO, Redactor]]:
    """A private logger whose handler has a filter with its own redactor."""
    redactor = _redactor(PASSWORD, API_KEY)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    handler.addFilter(RedactingFilter(redactor=redactor))
    logger = logging.getLogger(f"test.redaction.{id(out)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield logger, out, redactor
    logger.removeHandler(handler)


def _no_leak(out: io.StringIO) -> str:
    text = out.getvalue()
    assert find_leaks(text, [PASSWORD, API_KEY]) == []
    return text


class _Opaque:
    """An object whose str() carries a secret (like an httpx.URL with userinfo)."""

    def __str__(self) -> str:
        return f"Conn(password={PASSWORD})"


class _Broken:
    def __str__(self) -> str:
        raise RuntimeError(PASSWORD)

    __repr__ = __str__


def test_secrets_in_message_and_every_kind_of_arg(
    logged: tuple[logging.Logger, io.StringIO, Redactor],
) -> None:
    logger, out, _ = logged
    url = httpx.URL(f"http://elastic:{quote(PASSWORD, safe='')}@127.0.0.1:9200/_search")
    logger.info(f"direct {PASSWORD}")
    logger.info("str arg %s and %r", PASSWORD, API_KEY)
    logger.info('HTTP Request: %s %s "%s %d %s"', "GET", url, "HTTP/1.1", 200, "OK")
    logger.info("object %s number %d float %.1f", _Opaque(), 7, 2.5)
    logger.info("mapping %(key)s %(n)d", {"key": API_KEY, "n": 3})
    logger.info("bytes %r", PASSWORD.encode())
    logger.info(_Opaque())  # msg itself not a str
    text = _no_leak(out)
    assert "number 7 float 2.5" in text and "mapping *** 3" in text
    assert 'HTTP Request: GET http://elastic:***@127.0.0.1:9200/_search "HTTP/1.1 200 OK"' in text


def test_args_keep_their_structure_when_clean_parts_remain(
    logged: tuple[logging.Logger, io.StringIO, Redactor],
) -> None:
    """A formatter that reads record.args (uvicorn's access formatter) still finds a tuple."""
    logger, _, redactor = logged
    seen: list[logging.LogRecord] = []
    logger.addFilter(lambda r: seen.append(r) or True)
    logger.info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", f"/x?api_key={API_KEY}", "1.1", 200
    )
    record = seen[0]
    RedactingFilter(redactor=redactor).filter(record)
    assert isinstance(record.args, tuple) and len(record.args) == 5
    assert record.args[4] == 200
    assert API_KEY not in record.getMessage()


def test_exception_text_and_stack_info_are_redacted(
    logged: tuple[logging.Logger, io.StringIO, Redactor],
) -> None:
    logger, out, _ = logged
    try:
        raise ConnectionError(f"cannot reach http://elastic:{PASSWORD}@h:9200 with {API_KEY}")
    except ConnectionError:
        logger.exception("engine down")
        logger.warning("chained", exc_info=True, stack_info=True)
    try:
        raise ValueError("plain") from KeyError(
            base64.b64encode(f"elastic:{PASSWORD}".encode()).decode()
        )
    except ValueError as exc:
        logger.error("cause", exc_info=exc)
    logger.debug("where %s", API_KEY, stack_info=True)
    text = _no_leak(out)
    assert (
        "Traceback" in text
        and "ConnectionError" in text
        and "Stack (most recent call last)" in text
    )


def test_records_from_third_party_loggers_are_redacted_on_root_handlers() -> None:
    redactor = _redactor(PASSWORD)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RedactingFilter(redactor=redactor))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        for name in (
            "httpx",
            "httpcore.connection",
            "elastic_transport.transport",
            "uvicorn.error",
        ):
            lib = logging.getLogger(name)
            old = lib.level
            lib.setLevel(logging.DEBUG)
            lib.info("to %s", f"http://elastic:{PASSWORD}@127.0.0.1:9200")
            lib.debug(
                "headers %s",
                {
                    "authorization": "Basic "
                    + base64.b64encode(f"elastic:{PASSWORD}".encode()).decode()
                },
            )
            lib.setLevel(old)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    text = out.getvalue()
    assert text.count("to http://elastic:***@127.0.0.1:9200") == 4
    assert find_leaks(text, [PASSWORD]) == []


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: ("%d items", ("many",)), id="bad format arg"),
        pytest.param(lambda: ("%s %s", (1,)), id="too few args"),
        pytest.param(lambda: ("x %s", (_Broken(),)), id="str raises"),
        pytest.param(lambda: (_Broken(), None), id="msg str raises"),
        pytest.param(lambda: (None, None), id="msg None"),
        pytest.param(lambda: (b"\xff\xfe bytes " + PASSWORD.encode(), None), id="msg bytes"),
        pytest.param(lambda: ("%(a)s", ({"b": 1},)), id="missing key"),
        pytest.param(
            lambda: ("nul \x00 and lone surrogate \ud800 " + PASSWORD, None), id="odd chars"
        ),
    ],
)
def test_the_filter_never_raises_and_never_drops_a_record(make: object) -> None:
    msg, args = make()  # type: ignore[operator]
    record = logging.LogRecord("odd", logging.INFO, __file__, 1, msg, args, None)
    if args is None:
        record.args = None
    assert RedactingFilter(redactor=_redactor(PASSWORD)).filter(record) is True
    try:
        rendered = record.getMessage()
    except Exception:  # noqa: BLE001 - a record still unrenderable is no leak
        return
    assert PASSWORD not in rendered


def test_a_secret_rebuilt_around_a_removal_is_withheld() -> None:
    redactor = _redactor("a***b", user=None)
    out = redactor.redact("xa***bb a*a***b**b")
    assert "a***b" not in out


_SURROUNDING = st.text(min_size=0, max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    secret=st.text(st.characters(codec="utf-8"), min_size=1, max_size=24),
    before=_SURROUNDING,
    after=_SURROUNDING,
    encoding=st.sampled_from(sorted(ENCODINGS)),
)
def test_any_secret_in_any_encoding_never_survives(
    secret: str, before: str, after: str, encoding: str
) -> None:
    redactor = _redactor(secret)
    text = before + ENCODINGS[encoding](secret) + after + " " + secret
    out = redactor.redact(text)
    leaks = [f for f in secret_forms(secret) if f in out]
    assert leaks == [], (secret, encoding, out)


@settings(max_examples=60, deadline=None)
@given(
    secret=st.text(st.characters(codec="utf-8", exclude_characters="\n\r"), min_size=1, max_size=16)
)
def test_any_secret_in_a_logged_record_never_reaches_the_output(secret: str) -> None:
    redactor = _redactor(secret)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RedactingFilter(redactor=redactor))
    logger = logging.getLogger("test.redaction.hypothesis")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.warning("pw %s url %s", secret, f"http://elastic:{quote(secret, safe='')}@h/")
        logger.warning("basic %s", base64.b64encode(f"elastic:{secret}".encode()).decode())
    finally:
        logger.removeHandler(handler)
    assert [f for f in secret_forms(secret) if f in out.getvalue()] == []


def test_settings_secrets_and_url_passwords_are_registered() -> None:
    redactor = Redactor()
    engine = ConnectionSettings(hosts=["http://elastic:url-Passw0rd@127.0.0.1:9200"])
    keyed = ConnectionSettings(api_key=SecretStr("engine-api-key-1"))
    cache = CacheSettings(
        backend="redis",
        redis_url="redis://:in-url-redis@127.0.0.1/0",
        redis_password=SecretStr(REDIS),
    )
    args = argparse.Namespace(upstream="http://admin:from-cli-pw@127.0.0.1:9200", verbose=False)
    redactor.register_from({"engine": engine, "cache": cache, "areas": [args, keyed]})
    redactor.register_environment(
        {"SECONDPASS_PROXY_API_KEY": "env-api-key-0001", "SECONDPASS_ENGINE_USERNAME": "elastic", "HOME": "/x",
         "SECONDPASS_CACHE_REDIS_URL": "redis://:env-url-pw@h/0", "OTHER_PASSWORD": "not-ours"}
    )  # fmt: skip
    assert redactor.secrets() >= {
        "url-Passw0rd", "engine-api-key-1", REDIS, "in-url-redis", "from-cli-pw", "env-api-key-0001", "env-url-pw"
    }  # fmt: skip
    assert not redactor.secrets() & {"elastic", "/x", "not-ours"}
    # the user name found next to the password gives the exact basic-auth form
    basic = base64.b64encode(b"elastic:url-Passw0rd").decode()
    assert redactor.redact(f"Authorization-less {basic}") == "Authorization-less ***"


@pytest.fixture
def root_state() -> Iterator[None]:
    """Put back the root handlers' filters and the HTTP client log levels afterwards."""
    root = logging.getLogger()
    filters = {h: list(h.filters) for h in root.handlers}
    levels = {name: logging.getLogger(name).level for name in ("httpx", "httpcore")}
    yield
    for handler, saved in filters.items():
        handler.filters[:] = saved
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_install_covers_root_handlers_and_quiets_http_clients(root_state: None) -> None:
    logging.getLogger("httpx").setLevel(logging.NOTSET)
    logging.getLogger("httpcore").setLevel(logging.DEBUG)  # the user chose: left alone
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logging.getLogger().addHandler(handler)
    try:
        installed = install_log_redaction()
        assert install_log_redaction() is installed and handler.filters.count(installed) == 1
        logging.getLogger().warning("to http://u:plain-pw-9@h:1/")
    finally:
        logging.getLogger().removeHandler(handler)
    assert "plain-pw-9" not in out.getvalue() and "http://u:***@h:1/" in out.getvalue()
    assert logging.getLogger("httpx").level == logging.WARNING
    assert logging.getLogger("httpcore").level == logging.DEBUG


def test_cli_registers_command_line_passwords_before_anything_runs(root_state: None) -> None:
    from secondpass.cli import main

    root = logging.getLogger()
    had = list(root.handlers)
    try:
        code = main(["proxy", "--upstream", "ftp://elastic:cli-Passw0rd-7@127.0.0.1:1"])
    finally:
        for handler in root.handlers[:]:
            if handler not in had:
                root.removeHandler(handler)
    assert code == 2  # not http(s): a clear configuration error, after logging was set up
    assert "cli-Passw0rd-7" in registered_secrets()


def test_docs_one_liner_runs(capsys: pytest.CaptureFixture[str], root_state: None) -> None:
    block = next(b for b in python_blocks("quickstart.md") if "install_log_redaction" in b)
    exec(compile(block, "docs/quickstart.md", "exec"), {"__name__": "__docs__"})
    printed = capsys.readouterr().out
    assert "retrying http://elastic:***@es.internal:9200/docs/_search" in printed
    assert "sent Authorization: Basic ***" in printed
    assert "passw0rd" not in printed


def test_module_imports_nothing_of_ours() -> None:
    import secondpass.redaction as module

    source = open(module.__file__, encoding="utf-8").read()  # noqa: PTH123
    assert "from secondpass" not in source and "import secondpass" not in source
