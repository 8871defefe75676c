"""Remote rerank APIs as scorers, over real HTTP on loopback.

Two kinds of server answer: our own ``secondpass serve`` app (in-process under
uvicorn, around the deterministic ``FakeScorer``) for the Cohere v2 and TEI
shapes it speaks, and a small ``http.server`` written here for the shapes we do
not serve (Jina, Voyage, Mixedbread, Infinity, vLLM). The fake records every
request so the tests can assert the exact bodies against each provider's
documented example, count calls (splitting, retries, cache) and script
failures (503 then 200, 400, slow answers, oversized bodies).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from tests.fixtures.service import FakeScorer
from tests.support.secrets import find_leaks

from secondpass.connectors._retry import RetryPolicy
from secondpass.errors import (
    ConfigurationError,
    RemoteRerankError,
    RemoteRerankUnavailableError,
)
from secondpass.pipeline.cache import LRUScoreCache
from secondpass.pipeline.engine import ScoringEngine
from secondpass.pipeline.remote import (
    RemoteReference,
    RemoteSettings,
    build_remote_scorer,
    parse_remote_reference,
)
from secondpass.pipeline.remote.base import RemoteScorer

KEY = "sp-remote-Key-0123456789abcdef"

# The documented examples: Jina's API page, Voyage's reference, Mixedbread's, TEI's, vLLM's.
QUERY = "Organic skincare products for sensitive skin"
DOCS = [
    "Organic skincare for sensitive skin with aloe vera and chamomile.",
    "New makeup trends focus on bold colors and innovative techniques.",
    "Bio-Hautpflege für empfindliche Haut mit Aloe Vera und Kamille.",
]
SCORES = [0.9, 0.1, 0.7]  # what the fake answers for DOCS, listed best first as the APIs do


def fast_retry(**overrides: Any) -> RetryPolicy:
    options: dict[str, Any] = {
        "max_attempts": 3,
        "deadline_s": 10.0,
        "request_timeout_s": 5.0,
        "initial_backoff_s": 0.001,
        "max_backoff_s": 0.002,
    }
    options.update(overrides)
    return RetryPolicy(**options)


# ---------------------------------------------------------------- the fake API server


def _ranked(n: int, scores: list[float]) -> list[int]:
    return sorted(range(n), key=lambda i: -scores[i])


def answer_for(path: str, body: dict[str, Any]) -> Any:
    """A well-formed answer in the provider's shape: score = SCORES by text, best first."""
    texts = body.get("documents") or body.get("texts") or body.get("input") or body.get("text_2")
    scores = [SCORES[DOCS.index(t)] if t in DOCS else 0.5 - 0.01 * len(t) for t in texts]
    order = _ranked(len(texts), scores)
    if path == "/rerank" and "texts" in body:  # TEI
        return [{"index": i, "score": scores[i]} for i in order]
    if path == "/v1/reranking":  # Mixedbread
        data = [{"index": i, "score": scores[i], "object": "rank_result"} for i in order]
        return {"object": "list", "model": body["model"], "data": data, "usage": {}}
    if path == "/score":  # vLLM /score: input order
        data = [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)]
        return {"id": "score-1", "object": "list", "model": body["model"], "data": data}
    results = [{"index": i, "relevance_score": scores[i]} for i in order]
    if body.get("truncation") is not None:  # Voyage
        return {"object": "list", "data": results, "model": body["model"], "usage": {}}
    return {"model": body.get("model"), "results": results, "usage": {"total_tokens": 10}}


class FakeApi:
    """Records requests; ``script`` (when set) decides each answer: (status, body) or None."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: Callable[[int, str, dict[str, Any]], tuple[int, Any] | None] | None = None
        self.in_flight = 0
        self.most_in_flight = 0
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with api._lock:
                    n = len(api.requests)
                    api.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "body": body}
                    )
                    api.in_flight += 1
                    api.most_in_flight = max(api.most_in_flight, api.in_flight)
                try:
                    scripted = api.script(n, self.path, body) if api.script else None
                    status, answer = scripted or (200, answer_for(self.path, body))
                    raw = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                finally:
                    with api._lock:
                        api.in_flight -= 1

        return Handler

    def bodies(self) -> list[dict[str, Any]]:
        return [r["body"] for r in self.requests]


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi()
    thread = threading.Thread(target=fake.server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield fake
    fake.release.set()
    fake.server.shutdown()
    fake.server.server_close()


def remote(reference: str, **settings: Any) -> RemoteScorer:
    retry = settings.pop("retry", None)
    scorer = build_remote_scorer(reference, settings=RemoteSettings(api_key=KEY, **settings))
    if retry is not None:
        scorer.retry = retry
    return scorer


# ---------------------------------------------------------------- documented request bodies

EXPECTED = {
    "jina": (
        "jina:jina-reranker-v2-base-multilingual@{url}",
        "/v1/rerank",
        {
            "model": "jina-reranker-v2-base-multilingual",
            "query": QUERY,
            "documents": DOCS,
            "top_n": 3,
            "return_documents": False,
        },
    ),
    "voyage": (
        "voyage:rerank-2.5@{url}",
        "/v1/rerank",
        {"query": QUERY, "documents": DOCS, "model": "rerank-2.5", "top_k": 3, "truncation": True},
    ),
    "mixedbread": (
        "mixedbread:mixedbread-ai/mxbai-rerank-large-v2@{url}",
        "/v1/reranking",
        {
            "model": "mixedbread-ai/mxbai-rerank-large-v2",
            "query": QUERY,
            "input": DOCS,
            "top_k": 3,
            "return_input": False,
        },
    ),
    "tei": (
        "tei:{url}",
        "/rerank",
        {"query": QUERY, "texts": DOCS, "raw_scores": True, "truncate": True},
    ),
    "infinity": (
        "infinity:{url}/BAAI/bge-reranker-v2-m3",
        "/rerank",
        {
            "query": QUERY,
            "documents": DOCS,
            "model": "BAAI/bge-reranker-v2-m3",
            "return_documents": False,
            "top_n": 3,
        },
    ),
    "vllm": (
        "vllm:{url}/BAAI/bge-reranker-v2-m3",
        "/rerank",
        {"model": "BAAI/bge-reranker-v2-m3", "query": QUERY, "documents": DOCS, "top_n": 3},
    ),
    "vllm-score": (
        "vllm-score:{url}/BAAI/bge-reranker-v2-m3",
        "/score",
        {"model": "BAAI/bge-reranker-v2-m3", "text_1": QUERY, "text_2": DOCS},
    ),
}


@pytest.mark.parametrize("provider", sorted(EXPECTED))
def test_each_protocol_sends_the_documented_body_and_keeps_input_order(
    api: FakeApi, provider: str
) -> None:
    reference, path, body = EXPECTED[provider]
    scorer = remote(reference.format(url=api.url))
    scores = scorer.score(QUERY, DOCS)
    assert len(api.requests) == 1
    sent = api.requests[0]
    assert sent["path"] == path
    assert sent["body"] == body  # exact: no extra field, none missing
    assert sent["headers"]["Authorization"] == f"Bearer {KEY}"
    assert sent["headers"]["Accept-Encoding"] == "identity"
    assert [s.raw for s in scores] == SCORES  # the answer lists best first; we keep input order
    if provider == "tei":  # logits in, sigmoid out, as local cross-encoders report them
        assert scores[0].normalized == pytest.approx(1 / (1 + 2.718281828459045**-0.9))
    else:
        assert [s.normalized for s in scores] == SCORES
    assert f"remote|{provider}|" in scorer.fingerprint
    scorer.close()


def test_calls_split_at_the_limit_run_concurrently_within_it_and_merge_in_order(
    api: FakeApi,
) -> None:
    gate = threading.Barrier(2, timeout=10)  # two calls must be in flight at once to pass

    def script(n: int, path: str, body: dict[str, Any]) -> None:
        if n < 2:
            gate.wait()
        return None

    api.script = script
    scorer = remote(f"vllm:{api.url}/m", max_documents=2, max_concurrency=2)
    texts = [f"passage number {i}" + "x" * i for i in range(5)]
    pairs = [("q1", t) for t in texts] + [("q2", texts[0])]
    scores = scorer.score_pairs(pairs)
    sizes = sorted(len(b["documents"]) for b in api.bodies())
    assert sizes == [1, 1, 2, 2]  # q1: 2 + 2 + 1, q2: 1
    assert {b["query"] for b in api.bodies()} == {"q1", "q2"}
    assert api.most_in_flight == 2  # concurrent, never above max_concurrency
    expected = [0.5 - 0.01 * len(t) for t in texts] + [0.5 - 0.01 * len(texts[0])]
    assert [s.raw for s in scores] == pytest.approx(expected)
    scorer.close()


def test_503_is_retried_through_the_policy_then_succeeds(api: FakeApi) -> None:
    api.script = lambda n, path, body: (503, {"message": "overloaded"}) if n == 0 else None
    scorer = remote(f"jina:m@{api.url}", retry=fast_retry())
    assert [s.raw for s in scorer.score(QUERY, DOCS)] == SCORES
    assert len(api.requests) == 2 and scorer.calls == 2


def test_retryable_failures_give_up_as_unavailable(api: FakeApi) -> None:
    api.script = lambda n, path, body: (429, {"detail": "rate limited"})
    scorer = remote(f"voyage:m@{api.url}", retry=fast_retry(max_attempts=3))
    with pytest.raises(RemoteRerankUnavailableError, match="HTTP 429") as caught:
        scorer.score(QUERY, DOCS)
    assert len(api.requests) == 3
    assert caught.value.__cause__ is not None


def test_400_is_not_retried_and_maps_to_our_error(api: FakeApi) -> None:
    api.script = lambda n, path, body: (400, {"detail": "top_k must be <= 1000"})
    scorer = remote(f"mixedbread:m@{api.url}", retry=fast_retry())
    with pytest.raises(RemoteRerankError, match="HTTP 400: top_k must be <= 1000") as caught:
        scorer.score(QUERY, DOCS)
    assert caught.value.status == 400
    assert not isinstance(caught.value, RemoteRerankUnavailableError)
    assert len(api.requests) == 1


def test_a_slow_answer_times_out_and_is_retried_within_the_deadline(api: FakeApi) -> None:
    def script(n: int, path: str, body: dict[str, Any]) -> None:
        if n == 0:
            api.release.wait(10)  # held until the test ends: the client must give up first
        return None

    api.script = script
    scorer = remote(f"tei:{api.url}", retry=fast_retry(request_timeout_s=0.3))
    started = time.monotonic()
    assert [s.raw for s in scorer.score(QUERY, DOCS)] == SCORES
    assert time.monotonic() - started < 5.0
    assert len(api.requests) == 2


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        ({"results": [{"index": 0, "relevance_score": 0.5}]}, "expected 3 scored"),
        ({"results": [{"index": 0, "relevance_score": 0.5}] * 3}, "malformed"),
        ({"results": [{"index": 7, "relevance_score": 0.5}] * 3}, "malformed"),
        (b"<html>bad gateway</html>", "not JSON"),
    ],
)
def test_malformed_answers_are_errors_not_shifted_rankings(
    api: FakeApi, answer: Any, match: str
) -> None:
    api.script = lambda n, path, body: (200, answer)
    scorer = remote(f"vllm:{api.url}/m", retry=fast_retry())
    with pytest.raises(RemoteRerankError, match=match):
        scorer.score(QUERY, DOCS)
    assert len(api.requests) == 1


def test_response_size_is_bounded(api: FakeApi) -> None:
    api.script = lambda n, path, body: (200, {"results": [], "pad": "x" * 5000})
    scorer = remote(f"jina:m@{api.url}", max_response_bytes=1024, retry=fast_retry())
    with pytest.raises(RemoteRerankError, match="1024"):
        scorer.score(QUERY, DOCS)


def test_the_key_never_reaches_logs_repr_fingerprint_or_errors(
    api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    api.script = lambda n, path, body: (
        (503, {"message": "busy"}) if n == 0 else (401, {"message": f"bad key {KEY}"})
    )
    scorer = remote(f"jina:m@{api.url}", retry=fast_retry())
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(RemoteRerankError, match="HTTP 401") as caught:
            scorer.score(QUERY, DOCS)
        logging.getLogger("test").warning("failed: %s", caught.value)
    assert "retrying" in caplog.text  # the 503 was logged before its retry
    seen = "\n".join([caplog.text, repr(scorer), scorer.fingerprint, str(caught.value)])
    assert find_leaks(seen, [KEY]) == []
    assert api.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"


def test_scores_are_cached_like_local_ones(api: FakeApi) -> None:
    scorer = remote(f"tei:{api.url}")
    items = [("docs", str(i), text) for i, text in enumerate(DOCS)]
    with ScoringEngine(scorer=scorer, cache=LRUScoreCache()) as engine:
        first = engine.score_sync(QUERY, items)
        second = engine.score_sync(QUERY, items)
    assert len(api.requests) == 1  # the second call made no HTTP request
    assert (first.cache_misses, second.cache_hits) == (3, 3)
    assert [s.raw for s in second.scores] == SCORES


def test_construction_does_no_io_and_blank_passages_never_leave() -> None:
    scorer = build_remote_scorer("tei:http://127.0.0.1:9", settings=RemoteSettings())
    assert scorer.calls == 0 and scorer._client is None
    [blank] = scorer.score("q", ["   "])
    assert blank.raw < -1e5 and scorer.calls == 0


# ---------------------------------------------------------------- references and keys


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("cohere:rerank-v3.5", RemoteReference("cohere", "rerank-v3.5", "https://api.cohere.com")),
        ("tei:http://host:8080", RemoteReference("tei", None, "http://host:8080")),
        ("tei:http://host:8080/prefix/", RemoteReference("tei", None, "http://host:8080/prefix")),
        (
            "vllm:http://host:8000/BAAI/bge-reranker-v2-m3",
            RemoteReference("vllm", "BAAI/bge-reranker-v2-m3", "http://host:8000"),
        ),
        (
            "infinity:BAAI/bge@https://gw.example/infinity",
            RemoteReference("infinity", "BAAI/bge", "https://gw.example/infinity"),
        ),
        ("BAAI/bge-reranker-v2-m3", None),
        ("/models/local-dir", None),
        ("C:/models/x", None),
    ],
)
def test_model_references(reference: str, expected: RemoteReference | None) -> None:
    assert parse_remote_reference(reference) == expected


@pytest.mark.parametrize(
    ("reference", "match"),
    [
        ("tei:host:8080", "needs the server's URL"),
        ("vllm:ftp://host/m", "needs the server's URL"),
        ("infinity:m@http://host:1/?key=1", "query"),
    ],
)
def test_bad_references_name_the_problem(reference: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        parse_remote_reference(reference)


def test_keys_come_from_the_environment_never_the_reference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("SECONDPASS_REMOTE_API_KEY", "COHERE_API_KEY", "CO_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigurationError, match="COHERE_API_KEY"):
        build_remote_scorer("cohere:rerank-v3.5")
    monkeypatch.setenv("COHERE_API_KEY", KEY)
    scorer = build_remote_scorer("cohere:rerank-v3.5")
    assert scorer._api_key == KEY and KEY not in repr(scorer)
    monkeypatch.setenv("SECONDPASS_REMOTE_API_KEY", "sp-override-key-000")
    assert build_remote_scorer("cohere:rerank-v3.5")._api_key == "sp-override-key-000"
    assert build_remote_scorer("tei:http://h:1")._api_key == "sp-override-key-000"


def test_the_loaders_accept_remote_references(monkeypatch: pytest.MonkeyPatch) -> None:
    from secondpass.config import RerankSettings
    from secondpass.pipeline.models import load_scorer
    from secondpass.service.app import build_scorer

    monkeypatch.delenv("SECONDPASS_REMOTE_API_KEY", raising=False)
    scorer, description = load_scorer("tei:http://u:pw@127.0.0.1:9", allow_fallback=True)
    assert type(scorer).__name__ == "TeiScorer"
    assert description == "remote reranker tei:http://127.0.0.1:9"  # credentials not shown
    served = build_scorer(RerankSettings(model="vllm:http://127.0.0.1:9/BAAI/bge-reranker-v2-m3"))
    assert served.fingerprint == "remote|vllm|BAAI/bge-reranker-v2-m3|http://127.0.0.1:9"


# ---------------------------------------------------------------- against our own service


@pytest.fixture(scope="module")
def serve_url() -> Iterator[str]:
    """``secondpass serve``'s app around FakeScorer, under uvicorn on loopback, key required."""
    import uvicorn

    from secondpass.service.app import create_app
    from secondpass.service.settings import ServiceSettings

    app = create_app(
        ServiceSettings(max_wait_ms=1, api_keys=[KEY], cache={"backend": "none"}),
        scorer=FakeScorer(),
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not (server.started and server.servers) and time.monotonic() < deadline:
        time.sleep(0.01)  # polling uvicorn's own started flag, not timing anything
    assert server.started
    port = server.servers[0].sockets[0].getsockname()[1]
    state = app.state.service
    while not state.model_ok and time.monotonic() < deadline:
        time.sleep(0.01)
    assert state.model_ok, state.model_error
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


SERVE_DOCS = ["Paris is the capital of France.", "Cats sleep a lot.", "the capital city of france"]


@pytest.mark.parametrize("reference", ["cohere:fake-model@{url}", "tei:{url}"])
def test_against_secondpass_serve(serve_url: str, reference: str) -> None:
    scorer = remote(reference.format(url=serve_url), max_documents=2)
    scores = scorer.score("capital of France", SERVE_DOCS)
    expected = [FakeScorer()._one("capital of France", d) for d in SERVE_DOCS]
    if reference.startswith("tei"):
        assert [s.raw for s in scores] == pytest.approx([e.raw for e in expected])
    assert [s.normalized for s in scores] == pytest.approx([e.normalized for e in expected])
    assert scorer.calls == 2  # 3 documents at 2 per call
    scorer.close()


def test_serve_refusing_the_key_is_a_clear_error(serve_url: str) -> None:
    scorer = build_remote_scorer(
        f"cohere:fake-model@{serve_url}", settings=RemoteSettings(api_key="sp-wrong-key-000")
    )
    with pytest.raises(RemoteRerankError, match="HTTP 401 \\(check the API key\\)") as caught:
        scorer.score("q", ["a passage"])
    assert caught.value.status == 401 and scorer.calls == 1


def test_docs_example_runs_against_serve(serve_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.docs_examples import run_blocks

    monkeypatch.setenv("SECONDPASS_REMOTE_API_KEY", KEY)  # the service requires one
    ns = run_blocks("remote-rerankers.md", {"__name__": "__docs__", "TEI_URL": serve_url})
    assert ns["ranking"] == [2, 0, 1]  # FakeScorer: query words found, then shorter first
    assert ns["scorer"].calls == 2  # type: ignore[attr-defined]
    assert ns["second"].cache_hits == 3  # type: ignore[attr-defined]


def test_the_proxy_builds_with_a_remote_scorer(api: FakeApi) -> None:
    from secondpass.config import RerankSettings
    from secondpass.proxy.running import build_proxy
    from secondpass.proxy.settings import ProxySettings

    proxy = build_proxy(ProxySettings(rerank=RerankSettings(model=f"tei:{api.url}")))
    engine = proxy.retriever.engine
    try:
        assert engine.scorer.fingerprint == f"remote|tei|-|{api.url}|raw_scores"
        assert api.requests and api.requests[0]["path"] == "/rerank"  # calibration went remote
    finally:
        engine.close()


async def test_serve_with_a_remote_scorer_answers_clear_statuses(api: FakeApi) -> None:
    import asyncio

    import httpx

    from secondpass.service.app import create_app
    from secondpass.service.settings import ServiceSettings

    api.script = lambda n, path, body: (400, {"error": f"query too long (key {KEY})"})
    scorer = remote(f"tei:{api.url}", retry=fast_retry())
    app = create_app(ServiceSettings(max_wait_ms=1, cache={"backend": "none"}), scorer=scorer)
    async with app.router.lifespan_context(app):
        while app.state.service.engine is None and not app.state.service.load_failed:
            await asyncio.sleep(0.01)  # waiting for the engine's start, a condition
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            cut = {"model": "m", "query": "q", "documents": ["a"], "max_tokens_per_doc": 5}
            refused = await client.post("/v2/rerank", json=cut)
            failed = await client.post("/rerank", json={"query": "q", "texts": ["a"]})
    assert refused.status_code == 422 and "TeiScorer" in refused.json()["error"]
    assert failed.status_code == 503 and failed.json()["error_type"] == "rerank_failed"
    assert "HTTP 400: query too long" in failed.json()["error"]
    assert find_leaks(failed.text, [KEY]) == [] and api.url not in failed.text
