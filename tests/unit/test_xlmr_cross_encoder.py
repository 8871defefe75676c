"""bge-reranker-v2-m3's architecture (XLM-RoBERTa, no token types) through every CPU path.

The default model is an ``XLMRobertaForSequenceClassification``; the other
tests' tiny models are BERT. A tiny seeded XLM-R built here is loaded through
:class:`CrossEncoderScorer` exactly as a user's directory would be, and its
scores are held against ``CrossEncoder.predict`` (fp32: 1e-4) and, for the
exported CPU backends, against the torch path (fp32 exact, bf16 by rank).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr
from tests.support.models import build_tiny_xlmr_cross_encoder

from secondpass.pipeline.scorer import CrossEncoderScorer

WORDS = "cats eat meat fish sleep sun paris capital france tree house river city road music".split()
QUERY = "what do cats eat"


@pytest.fixture(scope="module")
def xlmr_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_xlmr_cross_encoder(tmp_path_factory.mktemp("xlmr") / "model", seed=3)


def _passages(n: int = 40) -> list[str]:
    rng = random.Random(11)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 60))) for _ in range(n)]


def test_fp32_scores_equal_cross_encoder_predict(xlmr_dir: Path) -> None:
    from sentence_transformers import CrossEncoder

    passages = _passages()
    reference = CrossEncoder(str(xlmr_dir), device="cpu")
    expected = reference.predict([(QUERY, p) for p in passages], batch_size=7)  # sigmoid, as ours
    scorer = CrossEncoderScorer(model=str(xlmr_dir), device="cpu", dtype="float32", backend="torch")
    scorer._token_budget = 512  # several batches of different widths: padding inside a batch
    got = [s.normalized for s in scorer.score(QUERY, passages)]
    assert np.max(np.abs(np.array(got) - np.asarray(expected))) < 1e-4
    assert np.std(got) > 1e-3  # the scores really differ: the comparison means something
    scorer.close()


@pytest.mark.parametrize(
    ("backend", "dtype", "exact"),
    [("onnx", "float32", True), ("openvino", "float32", True), ("openvino", "bfloat16", False)],
)
def test_exported_cpu_backends_keep_the_scores(
    xlmr_dir: Path, tmp_path: Path, backend: str, dtype: str, exact: bool
) -> None:
    pytest.importorskip("onnxruntime" if backend == "onnx" else "openvino")
    passages = _passages()
    torch_path = CrossEncoderScorer(model=str(xlmr_dir), device="cpu", dtype="float32", backend="torch")
    fast = CrossEncoderScorer(
        model=str(xlmr_dir), device="cpu", dtype=dtype, backend=backend, cache_folder=str(tmp_path)
    )
    expected = np.array([s.raw for s in torch_path.score(QUERY, passages)])
    got = np.array([s.raw for s in fast.score(QUERY, passages)])
    if exact:
        assert np.max(np.abs(got - expected)) < 1e-4
    else:
        assert spearmanr(got, expected).statistic > 0.95
    fast.close()
    torch_path.close()
