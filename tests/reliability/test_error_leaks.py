"""Engine errors reach HTTP clients as a status and a plain reason, never as internals.

The service is run in-process against real engines that fail in different
ways: nothing listening, a TLS handshake with a plain-HTTP node, a node that
stops answering, a missing index, a query the engine rejects, wrong
credentials on a secured node. Every answer must be the documented error shape
and must not carry host names, addresses or ports, user names, stack traces,
Java or Python internals, or the engine's request paths.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from secondpass.service.app import create_app
from secondpass.service.settings import ServiceSettings
from tests.fixtures.service import FakeScorer
from tests.reliability._common import corpus, running_app, temp_index
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

# What must never appear in an answer to a client.
FORBIDDEN = re.compile(
    r"localhost|127\.0\.0\.1|::1|Traceback|File \"|\.py\b|\bat (org|java)\.|org\.(opensearch|elasticsearch|apache)"
    r"|java\.|Caused by|urllib3|aiohttp|elastic_transport|opensearchpy|HTTPConnection|ConnectionPool"
    r"|/_search|REST request|\[elastic\]|sp-test-Passw0rd",
    re.IGNORECASE,
)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def index(opensearch_url: str) -> Iterator[str]:
    with temp_index(opensearch_url, corpus(10)) as name:
        yield name


async def _ask(settings: ServiceSettings, payload: dict[str, Any]) -> tuple[int, dict[str, str], str]:
    app = create_app(settings, scorer=FakeScorer())
    async with running_app(app) as client:
        r = await client.post("/v1/search", json=payload)
    return r.status_code, dict(r.headers), r.text


def _service(engine: dict[str, Any], index: str) -> ServiceSettings:
    return ServiceSettings(
        max_wait_ms=1,
        search_index=index,
        search_fields=["title", "body"],
        engine={"max_attempts": 2, "deadline_s": 2.0, "request_timeout_s": 1.0, "initial_backoff_s": 0.01, **engine},
    )


_CHECKED: list[int] = []


@pytest.fixture(scope="module", autouse=True)
def _report(figures: Any) -> Iterator[None]:
    yield
    figures.add("engine errors to HTTP clients", "error answers checked, leaks found: 0", len(_CHECKED), "answers")


def _assert_clean(status: int, text: str, *, port: int | None = None) -> None:
    _CHECKED.append(status)
    leak = FORBIDDEN.search(text)
    assert leak is None, f"answer leaks {leak.group(0)!r}: {text}"
    if port is not None:
        assert str(port) not in text, f"answer leaks the port: {text}"
    assert '"error_type"' in text and '"message"' in text, text


async def test_engine_down_or_tls_mismatch(index: str, opensearch_url: str) -> None:
    port = _closed_port()
    cases = {
        "nothing listening": {"engine": "opensearch", "hosts": [f"http://localhost:{port}"]},
        "tls to a plain node": {"engine": "opensearch", "hosts": [opensearch_url.replace("http://", "https://").replace("127.0.0.1", "localhost")]},
        "elasticsearch down": {"engine": "elasticsearch", "hosts": [f"http://localhost:{port}"]},
    }
    for label, engine in cases.items():
        status, headers, text = await _ask(_service(engine, index), {"query": "cat"})
        assert status == 503, (label, status, text)
        assert headers.get("retry-after"), label
        _assert_clean(status, text, port=port if "listening" in label or "down" in label else None)


async def test_paused_upstream(index: str, opensearch_url: str) -> None:
    port = int(opensearch_url.rsplit(":", 1)[1])
    with TcpProxy(("127.0.0.1", port)) as proxy:
        proxy.pause()
        try:
            status, _, text = await _ask(_service({"engine": "opensearch", "hosts": [f"http://localhost:{proxy.port}"]}, index), {"query": "cat"})
        finally:
            proxy.resume()
    assert status == 503
    _assert_clean(status, text, port=proxy.port)


async def test_missing_index_and_rejected_queries(index: str, opensearch_url: str, elasticsearch_url: str) -> None:
    for url, engine in ((opensearch_url, "opensearch"), (elasticsearch_url, "elasticsearch")):
        status, _, text = await _ask(_service({"engine": engine, "hosts": [url]}, "sp-rel-no-such-index"), {"query": "cat"})
        assert status == 502, text
        _assert_clean(status, text)
        assert "sp-rel-no-such-index" not in text
    # The client's own DSL: a 400 that says what the engine did not like, nothing more.
    settings = _service({"engine": "opensearch", "hosts": [opensearch_url]}, index)
    for payload in (
        {"query": "cat", "body": {"no_such_query": {"x": 1}}},
        {"query": "cat", "filters": [{"range": {"title": {"gte": {"nested": "object"}}}}]},
        {"query": "cat", "body": {"query": {"script": {"script": "throw new Exception('boom')"}}}},
    ):
        status, _, text = await _ask(settings, payload)
        assert 400 <= status < 600 and status != 500, (status, text)
        _assert_clean(status, text)


async def test_wrong_credentials_on_a_secured_node(elasticsearch_secure: Any) -> None:
    settings = _service(
        {"engine": "elasticsearch", "hosts": [elasticsearch_secure.url], "username": "elastic", "password": "wrong-password"},
        "sp-rel-any",
    )
    status, _, text = await _ask(settings, {"query": "cat"})
    assert status == 502, text
    _assert_clean(status, text)
    assert "wrong-password" not in text
