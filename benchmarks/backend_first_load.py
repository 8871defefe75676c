"""What ``backend="auto"`` costs at load time: the one-off ONNX export, then cached loads.

Builds a cross-encoder in a temporary directory (``tiny``: the tests' 2-layer
BERT; ``minilm``: the shape of ``cross-encoder/ms-marco-MiniLM-L-6-v2``, 6
layers, hidden 384), then times ``warm_up()`` (load + one forward pass) three
ways, each in a fresh scorer, with torch already imported so its import is
counted in none of them (nor sentence-transformers'):

  torch_load_s        ``backend="torch"``
  auto_first_load_s   ``backend="auto"`` with an empty export folder (export + compile)
  auto_cached_load_s  ``backend="auto"`` again (export reused, compiled blobs cached)

The export folder is a temporary directory, removed at the end; nothing is
written to the Hugging Face home. Prints one ``RESULT`` line.

    .venv/bin/python benchmarks/backend_first_load.py [--model tiny|minilm]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sentence_transformers  # noqa: E402,F401  - imported here so no timing below includes it
import torch  # noqa: E402,F401
from tests.support.models import build_minilm_cross_encoder, build_tiny_cross_encoder  # noqa: E402

from secondpass.pipeline.scorer import CrossEncoderScorer  # noqa: E402


def _timed_load(model_dir: Path, cache: Path, backend: str) -> tuple[CrossEncoderScorer, float]:
    started = time.perf_counter()
    scorer = CrossEncoderScorer(
        model=str(model_dir), device="cpu", backend=backend, cache_folder=str(cache)
    )
    scorer.warm_up()
    return scorer, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "minilm"), default="tiny")
    args = parser.parse_args()
    build = build_tiny_cross_encoder if args.model == "tiny" else build_minilm_cross_encoder
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build(Path(tmp) / "model", seed=0)
        cache = Path(tmp) / "exports"
        torch_scorer, torch_s = _timed_load(model_dir, cache, "torch")
        first, first_s = _timed_load(model_dir, cache, "auto")
        again, again_s = _timed_load(model_dir, cache, "auto")
        size_mb = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) / 1e6
        for scorer in (torch_scorer, first, again):
            scorer.close()
    print(
        f"RESULT model={args.model} auto_backend={first.backend} torch_load_s={torch_s:.2f} "
        f"auto_first_load_s={first_s:.2f} auto_cached_load_s={again_s:.2f} export_mb={size_mb:.1f}"
    )


if __name__ == "__main__":
    main()
