"""Canaries: a model directory whose remote code or pickle would write a marker file.

Loading must refuse pickle weights and must not run a model's own Python code
unless the user opts in, so the marker never appears. Each canary is first
shown to be live (opting in, or unpickling it directly, in a separate process,
does write its marker), so a passing test cannot be a canary that never sings.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from secondpass.errors import ModelLoadError
from secondpass.pipeline.scorer import CrossEncoderScorer

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]


class _WritesMarker:
    """Unpickling this calls ``open(marker, "w")``: the file appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.marker, "w"))


def _remote_code_dir(base: Path, tiny: Path, marker: Path) -> Path:
    """The tiny model plus config/tokenizer ``auto_map`` entries pointing at code that writes ``marker``."""
    directory = base / "remote-code-canary"
    shutil.copytree(tiny, directory)
    code = f"from pathlib import Path\nPath({str(marker)!r}).write_text('remote code ran')\n"
    (directory / "canary_config.py").write_text(code + "from transformers import BertConfig\nclass CanaryConfig(BertConfig):\n    model_type = 'bert'\n")
    (directory / "canary_model.py").write_text(
        code + "from transformers import BertForSequenceClassification\nclass CanaryModel(BertForSequenceClassification):\n    pass\n"
    )
    config = json.loads((directory / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "canary_config.CanaryConfig",
        "AutoModelForSequenceClassification": "canary_model.CanaryModel",
    }
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _pickle_dir(base: Path, tiny: Path, marker: Path, *, keep_safetensors: bool) -> Path:
    directory = base / ("pickle-beside-safetensors" if keep_safetensors else "pickle-only")
    shutil.copytree(tiny, directory)
    if not keep_safetensors:
        for path in directory.glob("*.safetensors"):
            path.unlink()
    with (directory / "pytorch_model.bin").open("wb") as handle:
        pickle.dump({"weight": _WritesMarker(marker)}, handle)
    return directory


def _run(code: str, env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **env_extra}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=300, check=False)


def test_remote_code_canary_never_runs_without_opt_in(tiny_cross_encoder_dir: Path, tmp_path: Path, figures: Any) -> None:
    marker = tmp_path / "remote-code.marker"
    directory = _remote_code_dir(tmp_path, tiny_cross_encoder_dir, marker)
    scorer = CrossEncoderScorer(model=str(directory), device="cpu", dtype="float32", backend="torch")
    try:
        scorer.warm_up()
        # Loaded as the plain architecture its config names: the custom code was ignored.
        assert len(scorer.score("cat", ["a cat", "a dog"])) == 2
    except ModelLoadError as exc:
        assert "trust_remote_code" in str(exc)
    finally:
        scorer.close()
    assert not marker.exists(), "the model's own code ran without trust_remote_code"
    with pytest.raises(Exception, match="revision"):
        CrossEncoderScorer(model=str(directory), device="cpu", trust_remote_code=True)
    assert not marker.exists()
    # Live canary: opting in (with a pinned revision) does run the code, in another process.
    probe = _run(
        textwrap.dedent(
            f"""
            from secondpass.pipeline.scorer import CrossEncoderScorer
            s = CrossEncoderScorer(model={str(directory)!r}, device="cpu", dtype="float32",
                                   backend="torch", trust_remote_code=True, revision="pinned")
            try:
                s.warm_up()
            except Exception as exc:
                print("load after opt-in failed:", type(exc).__name__)
            """
        ),
        {"HF_MODULES_CACHE": str(tmp_path / "hf-modules")},
    )
    assert marker.exists(), f"the canary is dead (opting in did not run it): {probe.stdout}{probe.stderr[-2000:]}"
    figures.add("model loading canaries", "markers written without opt-in", 0, "files")


def test_pickle_canary_is_refused(tiny_cross_encoder_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pickle.marker"
    only = _pickle_dir(tmp_path, tiny_cross_encoder_dir, marker, keep_safetensors=False)
    scorer = CrossEncoderScorer(model=str(only), device="cpu", dtype="float32")
    with pytest.raises(ModelLoadError, match="allow_pickle"):
        scorer.warm_up()
    assert not marker.exists(), "a pickle was unpickled without allow_pickle"
    # Beside safetensors, the pickle is never touched: the safetensors weights load.
    beside = _pickle_dir(tmp_path, tiny_cross_encoder_dir, marker, keep_safetensors=True)
    safe = CrossEncoderScorer(model=str(beside), device="cpu", dtype="float32", backend="torch")
    safe.warm_up()
    assert len(safe.score("cat", ["a cat"])) == 1
    safe.close()
    assert not marker.exists(), "the pickle beside the safetensors weights was unpickled"
    # Live canary: plain unpickling (what a pickle loader does) writes the marker.
    probe = _run(f"import pickle; pickle.load(open({str(only / 'pytorch_model.bin')!r}, 'rb'))", {})
    assert marker.exists(), f"the canary is dead: {probe.stderr[-2000:]}"
