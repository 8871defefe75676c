"""``secondpass index``: bulk-index a BEIR corpus into Elasticsearch or OpenSearch.

Resumable: re-running skips documents already in the index, so an interrupted
run can simply be started again.
"""

from __future__ import annotations

import argparse

from secondpass.commands import _engine
from secondpass.commands._engine import say

_SUMMARY = "bulk-index a BEIR corpus (optionally with embeddings); resumable"
_DESCRIPTION = (
    "Create an index with text (and with --dense, vector) mappings and bulk-index "
    "DATASET_DIR/corpus.jsonl. Documents already in the index are skipped."
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``index`` sub-command."""
    parser = _engine.add_engine_command(
        subparsers, "index", run, _SUMMARY, _DESCRIPTION, local_default=False
    )
    _engine.add_dataset_argument(parser, "its corpus.jsonl is indexed")
    parser.add_argument("--index", required=True, help="name of the index to create or add to")
    parser.add_argument(
        "--dense", action="store_true", help="also store sentence embeddings for kNN/hybrid"
    )
    parser.add_argument(
        "--encoder",
        default=None,
        help="sentence-transformers model id or directory (default: packaged all-MiniLM-L6-v2)",
    )
    parser.add_argument(
        "--vector-field",
        default="embedding",
        help="field that holds the embeddings (default: embedding)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=256,
        help="documents sent in one bulk request (default: 256)",
    )


def run(args: argparse.Namespace) -> int:
    """Index the corpus and print one summary line."""
    _engine.quiet_client_logs()
    from secondpass.errors import ConfigurationError
    from secondpass.indexing import index_corpus_file

    corpus = args.dataset / "corpus.jsonl"
    if not corpus.is_file():
        msg = f"corpus file not found: {corpus}"
        raise ConfigurationError(msg)
    _engine.check_reachable(args.engine, args.url)  # before loading the encoder
    encoder = None
    if args.dense:
        from secondpass.pipeline.dense import SentenceTransformerEncoder

        encoder = SentenceTransformerEncoder(args.encoder)
    connector = _engine.make_connector(args.engine, args.url, args.index)
    try:
        report = index_corpus_file(
            connector,
            str(corpus),
            encoder=encoder,
            vector_field=args.vector_field,
            batch_size=args.batch_size,
            progress=args.progress,
        )
    finally:
        connector.close()
    say(f"{args.index}: {report.summary()}")
    for error in report.errors:
        say(f"  failed: {error}")
    return 1 if report.failed else 0
