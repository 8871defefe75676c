"""Malformed HTTP/1.x on raw sockets against the real service process and the real proxy.

A seeded generator builds a few hundred requests no HTTP client would send:
broken request lines, unknown methods, ``OPTIONS *`` and absolute-form targets,
bad and duplicate ``Content-Length``, ``Transfer-Encoding`` tricks (chunked
twice, bad chunk sizes, CL.TE / TE.CL smuggling shapes), NUL and non-ASCII bytes,
HTTP/0.9 and the HTTP/2 preface, truncated requests, random bytes. Each goes over
its own loopback connection, the write side is then shut, and everything the
server sends back is read until it closes.

Promise: no 5xx status anywhere in any answer (pipelined answers included), no
connection kept open past the body timeouts, the target alive and answering
fast afterwards, and no traceback in its log. ``SECONDPASS_FUZZ_SCALE`` scales
the count (default 300 per target).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import socket
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.fixtures.service import ServiceProcess
from tests.reliability.conftest import Figures
from tests.reliability.test_bounded_input import (  # noqa: F401 - fixtures
    IDLE_S,
    POOL,
    TOTAL_S,
    proxy_index,
    target_proxy,
    target_service,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

COUNT = int(300 * float(os.environ.get("SECONDPASS_FUZZ_SCALE", "1.0")))
SEED = 20_140_014
STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")

Gen = Callable[[random.Random, str], bytes]


def _request(
    rnd: random.Random, path: str, *, extra: list[bytes] | None = None, body: bytes = b""
) -> bytes:
    lines = [
        b"POST " + path.encode() + b" HTTP/1.1",
        b"Host: 127.0.0.1",
        b"Content-Type: application/json",
    ]
    return b"\r\n".join(lines + (extra or [])) + b"\r\n\r\n" + body


def bad_request_line(rnd: random.Random, path: str) -> bytes:
    return rnd.choice(
        [
            b"GET\r\n\r\n",
            b"GET " + path.encode() + b"\r\nHost: x\r\n\r\n",  # HTTP/0.9 style
            b"GET  " + path.encode() + b"  HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET " + path.encode() + b" HTTP/9.9\r\nHost: x\r\n\r\n",
            b"GET " + path.encode() + b" HTTP/1.1 extra\r\nHost: x\r\n\r\n",
            b"get " + path.encode() + b" http/1.1\r\nHost: x\r\n\r\n",
            b" GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\nHost: x\n\n",  # bare LF
            b"GET / HTTP/1.1\rHost: x\r\r",  # bare CR
            b"GET\t/\tHTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\n" + b"Host: x\r\n" * 3 + b"\r\n",
            b"GET / HTTP/1.1\r\n\r\n",  # no Host
            b"GET /%00%ff%zz HTTP/1.1\r\nHost: x\r\n\r\n",
        ]
    )


def odd_method(rnd: random.Random, path: str) -> bytes:
    method = rnd.choice(
        [
            b"FOO",
            b"BREW",
            b"PROPFIND",
            b"TRACE",
            b"CONNECT",
            b"PATCH",
            b"X" * 300,
            b"G\x00T",
            b"GE T",
            b"\xc3\xa9",
        ]
    )
    return method + b" " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"


def odd_target(rnd: random.Random, path: str) -> bytes:
    target = rnd.choice(
        [b"*", b"http://evil.example" + path.encode(), b"https://127.0.0.1:1/_search", b"127.0.0.1:443", b"//x/_search",
         b"/../../etc/passwd", b"/%2e%2e/_search", b"/_search#frag", b"?q=1", b"/" + b"a" * 9000]
    )  # fmt: skip
    method = rnd.choice([b"OPTIONS", b"GET", b"POST", b"CONNECT"])
    return method + b" " + target + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"


def bad_content_length(rnd: random.Random, path: str) -> bytes:
    value = rnd.choice(
        [[b"-1"], [b"abc"], [b"1, 2"], [b"2", b"3"], [b"2", b"2"], [b"99999999999999999999999"], [b"+2"], [b" 2 "],
         [b"0x2"], [b"2.0"], [b""], [b"\xff"]]
    )  # fmt: skip
    return _request(rnd, path, extra=[b"Content-Length: " + v for v in value], body=b"{}")


def transfer_encoding_trick(rnd: random.Random, path: str) -> bytes:
    body = b'{"query":"q","documents":["a"]}'
    chunk = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    shapes = [
        ([b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"], chunk),
        ([b"Transfer-Encoding: chunked, identity"], chunk),
        ([b"Transfer-Encoding: identity, chunked"], chunk),
        ([b"Transfer-Encoding: xchunked"], chunk),
        ([b"Transfer-Encoding : chunked"], chunk),
        ([b"Transfer-Encoding:\tchunked"], chunk),
        ([b"Transfer-Encoding: chunked"], b"zz\r\n" + body + b"\r\n0\r\n\r\n"),
        ([b"Transfer-Encoding: chunked"], b"-1\r\n" + body + b"\r\n0\r\n\r\n"),
        ([b"Transfer-Encoding: chunked"], b"ffffffffffffffffffff\r\nab\r\n"),
        ([b"Transfer-Encoding: chunked"], b"%x;ext=1\r\n%s\r\n0\r\n\r\n" % (len(body), body)),
        (
            [b"Transfer-Encoding: chunked"],
            b"%x\r\n%s\r\n0\r\n" % (len(body), body),
        ),  # no final CRLF
        ([b"Transfer-Encoding: chunked"], b"5\r\nabc\r\n0\r\n\r\n"),  # short chunk
        # CL.TE and TE.CL smuggling shapes with a second request behind the first
        (
            [b"Content-Length: 4", b"Transfer-Encoding: chunked"],
            b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            [b"Transfer-Encoding: chunked", b"Content-Length: 40"],
            b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        ([b"Content-Length: 0"], b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n"),  # plain pipelining
    ]
    extra, payload = rnd.choice(shapes)
    return _request(rnd, path, extra=extra, body=payload)


def odd_bytes(rnd: random.Random, path: str) -> bytes:
    return rnd.choice(
        [
            b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /\xc3\xa9\xff HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-\x00: v\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: \x00\x01\x7f\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nX-A: \xe2\x98\x83\xff\xfe\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n\xff\xfe: v\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n folded: v\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n",
            _request(rnd, path, extra=[b"Content-Length: 6"], body=b'"\x00\xff"\xc3('),
        ]
    )


def preface_or_old(rnd: random.Random, path: str) -> bytes:
    return rnd.choice(
        [
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00",
            b"GET /\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",  # a TLS ClientHello on plain HTTP
        ]
    )


def truncated(rnd: random.Random, path: str) -> bytes:
    full = _request(
        rnd, path, extra=[b"Content-Length: 31"], body=b'{"query":"q","documents":["a"]}'
    )
    return full[: rnd.randrange(1, len(full))]


def random_bytes(rnd: random.Random, path: str) -> bytes:
    return bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 400)))


GENERATORS: list[Gen] = [
    bad_request_line,
    odd_method,
    odd_target,
    bad_content_length,
    transfer_encoding_trick,
    odd_bytes,
    preface_or_old,
    truncated,
    random_bytes,
]


def exchange(port: int, data: bytes, *, deadline_s: float) -> tuple[list[int], float]:
    """Send ``data``, shut the write side, read until the server closes: (statuses, seconds)."""
    started = time.perf_counter()
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=deadline_s) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            while time.perf_counter() - started < deadline_s:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                out += chunk
    return [int(m) for m in STATUS.findall(out)], time.perf_counter() - started


def fuzz(port: int, paths: list[str], figures: Figures, target: str) -> Counter[int]:
    rnd = random.Random(SEED)
    statuses: Counter[int] = Counter()
    slowest = 0.0
    for i in range(COUNT):
        gen = GENERATORS[i % len(GENERATORS)]
        data = gen(rnd, rnd.choice(paths))
        got, seconds = exchange(port, data, deadline_s=TOTAL_S + IDLE_S + 5)
        slowest = max(slowest, seconds)
        statuses.update(got)
        server_errors = [s for s in got if s >= 500]
        assert not server_errors, f"{gen.__name__} got {got} for {data[:200]!r}"
        assert seconds < TOTAL_S + IDLE_S + 2, (
            f"{gen.__name__} held {seconds:.1f} s: {data[:200]!r}"
        )
    figures.add(f"raw-socket fuzz ({target})", f"requests ({COUNT}), 5xx answers", 0, "")
    figures.add(f"raw-socket fuzz ({target})", "slowest exchange", slowest, "s")
    return statuses


def test_malformed_http_never_gets_a_5xx_from_the_service(
    request: pytest.FixtureRequest, figures: Figures
) -> None:
    service: ServiceProcess = request.getfixturevalue("target_service")
    before = len(service.log())
    statuses = fuzz(
        service.port, ["/v1/rerank", "/rerank", "/v1/search", "/livez"], figures, "service"
    )
    assert statuses[400] > 0 and sum(statuses.values()) > COUNT // 3, statuses
    assert service.alive()
    started = time.perf_counter()
    assert httpx.get(f"{service.url}/livez", timeout=5).status_code == 200
    assert time.perf_counter() - started < 0.5
    log = service.log()[before:]
    assert "Traceback" not in log, log[max(0, log.find("Traceback") - 500) :][:4000]


def test_malformed_http_never_gets_a_5xx_from_the_proxy(
    request: pytest.FixtureRequest, figures: Figures, caplog: pytest.LogCaptureFixture
) -> None:
    url, port = request.getfixturevalue("target_proxy")
    index = request.getfixturevalue("proxy_index")
    caplog.set_level(logging.WARNING)
    paths = [f"/{index}/_search", "/_msearch", f"/{index}/_doc/1", "/_cluster/health"]
    statuses = fuzz(port, paths, figures, "proxy")
    assert statuses[400] > 0 and sum(statuses.values()) > COUNT // 3, statuses
    assert statuses[405] > 0, statuses  # CONNECT, TRACE and unknown methods: answered, not forwarded
    # The test pool holds 4 upstream connections (pool timeout 1 s): a fuzzed request still
    # in flight when the fuzz ends may hold one until its body timeout (TOTAL_S) cuts it.
    started = time.perf_counter()
    deadline = started + TOTAL_S + 2.0
    while True:
        status = httpx.get(f"{url}/_cluster/health", timeout=5).status_code
        if status == 200 or time.perf_counter() > deadline:
            break
    figures.add("raw-socket fuzz (proxy)", "healthy again after the fuzz", time.perf_counter() - started, "s")
    assert status == 200
    for record in caplog.records:
        assert record.exc_info is None, record.getMessage()


# Shapes after which the client leaves at once: uvicorn pauses reading on a pipelined
# request or an upgrade offer, so the leave is seen late, often while the engine's
# answer is being closed; a plain request shut at once is the common case.
LEAVERS = {
    "pipelined": b"POST /_cluster/health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    b"GET /_cluster/health HTTP/1.1\r\nHost: x\r\n\r\n",
    "h2c upgrade offer": b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n"
    b"Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    "websocket offer": b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    "plain, shut at once": b"GET /_cluster/health HTTP/1.1\r\nHost: x\r\n\r\n",
    "search, shut at once": b"POST /{index}/_search HTTP/1.1\r\nHost: x\r\n"
    b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
}


def test_clients_that_leave_never_keep_an_upstream_connection(
    request: pytest.FixtureRequest, figures: Figures
) -> None:
    """After hundreds of clients that left mid-answer, every pooled connection is free.

    The check is the pool's whole capacity at once: as many requests as the test
    pool has connections (4), each holding its connection upstream for longer than
    the pool timeout (1 s). One connection lost to an abandoned answer makes one of
    them wait past the pool timeout: a 503.
    """
    url, port = request.getfixturevalue("target_proxy")
    index = request.getfixturevalue("proxy_index")
    rounds = 40
    for _ in range(rounds):
        for data in LEAVERS.values():
            exchange(port, data.replace(b"{index}", index.encode()), deadline_s=TOTAL_S + IDLE_S + 5)
    hold = f"{url}/_cluster/health?wait_for_nodes=99&timeout=1500ms"
    with ThreadPoolExecutor(POOL) as pool:
        statuses = list(pool.map(lambda _: httpx.get(hold, timeout=10).status_code, range(POOL)))
    figures.add(
        "clients that left mid-answer (proxy)",
        f"{rounds * len(LEAVERS)} left, then {POOL} held requests: 5xx",
        sum(s >= 500 for s in statuses),
        "",
    )
    # The engine answers a wait it could not satisfy with 408; the proxy relays it.
    assert statuses == [408] * POOL, statuses
