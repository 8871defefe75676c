"""``secondpass report``: figures of a hand-made rank log, malformed lines, the PNG, errors.

The logs are written by the tests; expected figures are computed here with
numpy straight from the records, not through the module under test.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.docs_examples import run_blocks

from secondpass.cli import main
from secondpass.reporting import jsonl
from secondpass.reporting.rank_summary import summarise_rank_log

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def record(
    i: int,
    *,
    arm: str,
    outcome: str = "ok",
    tau: float | None = None,
    overlap: float | None = None,
    top1: int | None = None,
    top3: bool | None = None,
    scores: list[float] | None = None,
    ms: float | None = None,
) -> dict[str, Any]:
    first = [f"d{j}" for j in range(12)]
    return {
        "ts": 1_764_670_000.0 + 60 * i,
        "request_id": f"req-{i}",
        "arm": arm,
        "index": "docs",
        "query_id": f"{i:016x}",
        "query": None,
        "first_stage": first,
        "reranked": list(reversed(first)) if outcome == "ok" else None,
        "scores": scores,
        "outcome": outcome,
        "metrics": {
            "kendall_tau": tau,
            "top10_overlap": overlap,
            "top1_from": top1,
            "top3_changed": top3,
        },
        "rerank_ms": ms,
    }


RECORDS = [
    record(0, arm="shadow", tau=0.5, overlap=0.9, top1=1, top3=False, scores=[0.9, 0.2], ms=12.0),
    record(1, arm="shadow", tau=-0.2, overlap=0.6, top1=3, top3=True, scores=[0.7, 0.1], ms=20.0),
    record(2, arm="shadow", tau=0.1, overlap=0.8, top1=12, top3=True, scores=[0.5], ms=31.0),
    record(3, arm="shadow", outcome="dropped"),
    record(4, arm="shadow", outcome="failed", ms=5.0),
    record(
        5, arm="live", tau=0.9, overlap=1.0, top1=1, top3=False, scores=[0.8, 0.3, 0.2], ms=15.0
    ),
    record(6, arm="live", tau=0.3, overlap=0.7, top1=5, top3=True, scores=[0.6], ms=45.0),
    record(7, arm="shadow", tau=0.7, overlap=0.5, top1=2, top3=True, scores=[0.4, 0.35], ms=18.0),
]
MALFORMED = [
    "not json at all",
    "[1, 2, 3]",
    json.dumps({**RECORDS[0], "arm": "canary"}),
    json.dumps({**RECORDS[0], "outcome": "maybe"}),
    json.dumps({**RECORDS[0], "metrics": {**RECORDS[0]["metrics"], "top1_from": "first"}}),
    json.dumps({k: v for k, v in RECORDS[0].items() if k != "request_id"}),
    '{"ts": 1, "arm": "live", "outcome": "ok", "truncated mid-wri',
]


def write_log(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def log(tmp_path: Path) -> Path:
    lines = [json.dumps(r) for r in RECORDS]
    for offset, bad in enumerate(MALFORMED):  # spread the bad lines between good ones
        lines.insert(2 * offset + 1, bad)
    lines.insert(3, "")  # a blank line is not a record and not malformed
    return write_log(tmp_path / "rank.jsonl", lines)


def expected(arm: str) -> dict[str, Any]:
    rows = [r for r in RECORDS if r["arm"] == arm]
    metric = lambda name: np.array(  # noqa: E731
        [r["metrics"][name] for r in rows if r["metrics"][name] is not None], dtype=float
    )
    scores = np.array([s for r in rows for s in (r["scores"] or [])])
    ms = np.array([r["rerank_ms"] for r in rows if r["rerank_ms"] is not None])
    top1 = [r["metrics"]["top1_from"] for r in rows if r["metrics"]["top1_from"] is not None]
    changed = [
        r["metrics"]["top3_changed"] for r in rows if r["metrics"]["top3_changed"] is not None
    ]
    return {
        "searches": len(rows),
        "tau": (metric("kendall_tau").mean(), np.median(metric("kendall_tau"))),
        "overlap": (metric("top10_overlap").mean(), np.median(metric("top10_overlap"))),
        "top3_share": sum(changed) / len(changed),
        "top1_unchanged": top1.count(1) / len(top1),
        "top1_deep": sum(1 for p in top1 if p >= 11),
        "scores": np.percentile(scores, [10, 50, 90]),
        "ms": np.percentile(ms, [50, 99]),
        "outcomes": {o: sum(r["outcome"] == o for r in rows) for o in ("ok", "failed", "dropped")},
    }


@pytest.mark.parametrize("arm", ["live", "shadow"])
def test_figures_equal_an_independent_computation(log: Path, arm: str) -> None:
    got = summarise_rank_log(log).as_dict()["arms"][arm]
    want = expected(arm)
    assert got["searches"] == want["searches"]
    assert got["outcomes"] == want["outcomes"]
    assert (got["kendall_tau"]["mean"], got["kendall_tau"]["median"]) == pytest.approx(want["tau"])
    assert (got["top10_overlap"]["mean"], got["top10_overlap"]["median"]) == pytest.approx(
        want["overlap"]
    )
    assert got["top3_changed"]["share"] == pytest.approx(want["top3_share"])
    assert got["top1_from"]["unchanged_share"] == pytest.approx(want["top1_unchanged"])
    assert got["top1_from"]["buckets"]["11+"] == want["top1_deep"]
    assert [got["scores"][k] for k in ("p10", "p50", "p90")] == pytest.approx(list(want["scores"]))
    assert [got["rerank_ms"][k] for k in ("p50", "p99")] == pytest.approx(list(want["ms"]))


def test_malformed_lines_are_skipped_and_counted_with_their_line_numbers(log: Path) -> None:
    report = summarise_rank_log(log)
    assert report.records == len(RECORDS)
    assert report.skipped.count == len(MALFORMED)
    examples = report.skipped.examples
    assert len(examples) == jsonl.MAX_EXAMPLES
    assert examples[0] == (2, "not JSON")
    assert examples[1] == (5, "not a JSON object")  # line 4 is blank
    assert "arm='canary'" in examples[2][1]


def test_an_overlong_line_is_skipped_without_being_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jsonl, "MAX_LINE_BYTES", 4096)
    huge = json.dumps({**RECORDS[0], "query": "x" * 50_000})
    path = write_log(tmp_path / "rank.jsonl", [huge, json.dumps(RECORDS[1]), huge])
    report = summarise_rank_log(path)
    assert report.records == 1
    assert report.skipped.examples == [
        (1, "longer than 4096 bytes"),
        (3, "longer than 4096 bytes"),
    ]


def test_memory_cap_keeps_means_exact_and_says_the_medians_are_sampled(tmp_path: Path) -> None:
    rng = random.Random(7)
    taus = [rng.uniform(-1, 1) for _ in range(3000)]
    lines = [
        json.dumps(record(i, arm="shadow", tau=t, ms=float(i % 97))) for i, t in enumerate(taus)
    ]
    data = summarise_rank_log(write_log(tmp_path / "big.jsonl", lines), reservoir_cap=300).as_dict()
    tau = data["arms"]["shadow"]["kendall_tau"]
    assert tau["n"] == 3000 and tau["sampled"] is True
    assert tau["mean"] == pytest.approx(float(np.mean(taus)))
    assert tau["median"] == pytest.approx(float(np.median(taus)), abs=0.15)


def test_command_prints_a_table_and_writes_a_png(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "out.png"
    assert main(["report", str(log), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "Kendall tau mean / median" in out
    assert f"{len(MALFORMED)} malformed rank log line(s) skipped" in out
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5_000


def test_json_output_is_the_summary(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(log), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["records"] == len(RECORDS)
    assert printed["malformed_lines"]["count"] == len(MALFORMED)
    assert printed["arms"]["live"]["searches"] == expected("live")["searches"]


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_log_is_one_clear_line_and_exit_code_2(
    tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "nope.jsonl" if kind == "missing" else tmp_path
    assert main(["report", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"secondpass: error: rank log {target}")
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_docs_example_runs() -> None:
    namespace = run_blocks("rollout-report.md")
    shadow = namespace["summary"]["arms"]["shadow"]
    assert shadow["searches"] == 3 and namespace["summary"]["malformed_lines"]["count"] == 1
    assert shadow["top3_changed"]["share"] == pytest.approx(2 / 3)
    arm = namespace["clicks"]["arms"]["shadow"]
    assert arm["mrr_shown"]["mean"] == pytest.approx((1 / 3 + 1) / 2)
    assert arm["mrr_other"]["mean"] == pytest.approx((1 + 1 / 4) / 2)
    assert arm["position_change"]["mean"] == pytest.approx(0.5)


def test_the_reservoir_keeps_a_uniform_sample_of_a_long_stream() -> None:
    from scipy.stats import kstest

    from secondpass.reporting.rank_summary import Reservoir

    kept = []
    for seed in range(20):
        reservoir = Reservoir(cap=200, rng=random.Random(seed))
        for start in range(0, 20_000, 10):  # one value at a time and in runs, as scores arrive
            if start % 20:
                reservoir.extend([float(v) for v in range(start, start + 10)])
            else:
                for v in range(start, start + 10):
                    reservoir.add(float(v))
        values = reservoir.values()
        assert reservoir.seen == 20_000 and len(set(values.tolist())) == 200
        kept.extend(values / 20_000)
    assert kstest(kept, "uniform").pvalue > 0.01


def test_records_from_the_writers_own_serialiser_are_read(tmp_path: Path) -> None:
    from secondpass.pipeline.rank_log import RankRecord, query_id

    written = RankRecord(
        ts=1.0, request_id="r1", arm="shadow", index="docs", query_id=query_id("cats"),
        first_stage=["a", "b", "c"], reranked=["c", "a", "b"], scores=[2.0, 1.0, 0.5],
        outcome="ok", rerank_ms=9.5,
        metrics={"kendall_tau": -1 / 3, "top10_overlap": 1.0, "top1_from": 3, "top3_changed": True},
    )  # fmt: skip
    path = write_log(tmp_path / "rank.jsonl", [written.to_json()])
    report = summarise_rank_log(path)
    assert report.skipped.count == 0
    shadow = report.as_dict()["arms"]["shadow"]
    assert shadow["top1_from"]["counts"] == {"3": 1}
    assert shadow["kendall_tau"]["mean"] == pytest.approx(-1 / 3)
