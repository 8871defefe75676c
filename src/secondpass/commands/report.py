"""``secondpass report``: summarise a rank log (shadow or live reranking) per arm.

The figures come from :mod:`secondpass.reporting.rank_summary`, the tables from
:mod:`secondpass.reporting.render` and the PNG from :mod:`secondpass.reporting.plot`;
this module only wires the flags to them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from secondpass.commands._engine import say

_SUMMARY = "summarise a rank log: what reranking changed, per arm (live / shadow)"
_DESCRIPTION = (
    "Summarise the JSONL rank log that shadow mode and live reranking write: per arm, searches and "
    "outcomes, Kendall tau, top-10 overlap, the share of queries whose top 3 changed, where the "
    "reranked #1 came from, the score distribution and rerank latency. Malformed lines are skipped "
    "and counted. See docs/rollout-report.md."
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``report`` sub-command."""
    parser = subparsers.add_parser("report", help=_SUMMARY, description=_DESCRIPTION)
    parser.add_argument(
        "logfile", type=Path, metavar="LOGFILE", help="rank log to summarise (JSONL)"
    )
    parser.add_argument(
        "--png", type=Path, default=None, metavar="OUT.png",
        help="also write a PNG: displacement histogram and top-10 overlap over time",
    )  # fmt: skip
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the summary as one JSON document instead of tables",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Summarise, print, and plot when asked."""
    from secondpass.reporting.rank_summary import summarise_rank_log
    from secondpass.reporting.render import print_table, rank_notes, rank_rows

    report = summarise_rank_log(args.logfile)
    if args.json:
        say(json.dumps(report.as_dict(), indent=2))
    else:
        columns, rows = rank_rows(report)
        print_table(
            f"rank log {args.logfile}", columns, rows, rank_notes(report), rich=sys.stdout.isatty()
        )
    if args.png is not None:
        from secondpass.reporting.plot import plot_rank_log

        written = plot_rank_log(report, args.png)
        print(f"wrote {written}", file=sys.stderr if args.json else sys.stdout, flush=True)
    return 0
