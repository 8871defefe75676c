"""The input limits shared by the service and the proxy: depth scanner, decompression, middleware.

The middleware is driven through ASGI directly with a scripted ``receive`` (the
way uvicorn hands a body over: several ``http.request`` messages), so the tests
can count how much of a body was pulled and time how long a stalled one is kept.
Real servers are in tests/reliability/test_bounded_input.py.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import tracemalloc
import zlib
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secondpass.proxy.settings import ProxySettings
from secondpass.service.errors import BodyTooLargeError
from secondpass.service.http_limits import (
    BoundedInputMiddleware,
    HttpLimits,
    JsonDepthScanner,
    JsonTooDeepError,
    LimitedH11Protocol,
    UnsupportedEncodingError,
    brief_traceback,
    check_json_depth,
    decompress,
)
from secondpass.service.settings import ServiceSettings

# ------------------------------------------------------------------------ JSON depth


def reference_depth(value: Any) -> int:
    """Nesting depth as the parser sees it: containers count, scalars do not."""
    if isinstance(value, dict):
        return 1 + max((reference_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((reference_depth(v) for v in value), default=0)
    return 0


def depth_ok(data: bytes, limit: int, *, chunk: int | None = None) -> bool:
    scanner = JsonDepthScanner(limit)
    try:
        if chunk is None:
            scanner.feed(data)
        else:
            for i in range(0, len(data), chunk):
                scanner.feed(data[i : i + chunk])
    except JsonTooDeepError:
        return False
    return True


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ('{"a": "[[[[[[[[[[[["}', 1),  # brackets inside a string
        ('["\\"[[[[[[[[[["]', 1),  # an escaped quote does not end the string
        ('["\\\\", [[[]]]]', 4),  # an escaped backslash does: the brackets after count
        ('{"k\\u005b": {"x": [1, {"y": []}]}}', 5),  # a unicode escape, nested shapes
        ('[[[["]]]]"]]]]]', 4),  # closing brackets inside a string are ignored
        ("{}\n[[[]]]\n{}", 3),  # newline-delimited documents each start at 0
        ('"just a string with { and ["', 0),
    ],
)
def test_scanner_counts_only_structural_brackets(text: str, depth: int) -> None:
    data = text.encode()
    assert depth_ok(data, depth)
    if depth:
        assert not depth_ok(data, depth - 1)
    for chunk in (1, 2, 3):  # every chunk boundary, inside escapes included
        assert depth_ok(data, depth, chunk=chunk)
        if depth:
            assert not depth_ok(data, depth - 1, chunk=chunk)


@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_exactly_at_the_limit_passes_and_one_over_is_refused(opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    at = (opener * 64 + "1" + closer * 64).encode()
    over = (opener * 65 + "1" + closer * 65).encode()
    check_json_depth(at, 64)
    with pytest.raises(JsonTooDeepError) as caught:
        check_json_depth(over, 64)
    assert caught.value.status == 400 and caught.value.limit == 64
    assert "64" in str(caught.value) and "max_json_depth" in str(caught.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab\n', max_size=6),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(alphabet='[{"\\k', max_size=4), children, max_size=4)
    ),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(value=json_values, limit=st.integers(1, 8), chunk=st.integers(1, 7))
def test_scanner_agrees_with_the_parsers_depth(value: Any, limit: int, chunk: int) -> None:
    data = json.dumps(value, ensure_ascii=False).encode()
    expected = reference_depth(value) <= limit
    assert depth_ok(data, limit) is expected
    assert depth_ok(data, limit, chunk=chunk) is expected


# ------------------------------------------------------------------- decompression

LIMITS = HttpLimits(max_body_bytes=1024 * 1024, max_compression_ratio=100)


def raw_deflate(data: bytes) -> bytes:
    encoder = zlib.compressobj(wbits=-15)
    return encoder.compress(data) + encoder.flush()


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        (" GZIP ", gzip.compress),
        ("deflate", zlib.compress),  # RFC 9110: the zlib format
        ("deflate", raw_deflate),  # what some clients send instead
        ("identity", lambda b: b),
    ],
)
def test_decompress_reads_every_supported_form(encoding: str, encode: Any) -> None:
    body = json.dumps({"query": {"match": {"title": "x" * 500}}}).encode()
    assert decompress(encode(body), encoding, limits=LIMITS) == body


def test_concatenated_gzip_members_are_all_decoded() -> None:
    parts = [b'{"a":', b"[1,2,3]", b"}"]
    data = b"".join(gzip.compress(p) for p in parts)
    assert decompress(data, "gzip", limits=LIMITS) == b"".join(parts)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_bomb_stops_at_the_cap_without_expanding(encoding: str) -> None:
    plain = b"{" + b" " * (64 * 1024 * 1024) + b"}"  # 64 MiB of JSON whitespace
    bomb = gzip.compress(plain, 9) if encoding == "gzip" else zlib.compress(plain, 9)
    assert len(bomb) < 100 * 1024
    limits = HttpLimits(max_body_bytes=2 * 1024 * 1024, max_compression_ratio=1e9)
    tracemalloc.start()
    try:
        with pytest.raises(BodyTooLargeError) as caught:
            decompress(bomb, encoding, limits=limits)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.status == 413 and caught.value.limit == 2 * 1024 * 1024
    assert peak < 8 * 1024 * 1024, f"decoding held {peak} bytes"


def test_the_bomb_cap_holds_across_gzip_members() -> None:
    member = gzip.compress(b" " * (600 * 1024))
    limits = HttpLimits(max_body_bytes=1024 * 1024, max_compression_ratio=1e9)
    assert len(decompress(member, "gzip", limits=limits)) == 600 * 1024
    with pytest.raises(BodyTooLargeError):
        decompress(member * 2, "gzip", limits=limits)


def test_the_ratio_cap_refuses_a_small_body_that_expands_too_much() -> None:
    plain = b"[" + b"0," * 200_000 + b"0]"
    packed = gzip.compress(plain, 9)
    assert len(plain) / len(packed) > 100
    with pytest.raises(BodyTooLargeError) as caught:
        decompress(packed, "gzip", limits=LIMITS)
    assert "max_compression_ratio" in str(caught.value)
    relaxed = HttpLimits(max_body_bytes=1024 * 1024, max_compression_ratio=10_000)
    assert decompress(packed, "gzip", limits=relaxed) == plain


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        (gzip.compress(b"{}")[:-6], "gzip"),  # truncated
        (b"not gzip at all", "gzip"),
        (b"\x78\x9c garbage", "deflate"),
        (b"{}", "br"),
        (b"{}", "zstd"),
        (b"{}", "gzip, br"),
    ],
)
def test_corrupt_or_unknown_encodings_are_415(data: bytes, encoding: str) -> None:
    with pytest.raises(UnsupportedEncodingError) as caught:
        decompress(data, encoding, limits=LIMITS)
    assert caught.value.status == 415 and caught.value.field == "content-encoding"


# ---------------------------------------------------------------------- middleware


class Script:
    """A scripted ASGI ``receive``: the given messages, then ``stall`` or a disconnect."""

    def __init__(self, chunks: Sequence[bytes], *, gap_s: float = 0.0, stall: bool = False) -> None:
        self.chunks = list(chunks)
        self.gap_s = gap_s
        self.stall = stall
        self.pulled = 0

    async def __call__(self) -> dict[str, Any]:
        if self.pulled < len(self.chunks):
            if self.gap_s:
                await asyncio.sleep(self.gap_s)
            self.pulled += 1
            more = self.pulled < len(self.chunks) or self.stall
            return {"type": "http.request", "body": self.chunks[self.pulled - 1], "more_body": more}
        if self.stall:
            await asyncio.Event().wait()
        return {"type": "http.disconnect"}


async def reading_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body and answers its length."""
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


def render(exc: Any) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    return exc.status, [], json.dumps({"type": exc.error_type, "limit": exc.limit}).encode()


async def call(
    receive: Any,
    headers: Sequence[tuple[bytes, bytes]] = (),
    *,
    app: Any = reading_app,
    **options: Any,
) -> tuple[int, dict[str, Any] | bytes]:
    limits = options.pop(
        "limits",
        HttpLimits(max_body_bytes=1000, max_headers=10, max_header_bytes=2000, max_json_depth=4),
    )
    middleware = BoundedInputMiddleware(app, limits=limits, render=render, **options)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": list(headers)}
    await middleware(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    if status == 200:
        return status, body
    return status, json.loads(body)


CHUNKED = [(b"transfer-encoding", b"chunked")]


async def test_a_body_within_the_limit_reaches_the_app_whatever_the_framing() -> None:
    for headers in (CHUNKED, [(b"content-length", b"1000")]):
        status, body = await call(Script([b"x" * 500, b"y" * 500]), headers)
        assert (status, body) == (200, b"1000")


async def test_a_request_without_framing_has_no_body() -> None:
    # RFC 9112 6.3: no Content-Length and no Transfer-Encoding is a zero-length body.
    script = Script([b"x" * 500])
    assert await call(script, []) == (200, b"0")
    assert script.pulled == 0


async def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    script = Script([b"x" * 2000])
    status, body = await call(script, [(b"content-length", b"2000")])
    assert status == 413 and body == {"type": "body_too_large", "limit": 1000}
    assert script.pulled == 0


@pytest.mark.parametrize(
    "headers",
    [CHUNKED, [(b"content-length", b"10")], [(b"content-length", b"10")] + CHUNKED],
    ids=["chunked", "length-lie", "both"],
)
async def test_bytes_are_counted_as_they_arrive_and_reading_stops_at_the_limit(
    headers: list[tuple[bytes, bytes]],
) -> None:
    script = Script([b"x" * 400] * 100)  # 40 kB offered
    status, body = await call(script, headers)
    assert status == 413 and body["type"] == "body_too_large"
    assert script.pulled == 3, "the middleware read past the limit"


@pytest.mark.parametrize("value", [[b"abc"], [b"-1"], [b"1e3"], [b" "], [b"10", b"11"]], ids=str)
async def test_unreadable_content_lengths_are_400(value: list[bytes]) -> None:
    status, body = await call(Script([b""]), [(b"content-length", v) for v in value])
    assert status == 400 and body["type"] == "malformed_request"


async def test_too_many_headers_or_header_bytes_are_431() -> None:
    many = [(f"x-h{i}".encode(), b"v") for i in range(11)]
    big = [(b"x-big", b"v" * 2100)]
    split = [(b"x-a", b"v" * 1000), (b"x-b", b"v" * 1000)]
    for headers in (many, big, split):
        status, body = await call(Script([b""]), headers)
        assert status == 431 and body["type"] == "headers_too_large"


@pytest.mark.parametrize("part", ["raw_path", "query_string"])
async def test_the_request_target_counts_toward_the_head_size(part: str) -> None:
    limits = HttpLimits(max_body_bytes=1000, max_header_bytes=2000)
    middleware = BoundedInputMiddleware(reading_app, limits=limits, render=render)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], part: b"a" * 2100}
    await middleware(scope, Script([]), send)
    assert sent[0]["status"] == 431


async def test_a_stalled_body_is_dropped_after_the_idle_timeout() -> None:
    limits = HttpLimits(max_body_bytes=10_000, body_idle_timeout_s=0.2)
    started = time.monotonic()
    status, body = await call(Script([b"x" * 5], stall=True), CHUNKED, limits=limits)
    elapsed = time.monotonic() - started
    assert status == 408 and body["type"] == "body_timeout"
    assert 0.15 < elapsed < 2.0


async def test_a_trickled_body_is_dropped_after_the_total_timeout() -> None:
    limits = HttpLimits(max_body_bytes=10_000, body_idle_timeout_s=1.0, body_total_timeout_s=0.3)
    script = Script([b"x"] * 100, gap_s=0.05)  # never idle for long, never done
    started = time.monotonic()
    status, _ = await call(script, CHUNKED, limits=limits)
    assert status == 408
    assert time.monotonic() - started < 1.5
    assert script.pulled < 20


@pytest.mark.parametrize("coding", [b"gzip", b"deflate", b"br", b"GZIP"])
async def test_encodings_outside_the_allowed_set_are_415(coding: bytes) -> None:
    headers = [(b"content-encoding", coding), (b"content-length", b"2")]
    status, body = await call(Script([b"{}"]), headers, encodings=frozenset({"identity"}))
    assert status == 415 and body["type"] == "unsupported_encoding"


@pytest.mark.parametrize(
    "content_type",
    [b"application/json", b"application/json; charset=utf-8", b"application/x-ndjson"],
)
async def test_deep_json_is_refused_while_it_streams(content_type: bytes) -> None:
    deep = b"[" * 50 + b"]" * 50
    script = Script([deep[i : i + 3] for i in range(0, len(deep), 3)])
    status, body = await call(script, [(b"content-type", content_type)] + CHUNKED, json_depth=True)
    assert status == 400 and body == {"type": "json_too_deep", "limit": 4}
    assert script.pulled == 2  # refused at the fifth bracket, the rest never read


async def test_non_json_bodies_are_not_depth_scanned() -> None:
    deep = b"[" * 50
    headers = [(b"content-type", b"application/octet-stream"), (b"content-length", b"50")]
    assert await call(Script([deep]), headers, json_depth=True) == (200, b"50")


async def test_a_client_that_goes_away_cancels_the_work() -> None:
    cancelled = asyncio.Event()

    async def slow_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        try:
            await asyncio.sleep(30)  # an upstream call that would take long
        except asyncio.CancelledError:
            cancelled.set()
            raise

    limits = HttpLimits(max_body_bytes=1000)
    middleware = BoundedInputMiddleware(
        slow_app, limits=limits, render=render, cancel_on_disconnect=True
    )
    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"content-length", b"2")]}

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError("nothing is answered to a client that left")

    await asyncio.wait_for(middleware(scope, Script([b"{}"]), send), 5)
    assert cancelled.is_set()


async def test_an_answered_request_is_not_cancelled_by_the_closing_disconnect() -> None:
    finished = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await reading_app(scope, receive, send)
        await asyncio.sleep(0.05)  # clean-up after the answer
        finished.set()

    status, _ = await call(
        Script([b"{}"]), [(b"content-length", b"2")], app=app, cancel_on_disconnect=True
    )
    assert status == 200 and finished.is_set()


# ---------------------------------------------------------------- settings, logging


def test_both_apps_pin_h11_with_the_head_cap() -> None:
    for limits in (HttpLimits.from_settings(ServiceSettings()), ProxySettings().http_limits()):
        kwargs = limits.uvicorn_kwargs()
        assert kwargs["h11_max_incomplete_event_size"] == 64 * 1024
        assert issubclass(kwargs["http"], LimitedH11Protocol)
        # The protocol carries the head timeout and the connection cap uvicorn lacks.
        assert kwargs["http"].limits is limits
        assert (limits.head_timeout_s, limits.max_client_connections) == (10.0, 1024)


def test_proxy_decoding_cap_defaults_to_the_search_body_limit() -> None:
    limits = ProxySettings(max_search_body_bytes=4096).http_limits()
    assert limits.decompressed_cap == 4096
    assert limits.max_body_bytes == 100 * 1024 * 1024


def test_a_recursion_error_is_logged_in_one_short_line() -> None:
    def dive(n: int) -> int:
        return dive(n + 1) + 1

    with pytest.raises(RecursionError) as caught:
        dive(0)
    line = brief_traceback(caught.value)
    assert "\n" not in line and len(line) < 500
    assert line.startswith("RecursionError: maximum recursion depth")
    assert "dive" in line
