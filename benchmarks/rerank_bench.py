"""Rerank speed: SecondPass's scorer against a plain ``CrossEncoder.predict`` (prints, asserts exactness only).

Workload: 20 queries x 100 passages of 60-250 words (SciFact claims and
abstracts from ``--data DIR``, a BEIR SciFact folder, default ``$SECONDPASS_SCIFACT_DIR``;
without either, a seeded generator), scored by a cross-encoder of the exact shape of
``cross-encoder/ms-marco-MiniLM-L-6-v2`` (BERT, 6 layers, hidden 384, one
label) built from the packaged all-MiniLM-L6-v2 encoder plus a seeded head.

Measured in one run, queries interleaved so background load hits every method
alike; each timing is the wall time of one ``score``/``predict`` call per query
(tokenization, batching and forward passes; model loading and a warm-up call
excluded):

  (a) baseline  ``CrossEncoder.predict(pairs)`` with its defaults (batch 32, fp32)
  (b) exact     fp32 on ``--backend`` (``backend="openvino"`` or ``"onnx"``, or torch with
                ``dtype="float32"``); scores must equal (a) within 1e-4
  (c) fast      the fastest of (b), torch bf16, OpenVINO bf16 and ONNX int8 (those installed)
                among those whose per-query Spearman vs (a) is >= 0.99 in this run
  (d) cached    a second pass of (b) through ``LRUScoreCache`` (keys + lookups, no model)
  extra rows    the other fp32 backends and every fast candidate, with their fidelity

``--backend auto`` (default) is what the scorer's ``backend="auto"`` picks on a
CPU: openvino when it is installed, else onnx when onnxruntime is, else torch. ONNX exports are cached in a temporary directory,
built before timing starts.

    .venv/bin/python benchmarks/rerank_bench.py [--data DIR] [--queries 20] [--passages 100]
        [--backend auto|torch|onnx|openvino]

BEIR SciFact, for ``--data``: https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/scifact.zip
(unzip it; the folder holds corpus.jsonl and queries.jsonl).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if TYPE_CHECKING:
    from secondpass.types import PassageScore


def scifact_workload(
    scifact: Path, queries: int, passages: int, rng: random.Random
) -> list[tuple[str, list[str]]]:
    """Claims as queries; abstracts (title + text, cut to 60-250 words) as passages."""
    claims = [
        json.loads(line)["text"] for line in (scifact / "queries.jsonl").open(encoding="utf-8")
    ]
    pool = []
    for line in (scifact / "corpus.jsonl").open(encoding="utf-8"):
        doc = json.loads(line)
        words = f"{doc['title']}. {doc['text']}".split()
        if len(words) >= 60:
            pool.append(words)
    workload = []
    for claim in rng.sample(claims, queries):
        docs = rng.sample(pool, passages)
        workload.append((claim, [" ".join(words[: rng.randint(60, 250)]) for words in docs]))
    return workload


def generated_workload(
    queries: int, passages: int, rng: random.Random
) -> list[tuple[str, list[str]]]:
    """Fallback when SciFact is absent: seeded pseudo-English of the same lengths."""
    vocab = (
        "cell protein gene expression patients study results treatment increased reduced risk model "
        "analysis data clinical effect levels response signal mice human tissue disease cancer therapy "
        "the of and in to with was were for by that on from as at is are this these between"
    ).split()
    return [
        (
            " ".join(rng.choice(vocab) for _ in range(rng.randint(5, 15))),
            [
                " ".join(rng.choice(vocab) for _ in range(rng.randint(60, 250)))
                for _ in range(passages)
            ],
        )
        for _ in range(queries)
    ]


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    started = time.perf_counter()
    result = fn()
    return result, (time.perf_counter() - started) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=os.environ.get("SECONDPASS_SCIFACT_DIR") or None,
        metavar="DIR",
        help="BEIR SciFact folder (corpus.jsonl, queries.jsonl); default $SECONDPASS_SCIFACT_DIR, "
        "else generated passages",
    )
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--passages", type=int, default=100)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--backend", choices=("auto", "torch", "onnx", "openvino"), default="auto")
    parser.add_argument(
        "--onnx-token-budget",
        type=int,
        default=4096,
        help="token budget of the ONNX and OpenVINO scorers (smaller batches suit CPU kernels)",
    )
    args = parser.parse_args()
    if args.data is not None and not all(
        (args.data / name).is_file() for name in ("corpus.jsonl", "queries.jsonl")
    ):
        parser.error(f"--data {args.data}: no corpus.jsonl and queries.jsonl there")
    # The heavy imports come after the arguments are checked, so a wrong --data fails at once.
    import numpy as np
    import torch
    from scipy.stats import spearmanr
    from sentence_transformers import CrossEncoder
    from tests.support.models import build_minilm_cross_encoder

    from secondpass.pipeline.scorer import CrossEncoderScorer

    installed = {
        name: importlib.util.find_spec(module) is not None
        for name, module in (("onnx", "onnxruntime"), ("openvino", "openvino"))
    }
    backend = args.backend
    if backend == "auto":  # the scorer's own rule, resolved without loading a model
        backend = CrossEncoderScorer(model="unused", device="cpu", backend="auto").backend

    rng = random.Random(args.seed)
    if args.data is None:
        source = "generated"
        workload = generated_workload(args.queries, args.passages, rng)
    else:
        source = f"scifact ({args.data})"
        workload = scifact_workload(args.data, args.queries, args.passages, rng)
    lengths = [len(p.split()) for _, ps in workload for p in ps]
    pairs_total = sum(len(ps) for _, ps in workload)
    print(
        f"workload: {args.queries} queries x {args.passages} passages from {source}, "
        f"{min(lengths)}-{max(lengths)} words (mean {statistics.mean(lengths):.0f})"
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu bf16: "
        f"{'avx512_bf16' in Path('/proc/cpuinfo').read_text() if Path('/proc/cpuinfo').exists() else '?'}"
    )

    from secondpass.pipeline.cache import LRUScoreCache, cache_keys

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_minilm_cross_encoder(Path(tmp) / "minilm-ce", seed=0)
        onnx_cache = str(Path(tmp) / "onnx-cache")
        budget = args.onnx_token_budget
        cpu_kwargs = {"cache_folder": onnx_cache, "token_budget": budget}
        baseline = CrossEncoder(str(model_dir), device="cpu")
        # name -> (label, settings); "exact" is (b), the fp32 run of --backend
        fp32 = {
            "torch": ("torch fp32", {"backend": "torch", "dtype": "float32"}),
            "onnx": (f"onnx fp32, budget {budget}", {"backend": "onnx", **cpu_kwargs}),
            "openvino": (f"openvino fp32, budget {budget}", {"backend": "openvino", **cpu_kwargs}),
        }
        plans = {"exact": fp32[backend]}
        plans.update(
            {
                f"{name}32": plan
                for name, plan in fp32.items()
                if name != backend and (name == "torch" or installed[name])
            }
        )
        plans["bf16"] = ("torch bf16", {"backend": "torch", "dtype": "bfloat16"})
        if installed["openvino"]:
            plans["ov-bf16"] = (
                f"openvino bf16, budget {budget}",
                {"backend": "openvino", "dtype": "bfloat16", **cpu_kwargs},
            )
        if installed["onnx"]:
            plans["int8"] = (
                f"onnx int8 (dynamic, per-channel), budget {budget}",
                {"backend": "onnx", "quantize": "int8", **cpu_kwargs},
            )
        labels = {name: label for name, (label, _) in plans.items()}
        scorers = {
            name: CrossEncoderScorer(model=str(model_dir), device="cpu", **kwargs)
            for name, (_, kwargs) in plans.items()
        }
        warm_query, warm_passages = workload[0]
        baseline.predict([(warm_query, p) for p in warm_passages])
        for scorer in scorers.values():
            scorer.warm_up()  # loads, and for onnx exports (once, cached), outside the timings
            scorer.score(warm_query, warm_passages)

        ms: dict[str, list[float]] = {name: [] for name in ["baseline", *scorers, "cached"]}
        max_diff: dict[str, float] = {name: 0.0 for name in scorers}
        spearman: dict[str, list[float]] = {name: [] for name in scorers}
        overlap: dict[str, list[float]] = {name: [] for name in scorers}
        exact = scorers["exact"]
        cache = LRUScoreCache(max_entries=100_000)
        for number, (query, passages) in enumerate(workload):
            pairs = [(query, p) for p in passages]
            expected, t_base = timed(lambda pairs=pairs: baseline.predict(pairs))
            ms["baseline"].append(t_base)
            expected = np.asarray(expected, dtype=np.float64)
            top_base = set(np.argsort(-expected, kind="stable")[:10].tolist())
            for name, scorer in scorers.items():
                got, elapsed = timed(
                    lambda q=query, ps=passages, scorer=scorer: scorer.score(q, ps)
                )
                ms[name].append(elapsed)
                values = np.array([s.normalized for s in got])  # predict applies a sigmoid
                max_diff[name] = max(max_diff[name], float(np.max(np.abs(values - expected))))
                spearman[name].append(float(spearmanr(expected, values).statistic))
                overlap[name].append(
                    len(top_base & set(np.argsort(-values, kind="stable")[:10].tolist())) / 10.0
                )
                if name == "exact":
                    items = [("scifact", f"{number}-{i}", p) for i, p in enumerate(passages)]
                    cache.set_many(
                        dict(zip(cache_keys(exact.fingerprint, query, items), got, strict=True))
                    )

        for query, passages in workload:

            def cached_pass(
                query: str = query, passages: list[str] = passages
            ) -> list[PassageScore]:
                number = workload.index((query, passages))
                items = [("scifact", f"{number}-{i}", p) for i, p in enumerate(passages)]
                keys = cache_keys(exact.fingerprint, query, items)
                found = cache.get_many(keys)
                return [found[key] for key in keys]

            hits, t_cached = timed(cached_pass)
            assert len(hits) == len(passages)
            ms["cached"].append(t_cached)
        for scorer in scorers.values():
            scorer.close()

    assert max_diff["exact"] <= 1e-4, (
        f"exact mode differs from CrossEncoder.predict by {max_diff['exact']:.2e}"
    )
    candidates = [name for name in ("bf16", "ov-bf16", "int8") if name in scorers]
    others = [name for name in scorers if name.endswith("32")]
    # (b) itself is a fast-mode candidate: when exact is quicker than every approximation, it is the fast mode.
    faithful = [name for name in ("exact", *candidates) if min(spearman[name]) >= 0.99]
    fast = min(faithful, key=lambda name: sum(ms[name]))
    base_total = sum(ms["baseline"])
    rows = [
        ("baseline", "(a) CrossEncoder.predict defaults, fp32"),
        ("exact", f"(b) exact: {labels['exact']}"),
        (fast, f"(c) fast: {labels[fast]}" + (" (same as (b))" if fast == "exact" else "")),
        ("cached", "(d) cached repeat of (b) (LRU)"),
        *[(name, f"    extra: {labels[name]}") for name in (*others, *candidates) if name != fast],
    ]
    width = max(len(label) for _, label in rows) + 2
    print(f"\n{'method':<{width}} {'pairs/s':>9} {'ms/query':>9} {'p50 ms':>8} {'vs (a)':>7}")
    for name, label in rows:
        total = sum(ms[name])
        print(
            f"{label:<{width}} {pairs_total / (total / 1000.0):>9.0f} {total / len(workload):>9.2f} "
            f"{statistics.median(ms[name]):>8.2f} {base_total / total:>6.2f}x"
        )
    print(
        f"\n(b) {labels['exact']}: max |score - predict| = {max_diff['exact']:.2e} (sigmoid scores, limit 1e-4)"
    )
    for name in (*others, *candidates):
        if name in scorers:
            print(
                f"{labels[name]}: Spearman vs (a) mean {statistics.mean(spearman[name]):.4f}, "
                f"min {min(spearman[name]):.4f}; top-10 overlap mean {statistics.mean(overlap[name]):.2f}, "
                f"min {min(overlap[name]):.2f}; max |diff| {max_diff[name]:.2e}"
            )
    print(
        "goals: exact >= 1.5x, fast >= 3x with Spearman >= 0.99, cached >= 50x (ratios are wall time vs (a))"
    )


if __name__ == "__main__":
    main()
