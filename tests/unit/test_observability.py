"""Tracing, request ids, log set-up and metric conventions of serve and proxy, in-process.

Spans go to the OpenTelemetry SDK's in-memory exporter; the service runs around
the deterministic FakeScorer and the proxy against a scripted upstream
(httpx.MockTransport), as in test_service_app.py and test_proxy_app.py. The same
against real processes and engines is in tests/integration/test_observability_process.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from tests.docs_examples import run_blocks
from tests.fixtures.service import FakeScorer
from tests.unit.test_proxy_admin import client_for, make_proxy
from tests.unit.test_proxy_app import MATCH, Upstream
from tests.unit.test_service_app import DOCS, make_app, running

from secondpass.errors import BackendUnavailableError, ConfigurationError
from secondpass.observability import tracing
from secondpass.observability.logs import (
    MAX_REQUEST_ID_CHARS,
    configure_logging,
    request_id_from,
)
from secondpass.pipeline.engine import ScoringEngine
from secondpass.pipeline.retriever import Retriever
from secondpass.redaction import register_secret
from secondpass.service.app import create_app
from secondpass.service.settings import ServiceSettings
from secondpass.types import Hit

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    try:
        yield exporter
    finally:
        tracing.disable()
        provider.shutdown()


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """configure_logging rewires the root logger; put everything back afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    names = ("uvicorn", "uvicorn.error", "uvicorn.access", "secondpass", "httpx", "httpcore")
    levels = {n: (logging.getLogger(n).level, logging.getLogger(n).propagate) for n in names}
    try:
        yield
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        for n, (level, propagate) in levels.items():
            logging.getLogger(n).setLevel(level)
            logging.getLogger(n).propagate = propagate


def by_name(exported: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in exported if s.name == name]


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


# ---------------------------------------------------------------------------- tracing


async def test_a_rerank_request_is_one_trace_continuing_the_clients_traceparent(
    spans: InMemorySpanExporter,
) -> None:
    async with running(make_app()) as client:
        spans.clear()  # the readiness probe's own spans
        r = await client.post(
            "/v1/rerank",
            json={"query": "capital of France", "documents": DOCS},
            headers={"traceparent": TRACEPARENT},
        )
    assert r.status_code == 200, r.text
    exported = spans.get_finished_spans()
    [server] = by_name(exported, "POST /v1/rerank")
    assert format(server.context.trace_id, "032x") == CLIENT_TRACE
    assert format(parent_of(server) or 0, "016x") == CLIENT_PARENT
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 200
    [score] = by_name(exported, "secondpass.score")
    assert parent_of(score) == server.context.span_id
    children = {s.name for s in exported if parent_of(s) == score.context.span_id}
    assert children == {"secondpass.cache", "secondpass.queue_wait", "secondpass.model"}
    ops = sorted(s.attributes["secondpass.cache.op"] for s in by_name(exported, "secondpass.cache"))  # type: ignore[index]
    assert ops == ["lookup", "write"]
    [wait] = by_name(exported, "secondpass.queue_wait")
    [model] = by_name(exported, "secondpass.model")
    assert wait.end_time == model.start_time  # the wait ends when its batch starts
    assert model.attributes is not None and model.attributes["secondpass.batch.pairs"] == 3
    assert {s.context.trace_id for s in exported} == {server.context.trace_id}


async def test_a_malformed_traceparent_starts_a_new_trace(spans: InMemorySpanExporter) -> None:
    async with running(make_app()) as client:
        r = await client.get("/livez", headers={"traceparent": "00-zz-not-a-trace-01"})
    assert r.status_code == 200
    [server] = by_name(spans.get_finished_spans(), "GET /livez")
    assert server.parent is None and server.context.trace_id != int(CLIENT_TRACE, 16)


class _Stage:
    async def aretrieve(self, query: str, *, size: int, **_: Any) -> list[Hit]:
        return [
            Hit(index="docs", id=str(i), score=1.0, rank=i + 1, fields={"body": f"cat {i}"})
            for i in range(size)
        ]

    def retrieve(self, query: str, *, size: int, **_: Any) -> list[Hit]:
        raise AssertionError


async def test_the_first_stage_is_a_span_of_the_search(spans: InMemorySpanExporter) -> None:
    with ScoringEngine(scorer=FakeScorer()) as engine:
        retriever = Retriever(first_stage=tracing.traced_stage(_Stage()), engine=engine, window=4)
        with tracing.span("request") as root:
            result = await retriever.asearch("cat", k=2)
    assert result.status == "ok"
    exported = spans.get_finished_spans()
    [first] = by_name(exported, "secondpass.first_stage")
    [score] = by_name(exported, "secondpass.score")
    assert parent_of(first) == parent_of(score) == root.get_span_context().span_id
    assert first.end_time is not None and score.start_time is not None
    assert first.end_time <= score.start_time


def test_tracing_off_costs_nothing_and_wraps_nothing() -> None:
    assert not tracing.enabled()
    stage = _Stage()
    assert tracing.traced_stage(stage) is stage
    assert tracing.span("x") is tracing.span("y")  # one shared no-op
    headers: dict[str, str] = {}
    tracing.inject(headers)
    assert headers == {} and tracing.current_context() is None


def test_tracing_is_configured_from_the_flag_or_the_standard_variables() -> None:
    assert tracing.configure(endpoint=None, service_name="s", environ={}) is None
    off = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"}
    assert tracing.configure(endpoint=None, service_name="s", environ=off) is None
    with pytest.raises(ConfigurationError, match="otlp-endpoint"):
        tracing.configure(endpoint="127.0.0.1:4318", service_name="s", environ={})
    provider = tracing.configure(
        endpoint=None,
        service_name="secondpass-serve",
        environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SERVICE_NAME": "x"},
    )
    try:
        assert provider is not None and tracing.enabled()
        assert provider.resource.attributes["service.name"] == "x"
    finally:
        tracing.disable()
        provider.shutdown()


async def test_the_proxy_traces_the_upstream_call_and_sends_its_traceparent_up(
    spans: InMemorySpanExporter,
) -> None:
    upstream = Upstream()
    proxy = make_proxy(upstream)
    try:
        async with client_for(proxy) as client:
            r = await client.post(
                "/docs/_search", json={**MATCH, "size": 3},
                headers={"traceparent": TRACEPARENT, "accept-encoding": "identity"},
            )  # fmt: skip
    finally:
        proxy.close()
    assert r.status_code == 200, r.text
    exported = spans.get_finished_spans()
    [server] = by_name(exported, "POST /{index}/_search")
    assert format(server.context.trace_id, "032x") == CLIENT_TRACE
    [up] = by_name(exported, "secondpass.upstream")
    assert parent_of(up) == server.context.span_id
    sent = upstream.requests[-1].headers["traceparent"]
    assert sent == f"00-{CLIENT_TRACE}-{format(up.context.span_id, '016x')}-01"
    [score] = by_name(exported, "secondpass.score")
    assert parent_of(score) == server.context.span_id
    assert {"secondpass.queue_wait", "secondpass.model"} <= {
        s.name for s in exported if parent_of(s) == score.context.span_id
    }


async def test_without_tracing_the_proxy_passes_the_clients_traceparent_unchanged() -> None:
    upstream = Upstream()
    proxy = make_proxy(upstream)
    try:
        async with client_for(proxy) as client:
            r = await client.get("/_cluster/health", headers={"traceparent": TRACEPARENT})
    finally:
        proxy.close()
    assert r.status_code == 201
    assert upstream.requests[-1].headers["traceparent"] == TRACEPARENT


# ------------------------------------------------------------------------ request ids


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("req-42:abc/def", True),
        ("", False),
        ("has space", False),
        ('quote"or\nnewline', False),
        ("x" * (MAX_REQUEST_ID_CHARS + 1), False),
        ("x" * MAX_REQUEST_ID_CHARS, True),
    ],
)
def test_a_request_id_is_kept_only_when_short_and_safe(sent: str, kept: bool) -> None:
    got = request_id_from(sent.encode("latin-1"))
    assert (got == sent) is kept
    assert len(got) <= MAX_REQUEST_ID_CHARS and got.isprintable() and " " not in got


def test_a_secret_sent_as_request_id_is_replaced() -> None:
    register_secret("Request-Id-Secret-0123456789")
    assert request_id_from("Request-Id-Secret-0123456789") != "Request-Id-Secret-0123456789"


async def test_the_service_echoes_or_makes_a_request_id_on_every_answer() -> None:
    async with running(make_app(api_keys=["k" * 32])) as client:
        given = await client.get("/livez", headers={"x-request-id": "abc-123"})
        made = await client.post("/v1/rerank", json={"query": "q", "documents": ["d"]})
        forged = await client.get("/livez", headers={"x-request-id": "a\tb"})
    assert given.headers["x-request-id"] == "abc-123"
    assert made.status_code == 401 and len(made.headers["x-request-id"]) == 32
    assert forged.headers["x-request-id"] not in ("a\tb", made.headers["x-request-id"])


async def test_the_proxy_echoes_a_request_id_on_searches_pass_through_and_own_paths() -> None:
    proxy = make_proxy(Upstream())
    try:
        async with client_for(proxy) as client:
            answers = [
                await client.post("/docs/_search", json=MATCH, headers={"x-request-id": "s-1"}),
                await client.get("/_cat/indices", headers={"x-request-id": "p-1"}),
                await client.get("/_secondpass/livez", headers={"x-request-id": "o-1"}),
            ]  # fmt: skip
    finally:
        proxy.close()
    assert [a.headers.get_list("x-request-id") for a in answers] == [["s-1"], ["p-1"], ["o-1"]]


class _FailingRetriever:
    async def asearch(self, query: str, **_: Any) -> Any:
        logging.getLogger("secondpass.test").warning("searching for %s", query)
        msg = "engine down"
        raise BackendUnavailableError(msg)

    def ping(self) -> bool:
        return True


async def test_every_log_line_of_a_request_carries_its_id_in_json(
    restored_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(level="info", fmt="json")
    app = create_app(
        ServiceSettings(search_index="docs"), scorer=FakeScorer(), retriever=_FailingRetriever()
    )
    async with running(app) as client:
        capsys.readouterr()
        r = await client.post(
            "/v1/search", json={"query": "cats"}, headers={"x-request-id": "trace-me-7"}
        )
    assert r.status_code == 503
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]
    mine = [line for line in lines if line.get("request_id") == "trace-me-7"]
    assert {line["logger"] for line in mine} >= {"secondpass.test", "secondpass.service"}, lines
    assert all(set(line) >= {"ts", "level", "logger", "message"} for line in lines)


def test_json_lines_are_redacted(
    restored_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    register_secret("s3cret-json-passw0rd")
    configure_logging(level="info", fmt="json")
    logging.getLogger("secondpass.test").warning("connecting with %s", "s3cret-json-passw0rd")
    err = capsys.readouterr().err
    assert "s3cret-json-passw0rd" not in err and json.loads(err)["message"] == "connecting with ***"


def test_the_log_level_governs_every_logger(restored_logging: None) -> None:
    configure_logging(level="warning", fmt="text")
    for name in ("secondpass.service", "uvicorn.error", "uvicorn.access", "httpx", "httpcore"):
        assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
    configure_logging(level="debug", fmt="text")
    assert logging.getLogger("httpx").isEnabledFor(logging.DEBUG)
    with pytest.raises(ConfigurationError, match="log level"):
        configure_logging(level="loud")


def test_serve_and_proxy_take_the_observability_flags() -> None:
    from secondpass.cli import build_parser
    from secondpass.commands._flags import flag_overrides

    for command in ("serve", "proxy"):
        args = build_parser().parse_args(
            [command, "--log-format", "json", "--otlp-endpoint", "http://127.0.0.1:4318"]
        )
        assert args.log_format == "json" and args.otlp_endpoint == "http://127.0.0.1:4318"
        assert "log_format" not in flag_overrides(args)  # process flags, not settings


# ---------------------------------------------------------------------------- metrics


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _assert_conventions(text: str) -> None:
    families = _families(text)
    assert "process_cpu_seconds" in families and "python_info" in families
    assert "python_gc_collections" in families
    assert not [line for line in text.splitlines() if "_created" in line]
    gauges_of_counts = [
        s.name for f in families.values() if f.type == "gauge" for s in f.samples
        if s.name.endswith("_total")
    ]  # fmt: skip
    assert gauges_of_counts == []
    assert "secondpass_cache_backend" not in families


async def scrape_serve_and_proxy() -> tuple[str, str]:
    """``/metrics`` of a service and ``/_secondpass/metrics`` of a proxy, each after one request."""
    async with running(make_app()) as client:
        await client.post("/v1/rerank", json={"query": "capital of France", "documents": DOCS})
        serve = (await client.get("/metrics")).text
    proxy = make_proxy(Upstream())
    try:
        async with client_for(proxy) as client:
            await client.post("/docs/_search", json=MATCH)
            proxied = (await client.get("/_secondpass/metrics")).text
    finally:
        proxy.close()
    return serve, proxied


async def test_serve_and_proxy_export_conventional_series_and_build_info() -> None:
    serve, proxied = await scrape_serve_and_proxy()
    for text in (serve, proxied):
        _assert_conventions(text)
        [info] = _families(text)["secondpass_build_info"].samples
        assert info.value == 1 and set(info.labels) == {"version", "model", "backend", "device"}
    assert _families(proxied)["secondpass_build_info"].samples[0].labels["model"] == (
        "BAAI/bge-reranker-v2-m3"
    )


def test_the_docs_example_runs() -> None:
    namespace = run_blocks("observability.md")
    assert namespace["names"] == [
        "my request", "secondpass.model", "secondpass.queue_wait", "secondpass.score"
    ]  # fmt: skip
    assert not tracing.enabled()
