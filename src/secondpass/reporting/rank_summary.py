"""Summarise a rank log: what reranking changed, per arm (live / shadow).

Each line of a rank log is one reranked or shadowed search (see
:mod:`secondpass.pipeline.rank_log`): its first-stage and reranked orders, the
outcome, and the rank-change metrics computed when it was written. This module
folds such a log into per-arm figures in one pass.

Memory is bounded whatever the log's size: counts, sums and means are exact;
medians and percentiles are computed from a uniform reservoir sample of at
most ``reservoir_cap`` values per figure and arm (seeded, so a report is
reproducible), which is every value for logs up to that many searches. A
report says ``sampled`` when the cap was reached.

Example::

    report = summarise_rank_log("shadow.jsonl")
    print(report.arms["shadow"].as_dict()["kendall_tau"]["mean"])
"""

from __future__ import annotations

import math
import random
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secondpass.errors import ConfigurationError, MissingDependencyError
from secondpass.pipeline.rank_log import RankRecord
from secondpass.reporting.jsonl import SkippedLines, read_objects

try:
    import numpy as np
except ImportError as exc:  # numpy comes with the eval extra
    raise MissingDependencyError(package="numpy", extra="eval") from exc

ARMS = ("live", "shadow")
OUTCOMES = ("ok", "failed", "dropped")
DEFAULT_RESERVOIR_CAP = 100_000
"""Values kept per figure and arm for medians and percentiles (about 0.8 MB each)."""
MAX_TOP1_POSITION = 100
"""First-stage positions of the reranked #1 counted one by one; deeper ones share a bucket."""
TOP1_BUCKETS = ((1, 1), (2, 3), (4, 10), (11, None))
"""How the "reranked #1 came from" distribution is grouped in tables (1-based, inclusive)."""


@dataclass(frozen=True)
class RankEntry:
    """The fields of one rank-log record this report reads, validated."""

    ts: float
    request_id: str
    arm: str
    query_id: str
    first_stage: list[str]
    reranked: list[str] | None
    scores: list[float] | None
    outcome: str
    kendall_tau: float | None
    top10_overlap: float | None
    top1_from: int | None
    top3_changed: bool | None
    rerank_ms: float | None


def _number(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        msg = f"{name} is not a finite number"
        raise ValueError(msg)
    return float(value)


def _ids(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        msg = f"{name} is not a list of document ids"
        raise ValueError(msg)
    return value


def parse_entry(obj: dict[str, Any]) -> RankEntry:
    """Validate one decoded rank-log line; ``ValueError`` names the first bad field.

    The contract (fields present, arm, outcome, types) is checked by the
    writer's own :meth:`RankRecord.from_dict`, so reader and writer cannot drift
    apart; on top of it a report needs finite numbers, lists of ids and
    well-typed metrics, which are checked here.
    """
    try:
        record = RankRecord.from_dict(obj)
    except ConfigurationError as exc:
        raise ValueError(str(exc)) from exc
    for name in ("first_stage", "reranked"):
        if obj.get(name) is not None:
            _ids(obj[name], name)
    ts = _number(record.ts, "ts")
    metrics = record.metrics
    top1 = metrics.get("top1_from")
    if top1 is not None and (isinstance(top1, bool) or not isinstance(top1, int) or top1 < 1):
        msg = "metrics.top1_from is not a 1-based position"
        raise ValueError(msg)
    changed = metrics.get("top3_changed")
    if changed is not None and not isinstance(changed, bool):
        msg = "metrics.top3_changed is not a boolean"
        raise ValueError(msg)
    return RankEntry(
        ts=0.0 if ts is None else ts,
        request_id=record.request_id,
        arm=record.arm,
        query_id=record.query_id,
        first_stage=record.first_stage,
        reranked=record.reranked,
        scores=None if record.scores is None else _scores(record.scores),
        outcome=record.outcome,
        kendall_tau=_number(metrics.get("kendall_tau"), "metrics.kendall_tau"),
        top10_overlap=_number(metrics.get("top10_overlap"), "metrics.top10_overlap"),
        top1_from=top1,
        top3_changed=changed,
        rerank_ms=_number(record.rerank_ms, "rerank_ms"),
    )


def _scores(value: Any) -> list[float]:
    """The finite scores of a record (``null`` entries left out); one pass, no call per score."""
    if not isinstance(value, list):
        msg = "scores is not a list"
        raise ValueError(msg)
    kept = [v for v in value if v is not None]
    if not all(type(v) is float or type(v) is int for v in kept) or not all(
        map(math.isfinite, kept)
    ):
        msg = "scores is not a list of finite numbers"
        raise ValueError(msg)
    return kept


def read_entries(path: str | Path, *, skipped: SkippedLines) -> Iterator[RankEntry]:
    """Stream the valid records of a rank log; malformed lines are counted in ``skipped``."""
    for line_no, obj in read_objects(path, what="rank log", skipped=skipped):
        try:
            yield parse_entry(obj)
        except ValueError as exc:
            skipped.add(line_no, str(exc))


class Reservoir:
    """A uniform sample of at most ``cap`` items from a stream (Li's algorithm L).

    An item is ``width`` floats kept together (``width=2`` keeps (time, value)
    pairs), stored in flat ``array``s: 8 bytes a float, not a Python object each.
    Once full, algorithm L draws how many items to skip before the next one is
    kept, so an item that is not kept costs a counter increment, not a random draw.
    """

    def __init__(self, *, cap: int, rng: random.Random, width: int = 1) -> None:
        if cap < 1:
            msg = f"reservoir cap must be >= 1, got {cap}"
            raise ConfigurationError(msg)
        self.cap = cap
        self.seen = 0
        self._columns = [array("d") for _ in range(width)]
        self._rng = rng
        self._weight = 1.0
        self._next = 0  # 1-based number of the next item to keep once full

    def _advance(self) -> None:
        self._weight *= math.exp(math.log(1.0 - self._rng.random()) / self.cap)
        skip = (
            math.log(1.0 - self._rng.random()) / math.log1p(-self._weight)
            if self._weight < 1
            else 0
        )
        self._next += int(skip) + 1

    def add(self, *item: float) -> None:
        """Offer one item."""
        self.seen += 1
        if self.seen <= self.cap:
            for column, value in zip(self._columns, item, strict=True):
                column.append(value)
            if self.seen == self.cap:
                self._next = self.cap
                self._advance()
            return
        if self.seen == self._next:
            slot = self._rng.randrange(self.cap)
            for column, value in zip(self._columns, item, strict=True):
                column[slot] = value
            self._advance()

    def extend(self, values: list[float]) -> None:
        """Offer many one-float items at once (a search's scores)."""
        room = self.cap - self.seen
        if room > 0:
            head, values = values[:room], values[room:]
            self.seen += len(head)
            self._columns[0].extend(head)
            if self.seen == self.cap:
                self._next = self.cap
                self._advance()
        start = self.seen
        self.seen += len(values)
        while self.seen >= self._next > start:
            self._columns[0][self._rng.randrange(self.cap)] = values[self._next - start - 1]
            self._advance()

    @property
    def sampled(self) -> bool:
        """Whether items were left out (the stream was longer than the cap)."""
        return self.seen > self.cap

    def values(self, column: int = 0) -> np.ndarray:
        """One column of the kept items as a float array."""
        return np.frombuffer(self._columns[column], dtype=np.float64).copy()


@dataclass
class _Stat:
    """Exact count, sum, min and max of a series plus a reservoir for its quantiles."""

    reservoir: Reservoir
    total: float = 0.0
    low: float = float("inf")
    high: float = float("-inf")

    def add(self, value: float) -> None:
        self.total += value
        self.low = min(self.low, value)
        self.high = max(self.high, value)
        self.reservoir.add(value)

    def extend(self, values: list[float]) -> None:
        if values:
            self.total += math.fsum(values)
            self.low = min(self.low, min(values))
            self.high = max(self.high, max(values))
            self.reservoir.extend(values)

    def summary(self, quantiles: tuple[int, ...]) -> dict[str, Any]:
        n = self.reservoir.seen
        if n == 0:
            return {"n": 0, "mean": None, "min": None, "max": None} | {
                f"p{q}": None for q in quantiles
            }
        kept = self.reservoir.values()
        figures = np.percentile(kept, list(quantiles))
        return {
            "n": n,
            "mean": self.total / n,
            "min": self.low,
            "max": self.high,
            **{f"p{q}": float(v) for q, v in zip(quantiles, figures, strict=True)},
            "sampled": self.reservoir.sampled,
        }


@dataclass
class ArmSummary:
    """Running figures of one arm; ``as_dict()`` renders them."""

    arm: str
    cap: int
    rng: random.Random
    searches: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    top3_changed: int = 0
    top3_known: int = 0
    top1_from: Counter[int] = field(default_factory=Counter)
    first_ts: float | None = None
    last_ts: float | None = None

    def __post_init__(self) -> None:
        self.tau = self._stat()
        self.overlap = self._stat()
        self.scores = self._stat()
        self.rerank_ms = self._stat()
        self.overlap_points = Reservoir(cap=self.cap, rng=self.rng, width=2)

    def _stat(self) -> _Stat:
        return _Stat(reservoir=Reservoir(cap=self.cap, rng=self.rng))

    def add(self, entry: RankEntry) -> None:
        """Fold one record of this arm in."""
        self.searches += 1
        self.outcomes[entry.outcome] += 1
        self.first_ts = entry.ts if self.first_ts is None else min(self.first_ts, entry.ts)
        self.last_ts = entry.ts if self.last_ts is None else max(self.last_ts, entry.ts)
        if entry.kendall_tau is not None:
            self.tau.add(entry.kendall_tau)
        if entry.top10_overlap is not None:
            self.overlap.add(entry.top10_overlap)
            self.overlap_points.add(entry.ts, entry.top10_overlap)
        if entry.top3_changed is not None:
            self.top3_known += 1
            self.top3_changed += int(entry.top3_changed)
        if entry.top1_from is not None:
            self.top1_from[min(entry.top1_from, MAX_TOP1_POSITION + 1)] += 1
        if entry.scores:
            self.scores.extend(entry.scores)
        if entry.rerank_ms is not None:
            self.rerank_ms.add(entry.rerank_ms)

    def overlap_over_time(self) -> tuple[np.ndarray, np.ndarray]:
        """``(unix seconds, top-10 overlap)`` of the kept searches, in time order."""
        ts, values = self.overlap_points.values(0), self.overlap_points.values(1)
        order = np.argsort(ts, kind="stable")
        return ts[order], values[order]

    def top1_buckets(self) -> dict[str, int]:
        """Counts of the reranked #1's first-stage position, grouped as ``TOP1_BUCKETS``."""
        grouped: dict[str, int] = {}
        for low, high in TOP1_BUCKETS:
            label = f"{low}+" if high is None else str(low) if low == high else f"{low}-{high}"
            grouped[label] = sum(
                n
                for pos, n in self.top1_from.items()
                if pos >= low and (high is None or pos <= high)
            )
        return grouped

    def as_dict(self) -> dict[str, Any]:
        """Every figure of the arm, JSON-ready; ``None`` where the log had no value."""
        known = sum(self.top1_from.values())
        return {
            "searches": self.searches,
            "outcomes": {name: self.outcomes.get(name, 0) for name in OUTCOMES},
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "kendall_tau": _central(self.tau),
            "top10_overlap": _central(self.overlap),
            "top3_changed": {
                "n": self.top3_known,
                "changed": self.top3_changed,
                "share": self.top3_changed / self.top3_known if self.top3_known else None,
            },
            "top1_from": {
                "n": known,
                "counts": {
                    (f"{pos}+" if pos > MAX_TOP1_POSITION else str(pos)): n
                    for pos, n in sorted(self.top1_from.items())
                },
                "buckets": self.top1_buckets(),
                "unchanged_share": self.top1_from.get(1, 0) / known if known else None,
            },
            "scores": self.scores.summary((10, 50, 90)),
            "rerank_ms": self.rerank_ms.summary((50, 99)),
        }


def _central(stat: _Stat) -> dict[str, Any]:
    """Mean and median (the median from the reservoir)."""
    figures = stat.summary((50,))
    return {
        "n": figures["n"],
        "mean": figures["mean"],
        "median": figures["p50"],
        "sampled": figures.get("sampled", False),
    }


@dataclass
class RankLogReport:
    """The per-arm summary of one rank log and what was skipped while reading it."""

    path: str
    arms: dict[str, ArmSummary]
    skipped: SkippedLines

    @property
    def records(self) -> int:
        """Valid records read (every arm)."""
        return sum(arm.searches for arm in self.arms.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON form of the whole report (what ``secondpass report --json`` prints)."""
        return {
            "path": self.path,
            "records": self.records,
            "malformed_lines": self.skipped.as_dict(),
            "rerank_ms_what": "time spent reranking one search, as the log recorded it (milliseconds)",
            "arms": {name: arm.as_dict() for name, arm in self.arms.items() if arm.searches},
        }


def summarise_rank_log(
    path: str | Path, *, reservoir_cap: int = DEFAULT_RESERVOIR_CAP, seed: int = 0
) -> RankLogReport:
    """Read the rank log at ``path`` once and summarise it per arm.

    Raises ``ConfigurationError`` if the file cannot be read; malformed lines
    are skipped and counted, never fatal.
    """
    rng = random.Random(seed)
    arms = {name: ArmSummary(arm=name, cap=reservoir_cap, rng=rng) for name in ARMS}
    skipped = SkippedLines()
    for entry in read_entries(path, skipped=skipped):
        arms[entry.arm].add(entry)
    return RankLogReport(path=str(path), arms=arms, skipped=skipped)
