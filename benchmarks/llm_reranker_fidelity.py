"""LLM rerankers: fp32 scores against ``CrossEncoder.predict`` and the bf16 fast mode's ranking.

Builds the tests' tiny seeded Qwen3ForCausalLM and Gemma2ForCausalLM rerankers
(tests/support/llm_models.py) in a temporary directory and, per architecture,
scores ``--queries`` random queries of ``--passages`` passages with
``CrossEncoderScorer`` (torch, CPU):

  max_abs_diff     fp32 raw scores vs ``CrossEncoder.predict`` (same pairs, same prompt)
  bf16_spearman    per-query Spearman of ``dtype="bfloat16"`` against fp32 (min and mean)

Prints one ``RESULT`` line per architecture.

    .venv/bin/python benchmarks/llm_reranker_fidelity.py [--queries 10] [--passages 50]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

WORDS = "cats eat meat and fish the capital of China is Beijing Paris France yes no query".split()


def main() -> int:
    """Run the comparison and print the RESULT lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--passages", type=int, default=50)
    args = parser.parse_args()

    import numpy as np
    import torch
    from scipy.stats import spearmanr
    from sentence_transformers import CrossEncoder
    from tests.support.llm_models import (
        GEMMA_RERANKER_TEMPLATE,
        QWEN3_RERANKER_TEMPLATE,
        build_tiny_causal_reranker,
    )
    from tqdm import tqdm

    from secondpass.pipeline.scorer import CrossEncoderScorer

    rng = random.Random(5)
    with tempfile.TemporaryDirectory() as root:
        for arch, template in (("qwen3", QWEN3_RERANKER_TEMPLATE), ("gemma2", GEMMA_RERANKER_TEMPLATE)):
            path = str(build_tiny_causal_reranker(Path(root) / arch, architecture=arch, chat_template=template))
            reference = CrossEncoder(path, device="cpu")
            exact = CrossEncoderScorer(model=path, device="cpu", backend="torch", dtype="float32")
            fast = CrossEncoderScorer(model=path, device="cpu", backend="torch", dtype="bfloat16")
            diffs, rhos = [], []
            for _ in tqdm(range(args.queries), desc=arch):
                query = " ".join(rng.choice(WORDS) for _ in range(4))
                passages = [
                    " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 80)))
                    for _ in range(args.passages)
                ]
                want = reference.predict(
                    [(query, p) for p in passages], activation_fn=torch.nn.Identity()
                )
                got = np.array([s.raw for s in exact.score(query, passages)])
                diffs.append(float(np.max(np.abs(got - want))))
                rhos.append(float(spearmanr(got, [s.raw for s in fast.score(query, passages)]).statistic))
            print(
                f"RESULT arch={arch} max_abs_diff={max(diffs):.2e} "
                f"bf16_spearman_min={min(rhos):.4f} bf16_spearman_mean={np.mean(rhos):.4f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
