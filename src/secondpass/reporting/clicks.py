"""Click-based evaluation: does reranking put the documents users clicked higher.

Joins a click log with a rank log (:mod:`secondpass.reporting.rank_summary`)
and reports, per arm, the mean reciprocal rank (MRR) of the clicked document
in the order the user saw and in the other order, and how far reranking moved
it, each with a bootstrap 95% confidence interval.

A click line is ``{"request_id": str, "doc_id": str, "position": int, "ts": float}``
(``position`` is the 1-based place the document was shown at). Without a
``request_id``, a click joins by ``query_id`` (the rank log's sha256 prefix of
the query text) to the latest search of that query at or before the click's
``ts`` (or the latest search at all, without ``ts``).

**Position bias.** Users click high-ranked documents more because they are
high, so clicks on the order shown favour that order: in the shadow arm the
first-stage order was shown and the comparison is biased toward the first
stage; in the live arm it is biased toward the reranked order. Compare the
same order across arms (or interleave) before concluding that reranking helps.

Memory is bounded: at most ``max_clicks`` clicks are read, the rank log is
streamed once, and of each search a click refers to only the clicked
documents' ranks are kept (for query-id joins, at most ``MAX_JOIN_RECORDS``
searches; a log in time order needs one per distinct click time).

Example::

    report = evaluate_clicks("clicks.jsonl", "rank.jsonl", resamples=2000, seed=0)
    print(report.arms["shadow"].mrr_shown.estimate)
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secondpass.errors import ConfigurationError, MissingDependencyError
from secondpass.reporting.jsonl import SkippedLines, read_objects
from secondpass.reporting.rank_summary import ARMS, RankEntry, read_entries

try:
    import numpy as np
except ImportError as exc:  # numpy comes with the eval extra
    raise MissingDependencyError(package="numpy", extra="eval") from exc

DEFAULT_MAX_CLICKS = 1_000_000
MAX_JOIN_RECORDS = 500_000
"""Searches kept for joining by ``query_id``; a log in time order needs one per distinct click time."""
DEFAULT_RESAMPLES = 2000
CONFIDENCE = 0.95
POSITION_BIAS_NOTE = (
    "position bias: clicks favour the order that was shown (first-stage in the shadow arm, "
    "reranked in the live arm), so each arm's comparison leans toward its shown order"
)


@dataclass(frozen=True)
class Click:
    """One validated click."""

    doc_id: str
    position: int
    request_id: str | None
    query_id: str | None
    ts: float | None


def parse_click(obj: dict[str, Any]) -> Click:
    """Validate one decoded click line; ``ValueError`` names the first bad field."""
    doc_id = obj.get("doc_id")
    if not isinstance(doc_id, str):
        msg = "doc_id is missing or not a string"
        raise ValueError(msg)
    position = obj.get("position")
    if isinstance(position, bool) or not isinstance(position, int) or position < 1:
        msg = "position is not a 1-based integer"
        raise ValueError(msg)
    request_id, query_id = obj.get("request_id"), obj.get("query_id")
    if request_id is not None and not isinstance(request_id, str):
        msg = "request_id is not a string"
        raise ValueError(msg)
    if query_id is not None and not isinstance(query_id, str):
        msg = "query_id is not a string"
        raise ValueError(msg)
    if request_id is None and query_id is None:
        msg = "neither request_id nor query_id is given"
        raise ValueError(msg)
    ts = obj.get("ts")
    if ts is not None and (
        isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts)
    ):
        msg = "ts is not a number"
        raise ValueError(msg)
    return Click(
        doc_id=doc_id,
        position=position,
        request_id=request_id,
        query_id=query_id,
        ts=None if ts is None else float(ts),
    )


@dataclass(frozen=True)
class Estimate:
    """A mean with its bootstrap confidence interval (``None`` bounds with fewer than 2 values)."""

    estimate: float | None
    low: float | None
    high: float | None
    n: int

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"mean": self.estimate, "ci_low": self.low, "ci_high": self.high, "n": self.n}


def bootstrap_mean(values: Sequence[float], *, resamples: int, seed: int) -> Estimate:
    """Mean of ``values`` with a percentile bootstrap ``CONFIDENCE`` interval.

    Uses ``scipy.stats.bootstrap`` (``resamples`` resamples, seeded, percentile
    method: well defined even when every value is equal, where BCa is not).
    Resamples are drawn in batches of about 2 million indices (about 32 MB), so memory stays
    bounded for a large click log.
    """
    data = np.asarray(values, dtype=np.float64)
    n = int(data.size)
    if n == 0:
        return Estimate(None, None, None, 0)
    mean = float(data.mean())
    if n < 2:
        return Estimate(mean, None, None, n)
    try:
        from scipy.stats import bootstrap
    except ImportError as exc:  # pragma: no cover - scipy comes with the eval extra
        raise MissingDependencyError(package="scipy", extra="eval") from exc
    result = bootstrap(
        (data,),
        np.mean,
        n_resamples=resamples,
        batch=max(1, 2_000_000 // n),
        vectorized=True,
        confidence_level=CONFIDENCE,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    interval = result.confidence_interval
    return Estimate(mean, float(interval.low), float(interval.high), n)


@dataclass
class ArmClicks:
    """The figures of one arm's clicks."""

    arm: str
    shown_order: str
    other_order: str
    clicks: int = 0
    rerank_failed: int = 0
    not_in_shown: int = 0
    position_mismatch: int = 0
    mrr_shown: Estimate = field(default_factory=lambda: Estimate(None, None, None, 0))
    mrr_other: Estimate = field(default_factory=lambda: Estimate(None, None, None, 0))
    position_change: Estimate = field(default_factory=lambda: Estimate(None, None, None, 0))

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "clicks": self.clicks,
            "shown_order": self.shown_order,
            "other_order": self.other_order,
            "mrr_shown": self.mrr_shown.as_dict(),
            "mrr_other": self.mrr_other.as_dict(),
            "position_change": self.position_change.as_dict(),
            "rerank_failed": self.rerank_failed,
            "not_in_shown": self.not_in_shown,
            "position_mismatch": self.position_mismatch,
        }


@dataclass
class ClickReport:
    """Per-arm click figures and what could not be used."""

    clicks_path: str
    rank_log_path: str
    clicks_read: int
    clicks_truncated: bool
    unmatched: int
    arms: dict[str, ArmClicks]
    click_lines_skipped: SkippedLines
    rank_lines_skipped: SkippedLines
    resamples: int
    seed: int

    def as_dict(self) -> dict[str, Any]:
        """JSON form (what ``secondpass eval --clicks --json`` prints)."""
        return {
            "clicks": self.clicks_path,
            "rank_log": self.rank_log_path,
            "clicks_read": self.clicks_read,
            "clicks_truncated": self.clicks_truncated,
            "unmatched_clicks": self.unmatched,
            "malformed_click_lines": self.click_lines_skipped.as_dict(),
            "malformed_rank_log_lines": self.rank_lines_skipped.as_dict(),
            "bootstrap": {
                "resamples": self.resamples,
                "confidence": CONFIDENCE,
                "method": "percentile",
                "seed": self.seed,
            },
            "position_change_what": (
                "rank in the reranked order minus rank in the first-stage order "
                "(negative: reranking moved the clicked document up)"
            ),
            "position_bias": POSITION_BIAS_NOTE,
            "arms": {name: arm.as_dict() for name, arm in self.arms.items() if arm.clicks},
        }


def rank_of(order: Sequence[str], doc_id: str) -> int | None:
    """1-based rank of ``doc_id`` in ``order``, ``None`` when it is not there."""
    try:
        return order.index(doc_id) + 1
    except ValueError:
        return None


@dataclass(frozen=True)
class _Search:
    """What the clicks on one search need of it: when, which arm, and the clicked documents' ranks.

    Only the clicked documents' ranks are kept, not the orders themselves (a
    100-hit search is about 12 KB of Python strings; this is a few hundred bytes).
    """

    ts: float
    arm: str
    reranked: bool
    ranks: dict[str, tuple[int | None, int | None]]
    """doc id -> (first-stage rank, reranked rank), 1-based, ``None`` when absent."""

    @classmethod
    def of(cls, entry: RankEntry, docs: set[str]) -> _Search:
        """Keep what clicks on ``docs`` need of ``entry``."""
        reranked = entry.reranked
        return cls(
            ts=entry.ts,
            arm=entry.arm,
            reranked=reranked is not None,
            ranks={
                d: (
                    rank_of(entry.first_stage, d),
                    None if reranked is None else rank_of(reranked, d),
                )
                for d in docs
            },
        )


def _read_clicks(
    path: str | Path, *, max_clicks: int, skipped: SkippedLines
) -> tuple[list[Click], bool]:
    clicks: list[Click] = []
    for line_no, obj in read_objects(path, what="click log", skipped=skipped):
        try:
            click = parse_click(obj)
        except ValueError as exc:
            skipped.add(line_no, str(exc))
            continue
        if len(clicks) >= max_clicks:
            return clicks, True
        clicks.append(click)
    return clicks, False


@dataclass
class _Joined:
    """The searches the clicks refer to: by request id, and per query id in time order."""

    by_request: dict[str, _Search] = field(default_factory=dict)
    by_query: dict[str, list[_Search]] = field(default_factory=dict)
    query_times: dict[str, list[float]] = field(default_factory=dict)

    def find(self, click: Click) -> _Search | None:
        """The search ``click`` happened on, or ``None`` when the rank log lacks it."""
        if click.request_id is not None:
            return self.by_request.get(click.request_id)
        searches = self.by_query.get(click.query_id or "")
        if not searches:
            return None
        if click.ts is None:
            return searches[-1]
        at = bisect.bisect_right(self.query_times[click.query_id or ""], click.ts)
        return searches[at - 1] if at else None


def _join(entries: Iterator[RankEntry], clicks: list[Click]) -> _Joined:
    """Keep what the clicks need of the records they refer to, streaming the rank log once.

    A query-id join needs, per click, only the latest search of the query at or
    before the click. In a log written in time order, a search can therefore be
    forgotten as soon as a later one arrives with no click in between, so at
    most one search per distinct click time is kept per query.
    """
    docs_by_request: dict[str, set[str]] = {}
    docs_by_query: dict[str, set[str]] = {}
    click_times: dict[str, list[float]] = {}
    for c in clicks:
        if c.request_id is not None:
            docs_by_request.setdefault(c.request_id, set()).add(c.doc_id)
        elif c.query_id is not None:
            docs_by_query.setdefault(c.query_id, set()).add(c.doc_id)
            click_times.setdefault(c.query_id, []).append(math.inf if c.ts is None else c.ts)
    for times in click_times.values():
        times.sort()
    joined = _Joined()
    kept = 0
    for entry in entries:
        docs = docs_by_request.get(entry.request_id)
        if docs is not None:
            joined.by_request[entry.request_id] = _Search.of(entry, docs)
        query_clicks = click_times.get(entry.query_id)
        if query_clicks is None or entry.ts > query_clicks[-1]:
            continue
        searches = joined.by_query.setdefault(entry.query_id, [])
        if (
            searches
            and searches[-1].ts <= entry.ts
            and bisect.bisect_left(query_clicks, searches[-1].ts)
            == bisect.bisect_left(query_clicks, entry.ts)
        ):
            searches[-1] = _Search.of(entry, docs_by_query[entry.query_id])  # no click in between
            continue
        kept += 1
        if kept > MAX_JOIN_RECORDS:
            msg = (
                f"more than {MAX_JOIN_RECORDS} rank-log records are needed to join clicks by "
                "query_id (is the log out of time order?); log request_id with each click"
            )
            raise ConfigurationError(msg)
        searches.append(_Search.of(entry, docs_by_query[entry.query_id]))
    for query_id, searches in joined.by_query.items():
        searches.sort(key=lambda s: s.ts)
        joined.query_times[query_id] = [s.ts for s in searches]
    return joined


def evaluate_clicks(
    clicks_path: str | Path,
    rank_log_path: str | Path,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    max_clicks: int = DEFAULT_MAX_CLICKS,
) -> ClickReport:
    """Join the clicks with the rank log and measure each arm; see the module docstring.

    Raises ``ConfigurationError`` for an unreadable file or bad arguments;
    malformed lines of either file are skipped and counted.
    """
    if resamples < 100:
        msg = f"bootstrap resamples must be >= 100, got {resamples}"
        raise ConfigurationError(msg)
    click_skipped, rank_skipped = SkippedLines(), SkippedLines()
    clicks, truncated = _read_clicks(clicks_path, max_clicks=max_clicks, skipped=click_skipped)
    joined = _join(read_entries(rank_log_path, skipped=rank_skipped), clicks)

    arms = {
        "live": ArmClicks(arm="live", shown_order="reranked", other_order="first-stage"),
        "shadow": ArmClicks(arm="shadow", shown_order="first-stage", other_order="reranked"),
    }
    shown_rr: dict[str, list[float]] = {a: [] for a in ARMS}
    other_rr: dict[str, list[float]] = {a: [] for a in ARMS}
    change: dict[str, list[float]] = {a: [] for a in ARMS}
    unmatched = 0
    for click in clicks:
        search = joined.find(click)
        if search is None:
            unmatched += 1
            continue
        arm = arms[search.arm]
        arm.clicks += 1
        if not search.reranked:
            arm.rerank_failed += 1
            if search.arm == "live":  # the user saw a degraded first-stage answer: no live figure
                continue
        first, reranked = search.ranks[click.doc_id]
        shown, other = (reranked, first) if search.arm == "live" else (first, reranked)
        if shown is None:
            arm.not_in_shown += 1
        elif shown != click.position:
            arm.position_mismatch += 1
        shown_rr[search.arm].append(0.0 if shown is None else 1.0 / shown)
        if search.reranked:
            other_rr[search.arm].append(0.0 if other is None else 1.0 / other)
        if first is not None and reranked is not None:
            change[search.arm].append(float(reranked - first))
    for name, arm in arms.items():
        arm.mrr_shown = bootstrap_mean(shown_rr[name], resamples=resamples, seed=seed)
        arm.mrr_other = bootstrap_mean(other_rr[name], resamples=resamples, seed=seed)
        arm.position_change = bootstrap_mean(change[name], resamples=resamples, seed=seed)
    return ClickReport(
        clicks_path=str(clicks_path),
        rank_log_path=str(rank_log_path),
        clicks_read=len(clicks),
        clicks_truncated=truncated,
        unmatched=unmatched,
        arms=arms,
        click_lines_skipped=click_skipped,
        rank_lines_skipped=rank_skipped,
        resamples=resamples,
        seed=seed,
    )
