"""``secondpass tune``: fine-tune a cross-encoder on the user's judgments and their own index.

Thin: parsing and printing. What is trained on and how lives in
:mod:`secondpass.tuning`; the figures come from :mod:`secondpass.evaluation`,
the code ``secondpass eval`` measures with.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from secondpass.commands import _engine
from secondpass.commands._engine import note, say

if TYPE_CHECKING:
    from secondpass.datasets import BeirDataset

_SUMMARY = "fine-tune a cross-encoder on your judged queries with hard negatives from your index"
_DESCRIPTION = (
    "Fine-tune a cross-encoder on DATASET_DIR (BEIR layout: corpus.jsonl, queries.jsonl, "
    "qrels/<split>.tsv). Hard negatives are the first stage's top hits on your index that "
    "are not judged relevant. Queries are split into train and dev (seeded); training stops "
    "early when dev nDCG@10 stops improving or when --max-minutes are spent. OUT_DIR is a "
    "model directory for --model (docs/tuning.md)."
)
DEFAULT_BASE = "cross-encoder/ms-marco-MiniLM-L6-v2"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``tune`` sub-command."""
    parser = _engine.add_engine_command(
        subparsers, "tune", run, _SUMMARY, _DESCRIPTION, local_default=True
    )
    _engine.add_dataset_argument(parser, "corpus.jsonl, queries.jsonl and qrels/<split>.tsv")
    parser.add_argument("--out", type=Path, required=True, help="directory the tuned model is written to")
    parser.add_argument(
        "--base", default=None,
        help=f"model to start from: hub id or directory, a cross-encoder or a bi-encoder "
        f"(gets a new head); 'packaged' = the packaged all-MiniLM-L6-v2 (default: {DEFAULT_BASE})",
    )  # fmt: skip
    parser.add_argument("--split", default="train", help="qrels/<split>.tsv to train on (default: train)")
    parser.add_argument("--index", default=None, help="index to mine negatives from, created when missing "
                        "(default: the one `secondpass eval` uses for the dataset)")  # fmt: skip
    parser.add_argument("--depth", type=int, default=20, help="first-stage hits per query mined for negatives and reranked on dev (default: 20)")
    parser.add_argument("--negatives", type=int, default=10, help="hard negatives per training query (default: 10)")
    parser.add_argument("--dev-fraction", type=float, default=0.2, help="share of queries held out for dev (default: 0.2)")
    parser.add_argument("--epochs", type=float, default=1.0, help="passes over the training pairs (default: 1)")
    parser.add_argument("--batch-size", type=int, default=16, help="training batch size (default: 16)")
    parser.add_argument("--learning-rate", type=float, default=2e-5, help="peak learning rate (default: 2e-5)")
    parser.add_argument("--eval-steps", type=int, default=50, help="evaluate dev nDCG@10 and checkpoint every N steps (default: 50)")
    parser.add_argument("--patience", type=int, default=3, help="stop after N evaluations without a better dev nDCG@10 (default: 3)")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop training after this many minutes (then evaluate and save)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the shuffling and the new head (default: 0)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in OUT_DIR/checkpoints")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: auto)")


def _check(args: argparse.Namespace) -> None:
    from secondpass.errors import ConfigurationError

    for name in ("depth", "negatives", "batch_size", "eval_steps", "patience"):
        if getattr(args, name) < 1:
            msg = f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}"
            raise ConfigurationError(msg)
    if args.depth > 1000:
        msg = f"--depth must be <= 1000, got {args.depth}"
        raise ConfigurationError(msg)
    for name in ("epochs", "learning_rate", "max_minutes"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            msg = f"--{name.replace('_', '-')} must be > 0, got {value}"
            raise ConfigurationError(msg)


def run(args: argparse.Namespace) -> int:
    """Mine, split, train, then print dev nDCG@10 before and after with the eval code."""
    _check(args)
    _engine.quiet_client_logs()
    from secondpass import tuning
    from secondpass.datasets import BeirDataset, load_beir
    from secondpass.evaluation import compute_metrics, parse_pipelines, run_pipelines
    from secondpass.indexing import index_documents
    from secondpass.pipeline.models import load_scorer

    dataset = load_beir(args.dataset, split=args.split)
    judged = [qid for qid, docs in dataset.qrels.items() if tuning.relevant_ids(docs)]
    train_ids, dev_ids = tuning.split_queries(judged, dev_fraction=args.dev_fraction, seed=args.seed)
    if args.url is not None:
        _engine.check_reachable(args.engine, args.url)
    index = args.index or "secondpass-eval-" + _engine.slug(dataset.name)
    with _engine.engine_url(args.engine, args.url) as url:
        connector = _engine.make_connector(args.engine, url, index)
        try:
            indexed = index_documents(
                connector, dataset.iter_corpus(), progress=args.progress,
                total=dataset.corpus_size(), description=f"indexing {index}",
            )  # fmt: skip
            say(f"{index}: {indexed.summary()}")
            hits = tuning.first_stage_hits(connector, dataset.queries, judged, depth=args.depth)
            _train(args, dataset, train_ids, dev_ids, hits)
            # Before/after on the dev queries, measured by the code `secondpass eval` uses.
            dev_set = BeirDataset(
                path=dataset.path, split=args.split, name=dataset.name,
                queries={q: dataset.queries[q] for q in dev_ids},
                qrels={q: dataset.qrels[q] for q in dev_ids},
            )  # fmt: skip
            scorer, _ = load_scorer(str(args.out), allow_fallback=False, device=args.device)
            specs = parse_pipelines(["bm25", "bm25+rerank"], [args.depth])
            try:
                runs = run_pipelines(dev_set, connector, specs, scorer=scorer, progress=args.progress)
            finally:
                close = getattr(scorer, "close", None)
                if close is not None:
                    close()
        finally:
            connector.close()
    say(f"dev ({len(dev_ids)} held-out queries; first-stage top {args.depth} reranked by the tuned model):")
    for one in runs:
        figures, _ = compute_metrics(dev_set.qrels, one.run_dict())
        say(f"  {one.spec.label:<16} " + "  ".join(f"{k} {v:.4f}" for k, v in figures.items()))
    say(f"wrote the tuned model to {args.out}: use it with --model {args.out}")
    return 0


def _train(
    args: argparse.Namespace,
    dataset: BeirDataset,
    train_ids: list[str],
    dev_ids: list[str],
    hits: dict[str, list[str]],
) -> None:
    from secondpass import tuning

    judged = train_ids + dev_ids
    wanted = {d for ids in hits.values() for d in ids} | {
        d for qid in judged for d in tuning.relevant_ids(dataset.qrels[qid])
    }
    passages = tuning.read_passages(dataset.iter_corpus(), wanted)
    pairs = tuning.mine_examples(
        train_ids, dataset.queries, dataset.qrels, hits, passages, negatives_per_query=args.negatives
    )
    tuning.check_pairs(pairs, "train")
    dev = tuning.ranking_samples(dev_ids, dataset.queries, dataset.qrels, hits, passages)
    n_pos = sum(1 for p in pairs if p.label > 0)
    say(
        f"train: {len(train_ids)} queries, {n_pos} positive and {len(pairs) - n_pos} hard-negative pairs; "
        f"dev: {len(dev_ids)} queries (seed {args.seed})"
    )
    base = _base(args.base)
    settings = tuning.TrainSettings(
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
        eval_steps=args.eval_steps, patience=args.patience, max_minutes=args.max_minutes,
        seed=args.seed, device=args.device, progress=args.progress,
    )  # fmt: skip
    note(f"training from {base} into {args.out}" + (" (resuming)" if args.resume else ""))
    result = tuning.train(
        base=base, train_pairs=pairs, dev_samples=dev, output_dir=args.out,
        settings=settings, resume=args.resume,
    )  # fmt: skip
    stop = "time budget" if result.stopped_by_budget else "end of epochs or early stopping"
    resumed = f" (resumed at step {result.start_step})" if result.start_step else ""
    say(f"trained to step {result.steps}{resumed}, stopped by {stop}; best checkpoint: {result.best_checkpoint}")
    if result.losses:
        say(f"training loss: first {result.losses[0]:.4f}, last {result.losses[-1]:.4f}")
    if result.dev_ndcg:
        shown = ", ".join(f"{v:.4f}" for v in result.dev_ndcg)
        say(f"dev nDCG@10 at each evaluation: {shown}")


def _base(name: str | None) -> str:
    if name == "packaged":
        from secondpass.pipeline.dense import packaged_model_path

        return packaged_model_path()
    return name or DEFAULT_BASE
