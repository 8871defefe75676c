"""Turn report figures into tables: rich on a terminal, aligned plain text elsewhere.

Rows are built once (label, one cell per arm) and drawn either way, so a
terminal and a CI log show the same figures with the same units.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from secondpass.reporting.clicks import POSITION_BIAS_NOTE, ClickReport
from secondpass.reporting.rank_summary import RankLogReport

Rows = list[tuple[str, list[str]]]
_NONE = "-"


def _num(value: float | None, digits: int = 3) -> str:
    return _NONE if value is None else f"{value:.{digits}f}"


def _share(part: int, whole: int) -> str:
    return _NONE if not whole else f"{100 * part / whole:.1f}% ({part}/{whole})"


def _time(ts: float | None) -> str:
    if ts is None:
        return _NONE
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def rank_rows(report: RankLogReport) -> tuple[list[str], Rows]:
    """Column names (the arms present) and rows of a rank-log summary."""
    data = report.as_dict()["arms"]
    arms = list(data)
    rows: Rows = []

    def row(label: str, cell: Any) -> None:
        rows.append((label, [cell(data[a]) for a in arms]))

    row("searches", lambda d: str(d["searches"]))
    row(
        "outcome ok / failed / dropped",
        lambda d: " / ".join(str(v) for v in d["outcomes"].values()),
    )
    row("first search (UTC)", lambda d: _time(d["first_ts"]))
    row("last search (UTC)", lambda d: _time(d["last_ts"]))
    row("Kendall tau mean / median", lambda d: _pair(d["kendall_tau"], "mean", "median"))
    row("top-10 overlap mean / median", lambda d: _pair(d["top10_overlap"], "mean", "median"))
    row("top-3 changed", lambda d: _share(d["top3_changed"]["changed"], d["top3_changed"]["n"]))
    for bucket in ("1", "2-3", "4-10", "11+"):
        row(
            f"reranked #1 was first-stage #{bucket}",
            lambda d, b=bucket: _share(d["top1_from"]["buckets"][b], d["top1_from"]["n"]),
        )
    row("score p10 / p50 / p90", lambda d: _triple(d["scores"], ("p10", "p50", "p90")))
    row("rerank ms p50 / p99", lambda d: _triple(d["rerank_ms"], ("p50", "p99"), digits=1))
    return arms, rows


def _pair(figures: dict[str, Any], first: str, second: str) -> str:
    return f"{_num(figures[first])} / {_num(figures[second])}"


def _triple(figures: dict[str, Any], keys: Sequence[str], digits: int = 3) -> str:
    return " / ".join(_num(figures[k], digits) for k in keys)


def rank_notes(report: RankLogReport) -> list[str]:
    """Lines under the table: skipped lines, sampling, what the latency includes."""
    data = report.as_dict()
    notes = [f"{report.records} searches read from {report.path}"]
    notes.extend(_skipped_notes("rank log", data["malformed_lines"]))
    if any(
        arm[key].get("sampled")
        for arm in data["arms"].values()
        for key in ("kendall_tau", "rerank_ms")
    ):
        notes.append(
            "medians and percentiles come from a uniform sample of the values (log over the cap)"
        )
    notes.append(f"rerank ms: {data['rerank_ms_what']}")
    return notes


def _skipped_notes(what: str, skipped: dict[str, Any]) -> list[str]:
    if not skipped["count"]:
        return []
    shown = "; ".join(f"line {e['line']}: {e['reason']}" for e in skipped["examples"])
    return [f"{skipped['count']} malformed {what} line(s) skipped ({shown})"]


def _estimate(figures: dict[str, Any], digits: int = 3) -> str:
    if figures["mean"] is None:
        return _NONE
    if figures["ci_low"] is None:
        return f"{_num(figures['mean'], digits)} (n={figures['n']}, no CI)"
    return (
        f"{_num(figures['mean'], digits)} [{_num(figures['ci_low'], digits)}, "
        f"{_num(figures['ci_high'], digits)}] n={figures['n']}"
    )


def click_rows(report: ClickReport) -> tuple[list[str], Rows]:
    """Column names (the arms with clicks) and rows of a click evaluation."""
    data = report.as_dict()["arms"]
    arms = list(data)
    rows: Rows = [
        ("clicks joined", [str(data[a]["clicks"]) for a in arms]),
        ("order shown", [data[a]["shown_order"] for a in arms]),
        ("MRR in the order shown [95% CI]", [_estimate(data[a]["mrr_shown"]) for a in arms]),
        ("MRR in the other order [95% CI]", [_estimate(data[a]["mrr_other"]) for a in arms]),
        (
            "position change, ranks [95% CI]",
            [_estimate(data[a]["position_change"], 2) for a in arms],
        ),
        ("rerank failed (no reranked order)", [str(data[a]["rerank_failed"]) for a in arms]),
        ("clicked doc not in the shown order", [str(data[a]["not_in_shown"]) for a in arms]),
        ("logged position differs from the log", [str(data[a]["position_mismatch"]) for a in arms]),
    ]
    return arms, rows


def click_notes(report: ClickReport) -> list[str]:
    """Lines under the click table: join counts, skipped lines, bootstrap, position bias."""
    data = report.as_dict()
    boot = data["bootstrap"]
    notes = [
        f"{report.clicks_read} clicks read, {report.unmatched} without a matching search in the rank log"
        + (" (click file truncated at the click cap)" if report.clicks_truncated else "")
    ]
    notes.extend(_skipped_notes("click", data["malformed_click_lines"]))
    notes.extend(_skipped_notes("rank log", data["malformed_rank_log_lines"]))
    notes.append(
        f"95% CIs: {boot['method']} bootstrap, {boot['resamples']} resamples, seed {boot['seed']}"
    )
    notes.append(f"position change: {data['position_change_what']}")
    notes.append(POSITION_BIAS_NOTE)
    return notes


def plain_table(columns: Sequence[str], rows: Rows) -> str:
    """Rows as aligned plain text with a header line (for pipes, files and CI logs)."""
    label_width = max([len("figure"), *(len(label) for label, _ in rows)])
    widths = [max([len(c), *(len(cells[i]) for _, cells in rows)]) for i, c in enumerate(columns)]
    header = "  ".join(
        [f"{'figure':<{label_width}}", *(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True))]
    )
    lines = [header, "-" * len(header)]
    for label, cells in rows:
        lines.append(
            "  ".join(
                [
                    f"{label:<{label_width}}",
                    *(f"{v:>{w}}" for v, w in zip(cells, widths, strict=True)),
                ]
            )
        )
    return "\n".join(lines)


def print_table(
    title: str, columns: Sequence[str], rows: Rows, notes: Sequence[str], *, rich: bool
) -> None:
    """Print a table and its notes: with rich when ``rich`` (a terminal), else plain text."""
    if not columns:
        print(f"{title}: nothing to report")
        for note in notes:
            print(note)
        return
    if rich:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        table.add_column("figure")
        for column in columns:
            table.add_column(column, justify="right")
        for label, cells in rows:
            table.add_row(label, *cells)
        console = Console()
        console.print(table)
        for note in notes:
            console.print(note, style="dim", highlight=False)
        return
    print(title)
    print(plain_table(columns, rows))
    for note in notes:
        print(note)
