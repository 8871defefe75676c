"""The ONNX Runtime backend of CrossEncoderScorer against the torch path on the same tiny model."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from tests.support.imports import hide_package

from secondpass.errors import ConfigurationError, MissingDependencyError
from secondpass.pipeline.scorer import CrossEncoderScorer

pytest.importorskip("onnxruntime")

WORDS = "cat dog house river tree music light water stone bird city road green blue night".split()


def _passages(seed: int, count: int = 40) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 300))) for _ in range(count)]


def _exports(root: Path) -> list[Path]:
    return sorted(root.glob("secondpass-onnx/*/*.onnx"))


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def onnx_scorer(tiny_cross_encoder_dir, onnx_cache):
    scorer = CrossEncoderScorer(
        model=str(tiny_cross_encoder_dir), device="cpu", backend="onnx", cache_folder=str(onnx_cache)
    )
    scorer.warm_up()
    yield scorer
    scorer.close()


def test_fp32_scores_equal_the_torch_path(tiny_scorer, onnx_scorer) -> None:
    passages = [*_passages(1), "", "   "]
    # a small budget forces several batches of different widths (padding inside a batch)
    onnx_scorer._token_budget = 2048
    expected = tiny_scorer.score("tree house by the river", passages)
    got = onnx_scorer.score("tree house by the river", passages)
    assert [s.tokens_scored for s in got] == [s.tokens_scored for s in expected]
    np.testing.assert_allclose([s.raw for s in got], [s.raw for s in expected], atol=1e-4, rtol=0)
    np.testing.assert_allclose([s.normalized for s in got], [s.normalized for s in expected], atol=1e-4, rtol=0)
    assert got[-1].chunks == 0 and got[-2].chunks == 0


def test_chunked_documents_match_the_torch_path(tiny_cross_encoder_dir, onnx_cache) -> None:
    long_text = " ".join(random.Random(3).choice(WORDS) for _ in range(1500))
    settings = {"model": str(tiny_cross_encoder_dir), "device": "cpu", "long_document": "chunk", "max_chunks": 4}
    torch_path = CrossEncoderScorer(dtype="float32", backend="torch", **settings)
    onnx_path = CrossEncoderScorer(backend="onnx", cache_folder=str(onnx_cache), **settings)
    [expected] = torch_path.score("music night", [long_text])
    [got] = onnx_path.score("music night", [long_text])
    assert got.chunks == expected.chunks == 4
    assert abs(got.raw - expected.raw) <= 1e-4


def test_int8_keeps_the_ranking(tiny_scorer, tiny_cross_encoder_dir, onnx_cache) -> None:
    passages = _passages(2, 60)
    fast = CrossEncoderScorer(
        model=str(tiny_cross_encoder_dir), device="cpu", backend="onnx", quantize="int8", cache_folder=str(onnx_cache)
    )
    exact = np.array([s.raw for s in tiny_scorer.score("green city road", passages)])
    approx = np.array([s.raw for s in fast.score("green city road", passages)])
    ranks = lambda values: np.argsort(np.argsort(values))  # noqa: E731
    assert np.corrcoef(ranks(exact), ranks(approx))[0, 1] > 0.95
    assert not np.allclose(exact, approx, atol=1e-6)  # it really is the quantized model
    assert fast.fingerprint != CrossEncoderScorer(
        model=str(tiny_cross_encoder_dir), device="cpu", backend="onnx", cache_folder=str(onnx_cache)
    ).fingerprint
    fast.close()


def test_export_is_cached_and_reused(tiny_cross_encoder_dir, tmp_path, monkeypatch) -> None:
    import torch

    first = CrossEncoderScorer(model=str(tiny_cross_encoder_dir), device="cpu", backend="onnx", cache_folder=str(tmp_path))
    first.warm_up()
    [export] = _exports(tmp_path)
    stamp = export.stat().st_mtime_ns
    scores = [s.raw for s in first.score("cat", ["a dog in the house"])]
    first.close()

    calls: list[object] = []
    real_export = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: calls.append(a) or real_export(*a, **k))
    second = CrossEncoderScorer(model=str(tiny_cross_encoder_dir), device="cpu", backend="onnx", cache_folder=str(tmp_path))
    assert [s.raw for s in second.score("cat", ["a dog in the house"])] == scores
    assert calls == []
    assert _exports(tmp_path) == [export] and export.stat().st_mtime_ns == stamp
    assert not list((tmp_path / "secondpass-onnx").glob(".staging-*"))
    second.close()


def test_different_weights_get_a_different_export(tmp_path) -> None:
    from tests.support.models import build_tiny_cross_encoder

    cache = tmp_path / "cache"
    for seed in (0, 1):
        model = build_tiny_cross_encoder(tmp_path / f"model-{seed}", seed=seed)
        CrossEncoderScorer(model=str(model), device="cpu", backend="onnx", cache_folder=str(cache)).warm_up()
    assert len(_exports(cache)) == 2


def test_missing_onnxruntime_is_a_clear_error(tiny_cross_encoder_dir, tmp_path, monkeypatch) -> None:
    hide_package(monkeypatch, "onnxruntime")
    scorer = CrossEncoderScorer(model=str(tiny_cross_encoder_dir), device="cpu", backend="onnx", cache_folder=str(tmp_path))
    with pytest.raises(MissingDependencyError, match=r"onnxruntime.*'fast' extra"):
        scorer.warm_up()
    assert not scorer.is_loaded


@pytest.mark.parametrize(
    "settings",
    [
        {"backend": "torch", "quantize": "int8"},  # int8 is an ONNX option
        {"backend": "onnx", "dtype": "bfloat16"},
        {"backend": "onnx", "device": "cuda"},
        {"backend": "tensorrt"},
    ],
)
def test_inconsistent_settings_are_refused_before_loading(settings) -> None:
    with pytest.raises(ConfigurationError):
        CrossEncoderScorer(model="/nonexistent", **settings)


def test_onnx_backend_module_imports_no_onnxruntime() -> None:
    import subprocess
    import sys

    code = (
        "import sys, secondpass.pipeline.onnx_backend, secondpass.pipeline.scorer; "
        "print('onnxruntime' in sys.modules, 'onnx' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
