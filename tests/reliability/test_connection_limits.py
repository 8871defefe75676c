"""Connections that never finish their request head cannot exhaust the servers.

Found by attacking the hardened build: neither uvicorn server closed a
connection that sent nothing, a partial head or one header line now and then,
so enough idle sockets would take every file descriptor (no key is needed: the
head never completes, so no route, no key check runs). Both the real service
process and the real proxy now close such connections after ``head_timeout_s``
(a clock that arriving bytes do not reset) and refuse connections past
``max_client_connections`` with 503.

Also here: a malformed request that uvicorn answers itself (a broken chunk size
behind a complete head) while the key check answers 401 must not write a
traceback to the log (it did, for every such request: a log flood).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from secondpass.proxy import BackgroundProxy, ProxySettings, RerankProxy
from tests.fixtures.service import ServiceProcess
from tests.reliability.conftest import Figures

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

HEAD_S = 1.0  # head_timeout_s of both targets
CAP = 40  # max_client_connections of both targets
KEY = "connection-limits-key-0123456789"


@pytest.fixture(scope="module")
def service(service_factory: Callable[..., ServiceProcess]) -> ServiceProcess:
    return service_factory(
        settings={"head_timeout_s": HEAD_S, "max_client_connections": CAP},
        env={"SECONDPASS_SERVICE_API_KEYS": KEY},
    )


@pytest.fixture(scope="module")
def proxy(opensearch_url: str, tiny_scorer: Any) -> Iterator[str]:
    settings = ProxySettings(
        upstream=opensearch_url,
        listen="127.0.0.1:0",
        head_timeout_s=HEAD_S,
        max_client_connections=CAP,
        client_api_keys=[KEY],
    )
    app = RerankProxy(settings, scorer=tiny_scorer)
    with BackgroundProxy(app) as url:
        yield url
    app.retriever.close()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(10)
    return sock


def _closed_after(sock: socket.socket, trickle: bytes = b"") -> tuple[float, bytes]:
    """Seconds until the server closes ``sock`` (sending ``trickle`` a byte at a time), and what it said."""
    started = time.monotonic()
    said = b""
    sock.settimeout(0.25)
    sent = 0
    while time.monotonic() - started < 10 * HEAD_S:
        if sent < len(trickle):
            try:
                sock.sendall(trickle[sent : sent + 1])
            except OSError:
                break
            sent += 1
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        said += chunk
    return time.monotonic() - started, said


# A connection that says nothing, a head cut short, one byte at a time, and a 'G'.
SLOW_HEADS = {
    "silent": (b"", b""),
    "partial head": (b"GET /livez HTTP/1.1\r\nhost: x\r\n", b""),
    "one byte": (b"G", b""),
    "header trickle": (b"", b"GET /livez HTTP/1.1\r\nhost: x\r\n" + b"x-pad: 1\r\n" * 40),
}


@pytest.mark.parametrize("target", ["service", "proxy"])
@pytest.mark.parametrize("shape", sorted(SLOW_HEADS))
def test_slow_or_silent_heads_are_closed_after_the_head_timeout(
    request: pytest.FixtureRequest, target: str, shape: str, figures: Figures
) -> None:
    url = request.getfixturevalue(target)
    url = url.url if isinstance(url, ServiceProcess) else url
    first, trickle = SLOW_HEADS[shape]
    with _connect(_port(url)) as sock:
        if first:
            sock.sendall(first)
        took, said = _closed_after(sock, trickle)
    figures.add(f"slow head ({target})", f"{shape}: closed after", took, "s")
    assert HEAD_S * 0.9 <= took < HEAD_S + 3.0, took
    assert said == b"" or said.startswith(b"HTTP/1.1 408"), said[:80]


@pytest.mark.parametrize("target", ["service", "proxy"])
def test_connections_past_the_cap_are_refused_and_idle_ones_expire(
    request: pytest.FixtureRequest, target: str, figures: Figures
) -> None:
    value = request.getfixturevalue(target)
    url = value.url if isinstance(value, ServiceProcess) else value
    port = _port(url)
    idle = [_connect(port) for _ in range(CAP)]
    try:
        with _connect(port) as extra:
            extra.sendall(b"GET /livez HTTP/1.1\r\nhost: x\r\n\r\n")
            answer = extra.recv(4096)
        assert answer.startswith(b"HTTP/1.1 503"), answer[:80]
        started = time.monotonic()
        deadline = started + HEAD_S + 5
        while True:  # the idle ones expire at the head timeout; then the server takes clients again
            status = httpx.get(f"{url}/livez", timeout=5).status_code
            if status != 503 or time.monotonic() > deadline:
                break
        recovered = time.monotonic() - started
    finally:
        for sock in idle:
            sock.close()
    figures.add(f"connection cap ({target})", "served again after", recovered, "s")
    # The service answers its probe; the proxy's gate answers 401 (no key sent): served either way.
    assert status == (200 if target == "service" else 401)


def test_idle_sockets_do_not_pile_up_descriptors(service: ServiceProcess, figures: Figures) -> None:
    def fds() -> int:
        return len(os.listdir(f"/proc/{service.process.pid}/fd"))

    before = fds()
    sockets: list[socket.socket] = []
    try:
        for _ in range(5 * CAP):  # five times the cap, opened as fast as possible
            try:
                sockets.append(_connect(service.port))
            except OSError:
                break
        opened = time.monotonic()
        peak = after = fds()
        while time.monotonic() - opened < HEAD_S + 5:  # sample until the server has let go
            after = fds()
            peak = max(peak, after)
            if after <= before + 2 and time.monotonic() - opened > HEAD_S:
                break
            time.sleep(0.05)
    finally:
        for sock in sockets:
            sock.close()
    figures.add(
        "idle sockets (service)",
        f"descriptors at peak over baseline ({5 * CAP} sockets)",
        peak - before,
        "fds",
    )
    figures.add(
        "idle sockets (service)",
        "descriptors over baseline after the head timeout",
        after - before,
        "fds",
    )
    assert peak - before <= CAP + 5, (before, peak)
    assert after - before <= 2, (before, after)


BAD_CHUNK = (
    b"POST /v1/rerank HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    b"transfer-encoding: chunked\r\n\r\nzz\r\n"
)


@pytest.mark.parametrize(
    "raw",
    [
        BAD_CHUNK,
        BAD_CHUNK.replace(b"/v1/rerank", b"/docs/_search"),
        BAD_CHUNK.replace(b"zz\r\n", b"5\r\nab\r\n-1\r\n"),
        BAD_CHUNK.replace(b"zz\r\n", b"3\r\nabcdef\r\n"),
    ],
    ids=["bad-size", "bad-size-search", "negative-size", "overlong-chunk"],
)
@pytest.mark.parametrize("target", ["service", "proxy"])
def test_refusing_an_already_answered_request_logs_no_traceback(
    request: pytest.FixtureRequest, target: str, raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    value = request.getfixturevalue(target)
    url = value.url if isinstance(value, ServiceProcess) else value
    log_size = value.log_path.stat().st_size if isinstance(value, ServiceProcess) else 0
    with caplog.at_level(logging.INFO), _connect(_port(url)) as sock:
        sock.sendall(raw)
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except OSError:
            pass
    assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 401")), answer[:80]
    alive = httpx.get(f"{url}/livez", timeout=5).status_code
    assert alive == (200 if target == "service" else 401)  # the proxy's gate wants a key
    if isinstance(value, ServiceProcess):
        deadline = time.monotonic() + 2
        text = value.log()[log_size:]
        while time.monotonic() < deadline and "Invalid HTTP request" not in text:
            time.sleep(0.05)
            text = value.log()[log_size:]
    else:
        text = "\n".join(
            r.getMessage() + (str(r.exc_info) if r.exc_info else "") for r in caplog.records
        )
    assert "Traceback" not in text and "Exception in ASGI application" not in text, text[-2000:]


@pytest.mark.parametrize("target", ["service", "proxy"])
@pytest.mark.parametrize(
    "head",
    [
        # answered at once (401 without a key, or the open probe) with the body unread
        b"POST /docs/_search HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: 1000000000\r\n\r\n",
        b"GET /livez HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n",
        b"GET /livez HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n",
    ],
    ids=["huge-length-401", "probe-with-body", "probe-chunked"],
)
def test_an_unread_body_trickling_after_the_answer_does_not_keep_the_connection(
    request: pytest.FixtureRequest, target: str, head: bytes, figures: Figures
) -> None:
    value = request.getfixturevalue(target)
    url = value.url if isinstance(value, ServiceProcess) else value
    trickle = b"1\r\n \r\n" * 40 if b"chunked" in head else b" " * 40
    with _connect(_port(url)) as sock:
        sock.sendall(head)
        took, said = _closed_after(sock, trickle)
    figures.add(f"unread body after the answer ({target})", "closed after", took, "s")
    assert said.startswith(b"HTTP/1.1 "), said[:80]  # it was answered first
    assert took < HEAD_S + 3.0, took


@pytest.mark.parametrize("target", ["service", "proxy"])
def test_websocket_upgrades_are_plain_requests_never_500(
    request: pytest.FixtureRequest, target: str, caplog: pytest.LogCaptureFixture
) -> None:
    value = request.getfixturevalue(target)
    url = value.url if isinstance(value, ServiceProcess) else value
    upgrade = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    with caplog.at_level(logging.INFO):
        for path in ("/docs/_search", "/livez", "/v1/rerank"):
            answer = httpx.get(f"{url}{path}", headers=upgrade, timeout=10)
            assert answer.status_code < 500, (path, answer.status_code, answer.text)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
