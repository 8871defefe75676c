"""Rank-change figures, the rank log contract, share arms and the shadow queue (docs/rollout.md)."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from secondpass.errors import ConfigurationError
from secondpass.pipeline import rank_change
from secondpass.pipeline.rank_log import RankLogWriter, RankRecord, query_id
from secondpass.pipeline.rank_metrics import RankRecorder
from secondpass.pipeline.rollout import RolloutSettings, choose_arm, in_share
from secondpass.pipeline.shadow import ShadowQueue


def concordance_tau(first: list[str], reranked: list[str]) -> float:
    """Tau-a by counting pairs (no ties, so it equals tau-b): independent of scipy."""
    shared = [d for d in first if d in reranked]
    concordant = discordant = 0
    for a, b in itertools.combinations(shared, 2):
        same = (first.index(a) - first.index(b)) * (reranked.index(a) - reranked.index(b))
        concordant += same > 0
        discordant += same < 0
    return (concordant - discordant) / (concordant + discordant)


@pytest.mark.parametrize("seed", range(5))
def test_kendall_tau_matches_pair_counting(seed: int) -> None:
    rng = random.Random(seed)
    first = [f"d{i}" for i in range(12)]
    reranked = rng.sample(first, 9) + ["new1"]  # a window, plus a doc the first stage lacks
    expected = concordance_tau(first, reranked)
    assert rank_change.kendall_tau(first, reranked) == pytest.approx(expected)


def test_hand_examples() -> None:
    first = ["a", "b", "c", "d"]
    assert rank_change.kendall_tau(first, first) == pytest.approx(1.0)
    assert rank_change.kendall_tau(first, first[::-1]) == pytest.approx(-1.0)
    assert rank_change.kendall_tau(first, ["a", "x"]) is None  # one shared doc: undefined
    assert rank_change.top1_from(first, ["c", "a", "b", "d"]) == 3
    assert rank_change.top1_from(first, ["x"]) is None
    assert rank_change.top3_changed(first, ["b", "a", "c", "d"]) is True
    assert rank_change.top3_changed(first, ["a", "b", "c", "x"]) is False
    long_first = [str(i) for i in range(20)]
    long_rerank = [str(i) for i in range(5, 25)]
    assert rank_change.top_k_overlap(long_first, long_rerank) == pytest.approx(5 / 10)
    assert rank_change.top_k_overlap([], []) is None
    change = rank_change.compare(first, None)
    assert change.as_dict() == dict.fromkeys(["kendall_tau", "top10_overlap", "top1_from", "top3_changed"])
    assert rank_change.score_summary([1.0, 3.0]) == {"min": 1.0, "max": 3.0, "mean": 2.0, "spread": 2.0}


def test_record_round_trips_and_bad_lines_name_the_problem() -> None:
    record = RankRecord(ts=1.5, request_id="r", arm="shadow", index="docs", query_id=query_id("q"),
                        first_stage=["a", "b"], reranked=["b", "a"], scores=[2.0, 1.0],
                        outcome="ok", metrics={"kendall_tau": -1.0}, rerank_ms=3.0)  # fmt: skip
    data = json.loads(record.to_json())
    assert list(data) == ["ts", "request_id", "arm", "index", "query_id", "query", "first_stage",
                          "reranked", "scores", "outcome", "metrics", "rerank_ms"]  # fmt: skip
    assert data["metrics"] == {"kendall_tau": -1.0, "top10_overlap": None, "top1_from": None,
                               "top3_changed": None}  # fmt: skip
    assert RankRecord.from_json(record.to_json()).to_dict() == data
    with pytest.raises(ConfigurationError, match="arm"):
        RankRecord.from_json(json.dumps({**data, "arm": "canary"}))
    with pytest.raises(ConfigurationError, match="request_id"):
        RankRecord.from_json(json.dumps({k: v for k, v in data.items() if k != "request_id"}))
    with pytest.raises(ConfigurationError, match="not JSON"):
        RankRecord.from_json("{")


def test_writer_rotates_at_the_cap_and_recorder_keeps_text_out(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "rank.jsonl"
    writer = RankLogWriter(path=path, max_bytes=2048)
    recorder = RankRecorder(registry=CollectorRegistry(), writer=writer)
    for i in range(40):
        recorder.record(arm="live", request_id=str(i), index="docs", query="secret query text",
                        first_stage=["a", "b", "c"], reranked=["c", "a", "b"], scores=[3, 2, 1])  # fmt: skip
    assert writer.flush()
    writer.close()
    rotated = path.with_name("rank.jsonl.1")
    assert rotated.exists() and path.stat().st_size <= 2048 and rotated.stat().st_size <= 2048
    text = path.read_text() + rotated.read_text()
    assert "secret query text" not in text
    last = RankRecord.from_json(path.read_text().splitlines()[-1])
    assert last.request_id == "39" and last.metrics["top1_from"] == 3 and last.metrics["top3_changed"]
    registry = recorder.registry
    assert registry.get_sample_value("secondpass_rank_top3_changed_total", {"arm": "live"}) == 40
    assert registry.get_sample_value("secondpass_rerank_score_count", {"arm": "live"}) == 120


def test_share_is_deterministic_and_close_to_the_share() -> None:
    keys = [f"session-{i}" for i in range(4000)]
    first = [in_share(k, 0.1) for k in keys]
    assert first == [in_share(k, 0.1) for k in keys]
    assert 0.08 < sum(first) / len(keys) < 0.12
    settings = RolloutSettings(rerank_share=0.1, rerank_share_rest="pass")
    arms = {choose_arm(settings, share_key=k, query="q", shadow_requested=False) for k in keys[:200]}
    assert arms == {"live", "pass"}
    # no key: the query text decides, so one query always gets one arm
    by_query = {choose_arm(settings, share_key=None, query="cats", shadow_requested=False) for _ in range(20)}
    assert len(by_query) == 1


def test_shadow_sampling_and_opt_in() -> None:
    rng = random.Random(0)
    assert choose_arm(RolloutSettings(), share_key=None, query="q", shadow_requested=True) == "shadow"
    assert choose_arm(RolloutSettings(), share_key=None, query="q", shadow_requested=False) == "live"
    half = RolloutSettings(shadow=True, shadow_sample_rate=0.5)
    arms = [choose_arm(half, share_key=None, query="q", shadow_requested=False, rng=rng) for _ in range(400)]
    assert set(arms) == {"shadow", "pass"} and 150 < arms.count("shadow") < 250


def test_shadow_queue_bounds_work_and_cancels() -> None:
    async def scenario() -> tuple[list[bool], dict[str, int], int]:
        dropped: list[str] = []
        queue = ShadowQueue(max_pending=2, workers=1, on_drop=dropped.append)
        gate = asyncio.Event()
        accepted = [queue.submit(gate.wait) for _ in range(5)]
        assert dropped == ["queue_full"] * 3
        await queue.cancel()
        return accepted, queue.dropped, queue.pending

    accepted, counts, pending = asyncio.run(scenario())
    assert accepted == [True, True, False, False, False]
    assert counts == {"queue_full": 3} and pending == 0


def test_docs_rollout_example_runs() -> None:
    from tests.docs_examples import run_blocks

    namespace = run_blocks("rollout.md")
    assert namespace["record"].arm == "shadow"  # type: ignore[attr-defined]
