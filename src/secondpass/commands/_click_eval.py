"""``secondpass eval --clicks FILE --rank-log LOGFILE``: click-based evaluation of a rollout.

A mode of ``eval`` rather than a command of its own because it answers the same
question (does reranking rank what users want higher?) from a different source:
logged clicks instead of a judged test set. It needs neither a dataset nor an
engine; the figures come from :mod:`secondpass.reporting.clicks`.
"""

from __future__ import annotations

import argparse
import json
import sys

from secondpass.commands._engine import say
from secondpass.errors import ConfigurationError


def add_click_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of the click mode, in their own help group."""
    group = parser.add_argument_group(
        "click-based evaluation (instead of DATASET_DIR; see docs/rollout-report.md)"
    )
    group.add_argument(
        "--clicks", default=None, metavar="FILE",
        help="click log (JSONL: request_id or query_id, doc_id, position, ts) to evaluate",
    )  # fmt: skip
    group.add_argument(
        "--rank-log", default=None, metavar="LOGFILE",
        help="rank log (JSONL) of the searches the clicks happened on; required with --clicks",
    )  # fmt: skip
    group.add_argument(
        "--bootstrap-resamples", type=int, default=2000, metavar="N",
        help="bootstrap resamples for the 95%% confidence intervals (default: 2000)",
    )  # fmt: skip
    group.add_argument(
        "--seed", type=int, default=0, help="seed of the bootstrap resampling (default: 0)"
    )
    group.add_argument(
        "--json", action="store_true", help="with --clicks: print the figures as one JSON document"
    )


def check_mode(args: argparse.Namespace) -> str:
    """``"clicks"`` or ``"dataset"``, after checking the flags fit that mode (else a clear error)."""
    if args.clicks is None and args.rank_log is None:
        if args.dataset is None:
            msg = (
                "give DATASET_DIR (or --clicks FILE --rank-log LOGFILE for click-based evaluation)"
            )
            raise ConfigurationError(msg)
        if args.out is None:
            msg = "--out is required to evaluate DATASET_DIR"
            raise ConfigurationError(msg)
        return "dataset"
    if args.clicks is None or args.rank_log is None:
        msg = "--clicks and --rank-log go together: give both"
        raise ConfigurationError(msg)
    if args.dataset is not None:
        msg = "DATASET_DIR and --clicks cannot be combined: evaluate one or the other"
        raise ConfigurationError(msg)
    return "clicks"


def run_clicks(args: argparse.Namespace) -> int:
    """Join, measure, print; with ``--out``, also write ``click_report.json`` there."""
    from secondpass.reporting.clicks import evaluate_clicks
    from secondpass.reporting.render import click_notes, click_rows, print_table

    report = evaluate_clicks(
        args.clicks, args.rank_log, resamples=args.bootstrap_resamples, seed=args.seed
    )
    data = report.as_dict()
    if args.json:
        say(json.dumps(data, indent=2))
    else:
        columns, rows = click_rows(report)
        print_table(
            f"clicks {args.clicks} on rank log {args.rank_log}", columns, rows,
            click_notes(report), rich=sys.stdout.isatty(),
        )  # fmt: skip
    if args.out is not None:
        try:
            args.out.mkdir(parents=True, exist_ok=True)
            target = args.out / "click_report.json"
            target.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            msg = f"cannot write click_report.json to {args.out}: {exc.strerror or exc}"
            raise ConfigurationError(msg) from exc
        print(f"wrote {target}", file=sys.stderr if args.json else sys.stdout, flush=True)
    return 0
