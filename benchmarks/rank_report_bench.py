"""Throughput and memory of ``secondpass report`` and ``eval --clicks`` on synthetic logs.

Writes a rank log of N searches (window 100, 2/3 shadow, 1/3 live, 5% failed or
dropped) and a click log (one click per two searches, by ``request_id``) into a
temporary directory, then, for each size, runs in a fresh child process:

  summarise_s / summarise_rps   ``summarise_rank_log`` wall time and searches per second
  clicks_s                      ``evaluate_clicks`` wall time (2,000 bootstrap resamples)
  peak_rss_mb                   the child's peak resident memory (after both)

Bounded memory shows as a peak RSS that stops growing with N once the
reservoirs are full (100,000 values per figure and arm), while the file grows
linearly. Prints one ``RESULT`` line per size.

    .venv/bin/python benchmarks/rank_report_bench.py [--searches 50000 200000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WINDOW = 100


def write_logs(folder: Path, searches: int, seed: int = 0) -> tuple[Path, Path]:
    rng = random.Random(seed)
    first = [f"doc-{j:05d}" for j in range(WINDOW)]
    rank, clicks = folder / "rank.jsonl", folder / "clicks.jsonl"
    with rank.open("w", encoding="utf-8") as log, clicks.open("w", encoding="utf-8") as click_log:
        for i in range(searches):
            arm = "live" if i % 3 == 0 else "shadow"
            ok = rng.random() > 0.05
            reranked = sorted(first, key=lambda _: rng.random()) if ok else None
            query = f"query {i % 5000}"
            record = {
                "ts": 1_764_670_000.0 + i * 0.5, "request_id": f"req-{i}", "arm": arm, "index": "docs",
                "query_id": hashlib.sha256(query.encode()).hexdigest()[:16], "query": None,
                "first_stage": first, "reranked": reranked,
                "scores": [rng.random() for _ in range(WINDOW)] if ok else None,
                "outcome": "ok" if ok else rng.choice(["failed", "dropped"]),
                "metrics": {
                    "kendall_tau": rng.uniform(-1, 1) if ok else None,
                    "top10_overlap": rng.randint(0, 10) / 10 if ok else None,
                    "top1_from": first.index(reranked[0]) + 1 if reranked else None,
                    "top3_changed": reranked[:3] != first[:3] if reranked else None,
                },
                "rerank_ms": rng.uniform(5, 80) if ok else None,
            }  # fmt: skip
            log.write(json.dumps(record) + "\n")
            if i % 2 == 0:
                shown = reranked if arm == "live" and reranked else first
                doc = shown[min(int(rng.expovariate(0.4)), WINDOW - 1)]
                body = {"request_id": f"req-{i}", "doc_id": doc, "position": shown.index(doc) + 1}
                click_log.write(json.dumps(body) + "\n")
    return rank, clicks


def child(rank: Path, clicks: Path) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    from secondpass.reporting import evaluate_clicks, summarise_rank_log

    started = time.perf_counter()
    report = summarise_rank_log(rank)
    summarise_s = time.perf_counter() - started
    started = time.perf_counter()
    evaluate_clicks(clicks, rank, resamples=2000)
    clicks_s = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "summarise_s": round(summarise_s, 2),
                "summarise_rps": round(report.records / summarise_s),
                "clicks_s": round(clicks_s, 2),
                "peak_rss_mb": round(peak_mb),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--searches", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument("--child", nargs=2, metavar=("RANK", "CLICKS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.searches:
            rank, clicks = write_logs(Path(tmp), n)
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(rank), str(clicks)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            figures = json.loads(out.stdout.strip().splitlines()[-1])
            size_mb = rank.stat().st_size / 1e6
            print(f"RESULT searches={n} log_mb={size_mb:.0f} " + " ".join(f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
