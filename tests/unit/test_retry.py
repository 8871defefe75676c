"""The single retry layer, exercised through the real clients against a real local listener.

A tiny HTTP server on loopback answers with scripted statuses and counts the
requests it receives, so attempt counts are what actually went over the wire:
that is what proves the clients' own retries are off and ours are on.
"""

from __future__ import annotations

import base64
import json
import logging
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from secondpass.config import ConnectionSettings
from secondpass.connectors import (
    AsyncElasticsearchConnector,
    AsyncOpenSearchConnector,
    ElasticsearchConnector,
    OpenSearchConnector,
)
from secondpass.connectors._retry import RETRYABLE_STATUSES, RetryPolicy, describe_transport_failure
from secondpass.errors import (
    BackendUnavailableError,
    ConfigurationError,
    QueryError,
    SearchDeadlineError,
)
from secondpass.types import SearchRequest

SYNC = {"elasticsearch": ElasticsearchConnector, "opensearch": OpenSearchConnector}
ASYNC = {"elasticsearch": AsyncElasticsearchConnector, "opensearch": AsyncOpenSearchConnector}
FAST = {"initial_backoff_s": 0.01, "max_backoff_s": 0.05}

SEARCH_OK = {
    "took": 1,
    "timed_out": False,
    "_shards": {"total": 1, "successful": 1, "failed": 0},
    "hits": {
        "hits": [
            {"_index": "docs", "_id": "1", "_score": 2.5, "_source": {"title": "one"}},
            {"_index": "docs", "_id": "2", "_score": 1.5, "_source": {"title": "two"}},
        ]
    },
}


def _error(status: int, kind: str, reason: str) -> dict[str, Any]:
    return {
        "error": {"root_cause": [{"type": kind, "reason": reason}], "type": kind, "reason": reason},
        "status": status,
    }


@dataclass
class Reply:
    status: int = 200
    body: Any = field(default_factory=lambda: SEARCH_OK)
    delay_s: float = 0.0


class StubEngine:
    """Answers each request with the next scripted reply (then 200 forever), recording requests."""

    def __init__(self) -> None:
        self.script: list[Reply] = []
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                payload = self.rfile.read(length) if length else b""
                with stub._lock:
                    stub.requests.append((self.command, self.path, dict(self.headers), payload))
                    reply = stub.script.pop(0) if stub.script else Reply()
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                data = json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.send_header("X-Elastic-Product", "Elasticsearch")
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout) before we answered

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def do_HEAD(self) -> None:
                self._answer()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[StubEngine]:
    engine = StubEngine()
    yield engine
    engine.stop()


@pytest.fixture(params=["elasticsearch", "opensearch"])
def engine_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _connector(engine_name: str, url: str, **kwargs: Any) -> Any:
    options = {"max_attempts": 4, "deadline_s": 10.0, "request_timeout_s": 2.0, **FAST, **kwargs}
    return SYNC[engine_name](index="docs", fields=["title^2", "body"], hosts=[url], **options)


def test_success_returns_hits_in_engine_order(stub: StubEngine, engine_name: str) -> None:
    with _connector(engine_name, stub.url) as connector:
        hits = connector.search(SearchRequest("one"))
    assert [(h.id, h.rank, h.score, h.fields["title"]) for h in hits] == [
        ("1", 1, 2.5, "one"),
        ("2", 2, 1.5, "two"),
    ]
    method, path, _, payload = stub.requests[0]
    assert (method, path.split("?")[0]) == ("POST", "/docs/_search")
    sent = json.loads(payload)
    assert sent["query"]["bool"]["must"][0]["multi_match"] == {
        "query": "one",
        "fields": ["title^2", "body"],
    }
    assert sent["size"] == 100
    assert sent["timeout"] == "2000ms"


@pytest.mark.parametrize("status", sorted(RETRYABLE_STATUSES))
def test_retryable_statuses_are_retried_until_success(
    stub: StubEngine, engine_name: str, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    stub.script = [Reply(status, _error(status, "overloaded", "try later"))] * 2
    with caplog.at_level(logging.WARNING, logger="secondpass.connectors"):
        hits = _connector(engine_name, stub.url).search(SearchRequest("one"))
    assert len(hits) == 2
    assert len(stub.requests) == 3
    sleeps = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(sleeps) == 2
    assert f"HTTP {status}" in sleeps[0].getMessage()


@pytest.mark.parametrize(
    ("status", "kind", "reason"),
    [
        (400, "parsing_exception", "unknown query [nope]"),
        (401, "security_exception", "missing authentication credentials"),
        (404, "index_not_found_exception", "no such index [docs]"),
        (500, "illegal_state_exception", "boom"),
    ],
)
def test_other_errors_are_not_retried_and_carry_status_and_reason(
    stub: StubEngine, engine_name: str, status: int, kind: str, reason: str
) -> None:
    stub.script = [Reply(status, _error(status, kind, reason))]
    with pytest.raises(QueryError) as info:
        _connector(engine_name, stub.url).search(SearchRequest("one"))
    assert len(stub.requests) == 1
    assert info.value.status == status
    assert info.value.reason == f"{kind}: {reason}"
    assert f"HTTP {status}" in str(info.value)
    assert info.value.__cause__ is not None  # the client's exception, kept for debugging


def test_persistent_failure_gives_up_after_max_attempts_with_a_chained_error(
    stub: StubEngine, engine_name: str
) -> None:
    stub.script = [Reply(503, _error(503, "unavailable", "shards not ready"))] * 10
    with pytest.raises(BackendUnavailableError) as info:
        _connector(engine_name, stub.url, max_attempts=3).search(SearchRequest("one"))
    assert len(stub.requests) == 3
    assert "gave up after 3 attempt(s)" in str(info.value)
    last = info.value.__cause__
    assert isinstance(last, BackendUnavailableError) and "HTTP 503" in str(last)
    assert last.__cause__ is not None and type(last.__cause__).__module__.split(".")[0] in {
        "elasticsearch",
        "opensearchpy",
    }


def test_the_clients_do_not_retry_on_their_own(stub: StubEngine, engine_name: str) -> None:
    stub.script = [
        Reply(503, _error(503, "unavailable", "x")),
        Reply(502, _error(502, "bad_gateway", "x")),
    ]
    with pytest.raises(BackendUnavailableError):
        _connector(engine_name, stub.url, max_attempts=1).search(SearchRequest("one"))
    assert len(stub.requests) == 1


def test_timeouts_are_retried(stub: StubEngine, engine_name: str) -> None:
    stub.script = [Reply(delay_s=1.5)]
    hits = _connector(engine_name, stub.url, request_timeout_s=0.3).search(SearchRequest("one"))
    assert len(hits) == 2
    assert len(stub.requests) == 2


def test_timeout_that_persists_becomes_backend_unavailable(
    stub: StubEngine, engine_name: str
) -> None:
    stub.script = [Reply(delay_s=1.0)] * 3
    with pytest.raises(BackendUnavailableError, match="timed out"):
        _connector(engine_name, stub.url, request_timeout_s=0.2, max_attempts=2).search(
            SearchRequest("one")
        )
    assert len(stub.requests) == 2


def test_unreachable_port_is_backend_unavailable_within_the_deadline(engine_name: str) -> None:
    connector = _connector(
        engine_name,
        f"http://127.0.0.1:{_closed_port()}",
        max_attempts=1000,
        deadline_s=1.0,
        initial_backoff_s=0.05,
        max_backoff_s=0.2,
    )
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError, match="connection refused") as info:
        connector.search(SearchRequest("one"))
    # behaviour, not speed: the deadline, not the 1000 attempts, ended the call
    assert time.monotonic() - started < 1.0 + 2.0
    assert "gave up after" in str(info.value)


def test_construction_does_no_io(engine_name: str) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        connectors = [
            SYNC[engine_name](index="docs", fields=["body"], hosts=[url]),
            ASYNC[engine_name](index="docs", fields=["body"], hosts=[url]),
        ]
        readable, _, _ = select.select([listener], [], [], 0.3)
        assert readable == [], "constructing a connector opened a connection"
        assert all(c._client is None for c in connectors)
        with pytest.raises(BackendUnavailableError):
            # the first call does connect (and the listener never answers)
            _connector(engine_name, url, request_timeout_s=0.2, max_attempts=1).search(
                SearchRequest("x")
            )
        readable, _, _ = select.select([listener], [], [], 1.0)
        assert readable == [listener]
    finally:
        listener.close()


async def test_async_connectors_search_and_retry(stub: StubEngine, engine_name: str) -> None:
    stub.script = [Reply(503, _error(503, "unavailable", "x"))]
    connector = ASYNC[engine_name](index="docs", fields=["title"], hosts=[stub.url], **FAST)
    try:
        hits = await connector.search(SearchRequest("one", size=2))
    finally:
        await connector.close()
    assert [h.id for h in hits] == ["1", "2"]
    assert len(stub.requests) == 2


async def test_async_query_errors_are_typed(stub: StubEngine, engine_name: str) -> None:
    stub.script = [Reply(400, _error(400, "parsing_exception", "bad"))]
    connector = ASYNC[engine_name](index="docs", fields=["title"], hosts=[stub.url], **FAST)
    try:
        with pytest.raises(QueryError) as info:
            await connector.search(SearchRequest("one"))
    finally:
        await connector.close()
    assert info.value.status == 400 and len(stub.requests) == 1


def test_elasticsearch_media_types_suit_8x_and_9x_servers(stub: StubEngine) -> None:
    ElasticsearchConnector(index="docs", fields=["title"], hosts=[stub.url]).search(
        SearchRequest("a")
    )
    ElasticsearchConnector(
        index="docs", fields=["title"], hosts=[stub.url], compatible_with=8
    ).search(SearchRequest("a"))
    plain, pinned = (r[2] for r in stub.requests)
    lower = [{k.lower(): v for k, v in h.items()} for h in (plain, pinned)]
    assert lower[0]["accept"] == "application/json"
    assert lower[0]["content-type"] == "application/json"
    assert lower[1]["accept"] == "application/vnd.elasticsearch+json; compatible-with=8"
    assert lower[1]["content-type"] == "application/vnd.elasticsearch+json; compatible-with=8"


SECRET = "s3cr3t-Pa55word"
API_KEY = "a2V5aWQ6c2VjcmV0LWFwaS1rZXk="


@pytest.mark.parametrize("auth", ["basic", "basic-in-url", "api_key"])
def test_secrets_never_reach_logs_reprs_or_errors(
    stub: StubEngine, engine_name: str, auth: str, caplog: pytest.LogCaptureFixture
) -> None:
    if auth == "api_key" and engine_name == "opensearch":
        with pytest.raises(ConfigurationError, match="username and password") as refused:
            _connector(engine_name, stub.url, api_key=API_KEY)
        assert API_KEY not in str(refused.value)
        return
    secrets = [SECRET, API_KEY, base64.b64encode(f"elastic:{SECRET}".encode()).decode()]
    credentials: dict[str, Any] = {
        "basic": {"username": "elastic", "password": SECRET},
        "basic-in-url": {},
        "api_key": {"api_key": API_KEY},
    }[auth]
    url = (
        stub.url.replace("http://", f"http://elastic:{SECRET}@")
        if auth == "basic-in-url"
        else stub.url
    )
    stub.script = [
        Reply(503, _error(503, "unavailable", "x")),
        Reply(),
        Reply(401, _error(401, "security_exception", "bad credentials")),
    ]
    with caplog.at_level(logging.DEBUG):
        connector = _connector(engine_name, url, **credentials)
        connector.search(SearchRequest("one"))
        with pytest.raises(QueryError) as info:
            connector.search(SearchRequest("two"))
        texts = [
            caplog.text,
            repr(connector),
            str(connector.settings),
            repr(connector.settings),
            str(info.value),
        ]
        connector.close()
    sent_auth = {k.lower(): v for k, v in stub.requests[0][2].items()}["authorization"]
    assert sent_auth.split()[0] in {"Basic", "ApiKey"}  # credentials were really sent
    for text in texts:
        for secret in secrets:
            assert secret not in text
    assert "retrying in" in caplog.text  # the logs we checked did include a retry line


def test_bad_settings_become_configuration_errors_without_values(engine_name: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        _connector(engine_name, f"ftp://elastic:{SECRET}@host")
    assert SECRET not in str(info.value) and "hosts" in str(info.value)
    with pytest.raises(ConfigurationError, match="no_such_setting"):
        _connector(engine_name, "http://127.0.0.1:9", no_such_setting=1)
    with pytest.raises(ConfigurationError, match="together"):
        _connector(engine_name, "http://127.0.0.1:9", username="elastic")


def test_settings_come_from_environment_and_keywords_override(
    stub: StubEngine, engine_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECONDPASS_ENGINE_HOSTS", f"{stub.url},http://127.0.0.1:9")
    monkeypatch.setenv("SECONDPASS_ENGINE_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("SECONDPASS_ENGINE_USERNAME", "reader")
    monkeypatch.setenv("SECONDPASS_ENGINE_PASSWORD", SECRET)
    connector = SYNC[engine_name](index="docs", fields=["title"], max_attempts=5)
    assert connector.settings.hosts == [stub.url, "http://127.0.0.1:9"]
    assert connector.settings.max_attempts == 5
    assert connector.settings.username == "reader"
    explicit = ConnectionSettings(hosts=[stub.url], max_attempts=1)
    assert (
        SYNC[engine_name](index="docs", fields=["title"], settings=explicit).settings.max_attempts
        == 1
    )


def test_policy_never_sleeps_past_the_deadline() -> None:
    calls: list[float] = []

    def attempt(timeout_s: float) -> None:
        calls.append(timeout_s)
        raise BackendUnavailableError("down")

    policy = RetryPolicy(
        max_attempts=100,
        deadline_s=0.5,
        request_timeout_s=10.0,
        initial_backoff_s=0.2,
        max_backoff_s=0.2,
    )
    with pytest.raises(BackendUnavailableError, match="gave up"):
        policy.call(attempt, what="test", translate=lambda exc, what: None)
    assert 1 <= len(calls) < 100
    assert all(t <= 0.5 for t in calls)  # each attempt's timeout is capped by the time left


def test_unknown_exceptions_are_not_retried_or_masked() -> None:
    calls = []

    def attempt(timeout_s: float) -> None:
        calls.append(timeout_s)
        raise KeyError("bug")

    with pytest.raises(KeyError):
        RetryPolicy().call(attempt, what="test", translate=lambda exc, what: None)
    assert len(calls) == 1


def test_transport_failures_are_described_without_their_text() -> None:
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused to http://user:pw@host")
        except OSError as inner:
            raise RuntimeError("wrapper") from inner
    except RuntimeError as exc:
        assert describe_transport_failure(exc) == "connection refused"
    assert describe_transport_failure(RuntimeError("???")) == "connection failed"


# ------------------------------------------------- the caller's deadline, over the wire


def _server_timeout_ms(payload: bytes) -> int:
    timeout = json.loads(payload)["timeout"]
    assert timeout.endswith("ms"), timeout
    return int(timeout[:-2])


def _options() -> dict[str, Any]:
    # Settings that would wait 10 s per attempt and 30 s in all: the caller's deadline must win.
    return {"max_attempts": 4, "deadline_s": 30.0, "request_timeout_s": 10.0}


def test_sync_search_sends_the_time_left_and_gives_up_at_the_deadline(
    stub: StubEngine, engine_name: str
) -> None:
    stub.script = [Reply(delay_s=3.0)]
    connector = SYNC[engine_name](index="docs", fields=["title"], hosts=[stub.url], **_options())
    try:
        started = time.monotonic()
        with pytest.raises(SearchDeadlineError, match="timed out"):
            connector.search(SearchRequest("one", deadline=started + 0.5))
        elapsed = time.monotonic() - started
    finally:
        connector.close()
    assert elapsed < 0.5 + 1.0, elapsed  # not the 3 s the stub holds, nor the 10 s timeout
    assert len(stub.requests) == 1
    assert 0 < _server_timeout_ms(stub.requests[0][3]) <= 500


async def test_async_search_sends_the_time_left_and_gives_up_at_the_deadline(
    stub: StubEngine, engine_name: str
) -> None:
    stub.script = [Reply(delay_s=3.0)]
    connector = ASYNC[engine_name](index="docs", fields=["title"], hosts=[stub.url], **_options())
    try:
        started = time.monotonic()
        with pytest.raises(SearchDeadlineError, match="timed out"):
            await connector.search(SearchRequest("one", deadline=started + 0.5))
        elapsed = time.monotonic() - started
    finally:
        await connector.close()
    assert elapsed < 0.5 + 1.0, elapsed
    assert 0 < _server_timeout_ms(stub.requests[0][3]) <= 500


def test_without_a_deadline_the_body_keeps_the_configured_server_timeout(
    stub: StubEngine, engine_name: str
) -> None:
    connector = SYNC[engine_name](index="docs", fields=["title"], hosts=[stub.url], **_options())
    try:
        assert connector.search(SearchRequest("one"))
        assert connector.search(SearchRequest("one", deadline=time.monotonic() + 60.0))
    finally:
        connector.close()
    assert _server_timeout_ms(stub.requests[0][3]) == 10_000
    assert _server_timeout_ms(stub.requests[1][3]) == 10_000  # capped by the request timeout


async def test_engine_calls_carry_the_current_traceparent(
    stub: StubEngine, engine_name: str
) -> None:
    """A ``/v1/search`` trace continues into the engine: sync and async connectors send it."""
    from opentelemetry.sdk.trace import TracerProvider

    from secondpass.observability import tracing

    with _connector(engine_name, stub.url) as connector:
        connector.search(SearchRequest("untraced"))
    assert "traceparent" not in {k.lower() for k in stub.requests[-1][2]}  # off: nothing added

    provider = TracerProvider()
    tracing.enable(provider)
    try:
        with _connector(engine_name, stub.url) as connector, tracing.span("sync search"):
            connector.search(SearchRequest("one"))
            sync_trace = tracing.current_trace_id()
        connector = ASYNC[engine_name](index="docs", fields=["title"], hosts=[stub.url], **FAST)
        try:
            with tracing.span("async search"):
                await connector.search(SearchRequest("two"))
                async_trace = tracing.current_trace_id()
        finally:
            await connector.close()
    finally:
        tracing.disable()
        provider.shutdown()
    sent = [{k.lower(): v for k, v in r[2].items()}.get("traceparent") for r in stub.requests[-2:]]
    assert sent[0] is not None and sent[0].split("-")[1] == sync_trace
    assert sent[1] is not None and sent[1].split("-")[1] == async_trace
    assert sync_trace != async_trace
