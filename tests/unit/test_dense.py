"""The sentence-transformers encoder and bi-encoder scorer, on the real packaged all-MiniLM-L6-v2."""

from __future__ import annotations

import math
import os

import pytest

from secondpass.errors import ModelLoadError
from secondpass.pipeline.dense import BiEncoderScorer, SentenceTransformerEncoder
from secondpass.pipeline.protocols import DenseEncoder, Scorer
from secondpass.types import EMPTY_PASSAGE_RAW_SCORE

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def encoder() -> SentenceTransformerEncoder:
    enc = SentenceTransformerEncoder(device="cpu", batch_size=8)
    enc.warm_up()
    return enc


def test_construction_loads_nothing() -> None:
    enc = SentenceTransformerEncoder("no/such-model")
    scorer = BiEncoderScorer(enc)
    assert enc._model is None
    assert scorer.fingerprint.startswith("bi-encoder:no/such-model@default")
    assert enc._model is None  # the fingerprint needs no model either


def test_satisfies_the_protocols(encoder: SentenceTransformerEncoder) -> None:
    assert isinstance(encoder, DenseEncoder)
    assert isinstance(BiEncoderScorer(encoder), Scorer)


def test_vectors_are_unit_length_and_in_input_order(encoder: SentenceTransformerEncoder) -> None:
    texts = ["a cat sleeps on the sofa", "quarterly tax filing deadlines", "a kitten naps on a couch"]
    vectors = encoder.encode(texts)
    assert encoder.dimension == 384
    assert len(vectors) == 3 and all(len(v) == 384 for v in vectors)
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-4) for v in vectors)
    # order is kept: each text's vector equals the one it gets when encoded alone
    alone = encoder.encode([texts[1]])[0]
    assert max(abs(a - b) for a, b in zip(alone, vectors[1], strict=True)) < 1e-4
    sim = [math.fsum(a * b for a, b in zip(vectors[0], v, strict=True)) for v in vectors]
    assert sim[2] > sim[1]  # the paraphrase is nearer than the unrelated text


def test_empty_input(encoder: SentenceTransformerEncoder) -> None:
    assert encoder.encode([]) == []


def test_scorer_ranks_relevant_passage_first_and_keeps_order(encoder: SentenceTransformerEncoder) -> None:
    scorer = BiEncoderScorer(encoder)
    passages = ["Income tax rates for 2020.", "Cats often sleep on warm sofas.", "   "]
    timings: dict[str, float] = {}
    scores = scorer.score("where do cats like to sleep", passages, timings=timings)
    assert len(scores) == 3
    assert scores[1].raw > scores[0].raw
    assert all(-1.0 <= s.raw <= 1.0 and math.isclose(s.normalized, (s.raw + 1) / 2) for s in scores[:2])
    assert scores[2].raw == EMPTY_PASSAGE_RAW_SCORE and scores[2].normalized == 0.0
    assert timings["model_ms"] > 0 and "tokenize_ms" in timings


def test_score_pairs_mixes_queries_like_separate_calls(encoder: SentenceTransformerEncoder) -> None:
    scorer = BiEncoderScorer(encoder)
    pairs = [("cats", "a cat purrs"), ("taxes", "file your tax return"), ("cats", "tax return")]
    mixed = scorer.score_pairs(pairs)
    separate = [scorer.score(q, [p])[0] for q, p in pairs]
    assert [round(s.raw, 4) for s in mixed] == [round(s.raw, 4) for s in separate]


def test_long_passages_report_truncation(encoder: SentenceTransformerEncoder) -> None:
    score = BiEncoderScorer(encoder).score("q", ["word " * 600])[0]
    assert score.truncated and score.tokens_in > score.tokens_scored == encoder.max_seq_length


def test_fingerprint_says_bi_encoder(encoder: SentenceTransformerEncoder) -> None:
    scorer = BiEncoderScorer(encoder)
    assert scorer.kind == "bi-encoder"
    assert scorer.fingerprint.startswith("bi-encoder:sentence-transformers/all-MiniLM-L6-v2@packaged-")
    assert "cross-encoder" not in scorer.fingerprint
    assert scorer.name == "sentence-transformers/all-MiniLM-L6-v2"


def test_unknown_model_offline_is_a_model_load_error() -> None:
    with pytest.raises(ModelLoadError, match="no/such-model"):
        SentenceTransformerEncoder("no/such-model").warm_up()


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        SentenceTransformerEncoder(batch_size=0)
