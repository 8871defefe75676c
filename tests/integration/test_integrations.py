"""The zero-code framework route: docs/integrations.md run against a real ``secondpass serve``.

Each framework's own package (langchain-cohere, llama-index-postprocessor-cohere-rerank,
cohere-haystack; all in the ``dev`` extra) talks to a service process with an API
key. The request bodies they send are observed on the client side (the HTTP client's
``send`` is wrapped, not replaced), so the field list in the docs is checked too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.docs_examples import python_blocks
from tests.fixtures.service import ServiceProcess

pytestmark = pytest.mark.integration

KEY = "integrations-test-key-0123456789"
PAGE = "integrations.md"
# The order of the page's python blocks.
BLOCKS = {"langchain": 0, "llamaindex": 1, "haystack": 2}
# What each framework sends, as the page's table says.
SENT = {
    "langchain": {"model", "query", "documents", "top_n", "max_tokens_per_doc"},
    "llamaindex": {"model", "query", "documents", "top_n"},
    "haystack": {"model", "query", "documents", "top_n", "max_tokens_per_doc"},
}


@pytest.fixture(scope="module")
def keyed_service(service_factory: Callable[..., ServiceProcess]) -> ServiceProcess:
    """A service that needs an API key, as a deployed one would."""
    return service_factory(settings={"max_wait_ms": 2, "api_keys": [KEY]})


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """The JSON bodies of every /v2/rerank request the frameworks' clients send."""
    bodies: list[dict[str, Any]] = []
    original = httpx.Client.send

    def send(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        if request.url.path == "/v2/rerank":
            bodies.append(json.loads(request.read()))
        return original(self, request, **kwargs)

    monkeypatch.setattr(httpx.Client, "send", send)
    yield bodies


def _run(name: str, service: ServiceProcess, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("SECONDPASS_URL", service.url)
    monkeypatch.setenv("SECONDPASS_API_KEY", KEY)
    monkeypatch.setenv("HAYSTACK_TELEMETRY_ENABLED", "False")
    monkeypatch.setenv("LANGSMITH_TRACING", "false")
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    block = python_blocks(PAGE)[BLOCKS[name]]
    exec(compile(block, f"docs/{PAGE}[{name}]", "exec"), namespace)
    return namespace


def _rerank(service: ServiceProcess, **body: Any) -> dict[str, Any]:
    r = httpx.post(f"{service.url}/v2/rerank", json=body, headers={"X-API-Key": KEY}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def _prefix(model_dir: Path, text: str, tokens: int) -> str:
    """The text of ``text``'s first ``tokens`` tokens of the model's own tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    ids = tokenizer.encode(text, add_special_tokens=False)[:tokens]
    prefix = str(tokenizer.decode(ids))
    assert tokenizer.encode(prefix, add_special_tokens=False) == ids  # the same tokens again
    return prefix


def test_langchain_cohere_rerank(
    keyed_service: ServiceProcess,
    sent: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    tiny_cross_encoder_dir: Path,
) -> None:
    ns = _run("langchain", keyed_service, monkeypatch)
    assert [set(body) for body in sent] == [SENT["langchain"]] * 2
    assert sent[0]["max_tokens_per_doc"] is None and sent[1]["max_tokens_per_doc"] == 3
    assert sent[0]["top_n"] == 2
    # max_tokens_per_doc is honoured: the 3-token scores are those of the 3-token prefixes
    whole = {r["index"]: r["relevance_score"] for r in ns["reranker"].rerank(
        [d.page_content for d in ns["documents"]], "how long do cats sleep"
    )}  # fmt: skip
    cut = {r["index"]: r["relevance_score"] for r in ns["cut"]}
    assert cut != whole
    prefixes = [_prefix(tiny_cross_encoder_dir, d.page_content, 3) for d in ns["documents"]]
    direct = _rerank(keyed_service, query="how long do cats sleep", documents=prefixes, top_n=2)
    assert {r["index"]: r["relevance_score"] for r in direct["results"]} == pytest.approx(cut)


def test_llamaindex_cohere_rerank(
    keyed_service: ServiceProcess, sent: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = _run("llamaindex", keyed_service, monkeypatch)
    assert [set(body) for body in sent] == [SENT["llamaindex"]]
    texts = [n.node.get_content() for n in ns["nodes"]]
    direct = _rerank(keyed_service, query="how long do cats sleep", documents=texts, top_n=2)
    assert [round(n.score, 6) for n in ns["ranked"]] == [
        round(r["relevance_score"], 6) for r in direct["results"]
    ]


def test_haystack_cohere_ranker(
    keyed_service: ServiceProcess, sent: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = _run("haystack", keyed_service, monkeypatch)
    [body] = sent
    assert set(body) == SENT["haystack"] and body["max_tokens_per_doc"] == 4096
    assert body["documents"][0] == "Dogs\nThey bark at the mail carrier."
    # 4096 tokens is more than the window: scored, and cached, as if no limit were sent
    again = _rerank(keyed_service, query=body["query"], documents=body["documents"])
    assert again["meta"]["cache_hits"] == len(body["documents"])
    scores = {r["index"]: r["relevance_score"] for r in again["results"]}
    assert [round(d.score, 6) for d in ns["ranked"]] == [
        round(scores[i], 6) for i in sorted(scores, key=lambda i: -scores[i])[:2]
    ]


def test_every_framework_is_refused_without_the_key(
    keyed_service: ServiceProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cohere.core.api_error import ApiError

    monkeypatch.setenv("SECONDPASS_URL", keyed_service.url)
    monkeypatch.setenv("SECONDPASS_API_KEY", "not-the-key-0000000000")
    monkeypatch.setenv("HAYSTACK_TELEMETRY_ENABLED", "False")
    block = python_blocks(PAGE)[BLOCKS["langchain"]]
    with pytest.raises(ApiError) as refused:
        exec(compile(block, f"docs/{PAGE}[langchain]", "exec"), {"__name__": "__docs__"})
    assert refused.value.status_code == 401
