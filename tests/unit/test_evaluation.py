"""Evaluation plumbing without engines: pipelines, metrics, comparisons, outputs.

A fake connector and a fake scorer stand in for the engine and the model (this
is a unit test of the evaluation logic; tests/integration/test_eval.py runs the
real thing).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest

from secondpass.datasets import BeirDataset
from secondpass.errors import ConfigurationError
from secondpass.evaluation import (
    PipelineRun,
    PipelineSpec,
    build_report,
    compare_per_query,
    compute_metrics,
    format_table,
    latency_summary,
    parse_pipelines,
    run_pipelines,
    write_outputs,
    write_trec_run,
)
from secondpass.types import Hit, PassageScore, SearchRequest


class FakeConnector:
    """BM25 stand-in: returns d1..d5 in a fixed order for every query."""

    def __init__(self, order: Sequence[str]) -> None:
        self.order = list(order)
        self.requests: list[SearchRequest] = []

    def search(self, request: SearchRequest) -> list[Hit]:
        self.requests.append(request)
        return [
            Hit(index="i", id=d, score=float(10 - r), rank=r, fields={"text": f"passage {d}"})
            for r, d in enumerate(self.order[: request.size], start=1)
        ]

    def close(self) -> None:
        pass


class FakeScorer:
    """Scores a passage by a fixed preference list (best first)."""

    fingerprint = "fake"

    def __init__(self, preferred: Sequence[str]) -> None:
        self.preferred = list(preferred)

    def _one(self, passage: str) -> PassageScore:
        doc = passage.split()[-1]
        value = float(len(self.preferred) - self.preferred.index(doc)) if doc in self.preferred else 0.0
        return PassageScore(raw=value, normalized=value / 10)

    def score(self, query: str, passages: Sequence[str], *, timings: dict[str, float] | None = None) -> list[PassageScore]:
        return [self._one(p) for p in passages]

    def score_pairs(self, pairs: Sequence[tuple[str, str]], *, timings: dict[str, float] | None = None) -> list[PassageScore]:
        return [self._one(p) for _, p in pairs]


def _dataset() -> BeirDataset:
    return BeirDataset(
        path=Path("."), split="test", name="toy",
        queries={"q1": "first", "q2": "second"},
        qrels={"q1": {"d3": 1}, "q2": {"d1": 1, "d5": 1}},
    )  # fmt: skip


def test_parse_pipelines_expands_windows_and_rejects_unknown() -> None:
    specs = parse_pipelines(["bm25", "hybrid+rerank", "bm25"], [10, 50, 10])
    assert [s.label for s in specs] == ["bm25", "hybrid+rerank@10", "hybrid+rerank@50"]
    assert specs[1] == PipelineSpec("hybrid", 10) and specs[1].rerank and not specs[0].rerank
    with pytest.raises(ConfigurationError, match="unknown pipeline 'bm42'"):
        parse_pipelines(["bm42"])
    with pytest.raises(ConfigurationError, match="windows"):
        parse_pipelines(["bm25+rerank"], [0])


def test_compute_metrics_counts_queries_missing_from_the_run_as_zero() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    run = {"q1": {"x": 3.0, "a": 2.0, "y": 1.0}}  # q2 returned nothing
    aggregate, per_query = compute_metrics(qrels, run)
    assert per_query["q1"]["RR@10"] == 0.5 and per_query["q2"]["RR@10"] == 0.0
    assert aggregate["RR@10"] == 0.25
    assert math.isclose(per_query["q1"]["nDCG@10"], 1 / math.log2(3))
    assert aggregate["R@100"] == 0.5


def test_compare_per_query_counts_wins_losses_ties() -> None:
    base = {"a": {"m": 0.5}, "b": {"m": 0.5}, "c": {"m": 0.2}}
    other = {"a": {"m": 0.7}, "b": {"m": 0.5}, "c": {"m": 0.1}}
    out = compare_per_query(base, other, "m")
    assert (out["wins"], out["losses"], out["ties"]) == (1, 1, 1)
    assert math.isclose(out["mean_delta"], (0.2 + 0 - 0.1) / 3)


def test_latency_summary_percentiles_in_ms() -> None:
    summary = latency_summary([float(v) for v in range(1, 101)])
    assert summary["p50"] == pytest.approx(50.5) and summary["p99"] == pytest.approx(99.01)
    assert summary["n"] == 100 and latency_summary([])["n"] == 0


def test_run_pipelines_shares_the_first_stage_and_reranks_the_window() -> None:
    connector = FakeConnector(["d1", "d2", "d3", "d4", "d5"])
    scorer = FakeScorer(["d3", "d2", "d1", "d5", "d4"])
    specs = parse_pipelines(["bm25", "bm25+rerank"], [2, 5])
    runs = run_pipelines(_dataset(), connector, specs, scorer=scorer, depth=5)
    by_label = {r.spec.label: r for r in runs}
    assert by_label["bm25"].ranking["q1"] == ["d1", "d2", "d3", "d4", "d5"]
    # window 2 reorders only the first two hits; the rest keep first-stage order
    assert by_label["bm25+rerank@2"].ranking["q1"] == ["d2", "d1", "d3", "d4", "d5"]
    assert by_label["bm25+rerank@5"].ranking["q1"] == ["d3", "d2", "d1", "d5", "d4"]
    # one search per query (plus one warm-up query), shared by the three pipelines
    assert len(connector.requests) == 3
    assert all(r.latency_ms.keys() == {"q1", "q2"} for r in runs)
    assert dict(by_label["bm25+rerank@5"].statuses) == {"ok": 2} and not by_label["bm25"].statuses


def test_rerank_without_scorer_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="scorer"):
        run_pipelines(_dataset(), FakeConnector(["d1"]), parse_pipelines(["bm25+rerank"]))


def test_dense_stage_without_encoder_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="dense encoder"):
        run_pipelines(_dataset(), FakeConnector(["d1"]), parse_pipelines(["hybrid"]))


def test_report_outputs_and_baseline(tmp_path: Path) -> None:
    connector = FakeConnector(["d1", "d2", "d3", "d4", "d5"])
    specs = parse_pipelines(["bm25", "bm25+rerank"], [2, 5])
    runs = run_pipelines(_dataset(), connector, specs, scorer=FakeScorer(["d3", "d5", "d1"]), depth=5)
    report, per_query = build_report(_dataset(), runs, engine="fake", depth=5, baseline="bm25", scorer="fake")
    entry = report.pipelines["bm25+rerank@5"]
    # reranked: d3 first for both queries -> q1 RR 1, q2 (d5 second) RR 1/2
    assert entry["metrics"]["RR@10"] == pytest.approx(0.75)
    assert report.pipelines["bm25"]["metrics"]["RR@10"] == pytest.approx((1 / 3 + 1) / 2)
    vs = entry["vs_baseline"]["RR@10"]
    assert (vs["wins"], vs["losses"], vs["ties"]) == (1, 1, 0)
    assert "vs_baseline" not in report.pipelines["bm25"]
    assert set(entry["latency_ms"]) >= {"p50", "p95", "p99"}

    paths = write_outputs(report, runs, tmp_path / "out", per_query=per_query)
    data = json.loads(paths["report"].read_text())
    assert data["pipelines"]["bm25+rerank@5"]["run_file"] == "bm25+rerank@5.trec"
    assert data["per_query"]["bm25"]["q1"]["RR@10"] == pytest.approx(1 / 3)
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (tmp_path / "out" / "bm25+rerank@5.trec").read_text().splitlines()
    assert lines[0] == "q1 Q0 d3 1 5 bm25+rerank@5"
    assert "bm25+rerank@5" in format_table(report)

    with pytest.raises(ConfigurationError, match="baseline 'dense'"):
        build_report(_dataset(), runs, engine="fake", baseline="dense")


def test_trec_scores_encode_the_order_even_for_ties(tmp_path: Path) -> None:
    run = PipelineRun(PipelineSpec("bm25"), ranking={"q": ["z", "a", "m"]})
    path = write_trec_run(tmp_path / "r.trec", run, depth=3)
    rows = [line.split() for line in path.read_text().splitlines()]
    assert [(r[2], r[3], r[4]) for r in rows] == [("z", "1", "3"), ("a", "2", "2"), ("m", "3", "1")]
