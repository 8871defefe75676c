"""Tracing, request ids and logs of a real ``secondpass proxy`` process against a real engine.

Everything is real: OpenSearch (one engine: what is checked here is the proxy's
own process set-up, the same for both), the proxy started as a user starts it
(``python -m secondpass proxy``) with the tiny cross-encoder, and an OTLP/HTTP
receiver on loopback that decodes the protobuf export requests the proxy's
OpenTelemetry SDK sends. The in-process checks of each span and header are in
tests/unit/test_observability.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from tests.fixtures.servers import wait_for
from tests.fixtures.service import ServiceProcess

from secondpass.servers._process import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{CLIENT_TRACE}-b7ad6b7169203331-01"
# OpenSearch refuses an X-Request-Id that is not 32 hex digits (400), directly and so through
# the proxy, which forwards the client's headers; ids the proxy makes are of that form.
REQUEST_IDS = ("0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210")


class Collector:
    """An OTLP/HTTP trace receiver: keeps every span it is sent, answers 200."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with collector._lock:
                    for resource in request.resource_spans:
                        for scope in resource.scope_spans:
                            collector.spans.extend(scope.spans)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def names(self, trace_id: str) -> set[str]:
        with self._lock:
            return {s.name for s in self.spans if s.trace_id.hex() == trace_id}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    receiver = Collector()
    try:
        yield receiver
    finally:
        receiver.close()


@pytest.fixture
def index(opensearch_url: str) -> Iterator[str]:
    name = f"sp-obs-{uuid.uuid4().hex[:8]}"
    lines = []
    for i in range(12):
        lines.append(json.dumps({"index": {"_index": name, "_id": str(i)}}))
        lines.append(json.dumps({"title": f"note {i}", "body": f"cat food number {i}"}))
    with httpx.Client(base_url=opensearch_url, timeout=60) as client:
        r = client.post(
            "/_bulk?refresh=true", content="\n".join(lines) + "\n",
            headers={"content-type": "application/x-ndjson"},
        )  # fmt: skip
        assert r.status_code == 200 and not r.json()["errors"], r.text[:500]
        try:
            yield name
        finally:
            client.delete(f"/{name}")


def start_proxy(
    upstream: str, index: str, model_dir: Path, log_path: Path, *args: str, env: dict[str, str]
) -> ServiceProcess:
    port = free_port()
    cmd = [
        sys.executable, "-m", "secondpass", "proxy", "--upstream", upstream,
        "--listen", f"127.0.0.1:{port}", "--index", f"{index}=title,body",
        "--rerank-model", str(model_dir), "--rerank-device", "cpu", "--rerank-dtype", "float32",
        *args,
    ]  # fmt: skip
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("SECONDPASS_", "OTEL_"))}
    child_env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    child_env.update(env)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env, cwd=REPO
        )
    proxy = ServiceProcess(
        url=f"http://127.0.0.1:{port}", port=port, process=process, log_path=log_path, args=cmd
    )

    def ready() -> bool:
        assert proxy.alive(), proxy.log()[-3000:]
        try:
            return httpx.get(f"{proxy.url}/_secondpass/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, timeout_s=180)
    return proxy


def test_proxy_process_traces_to_otlp_logs_json_with_request_ids_and_no_per_request_info(
    opensearch_url: str, index: str, tiny_cross_encoder_dir: Path, tmp_path: Path,
    collector: Collector,
) -> None:  # fmt: skip
    proxy = start_proxy(
        opensearch_url, index, tiny_cross_encoder_dir, tmp_path / "proxy.log",
        "--log-level", "warning", "--log-format", "json", "--otlp-endpoint", collector.url,
        env={"OTEL_BSP_SCHEDULE_DELAY": "100"},  # export spans every 0.1 s, not every 5 s
    )  # fmt: skip
    try:
        with httpx.Client(base_url=proxy.url, timeout=60) as client:
            found = client.post(
                f"/{index}/_search", json={"query": {"match": {"body": "cat"}}, "size": 3},
                headers={"traceparent": TRACEPARENT, "x-request-id": REQUEST_IDS[0]},
            )  # fmt: skip
            missing = client.get(
                "/sp-obs-no-such-index/_search", headers={"x-request-id": REQUEST_IDS[1]}
            )
            made = client.get("/_cluster/health")
        assert found.status_code == 200, found.text
        assert found.headers["x-secondpass-rerank"].startswith("ok")
        assert found.headers["x-request-id"] == REQUEST_IDS[0]
        assert missing.status_code == 404 and missing.headers["x-request-id"] == REQUEST_IDS[1]
        assert made.status_code == 200 and len(made.headers["x-request-id"]) == 32
        wanted = {
            "POST /{index}/_search", "secondpass.upstream", "secondpass.score",
            "secondpass.queue_wait", "secondpass.model",
        }  # fmt: skip
        wait_for(lambda: wanted <= collector.names(CLIENT_TRACE), timeout_s=30)
    finally:
        proxy.stop()
    text = proxy.log()
    lines = [line for line in text.splitlines() if line.strip()]
    for line in lines:  # every line is JSON: no stray uvicorn or httpx text line
        record = json.loads(line)
        assert record["level"] in ("warning", "error", "critical"), record
    assert "HTTP Request" not in text  # httpx's per-request INFO line
