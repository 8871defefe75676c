"""Retrieval quality on the full SciFact test set (300 queries, 5,183 abstracts).

Runs ``secondpass eval`` against a local node whose data directory is kept in
``~/.cache/secondpass/bench/<engine>``, so the embedded index is built once and
later runs only query it. Prints the report table and compares BM25 nDCG@10 with
the figure BEIR published for the same collection (Thakur et al. 2021: 0.665).

    python benchmarks/scifact_eval.py                       # bm25, dense, hybrid on OpenSearch
    python benchmarks/scifact_eval.py --engine elasticsearch --pipeline bm25
    python benchmarks/scifact_eval.py --pipeline bm25 --pipeline bm25+rerank --window 20 --window 100

Any option after the known ones is passed to ``secondpass eval`` unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from secondpass.cli import main as cli_main
from secondpass.servers import LocalEngine

PUBLISHED = {"bm25": 0.665}  # BEIR, Table 2 (BM25 on SciFact test, nDCG@10)


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=("opensearch", "elasticsearch"), default="opensearch")
    parser.add_argument("--dataset", type=Path, default=Path(os.environ.get("SECONDPASS_SCIFACT_DIR", str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact"))))
    parser.add_argument("--pipeline", action="append", dest="pipelines")
    parser.add_argument("--out", type=Path, default=Path("reports/scifact-eval"))
    parser.add_argument("--node-dir", type=Path, default=None, help="persistent node directory")
    args, rest = parser.parse_known_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    node_dir = args.node_dir or Path.home() / ".cache" / "secondpass" / "bench" / args.engine
    node_dir.mkdir(parents=True, exist_ok=True)
    pipelines = args.pipelines or ["bm25", "dense", "hybrid"]
    out = args.out / args.engine
    with LocalEngine(args.engine, workdir=node_dir) as node:
        argv = ["eval", str(args.dataset), "--engine", args.engine, "--url", node.url, "--out", str(out)]
        for name in pipelines:
            argv += ["--pipeline", name]
        code = cli_main(argv + rest)
    if code != 0:
        return code
    report = json.loads((out / "report.json").read_text())
    print(f"\n{args.engine}: {report['queries']} queries, scorer {report['scorer']}, encoder {report['encoder']}")
    for label, entry in report["pipelines"].items():
        ndcg = entry["metrics"]["nDCG@10"]
        line = f"  {label:<22} nDCG@10 {ndcg:.4f}"
        if label in PUBLISHED:
            line += f"  (published {PUBLISHED[label]:.3f}; ratio {ndcg / PUBLISHED[label]:.3f})"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(run())
