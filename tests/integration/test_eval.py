"""``secondpass eval`` end to end on real engines and real SciFact data.

The report's metrics come from ir-measures; they are checked here against ranx
(a separate implementation) computed from the TREC run files the command wrote,
so a bug in how runs are built, ordered or scored cannot hide in both.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from pathlib import Path

import pytest

from secondpass.cli import main
from secondpass.datasets import load_beir

# ../shared beside the repository (as CI lays it), unless SECONDPASS_SCIFACT_DIR says otherwise.
SHARED_SCIFACT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "scifact"
SCIFACT = Path(os.environ.get("SECONDPASS_SCIFACT_DIR", str(SHARED_SCIFACT)))
PUBLISHED_BM25_NDCG10 = 0.665  # BEIR (Thakur et al. 2021), Table 2, SciFact, BM25

pytestmark = pytest.mark.integration


def make_slice(dest: Path, *, queries: int, others: int, seed: int = 7) -> Path:
    """A BEIR folder with the first ``queries`` test queries, their relevant docs and random others."""
    lines = (SCIFACT / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines()
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    chosen = list(dict.fromkeys(r[0] for r in rows))[:queries]
    kept = [r for r in rows if r[0] in chosen]
    relevant = {r[1] for r in kept}
    docs = [json.loads(line) for line in (SCIFACT / "corpus.jsonl").open(encoding="utf-8")]
    rest = [d for d in docs if d["_id"] not in relevant]
    random.Random(seed).shuffle(rest)
    (dest / "qrels").mkdir(parents=True)
    (dest / "qrels" / "test.tsv").write_text(
        lines[0] + "\n" + "".join("\t".join(r) + "\n" for r in kept), encoding="utf-8"
    )
    with (dest / "corpus.jsonl").open("w", encoding="utf-8") as fh:
        for doc in [d for d in docs if d["_id"] in relevant] + rest[:others]:
            fh.write(json.dumps(doc) + "\n")
    (dest / "queries.jsonl").write_text((SCIFACT / "queries.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    return dest


def ranx_scores(qrels: dict[str, dict[str, int]], run_file: Path) -> dict[str, float]:
    from ranx import Qrels, Run, evaluate

    run = Run.from_file(str(run_file), kind="trec")
    result = evaluate(Qrels(qrels), run, ["ndcg@10", "mrr@10", "recall@100"], make_comparable=True)
    return {"nDCG@10": float(result["ndcg@10"]), "RR@10": float(result["mrr@10"]), "R@100": float(result["recall@100"])}


def _delete_index(engine: str, url: str, index: str) -> None:
    from secondpass.commands._engine import make_connector

    connector = make_connector(engine, url, index)
    try:
        connector.delete_index()
    finally:
        connector.close()


def test_eval_on_a_scifact_slice_matches_an_independent_evaluator(
    opensearch_url: str, tiny_cross_encoder_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_slice(tmp_path / "scifact-slice", queries=30, others=300)
    out = tmp_path / "out"
    index = f"sp-eval-{uuid.uuid4().hex[:8]}"
    argv = [
        "eval", str(data), "--engine", "opensearch", "--url", opensearch_url, "--index", index,
        "--pipeline", "bm25", "--pipeline", "hybrid", "--pipeline", "bm25+rerank",
        "--window", "10", "--window", "30", "--model", str(tiny_cross_encoder_dir),
        "--device", "cpu", "--out", str(out),
    ]  # fmt: skip
    try:
        assert main(argv) == 0
        printed = capsys.readouterr().out
        # a second run reuses the index: nothing is indexed again
        assert main([*argv[:-1], str(tmp_path / "out2"), "--limit-queries", "3"]) == 0
        again = capsys.readouterr().out
    finally:
        _delete_index("opensearch", opensearch_url, index)

    assert f"scorer: cross-encoder {tiny_cross_encoder_dir}" in printed
    n_docs = sum(1 for _ in (data / "corpus.jsonl").open())
    assert f"created index: {n_docs} indexed" in printed
    assert f"reused index: 0 indexed, {n_docs} already present" in again

    report = json.loads((out / "report.json").read_text())
    qrels = load_beir(data).qrels
    assert report["queries"] == 30 and report["baseline"] == "bm25" and report["engine"] == "opensearch"
    assert set(report["pipelines"]) == {"bm25", "hybrid", "bm25+rerank@10", "bm25+rerank@30"}
    for label, entry in report["pipelines"].items():
        run_file = out / entry["run_file"]
        rows = [line.split() for line in run_file.read_text().splitlines()]
        assert {r[0] for r in rows} == set(qrels), label  # every judged query was run
        assert max(int(r[3]) for r in rows) <= 100
        expected = ranx_scores(qrels, run_file)
        for measure, value in expected.items():
            assert entry["metrics"][measure] == pytest.approx(value, abs=1e-9), (label, measure)
        latency = entry["latency_ms"]
        assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] and latency["n"] == 30
        if label != "bm25":
            vs = entry["vs_baseline"]["nDCG@10"]
            assert vs["wins"] + vs["losses"] + vs["ties"] == 30
        if entry["rerank_window"] is not None:
            assert entry["rerank_status"] == {"ok": 30}
    # BM25 on a 330-doc slice that contains every relevant doc is easy; a broken run is not
    assert report["pipelines"]["bm25"]["metrics"]["nDCG@10"] > 0.6
    assert report["pipelines"]["hybrid"]["metrics"]["R@100"] >= report["pipelines"]["bm25"]["metrics"]["R@100"] - 0.05
    # reranking a window only moves hits inside it: recall@100 is unchanged
    assert report["pipelines"]["bm25+rerank@10"]["metrics"]["R@100"] == report["pipelines"]["bm25"]["metrics"]["R@100"]
    assert (out / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    assert "p50 ms" in printed and "nDCG@10" in printed


@pytest.mark.slow
@pytest.mark.parametrize("engine_name", ["opensearch", "elasticsearch"])
def test_bm25_on_full_scifact_is_near_the_published_figure(
    engine_name: str, request: pytest.FixtureRequest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = request.getfixturevalue(f"{engine_name}_url")
    index = f"sp-scifact-{uuid.uuid4().hex[:8]}"
    try:
        code = main(["eval", str(SCIFACT), "--engine", engine_name, "--url", url, "--index", index,
                     "--pipeline", "bm25", "--out", str(tmp_path)])  # fmt: skip
    finally:
        _delete_index(engine_name, url, index)
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["queries"] == 300
    ndcg = report["pipelines"]["bm25"]["metrics"]["nDCG@10"]
    print(f"{engine_name} BM25 nDCG@10 on SciFact test: {ndcg:.4f} (published {PUBLISHED_BM25_NDCG10})")
    assert abs(ndcg - PUBLISHED_BM25_NDCG10) < 0.03
