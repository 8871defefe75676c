"""LLM (causal-LM) rerankers: tiny seeded Qwen3 and Gemma2 models through the scorer's real path.

The references are sentence-transformers' own ``CrossEncoder.predict`` (for
models whose chat template carries a pair) and, for a checkpoint without one,
an unbatched transformers computation of Qwen3-Reranker's documented recipe
written out here.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from tests.support.llm_models import (
    GEMMA_RERANKER_TEMPLATE,
    QWEN3_RERANKER_TEMPLATE,
    build_tiny_causal_reranker,
)

from secondpass.errors import ConfigurationError
from secondpass.pipeline.cache import LRUScoreCache
from secondpass.pipeline.engine import ScoringEngine
from secondpass.pipeline.scorer import CrossEncoderScorer
from secondpass.pipeline.truncation import MAX_INSTRUCTION_CHARS, Truncation

WORDS = "cats eat meat and fish the capital of China is Beijing Paris France yes no query".split()


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def _pairs() -> list[tuple[str, str]]:
    """Mixed lengths and punctuation at the query/passage edges (where BPE merges across)."""
    rng = random.Random(3)
    pairs = [
        ("what do cats eat?", "Cats eat meat and fish."),
        ("capital of China", " The capital of China is Beijing.\n"),
        ("  yes", "no"),
    ]
    pairs += [(_text(rng, rng.randint(1, 6)), _text(rng, rng.randint(1, 60))) for _ in range(9)]
    return pairs


@pytest.fixture(scope="module")
def llm_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("llm-rerankers")
    return {
        "qwen3": build_tiny_causal_reranker(
            root / "qwen3", architecture="qwen3", chat_template=QWEN3_RERANKER_TEMPLATE
        ),
        "gemma2": build_tiny_causal_reranker(
            root / "gemma2", architecture="gemma2", chat_template=GEMMA_RERANKER_TEMPLATE, seed=1
        ),
        "qwen3-plain": build_tiny_causal_reranker(root / "qwen3-plain", architecture="qwen3", seed=2),
    }


@pytest.fixture(scope="module")
def scorers(llm_dirs: dict[str, Path]) -> dict[str, CrossEncoderScorer]:
    """Warmed torch fp32 scorers with a small token budget, so batches mix lengths (left padding)."""
    out = {
        name: CrossEncoderScorer(
            model=str(path), device="cpu", dtype="float32", backend="torch", token_budget=600
        )
        for name, path in llm_dirs.items()
    }
    for scorer in out.values():
        scorer.warm_up()
    return out


def _predict(path: Path, pairs: list[tuple[str, str]], prompt: str | None = None) -> np.ndarray:
    import torch
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(path), device="cpu")
    return np.asarray(
        model.predict(pairs, prompt=prompt, activation_fn=torch.nn.Identity(), batch_size=4)
    )


@pytest.mark.parametrize(
    ("name", "instruction"),
    [("qwen3", None), ("qwen3", "Rank medical abstracts for the claim"), ("gemma2", None)],
)
def test_scores_equal_cross_encoder_predict(llm_dirs, scorers, name, instruction) -> None:
    pairs = _pairs()
    reference = _predict(llm_dirs[name], pairs, prompt=instruction)
    cut = Truncation(instruction=instruction)
    got = scorers[name].score_truncated(pairs, [cut] * len(pairs))
    raw = np.array([score.raw for score in got])
    diff = float(np.max(np.abs(raw - reference)))
    print(f"{name} instruction={instruction is not None}: max |diff| vs predict = {diff:.2e}")
    assert diff < 1e-4
    # sigmoid(logit(yes) - logit(no)) is P(yes), the softmax over [no, yes]
    assert all(abs(s.normalized - 1 / (1 + np.exp(-r))) < 1e-6 for s, r in zip(got, reference, strict=True))
    assert len(set(np.round(raw, 3))) > len(pairs) // 2  # the random model separates pairs


def test_documented_qwen3_prompt_without_chat_template(llm_dirs, scorers) -> None:
    """A checkpoint without a pair template gets Qwen3-Reranker's documented recipe, unbatched."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = llm_dirs["qwen3-plain"]
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    prefix = (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
        'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
        "<|im_start|>user\n"
    )
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    pairs = _pairs()[:6]
    for instruction in (None, "Find passages about food"):
        task = instruction or "Given a web search query, retrieve relevant passages that answer the query"
        expected = []
        for query, doc in pairs:
            text = f"{prefix}<Instruct>: {task}\n<Query>: {query}\n<Document>: {doc}{suffix}"
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
            with torch.inference_mode():
                last = model(**ids).logits[0, -1]
            expected.append(float(torch.softmax(last[[no, yes]], dim=0)[1]))
        got = scorers["qwen3-plain"].score_truncated(pairs, [Truncation(instruction=instruction)] * 6)
        diff = max(abs(s.normalized - e) for s, e in zip(got, expected, strict=True))
        print(f"qwen3 documented prompt: max |P(yes) diff| = {diff:.2e}")
        assert diff < 1e-4


def test_default_instruction_is_qwens_documented_one(scorers) -> None:
    pairs = _pairs()[:4]
    scorer = scorers["qwen3"]
    default = [s.raw for s in scorer.score_pairs(pairs)]
    explicit = Truncation(
        instruction="Given a web search query, retrieve relevant passages that answer the query"
    )
    same = [s.raw for s in scorer.score_truncated(pairs, [explicit] * 4)]
    other = [s.raw for s in scorer.score_truncated(pairs, [Truncation(instruction="x y")] * 4)]
    assert np.allclose(default, same, atol=1e-5)
    assert not np.allclose(default, other, atol=1e-3)


def test_two_instructions_never_share_cached_scores(scorers) -> None:
    cache = LRUScoreCache()
    items = [("idx", f"d{i}", text) for i, (_, text) in enumerate(_pairs()[:5])]
    with ScoringEngine(scorer=scorers["qwen3"], cache=cache) as engine:
        first = engine.score_sync("what do cats eat?", items, truncation=Truncation(instruction="A"))
        again = engine.score_sync("what do cats eat?", items, truncation=Truncation(instruction="A"))
        other = engine.score_sync("what do cats eat?", items, truncation=Truncation(instruction="B"))
    assert (first.cache_hits, again.cache_hits, other.cache_hits) == (0, 5, 0)
    assert [s.raw for s in first.scores] == [s.raw for s in again.scores]
    assert all(a.raw != b.raw for a, b in zip(first.scores, other.scores, strict=True))
    assert Truncation(instruction="A").key() != Truncation(instruction="B").key()


def test_instruction_is_refused_where_the_model_takes_none(scorers, tiny_scorer) -> None:
    pairs = [("q", "a passage")]
    with pytest.raises(ConfigurationError, match="takes no instruction"):
        scorers["gemma2"].score_truncated(pairs, [Truncation(instruction="be strict")])
    with pytest.raises(ConfigurationError, match="sequence-classification"):
        tiny_scorer.effective_truncation(Truncation(instruction="be strict"))
    with pytest.raises(ConfigurationError, match=f"at most {MAX_INSTRUCTION_CHARS}"):
        Truncation(instruction="x" * (MAX_INSTRUCTION_CHARS + 1))


def test_long_documents_truncate_or_chunk_with_a_report(llm_dirs) -> None:
    long_doc = " ".join(["cats eat meat and fish"] * 40)
    common = {"model": str(llm_dirs["qwen3"]), "device": "cpu", "backend": "torch", "max_length": 160}
    cut = CrossEncoderScorer(**common).score("what do cats eat?", [long_doc, "Cats eat fish."])
    assert cut[0].truncated and cut[0].chunks == 1 and cut[0].tokens_scored < cut[0].tokens_in
    assert not cut[1].truncated
    chunked = CrossEncoderScorer(**common, long_document="chunk", max_chunks=3, chunk_overlap=8)
    [score] = chunked.score("what do cats eat?", [long_doc])
    assert score.chunks == 3 and score.truncated and score.tokens_in == cut[0].tokens_in


def test_cpu_runtimes_are_refused_with_what_is_supported(llm_dirs, tmp_path) -> None:
    scorer = CrossEncoderScorer(
        model=str(llm_dirs["gemma2"]), device="cpu", backend="onnx", cache_folder=str(tmp_path)
    )
    with pytest.raises(ConfigurationError, match="backend='torch' only"):
        scorer.warm_up()
    assert not any(tmp_path.iterdir())  # refused before any export


async def test_the_service_takes_an_instruction_field(scorers) -> None:
    """Through the HTTP app: the field reaches the model, is bounded, and is a 422 where unusable."""
    from tests.unit.test_service_app import running

    from secondpass.service.app import create_app
    from secondpass.service.settings import ServiceSettings

    def app(name: str):  # type: ignore[no-untyped-def]
        settings = ServiceSettings(max_wait_ms=1, cache={"backend": "memory"})  # type: ignore[arg-type]
        return create_app(settings, scorer=scorers[name])

    body = {"query": "what do cats eat?", "documents": ["Cats eat fish.", "Paris"]}
    async with running(app("qwen3")) as client:
        plain = await client.post("/v1/rerank", json=body)
        told = await client.post("/v1/rerank", json={**body, "instruction": "be strict"})
        tei = await client.post(
            "/rerank", json={"query": body["query"], "texts": body["documents"], "instruction": "be strict"}
        )
        long = await client.post("/v2/rerank", json={**body, "instruction": "x" * (MAX_INSTRUCTION_CHARS + 1)})
    async with running(app("gemma2")) as client:
        refused = await client.post("/v1/rerank", json={**body, "instruction": "be strict"})
    assert plain.status_code == told.status_code == tei.status_code == 200
    by_index = {r["index"]: r["relevance_score"] for r in told.json()["results"]}
    assert by_index != {r["index"]: r["relevance_score"] for r in plain.json()["results"]}
    assert sorted(r["score"] for r in tei.json()) == pytest.approx(sorted(by_index.values()))
    assert long.status_code == 422 and long.json()["field"] == "instruction"
    assert refused.status_code == 422 and "takes no instruction" in refused.json()["message"]


def test_out_of_memory_halves_the_batch_and_keeps_the_scores(llm_dirs, scorers) -> None:
    pairs = _pairs()[:8]
    expected = [s.raw for s in scorers["qwen3"].score_pairs(pairs)]
    scorer = CrossEncoderScorer(model=str(llm_dirs["qwen3"]), device="cpu", backend="torch")
    rows: list[int] = []

    def pretend_oom(module, args, kwargs):  # type: ignore[no-untyped-def]
        rows.append(int(kwargs["input_ids"].shape[0]))
        if rows[-1] > 2:
            msg = "CUDA out of memory. Tried to allocate 2.00 GiB"
            raise RuntimeError(msg)

    handle = scorer.network.base_model.register_forward_pre_hook(pretend_oom, with_kwargs=True)
    try:
        got = [s.raw for s in scorer.score_pairs(pairs)]
    finally:
        handle.remove()
    assert rows[:2] == [8, 4] and sum(r for r in rows if r <= 2) == 8  # halved until it fit
    assert scorer.token_budget < scorer.settings.token_budget
    assert np.allclose(got, expected, atol=1e-4)


def test_docs_example_runs(llm_dirs) -> None:
    from tests.docs_examples import run_blocks

    namespace = run_blocks("llm-rerankers.md", {"__name__": "__docs__", "LLM_MODEL_DIR": str(llm_dirs["qwen3"])})
    assert len(namespace["told"]) == 2  # type: ignore[arg-type]


def test_retriever_passes_the_instruction_and_refuses_an_unusable_one(scorers) -> None:
    from tests.unit.test_retriever import make_hits

    from secondpass.pipeline.retriever import Retriever

    hits = make_hits([p for _, p in _pairs()[:4]])
    with Retriever(scorer=scorers["qwen3"], window=4) as retriever:
        plain = retriever.rerank_hits("what do cats eat?", hits)
        told = retriever.rerank_hits("what do cats eat?", hits, instruction="Find pet food")
    assert plain.status == told.status == "ok"
    by_id = {r.hit.id: r.rerank.raw for r in told.hits if r.rerank is not None}
    assert len(by_id) == 4
    assert all(by_id[r.hit.id] != r.rerank.raw for r in plain.hits if r.rerank is not None)
    with Retriever(scorer=scorers["gemma2"], window=4) as retriever:
        with pytest.raises(ConfigurationError, match="takes no instruction"):
            retriever.rerank_hits("q", hits, instruction="Find pet food")
        assert retriever.rerank_hits("q", hits).status == "ok"  # without one it ranks as before


def test_configured_default_instruction_applies_and_is_in_the_fingerprint(llm_dirs, scorers) -> None:
    """``SECONDPASS_RERANK_INSTRUCTION`` / ``--rerank-instruction``: the default of every request."""
    from secondpass.config import RerankSettings

    settings = RerankSettings(
        model=str(llm_dirs["qwen3"]), device="cpu", backend="torch", instruction="Find pet food"
    )
    configured = CrossEncoderScorer(settings=settings)
    pairs = _pairs()[:4]
    asked = scorers["qwen3"].score_truncated(pairs, [Truncation(instruction="Find pet food")] * 4)
    assert np.allclose([s.raw for s in configured.score_pairs(pairs)], [s.raw for s in asked], atol=1e-5)
    assert configured.fingerprint != scorers["qwen3"].fingerprint
