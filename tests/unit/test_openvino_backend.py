"""The OpenVINO backend of CrossEncoderScorer against the torch path on the same tiny model."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
from tests.support.imports import hide_package

from secondpass.errors import ConfigurationError, MissingDependencyError, ModelLoadError
from secondpass.pipeline.scorer import CrossEncoderScorer

pytest.importorskip("openvino")

WORDS = "cat dog house river tree music light water stone bird city road green blue night".split()


def _passages(seed: int, count: int = 40) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 300))) for _ in range(count)]


def _ranks(values: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(values))


@pytest.fixture(scope="module")
def ov_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("openvino-cache")


def _scorer(model_dir: Path, cache: Path, **settings: object) -> CrossEncoderScorer:
    return CrossEncoderScorer(
        model=str(model_dir), device="cpu", backend="openvino", cache_folder=str(cache), **settings
    )


def test_fp32_scores_equal_the_torch_path(tiny_scorer, tiny_cross_encoder_dir, ov_cache) -> None:
    passages = [*_passages(1), "", "   "]
    scorer = _scorer(
        tiny_cross_encoder_dir, ov_cache, token_budget=2048
    )  # several batches, padded widths
    expected = tiny_scorer.score("tree house by the river", passages)
    got = scorer.score("tree house by the river", passages)
    assert [s.tokens_scored for s in got] == [s.tokens_scored for s in expected]
    np.testing.assert_allclose([s.raw for s in got], [s.raw for s in expected], atol=1e-4, rtol=0)
    assert got[-1].chunks == 0 and got[-2].chunks == 0
    assert got[-1].raw == expected[-1].raw  # blanks never reach the model
    scorer.close()


def test_bfloat16_keeps_the_ranking_and_stays_finite(
    tiny_scorer, tiny_cross_encoder_dir, ov_cache
) -> None:
    passages = _passages(2, 60)
    # fp32 first, into the same cache folder: a bf16 compile must not reuse the fp32 blob
    _scorer(tiny_cross_encoder_dir, ov_cache).score("green city road", passages[:3])
    fast = _scorer(tiny_cross_encoder_dir, ov_cache, dtype="bfloat16")
    exact = np.array([s.raw for s in tiny_scorer.score("green city road", passages)])
    approx = np.array([s.raw for s in fast.score("green city road", passages)])
    assert all(math.isfinite(value) for value in approx)
    assert np.corrcoef(_ranks(exact), _ranks(approx))[0, 1] > 0.95
    assert fast.fingerprint != _scorer(tiny_cross_encoder_dir, ov_cache).fingerprint
    fast.close()


def test_concurrent_callers_get_their_own_scores(
    tiny_scorer, tiny_cross_encoder_dir, ov_cache
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    scorer = _scorer(tiny_cross_encoder_dir, ov_cache)
    queries = ["cat", "river stone", "blue night", "music light"]
    passages = _passages(5, 12)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda q: [s.raw for s in scorer.score(q, passages)], queries))
    for query, got in zip(queries, results, strict=True):
        np.testing.assert_allclose(
            got, [s.raw for s in tiny_scorer.score(query, passages)], atol=1e-4, rtol=0
        )
    scorer.close()


def test_portable_export_is_cached_and_reused(
    tiny_cross_encoder_dir, tmp_path, monkeypatch
) -> None:
    import torch

    first = _scorer(tiny_cross_encoder_dir, tmp_path)
    scores = [s.raw for s in first.score("cat", ["a dog in the house"])]
    first.close()
    [export] = sorted(tmp_path.glob("secondpass-onnx/*/model.portable.onnx"))
    stamp = export.stat().st_mtime_ns

    calls: list[object] = []
    real_export = torch.onnx.export
    monkeypatch.setattr(
        torch.onnx, "export", lambda *a, **k: calls.append(a) or real_export(*a, **k)
    )
    second = _scorer(tiny_cross_encoder_dir, tmp_path)
    assert [s.raw for s in second.score("cat", ["a dog in the house"])] == scores
    assert calls == []
    assert export.stat().st_mtime_ns == stamp
    assert not list((tmp_path / "secondpass-onnx").glob(".staging-*"))
    second.close()


def test_a_model_that_disagrees_with_torch_is_refused(
    tiny_cross_encoder_dir, tmp_path, monkeypatch
) -> None:
    from secondpass.pipeline import openvino_backend

    real = openvino_backend.OpenVinoCrossEncoder.logits
    monkeypatch.setattr(
        openvino_backend.OpenVinoCrossEncoder,
        "logits",
        lambda self, features: [math.nan for _ in real(self, features)],
    )
    scorer = _scorer(tiny_cross_encoder_dir, tmp_path)
    with pytest.raises(ModelLoadError, match="OpenVINO f32 run of this model disagrees with torch"):
        scorer.warm_up()
    assert not scorer.is_loaded


def test_missing_openvino_is_a_clear_error(tiny_cross_encoder_dir, tmp_path, monkeypatch) -> None:
    hide_package(monkeypatch, "openvino")
    scorer = _scorer(tiny_cross_encoder_dir, tmp_path)
    with pytest.raises(MissingDependencyError, match=r"openvino.*'fast' extra"):
        scorer.warm_up()
    assert not scorer.is_loaded


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"backend": "openvino", "quantize": "int8"}, "needs backend='onnx'"),
        ({"backend": "openvino", "dtype": "float16"}, "runs float32 or bfloat16"),
        ({"backend": "openvino", "device": "cuda"}, "runs on the CPU"),
    ],
)
def test_inconsistent_settings_are_refused_before_loading(settings, message) -> None:
    with pytest.raises(ConfigurationError, match=message):
        CrossEncoderScorer(model="/nonexistent", **settings)


def test_openvino_backend_module_imports_no_openvino() -> None:
    import subprocess
    import sys

    code = "import sys, secondpass.pipeline.openvino_backend; print('openvino' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["False"]
