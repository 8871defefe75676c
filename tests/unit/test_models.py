"""Scorer selection: a real cross-encoder when it loads, the packaged bi-encoder when it does not."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from secondpass.errors import ModelLoadError
from secondpass.pipeline.dense import BiEncoderScorer
from secondpass.pipeline.models import FALLBACK_DESCRIPTION, FALLBACK_FUSION, load_scorer
from secondpass.pipeline.protocols import Scorer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MISSING = "secondpass-tests/no-such-cross-encoder"


def test_missing_model_offline_falls_back_with_one_line() -> None:
    lines: list[str] = []
    scorer, description = load_scorer(MISSING, allow_fallback=True, device="cpu", notify=lines.append)
    assert isinstance(scorer, BiEncoderScorer) and isinstance(scorer, Scorer)
    assert description == FALLBACK_DESCRIPTION
    assert description == "bi-encoder all-MiniLM-L6-v2 fused with first-stage rank (fallback)"
    assert scorer.first_stage_fusion == FALLBACK_FUSION  # the retriever fuses its order with the first stage's
    assert len(lines) == 1 and "\n" not in lines[0]
    assert MISSING in lines[0] and "not available" in lines[0] and "fallback" in lines[0]
    assert scorer.fingerprint.startswith("bi-encoder:")
    good, bad = scorer.score("statins lower cholesterol", ["Statins reduce LDL cholesterol.", "Rainfall in Peru."])
    assert good.raw > bad.raw


def test_fallback_is_logged_when_no_notifier(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="secondpass.pipeline.models"):
        _, description = load_scorer(MISSING, allow_fallback=True, device="cpu")
    assert description == FALLBACK_DESCRIPTION
    messages = [r.getMessage() for r in caplog.records if r.name == "secondpass.pipeline.models"]
    assert len(messages) == 1 and MISSING in messages[0]


def test_no_fallback_raises_model_load_error() -> None:
    lines: list[str] = []
    with pytest.raises(ModelLoadError, match="no-such-cross-encoder"):
        load_scorer(MISSING, allow_fallback=False, device="cpu", notify=lines.append)
    assert lines == []


def test_loadable_cross_encoder_is_used(tiny_cross_encoder_dir: Path) -> None:
    lines: list[str] = []
    scorer, description = load_scorer(str(tiny_cross_encoder_dir), allow_fallback=True, device="cpu", notify=lines.append)
    assert lines == []
    assert description == f"cross-encoder {tiny_cross_encoder_dir}"
    assert scorer.fingerprint.startswith("cross-encoder|")
    assert len(scorer.score("q", ["a", "b"])) == 2
