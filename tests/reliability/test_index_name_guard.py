"""Hostile index names are refused before any request is sent.

Every connector entry point (sync, asyncio, ``connect()``, the facade, the HTTP
service's search configuration) is pointed at a loopback listener that counts
the connections it accepts. A name with a wildcard, a comma, ``_all``, a path
character, a control character or an upper-case letter must raise
:class:`InvalidIndexNameError` while the listener has still seen nothing. A valid
name sent to the same listener proves it would have noticed a request.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from secondpass.config import ConnectionSettings
from secondpass.connectors import (
    AsyncElasticsearchConnector,
    AsyncOpenSearchConnector,
    ElasticsearchConnector,
    OpenSearchConnector,
    connect,
)
from secondpass.errors import BackendUnavailableError, InvalidIndexNameError
from secondpass.pipeline.retriever import Retriever
from secondpass.service.app import create_app
from secondpass.service.settings import ServiceSettings
from secondpass.types import SearchRequest
from tests.fixtures.service import FakeScorer
from tests.reliability._common import running_app
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

HOSTILE_NAMES = [
    "*",
    "docs*",
    "do?s",
    "a,b",
    "docs,-secret",
    "_all",
    "../etc",
    "..",
    ".",
    "docs/_doc/1",
    "docs/../other",
    "docs%2F_search",
    "docs?pretty",
    "docs#frag",
    "a b",
    "a\x00b",
    "a\nb",
    "a\\b",
    "a|b",
    '"docs"',
    "<docs>",
    "Docs",
    "DOCS",
    "remote:docs",
    "-docs",
    "_docs",
    "+docs",
    "",
    "x" * 300,
]
CLASSES = [ElasticsearchConnector, OpenSearchConnector, AsyncElasticsearchConnector, AsyncOpenSearchConnector]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def listener() -> Iterator[TcpProxy]:
    """Accepts and counts connections (forwarding to a closed port, so every request fails)."""
    with TcpProxy(("127.0.0.1", _closed_port())) as proxy:
        yield proxy


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=[repr(n)[:24] for n in HOSTILE_NAMES])
def test_hostile_index_name_is_refused_before_any_request(name: str, listener: TcpProxy) -> None:
    for cls in CLASSES:
        with pytest.raises(InvalidIndexNameError):
            cls(index=name, fields=["body"], hosts=[listener.url])
        with pytest.raises(InvalidIndexNameError):
            cls(index=["docs", name], fields=["body"], hosts=[listener.url])
    for engine in ("elasticsearch", "opensearch"):
        settings = ConnectionSettings(engine=engine, hosts=[listener.url])
        for asynchronous in (False, True):
            with pytest.raises(InvalidIndexNameError):
                connect(index=name, fields=["body"], settings=settings, asynchronous=asynchronous)
    assert listener.accepted == 0, f"{listener.accepted} connection(s) reached the listener for {name!r}"


def test_the_listener_does_see_requests_for_a_valid_name(listener: TcpProxy) -> None:
    with OpenSearchConnector(index="docs", fields=["body"], hosts=[listener.url], deadline_s=1.0, max_attempts=1) as c:
        with pytest.raises(BackendUnavailableError):
            c.search(SearchRequest("cat"))
    assert listener.accepted >= 1

    async def async_search() -> None:
        c = AsyncElasticsearchConnector(index="docs", fields=["body"], hosts=[listener.url], deadline_s=1.0, max_attempts=1)
        try:
            with pytest.raises(BackendUnavailableError):
                await c.search(SearchRequest("cat"))
        finally:
            await c.close()

    before = listener.accepted
    asyncio.run(async_search())
    assert listener.accepted > before


async def test_service_with_a_hostile_search_index_never_contacts_the_engine(listener: TcpProxy) -> None:
    for name in ("*", "_all", "a,b", "../x", "Docs"):
        settings = ServiceSettings(
            max_wait_ms=1, search_index=name, engine={"engine": "opensearch", "hosts": [listener.url]}
        )
        app = create_app(settings, scorer=FakeScorer())
        async with running_app(app, wait_ready=False) as client:
            state = app.state.service
            for _ in range(500):
                if state.load_failed or state.retriever is not None:
                    break
                await asyncio.sleep(0.01)
            assert state.load_failed and state.retriever is None
            assert "InvalidIndexNameError" in (state.model_error or "")
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            search = await client.post("/v1/search", json={"query": "cat"})
            assert search.status_code == 503
    assert listener.accepted == 0


def test_facade_over_a_connector_cannot_be_built_with_a_pattern(listener: TcpProxy) -> None:
    with pytest.raises(InvalidIndexNameError):
        Retriever(connector=OpenSearchConnector(index="logs-*", fields=["body"], hosts=[listener.url]), scorer=FakeScorer())
    assert listener.accepted == 0
    # Patterns are an explicit opt-in, not an accident.
    opted = OpenSearchConnector(index="logs-*", fields=["body"], hosts=[listener.url], allow_index_patterns=True)
    assert opted.indices == ("logs-*",)

