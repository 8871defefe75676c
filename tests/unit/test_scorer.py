"""CrossEncoderScorer against a plain CrossEncoder.predict on the same tiny real model."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.support.models import build_tiny_cross_encoder

from secondpass.errors import ConfigurationError, ModelLoadError
from secondpass.pipeline.protocols import Scorer
from secondpass.pipeline.scorer import CrossEncoderScorer
from secondpass.types import EMPTY_PASSAGE_RAW_SCORE

WORDS = (
    "cat dog house river tree music light water stone bird city road green blue night "
    "school paper book table chair window door music garden summer winter"
).split()


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


@pytest.fixture(scope="module")
def plain(tiny_cross_encoder_dir):
    """The baseline: sentence-transformers' own CrossEncoder on the same directory."""
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(tiny_cross_encoder_dir), device="cpu")


def _predict_raw(plain, pairs) -> np.ndarray:
    import torch

    return plain.predict(pairs, activation_fn=torch.nn.Identity(), batch_size=32)


@pytest.fixture()
def forward_rows(tiny_scorer):
    """Rows sent to the model, counted by a real forward hook on the transformers model."""
    rows: list[int] = []

    def hook(module, args, kwargs, output):
        ids = kwargs["input_ids"] if kwargs.get("input_ids") is not None else args[0]
        rows.append(int(ids.shape[0]))

    # sentence-transformers calls the top model's .forward() directly (no hooks), so hook
    # the encoder it calls through nn.Module.__call__.
    handle = tiny_scorer.network.base_model.register_forward_hook(hook, with_kwargs=True)
    yield rows
    handle.remove()


def test_import_does_not_pull_in_torch() -> None:
    code = "import sys, secondpass.pipeline.scorer; print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_constructor_loads_nothing(tiny_cross_encoder_dir, tmp_path) -> None:
    scorer = CrossEncoderScorer(model=str(tiny_cross_encoder_dir), device="cpu")
    assert not scorer.is_loaded
    assert isinstance(scorer, Scorer)
    assert scorer.fingerprint and not scorer.is_loaded, "a fingerprint must not cost a load"
    # A model that does not exist fails on first use, not when building the scorer.
    missing = CrossEncoderScorer(model=str(tmp_path / "nowhere"), device="cpu")
    with pytest.raises(ModelLoadError, match="could not load"):
        missing.warm_up()


def test_scores_equal_plain_predict_in_input_order(tiny_scorer, plain) -> None:
    rng = random.Random(5)
    query = "green river in winter"
    passages = [_text(rng, rng.randint(1, 700)) for _ in range(60)]  # some beyond the 512 window
    got = tiny_scorer.score(query, passages)
    raw = _predict_raw(plain, [(query, p) for p in passages])
    normalized = plain.predict([(query, p) for p in passages])  # default activation: sigmoid
    assert np.max(np.abs(np.array([s.raw for s in got]) - raw)) <= 1e-4
    assert np.max(np.abs(np.array([s.normalized for s in got]) - normalized)) <= 1e-4
    assert [s.truncated for s in got] == [s.tokens_in + 5 > 512 for s in got]  # query is 4 tokens


def test_mixed_query_pairs_equal_plain_predict(tiny_scorer, plain) -> None:
    rng = random.Random(9)
    pairs = [(_text(rng, rng.randint(1, 12)), _text(rng, rng.randint(1, 300))) for _ in range(40)]
    got = tiny_scorer.score_pairs(pairs)
    assert np.max(np.abs(np.array([s.raw for s in got]) - _predict_raw(plain, pairs))) <= 1e-4


@pytest.mark.parametrize("budget", [1, 600, 5000, 1_000_000])
def test_scores_do_not_depend_on_batch_composition(tiny_cross_encoder_dir, tiny_scorer, budget) -> None:
    rng = random.Random(21)
    query = "bird song at night"
    passages = [_text(rng, rng.randint(1, 400)) for _ in range(30)]
    reference = [s.raw for s in tiny_scorer.score(query, passages)]
    scorer = CrossEncoderScorer(
        model=str(tiny_cross_encoder_dir), device="cpu", dtype="float32", backend="torch",
        token_budget=budget, max_batch_size=8,
    )
    order = list(range(len(passages)))
    rng.shuffle(order)
    shuffled = scorer.score(query, [passages[i] for i in order])
    back = [0.0] * len(passages)
    for position, index in enumerate(order):
        back[index] = shuffled[position].raw
    assert np.max(np.abs(np.array(back) - np.array(reference))) <= 1e-4
    scorer.close()


def test_blank_passages_are_kept_last_and_never_sent(tiny_scorer, forward_rows) -> None:
    passages = ["", "city at night", "   ", "\n\t", "\u3000\u00a0", "music in the garden"]
    scores = tiny_scorer.score("night music", passages)
    assert len(scores) == len(passages)
    assert sum(forward_rows) == 2, "only the two non-blank passages reach the model"
    for index in (0, 2, 3, 4):
        assert scores[index].raw == EMPTY_PASSAGE_RAW_SCORE and scores[index].normalized == 0.0
        assert scores[index].chunks == 0 and scores[index].tokens_in == 0
    order = sorted(range(len(passages)), key=lambda i: -scores[i].raw)
    assert set(order[:2]) == {1, 5}

    forward_rows.clear()
    all_blank = tiny_scorer.score("q", ["", " "])
    assert forward_rows == [] and [s.raw for s in all_blank] == [EMPTY_PASSAGE_RAW_SCORE] * 2
    assert tiny_scorer.score("q", []) == []


def test_unicode_passages_equal_plain_predict(tiny_scorer, plain) -> None:
    passages = [
        "東京は日本の首都です。",
        "Ünïcödé façade — naïve café, Straße",
        "مرحبا بالعالم",
        "emoji 🚀🔥 and ZWJ 👩‍💻 sequences",
        "combining e\u0301 and zero\u200bwidth",
        "Ελληνικά κείμενα και русский текст",
    ]
    got = tiny_scorer.score("café 東京 🚀", passages)
    raw = _predict_raw(plain, [("café 東京 🚀", p) for p in passages])
    assert np.max(np.abs(np.array([s.raw for s in got]) - raw)) <= 1e-4


def test_hundred_thousand_character_document_truncates_like_predict(tiny_scorer, plain) -> None:
    rng = random.Random(1)
    document = ""
    while len(document) < 100_000:
        document += _text(rng, 50) + ". "
    document = document[:100_000]
    [score] = tiny_scorer.score("summer garden", [document])
    assert score.truncated and score.chunks == 1
    assert score.tokens_in > 10_000
    assert score.tokens_scored == 512 - 3 - 2  # window - specials - query tokens
    assert abs(score.raw - float(_predict_raw(plain, [("summer garden", document)])[0])) <= 1e-4


def test_chunked_document_scores_the_best_window(tiny_cross_encoder_dir, plain, forward_rows) -> None:
    # Every word below is one WordPiece token, so token windows map back to word windows.
    rng = random.Random(4)
    words = [rng.choice(WORDS) for _ in range(1500)]
    document = " ".join(words)
    query = "blue bird"
    scorer = CrossEncoderScorer(
        model=str(tiny_cross_encoder_dir), device="cpu", dtype="float32", backend="torch",
        long_document="chunk", max_chunks=3, chunk_overlap=50, max_length=128,
    )
    [score] = scorer.score(query, [document])
    # window 128 - 3 specials - 2 query tokens = 123 passage tokens per chunk, stride 73
    windows = [" ".join(words[start : start + 123]) for start in (0, 73, 146)]
    expected = _predict_raw(plain, [(query, window) for window in windows])
    assert score.chunks == 3 and score.truncated and score.tokens_in == 1500
    assert score.tokens_scored == 123
    assert abs(score.raw - float(np.max(expected))) <= 1e-4
    short = scorer.score(query, ["blue bird song"])[0]
    assert short.chunks == 1 and not short.truncated
    assert "long_document=chunk" in scorer.fingerprint
    scorer.close()


def test_window_is_capped_by_position_embeddings(tmp_path, plain) -> None:
    directory = build_tiny_cross_encoder(tmp_path / "short", seed=1, max_position_embeddings=64)
    scorer = CrossEncoderScorer(model=str(directory), device="cpu", dtype="float32", backend="torch")
    [score] = scorer.score("a query", ["word " * 5000])  # would index past 64 positions if not cut
    assert scorer.max_length == 64
    assert score.truncated and score.tokens_scored == 64 - 3 - 2


def test_pickle_weights_are_refused_unless_allowed(tmp_path, tiny_cross_encoder_dir, tiny_scorer) -> None:
    directory = build_tiny_cross_encoder(tmp_path / "pickled", seed=0, pickle=True)
    assert (directory / "pytorch_model.bin").exists()
    assert not list(directory.glob("*.safetensors"))
    refused = CrossEncoderScorer(model=str(directory), device="cpu")
    with pytest.raises(ModelLoadError, match="allow_pickle=True"):
        refused.warm_up()
    allowed = CrossEncoderScorer(
        model=str(directory), device="cpu", dtype="float32", backend="torch", allow_pickle=True
    )
    passages = ["river stone", "city light"]
    got = [s.raw for s in allowed.score("water", passages)]
    same_seed = [s.raw for s in tiny_scorer.score("water", passages)]
    assert np.max(np.abs(np.array(got) - np.array(same_seed))) <= 1e-5


def test_trust_remote_code_needs_a_pinned_revision() -> None:
    with pytest.raises(ConfigurationError, match="pinned revision"):
        CrossEncoderScorer(model="someone/custom-reranker", trust_remote_code=True)


def test_remote_code_is_never_run_without_opt_in(tmp_path, tiny_cross_encoder_dir) -> None:
    directory = tmp_path / "custom"
    directory.mkdir()
    marker = tmp_path / "code-ran"
    config = json.loads((tiny_cross_encoder_dir / "config.json").read_text())
    config.update(
        model_type="secondpass-custom",
        auto_map={
            "AutoConfig": "custom_code.CustomConfig",
            "AutoModelForSequenceClassification": "custom_code.CustomModel",
        },
    )
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "custom_code.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (directory / name).write_bytes((tiny_cross_encoder_dir / name).read_bytes())
    scorer = CrossEncoderScorer(model=str(directory), device="cpu")
    with pytest.raises(ModelLoadError, match="trust_remote_code=True"):
        scorer.warm_up()
    assert not marker.exists()


def test_settings_come_from_the_environment(monkeypatch, tiny_cross_encoder_dir) -> None:
    monkeypatch.setenv("SECONDPASS_RERANK_MODEL", str(tiny_cross_encoder_dir))
    monkeypatch.setenv("SECONDPASS_RERANK_LONG_DOCUMENT", "chunk")
    scorer = CrossEncoderScorer(max_chunks=2)
    assert scorer.settings.model == str(tiny_cross_encoder_dir)
    assert scorer.settings.long_document == "chunk" and scorer.settings.max_chunks == 2
    with pytest.raises(ConfigurationError, match="invalid rerank settings"):
        CrossEncoderScorer(token_budget=0)


def test_fingerprint_names_what_changes_scores(tiny_cross_encoder_dir) -> None:
    base = CrossEncoderScorer(model=str(tiny_cross_encoder_dir), device="cpu", dtype="float32")
    same = CrossEncoderScorer(model=str(tiny_cross_encoder_dir), device="cpu", dtype="float32", token_budget=99)
    shorter = CrossEncoderScorer(model=str(tiny_cross_encoder_dir), device="cpu", dtype="float32", max_length=128)
    half = CrossEncoderScorer(model=str(tiny_cross_encoder_dir), device="cpu", dtype="bfloat16")
    assert base.fingerprint == same.fingerprint
    assert len({base.fingerprint, shorter.fingerprint, half.fingerprint}) == 3


def test_timings_are_reported(tiny_scorer) -> None:
    timings: dict[str, float] = {"model_ms": 1.0}
    tiny_scorer.score("q", ["one passage", "another passage"], timings=timings)
    assert timings["tokenize_ms"] > 0 and timings["model_ms"] > 1.0


def test_docs_example_runs(tiny_cross_encoder_dir) -> None:
    from tests.docs_examples import run_blocks

    namespace = run_blocks("rerank.md", {"__name__": "__docs__", "MODEL_DIR": str(tiny_cross_encoder_dir)})
    assert namespace["scores"]


def test_bfloat16_keeps_the_ranking(tiny_cross_encoder_dir, tiny_scorer) -> None:
    rng = random.Random(8)
    passages = [_text(rng, rng.randint(5, 200)) for _ in range(40)]
    fast = CrossEncoderScorer(model=str(tiny_cross_encoder_dir), device="cpu", dtype="bfloat16")
    exact = np.array([s.raw for s in tiny_scorer.score("tree house", passages)])
    approx = np.array([s.raw for s in fast.score("tree house", passages)])
    assert np.corrcoef(exact, approx)[0, 1] > 0.95
    fast.close()


def test_fixture_model_dir_is_safetensors(tiny_cross_encoder_dir: Path) -> None:
    assert (tiny_cross_encoder_dir / "model.safetensors").exists()
    assert (tiny_cross_encoder_dir / "tokenizer.json").exists()
