"""The proxy's upstream deadline: ``read_timeout_s`` bounds a rewritten search, from arrival.

Against a scripted upstream (httpx.MockTransport) through the ASGI transport.
The deadline reaches the engine twice: as the search's own server-side
``timeout`` in the body, and as the bound of the proxy's wait, after which the
call is cancelled (not left running) and the client gets 504. The same on a
real, paused engine: tests/reliability/test_proxy_upstream_deadline.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
from tests.unit.test_proxy_admin import client_for, make_proxy, searches
from tests.unit.test_proxy_app import MATCH, Upstream

ONE_SEARCH = b'{"index": "docs"}\n' + json.dumps(MATCH).encode() + b"\n"


def _timeout_ms(body: dict[str, object]) -> int:
    match = re.fullmatch(r"(\d+)ms", str(body["timeout"]))
    assert match is not None, body["timeout"]
    return int(match.group(1))


async def test_a_rewritten_search_carries_what_is_left_of_the_deadline_as_its_timeout() -> None:
    upstream = Upstream()
    proxy = make_proxy(upstream, read_timeout_s=5.0)
    async with client_for(proxy) as client:
        single = await client.post("/docs/_search", json=MATCH)
        kept = await client.post("/docs/_search", json={**MATCH, "timeout": "7s"})
        multi = await client.post(
            "/_msearch", content=ONE_SEARCH, headers={"content-type": "application/x-ndjson"}
        )
    assert (single.status_code, kept.status_code, multi.status_code) == (200, 200, 200)
    sent = [json.loads(r.content.splitlines()[-1]) for r in upstream.requests]
    assert 0 < _timeout_ms(sent[0]) <= 5000
    assert sent[1]["timeout"] == "7s"  # the client's own is kept
    assert 0 < _timeout_ms(sent[2]) <= 5000


async def test_without_a_read_timeout_the_search_body_is_left_alone() -> None:
    upstream = Upstream()
    proxy = make_proxy(upstream)
    async with client_for(proxy) as client:
        answer = await client.post("/docs/_search", json=MATCH)
    assert answer.status_code == 200
    assert "timeout" not in json.loads(upstream.requests[0].content)


async def test_a_stalled_engine_is_abandoned_at_the_deadline_with_504() -> None:
    calls: list[str] = []

    async def stalled(request: httpx.Request) -> httpx.Response:
        calls.append("entered")
        try:
            await asyncio.Event().wait()  # an engine that never answers
        finally:
            calls.append("left")  # only a cancellation ends the wait
        raise AssertionError("unreachable")

    proxy = make_proxy(stalled, read_timeout_s=0.3)  # type: ignore[arg-type]
    async with client_for(proxy) as client:
        started = time.monotonic()
        answer = await client.post("/docs/_search", json=MATCH)
        elapsed = time.monotonic() - started
    assert answer.status_code == 504
    assert answer.headers["x-secondpass-rerank"].startswith("failed; reason=engine timed out")
    assert "read_timeout_s" not in answer.text  # the engines' error shape, our wording in the log
    assert 0.3 <= elapsed < 0.3 + 1.5, elapsed
    assert calls == ["entered", "left"]  # cancelled with the request, not left waiting
    assert searches(proxy, "search", "failed", "engine timed out") == 1
