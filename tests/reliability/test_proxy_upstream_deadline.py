"""The proxy in front of a paused engine (SIGSTOP): answered at its deadline, connection freed.

The session's local node of each engine, paused for about 2 s and resumed (as
``local_engine_node`` allows), a proxy with ``read_timeout_s=1`` and ONE upstream connection,
the tiny real cross-encoder. While the node is paused a search through the
proxy must be answered 504 (``failed; reason=engine timed out``) at about 1 s,
not when the node wakes; its upstream connection must be closed, not left
waiting; and once the node is resumed the same single-connection pool must
serve searches again, so nothing leaked.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from secondpass.proxy import BackgroundProxy, ProxySettings, RerankProxy
from secondpass.servers import LocalEngine
from tests.reliability.test_engine_faults import SLACK_S, _open_connections

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]

READ_TIMEOUT_S = 1.0
MATCH = {"query": {"match": {"body": "cat"}}, "size": 3}


@pytest.fixture
def node(local_engine_node: LocalEngine) -> LocalEngine:
    """The session's local node, running (the fixture lets tests pause it if they resume it)."""
    local_engine_node.resume()
    return local_engine_node


@pytest.fixture
def index(node: LocalEngine) -> Iterator[str]:
    name = f"sp-deadline-{uuid.uuid4().hex[:12]}"
    lines = []
    for i in range(20):
        lines.append(f'{{"index": {{"_index": "{name}", "_id": "d{i}"}}}}')
        lines.append(f'{{"title": "doc {i}", "body": "cat {"dog " * (i % 5)}number {i}"}}')
    with httpx.Client(base_url=node.url, timeout=60) as http:
        bulk = http.post(
            "/_bulk?refresh=true",
            content="\n".join(lines) + "\n",
            headers={"content-type": "application/x-ndjson"},
        )
        assert bulk.status_code == 200 and not bulk.json()["errors"], bulk.text
        yield name
        http.delete(f"/{name}")


def test_paused_engine_is_answered_at_the_deadline_and_its_connection_freed(
    node: LocalEngine, index: str, tiny_scorer: Any, figures: Any
) -> None:
    assert node.port is not None
    settings = ProxySettings(
        upstream=node.url,
        listen="127.0.0.1:0",
        window=10,
        read_timeout_s=READ_TIMEOUT_S,
        max_connections=1,
        indices={index: {"fields": ["title", "body"]}},
    )
    app = RerankProxy(settings, scorer=tiny_scorer)
    others = _open_connections(node.port)  # this process' own, not the proxy's (fixtures)
    with BackgroundProxy(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        warm = client.post(f"/{index}/_search", json=MATCH)
        assert warm.status_code == 200 and warm.headers["x-secondpass-rerank"] == "ok", warm.text
        elapsed: list[float] = []
        node.pause()
        try:
            for _ in range(2):
                started = time.monotonic()
                answer = client.post(f"/{index}/_search", json=MATCH)
                elapsed.append(time.monotonic() - started)
                assert answer.status_code == 504, answer.text
                status = answer.headers["x-secondpass-rerank"]
                assert status.startswith("failed; reason=engine timed out"), status
                # Abandoned, not parked: no connection of ours to the paused node remains.
                closed_at = time.monotonic() + 2.0
                while _open_connections(node.port) - others:
                    assert time.monotonic() < closed_at, "upstream connection still open"
                    time.sleep(0.02)
        finally:
            node.resume()
        resumed = time.monotonic()
        while True:  # the one pooled connection serves again: nothing leaked
            again = client.post(f"/{index}/_search", json=MATCH)
            if again.status_code == 200:
                break
            assert time.monotonic() - resumed < 10, (
                f"not served within 10 s of SIGCONT: {again.text}"
            )
        recovered_s = time.monotonic() - resumed
        assert again.headers["x-secondpass-rerank"] == "ok"
    app.close()
    for seconds in elapsed:
        assert READ_TIMEOUT_S - 0.05 <= seconds <= READ_TIMEOUT_S + SLACK_S, seconds
    scenario = f"proxy before a SIGSTOPped {node.name}, read_timeout_s=1, one upstream connection"
    figures.add(scenario, "max search latency (504)", max(elapsed), "s")
    figures.add(scenario, "first reranked search after SIGCONT", recovered_s, "s")
