"""Hostile rerank APIs on loopback: what a remote scorer must survive.

Each server here misbehaves in one way a real (or impersonated) API can:
compressed bombs despite ``Accept-Encoding: identity``, a body trickled a
byte at a time, JSON nested past the parser's recursion limit, credentials
in the reference. The scorer must answer with our typed errors, within its
time budget, and never echo a secret.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import SecretStr

from secondpass.connectors._retry import RetryPolicy
from secondpass.errors import (
    ConfigurationError,
    RemoteRerankError,
    RemoteRerankUnavailableError,
)
from secondpass.pipeline.remote import RemoteSettings, build_remote_scorer, parse_remote_reference
from secondpass.pipeline.remote.base import RemoteScorer

pytestmark = [pytest.mark.reliability]

Handler = Callable[[BaseHTTPRequestHandler], None]


@pytest.fixture
def hostile() -> Iterator[Callable[[Handler], str]]:
    """Start a loopback server answering every POST with ``handler``; yields a starter."""
    servers: list[ThreadingHTTPServer] = []

    def start(handler: Handler) -> str:
        class _H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    handler(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), _H)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _json_answer(status: int, body: bytes, headers: dict[str, str] | None = None) -> Handler:
    def answer(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    return answer


def _scorer(
    url: str, *, limit: int = 64 * 1024, timeout_s: float = 1.0, attempts: int = 1
) -> RemoteScorer:
    scorer = build_remote_scorer(
        f"tei:{url}", settings=RemoteSettings(max_response_bytes=limit, max_concurrency=1)
    )
    scorer.retry = RetryPolicy(
        max_attempts=attempts,
        deadline_s=3.0,
        request_timeout_s=timeout_s,
        initial_backoff_s=0.001,
        max_backoff_s=0.002,
    )
    return scorer


def test_a_gzip_bomb_is_refused_not_inflated(hostile: Callable[[Handler], str]) -> None:
    # 32 MiB of JSON whitespace compresses to ~32 KiB: under the byte limit on the wire.
    bomb = gzip.compress(b"[" + b" " * (32 * 1024 * 1024) + b"]", compresslevel=9)

    scorer = _scorer(
        hostile(_json_answer(200, bomb, {"Content-Encoding": "gzip"})), limit=len(bomb) + 1024
    )
    with pytest.raises(RemoteRerankError, match="Content-Encoding"):
        scorer.score_pairs([("q", "d")])
    scorer.close()


def test_a_body_trickled_a_byte_at_a_time_is_cut_at_the_timeout(
    hostile: Callable[[Handler], str],
) -> None:
    stop = threading.Event()

    def answer(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", "1000")
        h.end_headers()
        while not stop.is_set():
            h.wfile.write(b" ")
            h.wfile.flush()
            stop.wait(0.05)  # each byte well inside the per-read timeout

    scorer = _scorer(hostile(answer), timeout_s=0.5)
    started = time.monotonic()
    try:
        with pytest.raises(RemoteRerankUnavailableError):
            scorer.score_pairs([("q", "d")])
        assert time.monotonic() - started < 2.5  # one attempt's timeout, not the stream's length
    finally:
        stop.set()
        scorer.close()


def test_json_nested_past_the_recursion_limit_is_our_error(
    hostile: Callable[[Handler], str],
) -> None:
    body = b"[" * 200_000 + b"]" * 200_000

    scorer = _scorer(hostile(_json_answer(200, body)), limit=len(body) + 1024)
    with pytest.raises(RemoteRerankError, match="not JSON"):
        scorer.score_pairs([("q", "d")])
    scorer.close()


SECRET = "hunter2-Secret-9f8e7d"
KEY = "sp-attack-Key-0123456789abcdef"


@pytest.mark.parametrize(
    "reference",
    [
        f"tei:http://user:{SECRET}@",
        f"vllm:model@http://user:{SECRET}@:8000",
        f"infinity:http://user:{SECRET}@[::1/m",
        f"tei:http://user:{SECRET}@host:notaport",
    ],
)
def test_bad_urls_with_credentials_never_echo_them(reference: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        build_remote_scorer(reference, environ={})
    assert SECRET not in str(caught.value)
    assert caught.value.__cause__ is None or SECRET not in str(caught.value.__cause__)


@pytest.mark.parametrize(
    "reference",
    ["cohere:rerank-v3.5\nINFO forged log line", "jina:model\r\nX-Injected: 1", "voyage:a\tb"],
)
def test_control_characters_in_model_names_are_refused(reference: str) -> None:
    with pytest.raises(ConfigurationError, match="control character"):
        parse_remote_reference(reference)


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b'{"results": null}',
        b'{"results": [{"index": 0, "relevance_score": "NaN"}]}',
        b'{"results": [{"index": 0, "relevance_score": NaN}]}',
        b"[]",
        b"[" * 100_000 + b"]" * 100_000,
    ],
    ids=["empty", "null", "string-score", "nan", "list", "nested"],
)
def test_cohere_sdk_hostile_answers_are_our_error(
    hostile: Callable[[Handler], str], body: bytes
) -> None:
    pytest.importorskip("cohere")
    url = hostile(_json_answer(200, body))
    scorer = build_remote_scorer(
        f"cohere:m@{url}",
        settings=RemoteSettings(api_key=SecretStr("k-cohere-123"), max_response_bytes=1024 * 1024),
    )
    scorer.retry = RetryPolicy(max_attempts=1, deadline_s=3.0, request_timeout_s=1.0)
    with pytest.raises(RemoteRerankError):
        scorer.score_pairs([("q", "d")])
    scorer.close()


def test_an_absurd_retry_after_does_not_stretch_the_deadline(
    hostile: Callable[[Handler], str],
) -> None:
    url = hostile(_json_answer(429, b'{"message": "slow down"}', {"Retry-After": "1000000000"}))
    scorer = _scorer(url, attempts=5)
    started = time.monotonic()
    with pytest.raises(RemoteRerankUnavailableError):
        scorer.score_pairs([("q", "d")])
    assert time.monotonic() - started < 3.5  # the policy's deadline_s=3.0 holds
    assert 1 <= scorer.calls <= 5
    scorer.close()


def test_url_credentials_never_reach_any_log(
    hostile: Callable[[Handler], str], caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []
    refuse = _json_answer(503, b'{"message": "down"}')

    def answer(h: BaseHTTPRequestHandler) -> None:
        seen.append(h.headers.get("Authorization", ""))
        refuse(h)

    url = hostile(answer)
    with_user = url.replace("http://", f"http://user:{SECRET}@")
    scorer = _scorer(with_user, attempts=2)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(RemoteRerankUnavailableError) as caught:
            scorer.score_pairs([("q", "d")])
    scorer.close()
    shown = [caplog.text, repr(scorer), scorer.fingerprint, str(caught.value)]
    shown += [str(e) for e in _chain(caught.value)]
    assert not [text for text in shown if SECRET in text]
    # ... yet they still authenticate, as Basic auth.
    expected = "Basic " + base64.b64encode(f"user:{SECRET}".encode()).decode()
    assert seen == [expected, expected]


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def test_headers_trickled_a_byte_at_a_time_are_cut_at_the_timeout(
    hostile: Callable[[Handler], str],
) -> None:
    stop = threading.Event()

    def answer(h: BaseHTTPRequestHandler) -> None:
        h.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        while not stop.is_set():  # a header that never ends, each byte inside the read timeout
            h.wfile.write(b"a")
            h.wfile.flush()
            stop.wait(0.05)

    scorer = _scorer(hostile(answer), timeout_s=0.5)
    started = time.monotonic()
    try:
        with pytest.raises(RemoteRerankUnavailableError):
            scorer.score_pairs([("q", "d")])
        assert time.monotonic() - started < 2.5
    finally:
        stop.set()
        scorer.close()


def test_connections_are_bounded_by_max_concurrency() -> None:
    from secondpass.pipeline.remote._http import bounded_client

    client = bounded_client(base_url="http://127.0.0.1:1", headers={}, limit=1024, connections=3)
    pool = client._transport._inner._pool  # type: ignore[attr-defined]
    assert pool._max_connections == 3  # httpx ignores Client(limits=) when given a transport
    client.close()


@pytest.mark.parametrize("status", [401, 503])
def test_an_api_echoing_the_credentials_back_does_not_make_us_repeat_them(
    hostile: Callable[[Handler], str], status: int
) -> None:
    def answer(h: BaseHTTPRequestHandler) -> None:
        sent = h.headers.get("Authorization", "")
        _json_answer(status, json.dumps({"message": f"refused {sent}"}).encode())(h)

    url = hostile(answer).replace("http://", f"http://user:{SECRET}@")
    scorer = build_remote_scorer(
        f"tei:{url}", settings=RemoteSettings(api_key=SecretStr(KEY), max_concurrency=1)
    )
    scorer.retry = RetryPolicy(max_attempts=1, deadline_s=3.0, request_timeout_s=1.0)
    encoded = base64.b64encode(f"user:{SECRET}".encode()).decode()
    with pytest.raises(RemoteRerankError) as caught:
        scorer.score_pairs([("q", "d")])
    scorer.close()
    for exc in [caught.value, *_chain(caught.value)]:
        for secret in (KEY, SECRET, encoded):
            assert secret not in str(exc), type(exc).__name__


def test_a_redirect_is_not_followed(hostile: Callable[[Handler], str]) -> None:
    elsewhere: list[str] = []

    def other(h: BaseHTTPRequestHandler) -> None:
        elsewhere.append(h.headers.get("Authorization", ""))
        _json_answer(200, b'[{"index": 0, "score": 1.0}]')(h)

    target = hostile(other)

    def redirect(h: BaseHTTPRequestHandler) -> None:
        h.send_response(307)
        h.send_header("Location", f"{target}/rerank")
        h.send_header("Content-Length", "0")
        h.end_headers()

    scorer = _scorer(hostile(redirect))
    with pytest.raises(RemoteRerankError, match="307"):
        scorer.score_pairs([("q", "d")])
    scorer.close()
    assert elsewhere == []


@pytest.mark.parametrize(
    ("reference", "match"),
    [
        ("tei:", "names no model or URL"),
        ("cohere:  ", "names no model or URL"),
        ("tei:file:///etc/passwd", "needs the server's URL"),
        ("vllm:ftp://h/m", "needs the server's URL"),
        ("vllm:http://h:99999/m", "not an http"),
        ("infinity:http://[::1/m", "cannot be parsed"),
    ],
)
def test_bad_references_are_configuration_errors(reference: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        parse_remote_reference(reference)
