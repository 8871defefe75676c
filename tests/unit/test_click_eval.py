"""``secondpass eval --clicks``: joining clicks with a rank log, MRR and its bootstrap interval.

The expected reciprocal ranks below are worked out by hand from the orders in
the hand-made log; the intervals are checked against a percentile bootstrap
written here with numpy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from secondpass.cli import main
from secondpass.errors import ConfigurationError
from secondpass.reporting.clicks import POSITION_BIAS_NOTE, bootstrap_mean, evaluate_clicks

FIRST = ["a", "b", "c", "d", "e"]


def search(
    request_id: str,
    arm: str,
    reranked: list[str] | None,
    *,
    ts: float = 10.0,
    query_id: str | None = None,
) -> dict[str, Any]:
    return {
        "ts": ts, "request_id": request_id, "arm": arm, "index": "docs",
        "query_id": query_id or f"q-{request_id}", "query": None,
        "first_stage": FIRST, "reranked": reranked, "scores": None,
        "outcome": "ok" if reranked is not None else "failed",
        "metrics": {"kendall_tau": None, "top10_overlap": None, "top1_from": None, "top3_changed": None},
        "rerank_ms": None,
    }  # fmt: skip


SEARCHES = [
    search("l1", "live", ["c", "a", "e", "b", "d"]),
    search("l2", "live", ["b", "a", "c", "d", "e"]),
    search("l3", "live", None),
    search("s1", "shadow", ["e", "d", "c", "b", "a"]),
    # An earlier search of the same query with no click before the next one: never joined.
    search("l0", "live", ["e", "d", "c", "b", "a"], ts=90.0, query_id="q-shared"),
    search("s2", "shadow", ["b", "c", "a", "d", "e"], ts=100.0, query_id="q-shared"),
    search("s3", "shadow", ["d", "a", "b", "c", "e"], ts=200.0, query_id="q-shared"),
    search("s4", "shadow", None),
]


def click(doc: str, position: int, *, request_id: str | None = None, **extra: Any) -> str:
    body = {"doc_id": doc, "position": position, **extra}
    if request_id is not None:
        body["request_id"] = request_id
    return json.dumps(body)


CLICKS = [
    click("c", 1, request_id="l1"),  # live: shown (reranked) rank 1, first-stage rank 3
    click("b", 4, request_id="l1"),  # live: shown 4, first-stage 2
    click("a", 2, request_id="l2"),  # live: shown 2, first-stage 1
    click("a", 1, request_id="l3"),  # live, rerank failed: left out
    click("a", 1, request_id="s1"),  # shadow: shown (first-stage) 1, reranked 5
    click("z", 9, request_id="s1"),  # shadow: in neither order
    click("e", 2, request_id="s1"),  # shadow: shown 5 (logged 2: a mismatch), reranked 1
    click("c", 3, query_id="q-shared", ts=150.0),  # joins s2: shown 3, reranked 2
    click("d", 4, query_id="q-shared", ts=250.0),  # joins s3: shown 4, reranked 1
    click("a", 1, query_id="q-shared", ts=50.0),  # before any search of the query: unmatched
    click("a", 1, request_id="nope"),  # unknown request: unmatched
    click("b", 2, request_id="s4"),  # shadow, rerank dropped: shown 2, no reranked order
]
BAD_CLICKS = [
    "not json",
    json.dumps({"request_id": "l1", "position": 1}),
    json.dumps({"request_id": "l1", "doc_id": "a", "position": 0}),
    json.dumps({"doc_id": "a", "position": 1}),
]
# By hand from the comments above:
LIVE_SHOWN = [1, 1 / 4, 1 / 2]
LIVE_OTHER = [1 / 3, 1 / 2, 1]
LIVE_CHANGE = [1 - 3, 4 - 2, 2 - 1]
SHADOW_SHOWN = [1, 0, 1 / 5, 1 / 3, 1 / 4, 1 / 2]
SHADOW_OTHER = [1 / 5, 0, 1, 1 / 2, 1]
SHADOW_CHANGE = [5 - 1, 1 - 5, 2 - 3, 1 - 4]


@pytest.fixture
def logs(tmp_path: Path) -> tuple[Path, Path]:
    rank = tmp_path / "rank.jsonl"
    rank.write_text(
        "\n".join([*(json.dumps(s) for s in SEARCHES), "{cut off"]) + "\n", encoding="utf-8"
    )
    clicks = tmp_path / "clicks.jsonl"
    clicks.write_text("\n".join(CLICKS + BAD_CLICKS) + "\n", encoding="utf-8")
    return clicks, rank


def test_mrr_and_position_change_match_the_hand_computation(logs: tuple[Path, Path]) -> None:
    data = evaluate_clicks(*logs, resamples=500, seed=3).as_dict()
    assert data["clicks_read"] == len(CLICKS)
    assert data["unmatched_clicks"] == 2
    assert data["malformed_click_lines"]["count"] == len(BAD_CLICKS)
    assert data["malformed_rank_log_lines"]["count"] == 1
    live, shadow = data["arms"]["live"], data["arms"]["shadow"]
    assert (live["clicks"], live["rerank_failed"]) == (4, 1)
    assert (shadow["clicks"], shadow["rerank_failed"], shadow["not_in_shown"]) == (6, 1, 1)
    assert shadow["position_mismatch"] == 1
    for figures, values in [
        (live["mrr_shown"], LIVE_SHOWN), (live["mrr_other"], LIVE_OTHER),
        (live["position_change"], LIVE_CHANGE), (shadow["mrr_shown"], SHADOW_SHOWN),
        (shadow["mrr_other"], SHADOW_OTHER), (shadow["position_change"], SHADOW_CHANGE),
    ]:  # fmt: skip
        assert figures["n"] == len(values)
        assert figures["mean"] == pytest.approx(float(np.mean(values)))
        assert (
            min(values) <= figures["ci_low"] <= figures["mean"] <= figures["ci_high"] <= max(values)
        )


def numpy_percentile_bootstrap(
    values: np.ndarray, resamples: int, seed: int
) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def test_interval_agrees_with_a_numpy_bootstrap() -> None:
    ranks = np.random.default_rng(11).geometric(0.4, size=100)
    values = 1.0 / ranks
    got = bootstrap_mean(values.tolist(), resamples=5000, seed=0)
    # Another seed, so the two agree within resampling noise (about 0.002 here); a 90% interval
    # instead of 95% would be 0.009-0.012 off on this sample.
    low, high = numpy_percentile_bootstrap(values, 5000, seed=99)
    assert got.estimate == pytest.approx(values.mean())
    assert got.low == pytest.approx(low, abs=0.005)
    assert got.high == pytest.approx(high, abs=0.005)
    assert bootstrap_mean(values.tolist(), resamples=5000, seed=0) == got  # seeded: reproducible


def test_too_few_values_have_no_interval() -> None:
    assert bootstrap_mean([], resamples=200, seed=0).estimate is None
    one = bootstrap_mean([0.5], resamples=200, seed=0)
    assert (one.estimate, one.low, one.high, one.n) == (0.5, None, None, 1)
    same = bootstrap_mean([0.5, 0.5, 0.5], resamples=200, seed=0)
    assert (same.low, same.high) == (0.5, 0.5)


def test_too_few_resamples_is_refused(logs: tuple[Path, Path]) -> None:
    with pytest.raises(ConfigurationError, match="resamples must be >= 100"):
        evaluate_clicks(*logs, resamples=10)


def test_command_prints_the_table_and_the_position_bias_caveat(
    logs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clicks, rank = logs
    out_dir = tmp_path / "out"
    code = main(["eval", "--clicks", str(clicks), "--rank-log", str(rank), "--out", str(out_dir)])
    assert code == 0
    out = capsys.readouterr().out
    assert "MRR in the order shown [95% CI]" in out
    assert POSITION_BIAS_NOTE in out
    written = json.loads((out_dir / "click_report.json").read_text(encoding="utf-8"))
    assert written["arms"]["live"]["mrr_shown"]["mean"] == pytest.approx(float(np.mean(LIVE_SHOWN)))


def test_json_output(logs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    clicks, rank = logs
    argv = [
        "eval",
        "--clicks",
        str(clicks),
        "--rank-log",
        str(rank),
        "--json",
        "--bootstrap-resamples",
        "300",
    ]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["bootstrap"]["resamples"] == 300
    assert data["arms"]["shadow"]["position_change"]["mean"] == pytest.approx(
        float(np.mean(SHADOW_CHANGE))
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--clicks", "{missing}", "--rank-log", "{rank}"], "click log {missing} does not exist"),
        (["--clicks", "{clicks}", "--rank-log", "{missing}"], "rank log {missing} does not exist"),
        (["--clicks", "{clicks}"], "--clicks and --rank-log go together"),
        (["{rank}", "--clicks", "{clicks}", "--rank-log", "{rank}"], "cannot be combined"),
        ([], "give DATASET_DIR"),
        (["{rank}"], "--out is required"),
    ],
)
def test_bad_invocations_are_one_clear_line_and_exit_code_2(
    logs: tuple[Path, Path], tmp_path: Path, argv: list[str], message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    clicks, rank = logs
    names = {"clicks": clicks, "rank": rank, "missing": tmp_path / "missing.jsonl"}
    assert main(["eval", *(a.format(**names) for a in argv)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("secondpass: error: ") and message.format(**names) in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("in_time_order", [True, False])
def test_query_id_join_keeps_only_the_searches_a_click_can_land_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_time_order: bool
) -> None:
    from secondpass.reporting import clicks as module

    monkeypatch.setattr(module, "MAX_JOIN_RECORDS", 5)
    times = [float(t) for t in range(1000)]
    rows = [
        search(f"r{int(t)}", "shadow", ["b", "a", "c", "d", "e"], ts=t, query_id="q")
        for t in (times if in_time_order else reversed(times))
    ]
    rank = tmp_path / "rank.jsonl"
    rank.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    click_log = tmp_path / "clicks.jsonl"
    click_log.write_text(
        click("a", 1, query_id="q", ts=400.5) + "\n" + click("b", 2, query_id="q") + "\n",
        encoding="utf-8",
    )
    if not in_time_order:  # every search may be needed: the bound is hit, with a clear message
        with pytest.raises(ConfigurationError, match="log request_id with each click"):
            evaluate_clicks(click_log, rank, resamples=200)
        return
    shadow = evaluate_clicks(click_log, rank, resamples=200).as_dict()["arms"]["shadow"]
    assert shadow["clicks"] == 2 and shadow["position_mismatch"] == 0
    assert shadow["mrr_other"]["mean"] == pytest.approx((1 / 2 + 1) / 2)
