"""Rerank speed: SecondPass's scorer against a plain ``CrossEncoder.predict`` (prints, asserts exactness only).

Workload: 20 queries x 100 passages of 60-250 words (SciFact claims and
abstracts from /work/shared/data/scifact when present, else a seeded
generator), scored by a cross-encoder of the exact shape of
``cross-encoder/ms-marco-MiniLM-L-6-v2`` (BERT, 6 layers, hidden 384, one
label) built from the packaged all-MiniLM-L6-v2 encoder plus a seeded head.

Measured in one run, queries interleaved so background load hits every method
alike; each timing is the wall time of one ``score``/``predict`` call per query
(tokenization, batching and forward passes; model loading and a warm-up call
excluded):

  (a) baseline  ``CrossEncoder.predict(pairs)`` with its defaults (batch 32, fp32)
  (b) exact     ``CrossEncoderScorer(dtype="float32")``: scores must equal (a) within 1e-4
  (c) fast      ``CrossEncoderScorer(dtype="bfloat16")``: Spearman and top-10 overlap vs (a)
  (d) cached    a second pass of (b) through ``LRUScoreCache`` (keys + lookups, no model)

    .venv/bin/python benchmarks/rerank_bench.py [--queries 20] [--passages 100]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402
from sentence_transformers import CrossEncoder  # noqa: E402
from tests.support.models import build_minilm_cross_encoder  # noqa: E402

from secondpass.pipeline.scorer import CrossEncoderScorer  # noqa: E402
from secondpass.types import PassageScore  # noqa: E402

SCIFACT = Path("/work/shared/data/scifact")


def scifact_workload(queries: int, passages: int, rng: random.Random) -> list[tuple[str, list[str]]]:
    """Claims as queries; abstracts (title + text, cut to 60-250 words) as passages."""
    claims = [json.loads(line)["text"] for line in (SCIFACT / "queries.jsonl").open(encoding="utf-8")]
    pool = []
    for line in (SCIFACT / "corpus.jsonl").open(encoding="utf-8"):
        doc = json.loads(line)
        words = f"{doc['title']}. {doc['text']}".split()
        if len(words) >= 60:
            pool.append(words)
    workload = []
    for claim in rng.sample(claims, queries):
        docs = rng.sample(pool, passages)
        workload.append((claim, [" ".join(words[: rng.randint(60, 250)]) for words in docs]))
    return workload


def generated_workload(queries: int, passages: int, rng: random.Random) -> list[tuple[str, list[str]]]:
    """Fallback when SciFact is absent: seeded pseudo-English of the same lengths."""
    vocab = (
        "cell protein gene expression patients study results treatment increased reduced risk model "
        "analysis data clinical effect levels response signal mice human tissue disease cancer therapy "
        "the of and in to with was were for by that on from as at is are this these between"
    ).split()
    return [
        (
            " ".join(rng.choice(vocab) for _ in range(rng.randint(5, 15))),
            [" ".join(rng.choice(vocab) for _ in range(rng.randint(60, 250))) for _ in range(passages)],
        )
        for _ in range(queries)
    ]


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    started = time.perf_counter()
    result = fn()
    return result, (time.perf_counter() - started) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--passages", type=int, default=100)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    source = "scifact" if (SCIFACT / "corpus.jsonl").exists() else "generated"
    workload = (scifact_workload if source == "scifact" else generated_workload)(args.queries, args.passages, rng)
    lengths = [len(p.split()) for _, ps in workload for p in ps]
    pairs_total = sum(len(ps) for _, ps in workload)
    print(f"workload: {args.queries} queries x {args.passages} passages from {source}, "
          f"{min(lengths)}-{max(lengths)} words (mean {statistics.mean(lengths):.0f})")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu bf16: "
          f"{'avx512_bf16' in Path('/proc/cpuinfo').read_text() if Path('/proc/cpuinfo').exists() else '?'}")

    from secondpass.pipeline.cache import LRUScoreCache, cache_keys

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_minilm_cross_encoder(Path(tmp) / "minilm-ce", seed=0)
        baseline = CrossEncoder(str(model_dir), device="cpu")
        exact = CrossEncoderScorer(model=str(model_dir), device="cpu", dtype="float32")
        fast = CrossEncoderScorer(model=str(model_dir), device="cpu", dtype="bfloat16")
        exact.warm_up()
        fast.warm_up()
        warm_query, warm_passages = workload[0]
        baseline.predict([(warm_query, p) for p in warm_passages])
        exact.score(warm_query, warm_passages)
        fast.score(warm_query, warm_passages)

        ms: dict[str, list[float]] = {"baseline": [], "exact": [], "fast": [], "cached": []}
        max_diff = 0.0
        spearman: list[float] = []
        overlap: list[float] = []
        cache = LRUScoreCache(max_entries=100_000)
        for number, (query, passages) in enumerate(workload):
            pairs = [(query, p) for p in passages]
            expected, t_base = timed(lambda pairs=pairs: baseline.predict(pairs))
            got, t_exact = timed(lambda q=query, ps=passages: exact.score(q, ps))
            approx, t_fast = timed(lambda q=query, ps=passages: fast.score(q, ps))
            ms["baseline"].append(t_base)
            ms["exact"].append(t_exact)
            ms["fast"].append(t_fast)
            expected = np.asarray(expected, dtype=np.float64)
            exact_scores = np.array([s.normalized for s in got])  # predict applies a sigmoid
            max_diff = max(max_diff, float(np.max(np.abs(exact_scores - expected))))
            fast_scores = np.array([s.normalized for s in approx])
            spearman.append(float(spearmanr(expected, fast_scores).statistic))
            top_base = set(np.argsort(-expected, kind="stable")[:10].tolist())
            top_fast = set(np.argsort(-fast_scores, kind="stable")[:10].tolist())
            overlap.append(len(top_base & top_fast) / 10.0)
            items = [("scifact", f"{number}-{i}", p) for i, p in enumerate(passages)]
            cache.set_many(dict(zip(cache_keys(exact.fingerprint, query, items), got, strict=True)))

        for query, passages in workload:
            def cached_pass(query: str = query, passages: list[str] = passages) -> list[PassageScore]:
                number = workload.index((query, passages))
                items = [("scifact", f"{number}-{i}", p) for i, p in enumerate(passages)]
                keys = cache_keys(exact.fingerprint, query, items)
                found = cache.get_many(keys)
                return [found[key] for key in keys]

            hits, t_cached = timed(cached_pass)
            assert len(hits) == len(passages)
            ms["cached"].append(t_cached)

    assert max_diff <= 1e-4, f"exact mode differs from CrossEncoder.predict by {max_diff:.2e}"
    base_total = sum(ms["baseline"])
    print(f"\n{'method':<44} {'pairs/s':>9} {'ms/query':>9} {'p50 ms':>8} {'vs (a)':>7}")
    labels = {
        "baseline": "(a) CrossEncoder.predict defaults, fp32",
        "exact": "(b) SecondPass exact, fp32",
        "fast": "(c) SecondPass fast, bf16",
        "cached": "(d) SecondPass cached repeat (LRU)",
    }
    for name, label in labels.items():
        total = sum(ms[name])
        print(f"{label:<44} {pairs_total / (total / 1000.0):>9.0f} {total / len(workload):>9.2f} "
              f"{statistics.median(ms[name]):>8.2f} {base_total / total:>6.2f}x")
    print(f"\n(b) max |score - predict| = {max_diff:.2e} (sigmoid scores, limit 1e-4)")
    print(f"(c) Spearman vs (a): mean {statistics.mean(spearman):.4f}, min {min(spearman):.4f}; "
          f"top-10 overlap: mean {statistics.mean(overlap):.2f}, min {min(overlap):.2f}")
    print("goals: exact >= 1.5x, fast >= 3x with Spearman >= 0.99, cached >= 50x (ratios are wall time vs (a))")


if __name__ == "__main__":
    main()
