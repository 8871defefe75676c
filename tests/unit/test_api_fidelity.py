"""Cohere and TEI request fields honoured as the upstream APIs define them (issue 15, "API fidelity").

The app runs in-process around the tiny real cross-encoder, so truncation is
measured in the model's own tokens and compared with scoring the cut text
directly: ``max_tokens_per_doc`` (v2), ``max_chunks_per_doc`` (v1),
``truncation_direction: Left`` (TEI), the cache keeping differently cut
passages apart, ``return_documents`` defaults, and TEI's ``/info`` and ``/health``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from tests.fixtures.service import FakeScorer

from secondpass.pipeline.engine import ScoringEngine
from secondpass.pipeline.scorer import CrossEncoderScorer
from secondpass.pipeline.truncation import Truncation
from secondpass.service.app import create_app
from secondpass.service.settings import ServiceSettings

QUERY = "cat music garden"
# Words the tiny model's WordPiece vocabulary holds whole: one token each.
LONG = "cat dog house river tree music light water stone bird city road green blue night"
KEY = "k3y-for-api-fidelity-0123456789"


def make_app(scorer: Any, **settings: Any) -> FastAPI:
    settings.setdefault("max_wait_ms", 1)
    settings.setdefault("cache", {"backend": "memory"})
    return create_app(ServiceSettings(**settings), scorer=scorer)


@asynccontextmanager
async def running(app: FastAPI, *, ready: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        state = app.state.service
        deadline = time.monotonic() + 60
        while ready and not state.model_ok and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert state.model_ok or not ready, state.model_error
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            yield client


def _v2_scores(response: httpx.Response) -> dict[int, float]:
    assert response.status_code == 200, response.text
    return {r["index"]: r["relevance_score"] for r in response.json()["results"]}


# ------------------------------------------------------------------- Cohere v2


async def test_max_tokens_per_doc_scores_the_prefix_of_that_many_tokens(
    tiny_scorer: CrossEncoderScorer,
) -> None:
    prefix = tiny_scorer.truncator.truncate(LONG, 4)
    assert prefix == "cat dog house river"  # the tokenizer's own 4-token prefix
    async with running(make_app(tiny_scorer)) as client:
        whole = _v2_scores(
            await client.post("/v2/rerank", json={"query": QUERY, "documents": [LONG]})
        )
        cut = _v2_scores(
            await client.post(
                "/v2/rerank", json={"query": QUERY, "documents": [LONG], "max_tokens_per_doc": 4}
            )
        )
        direct = _v2_scores(
            await client.post("/v2/rerank", json={"query": QUERY, "documents": [prefix]})
        )
    assert cut[0] != pytest.approx(whole[0], abs=1e-6)
    assert cut[0] == pytest.approx(direct[0], abs=1e-6)


async def test_the_cache_never_serves_a_cut_score_for_a_whole_document(
    tiny_scorer: CrossEncoderScorer,
) -> None:
    cut_body = {"query": QUERY, "documents": [LONG], "max_tokens_per_doc": 4}
    whole_body = {"query": QUERY, "documents": [LONG]}
    async with running(make_app(tiny_scorer)) as client:
        cut = await client.post("/v2/rerank", json=cut_body)
        whole = await client.post("/v2/rerank", json=whole_body)
        whole_again = await client.post("/v2/rerank", json=whole_body)
        cut_again = await client.post("/v2/rerank", json=cut_body)
        # Haystack's default: more than the window holds, so the same as no limit
        haystack = await client.post("/v2/rerank", json={**whole_body, "max_tokens_per_doc": 4096})
    assert whole.json()["meta"]["cache_hits"] == 0  # the cut score was not served
    assert _v2_scores(whole)[0] != pytest.approx(_v2_scores(cut)[0], abs=1e-6)
    assert whole_again.json()["meta"]["cache_hits"] == 1
    assert cut_again.json()["meta"]["cache_hits"] == 1
    assert _v2_scores(cut_again) == _v2_scores(cut)
    assert haystack.json()["meta"]["cache_hits"] == 1
    assert _v2_scores(haystack) == _v2_scores(whole)


@pytest.mark.parametrize("value", [0, -1, 1.5, "many", True, 2**31])
async def test_max_tokens_per_doc_is_a_positive_integer(value: object) -> None:
    async with running(make_app(FakeScorer())) as client:
        r = await client.post(
            "/v2/rerank", json={"query": "q", "documents": ["a"], "max_tokens_per_doc": value}
        )
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "max_tokens_per_doc"


async def test_v2_return_documents_echoes_text_only_when_asked() -> None:
    docs = ["dogs bark", "cats purr"]
    async with running(make_app(FakeScorer())) as client:
        plain = await client.post("/v2/rerank", json={"query": "cats", "documents": docs})
        echoed = await client.post(
            "/v2/rerank",
            json={"query": "cats", "documents": docs, "return_documents": True, "priority": 3},
        )
    assert all("document" not in r for r in plain.json()["results"])
    assert [r["document"] for r in echoed.json()["results"]] == [
        {"text": "cats purr"},
        {"text": "dogs bark"},
    ]


# ------------------------------------------------------------------- Cohere v1


async def test_v1_return_documents_defaults_to_false_as_at_cohere() -> None:
    async with running(make_app(FakeScorer())) as client:
        r = await client.post("/v1/rerank", json={"query": "cats", "documents": ["cats", "dogs"]})
    assert r.status_code == 200
    assert all("document" not in x for x in r.json()["results"])


async def test_max_chunks_per_doc_scores_the_best_of_that_many_windows(
    tiny_scorer: CrossEncoderScorer, tiny_cross_encoder_dir: Path
) -> None:
    # The service truncates by default; the relevant words sit past the first window.
    window = tiny_scorer.max_length
    doc = " ".join(["stone"] * (2 * window) + ["cat music garden"] * 20)
    chunked = CrossEncoderScorer(
        model=str(tiny_cross_encoder_dir),
        device="cpu",
        dtype="float32",
        backend="torch",
        long_document="chunk",
        max_chunks=3,
    )
    try:
        [expected] = chunked.score(QUERY, [doc])
    finally:
        chunked.close()
    [truncated] = tiny_scorer.score(QUERY, [doc])
    assert expected.chunks == 3 and truncated.chunks == 1
    async with running(make_app(tiny_scorer)) as client:
        plain = await client.post("/v1/rerank", json={"query": QUERY, "documents": [doc]})
        windows = await client.post(
            "/v1/rerank", json={"query": QUERY, "documents": [doc], "max_chunks_per_doc": 3}
        )
        too_many = await client.post(
            "/v1/rerank", json={"query": QUERY, "documents": [doc], "max_chunks_per_doc": 101}
        )
    assert plain.json()["results"][0]["relevance_score"] == pytest.approx(
        truncated.normalized, abs=1e-6
    )
    assert windows.json()["results"][0]["relevance_score"] == pytest.approx(
        expected.normalized, abs=1e-6
    )
    assert expected.normalized != pytest.approx(truncated.normalized, abs=1e-6)
    assert too_many.status_code == 422 and too_many.json()["field"] == "max_chunks_per_doc"
    assert too_many.json()["limit"] == 100


# ------------------------------------------------------------------- TEI


async def test_tei_truncation_direction_left_keeps_the_end_of_the_text(
    tiny_scorer: CrossEncoderScorer,
) -> None:
    window = tiny_scorer.max_length
    head, tail = " ".join(["stone"] * window), " ".join(["cat music garden"] * window)
    text = f"{head} {tail}"
    async with running(make_app(tiny_scorer)) as client:
        scores = {}
        for direction in ("Right", "Left", "left"):
            r = await client.post(
                "/rerank",
                json={"query": QUERY, "texts": [text], "truncation_direction": direction},
            )
            assert r.status_code == 200, r.text
            scores[direction] = r.json()[0]["score"]
        refused = await client.post(
            "/rerank",
            json={
                "query": QUERY,
                "texts": [text],
                "truncation_direction": "Left",
                "truncate": False,
            },
        )
    [right_of_head] = tiny_scorer.score(QUERY, [head])
    # the tail alone is longer than the window too: Left keeps its last tokens, all "... garden"
    [left_of_tail] = tiny_scorer.score_truncated([(QUERY, tail)], [Truncation(side="left")])
    assert scores["Right"] == pytest.approx(right_of_head.normalized, abs=1e-6)
    assert scores["Left"] == pytest.approx(left_of_tail.normalized, abs=1e-6)
    assert scores["left"] == scores["Left"]
    assert scores["Left"] != pytest.approx(scores["Right"], abs=1e-6)
    assert refused.status_code == 413 and refused.json()["field"] == "texts[0]"


async def test_tei_info_describes_the_model_and_limits(tiny_scorer: CrossEncoderScorer) -> None:
    app = make_app(tiny_scorer, max_documents=77, max_batch_tokens=4096, max_batch_pairs=16)
    async with running(app) as client:
        r = await client.get("/info")
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["model_id"] == app.state.service.settings.public_model_name
    assert "/" not in info["model_id"] or not Path(info["model_id"]).is_absolute()
    assert info["model_dtype"] == "float32"
    assert "reranker" in info["model_type"]
    assert info["max_input_length"] == tiny_scorer.max_length
    assert (
        info["max_client_batch_size"],
        info["max_batch_tokens"],
        info["max_batch_requests"],
    ) == (
        77,
        4096,
        16,
    )
    assert info["auto_truncate"] is True and info["version"]


async def test_tei_health_is_200_when_ready_and_503_while_loading() -> None:
    release = threading.Event()

    def slow_factory(_: Any) -> FakeScorer:
        release.wait(10)
        return FakeScorer()

    app = create_app(ServiceSettings(max_wait_ms=1), scorer_factory=slow_factory)
    async with running(app, ready=False) as client:
        loading = await client.get("/health")
        info = await client.get("/info")
        release.set()
        state = app.state.service
        deadline = time.monotonic() + 30
        while not state.model_ok and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        ready = await client.get("/health")
        state.begin_drain()
        draining = await client.get("/health")
    assert loading.status_code == 503 and "retry-after" in loading.headers
    assert loading.json()["error_type"] == "unhealthy"
    assert info.status_code == 503
    assert ready.status_code == 200 and ready.content == b""
    assert draining.status_code == 503 and "draining" in draining.json()["message"]


async def test_health_is_an_open_probe_and_info_needs_a_key() -> None:
    app = make_app(FakeScorer(), api_keys=[KEY])
    async with running(app) as client:
        health = await client.get("/health")
        info = await client.get("/info")
        info_with_key = await client.get("/info", headers={"Authorization": f"Bearer {KEY}"})
        schema = (await client.get("/openapi.json", headers={"X-API-Key": KEY})).json()
    assert health.status_code == 200
    assert info.status_code == 401
    assert info_with_key.status_code == 200, info_with_key.text
    assert schema["paths"]["/health"]["get"]["security"] == []
    assert "security" not in schema["paths"]["/info"]["get"]


# ------------------------------------------------------------------- engine


def test_an_engine_whose_scorer_cannot_truncate_refuses_to_pretend() -> None:
    from secondpass.errors import ConfigurationError

    with ScoringEngine(scorer=FakeScorer()) as engine, pytest.raises(ConfigurationError):
        engine.score_sync("q", [("", "", "a b c")], truncation=Truncation(max_tokens=1))


@pytest.mark.parametrize(
    ("truncation", "kept"),
    [
        (Truncation(max_tokens=3), [1, 2, 3]),
        (Truncation(max_tokens=3, side="left"), [3, 4, 5]),
        (Truncation(max_tokens=9), [1, 2, 3, 4, 5]),
    ],
)
def test_truncation_cuts_from_its_side(truncation: Truncation, kept: list[int]) -> None:
    assert truncation.cut([1, 2, 3, 4, 5], truncation.max_tokens or 0) == kept
    assert truncation.key() != Truncation().key() == ""


class _Recording:
    """The tiny scorer, recording each batch's truncations (a spy: it scores for real)."""

    def __init__(self, scorer: CrossEncoderScorer) -> None:
        self.scorer = scorer
        self.fingerprint = scorer.fingerprint
        self.batches: list[list[Truncation]] = []

    def score(self, query: str, passages: Any, *, timings: Any = None) -> Any:
        return self.scorer.score(query, passages, timings=timings)

    def score_pairs(self, pairs: Any, *, timings: Any = None) -> Any:
        self.batches.append([Truncation()] * len(pairs))
        return self.scorer.score_pairs(pairs, timings=timings)

    def score_truncated(self, pairs: Any, truncations: Any, *, timings: Any = None) -> Any:
        self.batches.append(list(truncations))
        return self.scorer.score_truncated(pairs, truncations, timings=timings)

    def effective_truncation(self, truncation: Truncation) -> Truncation:
        return self.scorer.effective_truncation(truncation)


async def test_requests_cut_differently_share_a_batch_and_keep_their_own_cut(
    tiny_scorer: CrossEncoderScorer,
) -> None:
    from secondpass.pipeline.batcher import BatchingOptions

    spy = _Recording(tiny_scorer)
    items = [("", "", LONG)]
    cuts = [
        Truncation(max_tokens=2),
        Truncation(max_tokens=4),
        Truncation(max_tokens=4, side="left"),
    ]
    alone = [tiny_scorer.score_truncated([(QUERY, LONG)], [cut])[0] for cut in cuts]
    options = BatchingOptions(max_wait_ms=500, max_batch_pairs=64)
    with ScoringEngine(scorer=spy, options=options) as engine:
        engine.start()
        together = await asyncio.gather(
            *(engine.score(QUERY, items, truncation=cut) for cut in cuts)
        )
    assert [sorted(map(repr, batch)) for batch in spy.batches] == [sorted(map(repr, cuts))]
    for result, expected in zip(together, alone, strict=True):
        assert result.scores[0].raw == pytest.approx(expected.raw, abs=1e-5)
        assert result.scores[0].tokens_in == len(LONG.split())
    assert len({round(r.scores[0].raw, 5) for r in together}) == 3
