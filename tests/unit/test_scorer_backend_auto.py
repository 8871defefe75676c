"""``backend="auto"``, the default: which runtime it picks, why, and that scores stay torch's.

Every runtime auto can pick on this machine is forced in turn by hiding the
packages of the faster ones (as on a machine without them) and checked against
the torch reference scorer (``tiny_scorer``) on the same tiny seeded model.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest
from tests.support.imports import hide_package

from secondpass.config import RerankSettings
from secondpass.pipeline.scorer import CrossEncoderScorer

WORDS = "cat dog house river tree music light water stone bird city road green blue night".split()
QUERY = "tree house by the river"
SCORER_LOG = "secondpass.pipeline.scorer"


@pytest.fixture(autouse=True)
def _default_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite pins SECONDPASS_RERANK_BACKEND=torch (tests/fixtures/models.py); not here."""
    monkeypatch.delenv("SECONDPASS_RERANK_BACKEND", raising=False)


def _passages(seed: int = 1, count: int = 30) -> list[str]:
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 300))) for _ in range(count)]
    return [*texts, "", "  "]


def _auto_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "backend=auto" in r.getMessage()]


def test_auto_is_the_default_and_the_environment_still_wins(monkeypatch) -> None:
    assert RerankSettings().backend == "auto"
    monkeypatch.setenv("SECONDPASS_RERANK_BACKEND", "torch")
    assert RerankSettings().backend == "torch"
    assert CrossEncoderScorer(model="some/model", device="cpu").backend == "torch"


@pytest.mark.parametrize(
    ("hidden", "expected"),
    [
        ((), "openvino"),
        (("openvino",), "onnx"),
        (("openvino", "onnxruntime"), "torch"),
        (("onnx",), "torch"),  # both CPU runtimes read the ONNX export
    ],
    ids=["openvino", "onnx", "torch", "torch-without-exporter"],
)
def test_auto_on_a_cpu_runs_the_fastest_installed_exact_runtime(
    hidden: tuple[str, ...],
    expected: str,
    tiny_cross_encoder_dir: Path,
    tiny_scorer: CrossEncoderScorer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if expected != "torch":
        pytest.importorskip({"openvino": "openvino", "onnx": "onnxruntime"}[expected])
    for package in hidden:
        hide_package(monkeypatch, package)
    scorer = CrossEncoderScorer(
        model=str(tiny_cross_encoder_dir), device="cpu", cache_folder=str(tmp_path)
    )
    with caplog.at_level(logging.INFO, logger=SCORER_LOG):
        assert scorer.backend == expected
        assert not scorer.is_loaded, "choosing a backend must not load the model"
        passages = _passages()
        got = scorer.score(QUERY, passages)
    [line] = _auto_lines(caplog)  # one line, saying what and why
    assert f"on {expected} (" in line
    assert scorer.backend == expected, "no fallback: the chosen runtime really ran"
    reference = tiny_scorer.score(QUERY, passages)
    np.testing.assert_allclose([s.raw for s in got], [s.raw for s in reference], atol=1e-4, rtol=0)
    np.testing.assert_allclose(
        [s.normalized for s in got], [s.normalized for s in reference], atol=1e-4, rtol=0
    )
    assert [s.tokens_scored for s in got] == [s.tokens_scored for s in reference]
    # Cache keys name the runtime, as they do for an explicit backend.
    assert ("backend=" in scorer.fingerprint) == (expected != "torch")
    if expected != "torch":
        assert f"backend={expected}" in scorer.fingerprint
        assert list(tmp_path.glob("secondpass-onnx/*/*.onnx")), (
            "the export lives under cache_folder"
        )
    scorer.close()


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"device": "cuda"}, "torch"),
        ({"device": "cuda:1"}, "torch"),
        ({"device": "mps"}, "torch"),
        ({"device": "cpu", "dtype": "bfloat16"}, "torch"),
        ({"device": "cpu", "dtype": "float16"}, "torch"),
        ({"device": "cpu", "quantize": "int8"}, "onnx"),
        ({"device": "cpu", "backend": "torch"}, "torch"),
        ({"device": "cpu", "backend": "onnx"}, "onnx"),
        ({"device": "cpu", "backend": "openvino", "dtype": "bfloat16"}, "openvino"),
    ],
)
def test_a_gpu_another_dtype_or_an_explicit_backend_decides(
    settings: dict[str, str], expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    scorer = CrossEncoderScorer(model="some/model", **settings)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger=SCORER_LOG):
        assert scorer.backend == expected
    assert not scorer.is_loaded
    assert len(_auto_lines(caplog)) == (0 if "backend" in settings else 1)


def test_auto_device_without_a_gpu_is_a_cpu_runtime() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("openvino")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: auto runs torch there (covered above)")
    assert CrossEncoderScorer(model="some/model").backend == "openvino"


def test_auto_falls_back_to_torch_when_the_export_cannot_be_written(
    tiny_cross_encoder_dir: Path,
    tiny_scorer: CrossEncoderScorer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pytest.importorskip("openvino")
    blocker = tmp_path / "read-only-cache"
    blocker.write_text("a file where the export folder would go")
    scorer = CrossEncoderScorer(
        model=str(tiny_cross_encoder_dir), device="cpu", cache_folder=str(blocker)
    )
    assert "backend=openvino" in scorer.fingerprint
    with caplog.at_level(logging.WARNING, logger=SCORER_LOG):
        got = scorer.score(QUERY, _passages(2, 5))
    assert scorer.backend == "torch"
    assert "backend=" not in scorer.fingerprint, "cache keys name the backend that really ran"
    assert any("running it on torch instead" in line for line in _auto_lines(caplog))
    reference = tiny_scorer.score(QUERY, _passages(2, 5))
    np.testing.assert_allclose([s.raw for s in got], [s.raw for s in reference], atol=1e-4, rtol=0)
    scorer.close()
