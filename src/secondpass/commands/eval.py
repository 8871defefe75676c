"""``secondpass eval``: measure retrieval pipelines on a BEIR test set.

Indexes the corpus when needed (resumable), runs the judged test queries
through each pipeline, and writes ``report.json``, one TREC run file per
pipeline and ``metrics.png`` into ``--out``. See :mod:`secondpass.evaluation`
for what exactly is measured.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from secondpass.commands import _engine
from secondpass.commands._engine import note, say

_SUMMARY = "nDCG@10 / MRR@10 / Recall@100 and latency of pipelines on a BEIR test set"
_DESCRIPTION = (
    "Evaluate retrieval pipelines on DATASET_DIR (BEIR layout). Pipelines: bm25, dense, "
    "hybrid, bm25+rerank, hybrid+rerank. Writes report.json, <pipeline>.trec and metrics.png. "
    "With --clicks FILE --rank-log LOGFILE instead: MRR of clicked documents per rollout arm, "
    "from logs alone (no dataset, no engine; docs/rollout-report.md)."
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``eval`` sub-command."""
    parser = _engine.add_engine_command(
        subparsers, "eval", run, _SUMMARY, _DESCRIPTION, local_default=True
    )
    _engine.add_dataset_argument(
        parser,
        "corpus.jsonl, queries.jsonl and qrels/<split>.tsv (not with --clicks)",
        optional=True,
    )
    parser.add_argument(
        "--pipeline",
        action="append",
        dest="pipelines",
        choices=("bm25", "dense", "hybrid", "bm25+rerank", "hybrid+rerank"),
        help="pipeline to evaluate (repeatable; default: bm25 and bm25+rerank)",
    )
    parser.add_argument(
        "--no-fallback",
        action="store_true",
        help="fail if the cross-encoder cannot be loaded instead of using the packaged bi-encoder",
    )
    parser.add_argument(
        "--encoder",
        default=None,
        help="dense encoder for dense/hybrid (default: packaged all-MiniLM-L6-v2)",
    )
    parser.add_argument(
        "--window", type=int, action="append", dest="windows", metavar="N",
        help="rerank window (repeatable: one run per window; default: 100)",
    )  # fmt: skip
    parser.add_argument(
        "--baseline", default=None, help="pipeline label to compare against (default: the first)"
    )
    parser.add_argument(
        "--limit-queries",
        type=int,
        default=None,
        metavar="N",
        help="evaluate only the first N queries",
    )
    parser.add_argument(
        "--index",
        default=None,
        help="index to search, created when missing (default: derived from the dataset)",
    )
    parser.add_argument(
        "--split", default="test", help="which qrels/<split>.tsv judges the queries (default: test)"
    )
    _engine.add_model_arguments(parser, what="the reranker and the encoder")
    parser.add_argument(
        "--out", type=Path, default=None,
        help="directory for the report, run files and plot (required with DATASET_DIR)",
    )  # fmt: skip
    from secondpass.commands._click_eval import add_click_arguments

    add_click_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Index if needed, evaluate, write the outputs and print a table."""
    from secondpass.commands._click_eval import check_mode, run_clicks

    if check_mode(args) == "clicks":
        return run_clicks(args)
    _engine.quiet_client_logs()
    from secondpass.datasets import load_beir
    from secondpass.errors import ConfigurationError
    from secondpass.evaluation import (
        build_report,
        format_table,
        parse_pipelines,
        run_pipelines,
        write_outputs,
    )
    from secondpass.indexing import index_documents

    dataset = load_beir(args.dataset, split=args.split)
    if args.url is not None:
        _engine.check_reachable(args.engine, args.url)  # before loading any model
    specs = parse_pipelines(args.pipelines or ["bm25", "bm25+rerank"], args.windows or [100])
    query_ids = list(dataset.queries)
    if args.limit_queries is not None:
        if args.limit_queries < 1:
            msg = f"--limit-queries must be >= 1, got {args.limit_queries}"
            raise ConfigurationError(msg)
        query_ids = query_ids[: args.limit_queries]
    baseline = args.baseline or specs[0].label
    if baseline not in {s.label for s in specs}:
        labels = ", ".join(s.label for s in specs)
        msg = f"--baseline {baseline!r} is not one of the evaluated pipelines ({labels})"
        raise ConfigurationError(msg)

    encoder = None
    needs_dense = any(s.first_stage in ("dense", "hybrid") for s in specs)
    if needs_dense:
        from secondpass.pipeline.dense import SentenceTransformerEncoder

        encoder = SentenceTransformerEncoder(args.encoder, device=args.device)
    scorer, scorer_name = None, None
    if any(s.rerank for s in specs):
        from secondpass.pipeline.models import load_scorer

        scorer, scorer_name = load_scorer(
            args.model, allow_fallback=not args.no_fallback, device=args.device, notify=note
        )
        say(f"scorer: {scorer_name}")
    index = args.index or "secondpass-eval-" + _engine.slug(dataset.name) + (
        f"-{_engine.slug(encoder.name)}" if encoder is not None else ""
    )

    with _engine.engine_url(args.engine, args.url) as url:
        connector = _engine.make_connector(args.engine, url, index)
        try:
            indexed = index_documents(
                connector,
                dataset.iter_corpus(),
                encoder=encoder,
                progress=args.progress,
                total=dataset.corpus_size(),
                description=f"indexing {index}",
            )
            say(f"{index}: {indexed.summary()}")
            runs = run_pipelines(
                dataset, connector, specs, encoder=encoder, scorer=scorer,
                query_ids=query_ids, progress=args.progress,
            )  # fmt: skip
        finally:
            connector.close()

    report, per_query = build_report(
        dataset, runs, engine=args.engine, baseline=baseline, scorer=scorer_name,
        encoder=None if encoder is None else encoder.name, query_ids=query_ids,
    )  # fmt: skip
    paths = write_outputs(report, runs, args.out, per_query=per_query)
    say(format_table(report))
    say("latency: " + "ms per query, " + report.as_dict()["latency_what"])
    for entry_label, entry in report.pipelines.items():
        degraded = {k: v for k, v in entry["rerank_status"].items() if k != "ok"}
        if degraded:
            note(
                f"{entry_label}: rerank degraded on some queries {degraded}: {entry['rerank_reasons']}"
            )
    say(f"wrote {paths['report']}, {paths['plot']} and {len(runs)} run file(s) to {args.out}")
    return 0
