"""Fine-tune a cross-encoder reranker on the user's own judgments (``secondpass tune``).

Why: a general-purpose reranker is tuned on web questions; the user's queries,
documents and notion of relevance differ. Their judged queries (BEIR-layout
qrels) plus *hard negatives* from their own first stage on their own index,
i.e. the documents BM25 ranks high for a query but nobody judged relevant, are
exactly the mistakes the reranker must learn to fix.

The pieces are separate so each is tested alone: :func:`split_queries` (seeded
train/dev split by query, so no query's pairs leak between the two),
:func:`mine_examples` (labelled pairs from judgments and first-stage hits) and
:func:`train` (sentence-transformers' ``CrossEncoderTrainer`` with
``BinaryCrossEntropyLoss``, dev nDCG@10 from its
``CrossEncoderRerankingEvaluator`` for early stopping and best-checkpoint
selection, a wall-clock budget and resumable checkpoints). Imports torch and
sentence-transformers: keep it out of modules that must stay light.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secondpass.errors import ConfigurationError, MissingDependencyError

MIN_TRAIN_QUERIES = 4
"""Fewer judged queries with text cannot give a train and a dev split worth the name."""
DEV_METRIC = "ndcg@10"
CHECKPOINT_DIR = "checkpoints"


class TuningDataError(ConfigurationError):
    """The judgments cannot train a reranker (too few queries, no positives or no negatives)."""


@dataclass(frozen=True, slots=True)
class Pair:
    """One training example: a query, a passage and whether it is relevant (1.0) or not (0.0)."""

    query: str
    passage: str
    label: float


@dataclass(frozen=True, slots=True)
class RankingSample:
    """One dev query in the shape ``CrossEncoderRerankingEvaluator`` reads."""

    query: str
    positives: tuple[str, ...]
    documents: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """The evaluator's sample dict."""
        return {"query": self.query, "positive": list(self.positives), "documents": list(self.documents)}


def split_queries(
    query_ids: Iterable[str], *, dev_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Seeded split of query ids into (train, dev); same input and seed, same split.

    Splitting by query (not by pair) keeps every pair of a dev query out of
    training, so dev nDCG@10 measures queries the model has not seen. Ids are
    sorted first so the split does not depend on file order.

    Example:
        >>> train, dev = split_queries([str(i) for i in range(10)], dev_fraction=0.2, seed=0)
        >>> len(train), len(dev), set(train) & set(dev)
        (8, 2, set())
    """
    if not 0.0 < dev_fraction < 1.0:
        msg = f"--dev-fraction must be between 0 and 1 (exclusive), got {dev_fraction}"
        raise ConfigurationError(msg)
    ids = sorted(dict.fromkeys(query_ids))
    if len(ids) < MIN_TRAIN_QUERIES:
        msg = (
            f"too little data to tune: {len(ids)} judged queries with relevant documents, "
            f"need at least {MIN_TRAIN_QUERIES} (some for training, some for the dev split)"
        )
        raise TuningDataError(msg)
    random.Random(seed).shuffle(ids)
    n_dev = min(len(ids) - 1, max(1, round(len(ids) * dev_fraction)))
    return ids[n_dev:], ids[:n_dev]


def relevant_ids(judgments: Mapping[str, int]) -> list[str]:
    """Documents judged relevant (score > 0), in judgment order."""
    return [doc_id for doc_id, score in judgments.items() if score > 0]


def mine_examples(
    query_ids: Sequence[str],
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    first_stage: Mapping[str, Sequence[str]],
    passages: Mapping[str, str],
    *,
    negatives_per_query: int,
) -> list[Pair]:
    """Labelled pairs: every judged-relevant document, and hard negatives from the first stage.

    A hard negative is one of the query's first-stage hits, in rank order, that
    was not judged relevant (a document judged 0 counts as a negative too).
    Documents without text in ``passages`` are skipped.

    Example:
        >>> pairs = mine_examples(["q"], {"q": "cats"}, {"q": {"a": 1}}, {"q": ["b", "a", "c"]},
        ...                       {"a": "cats purr", "b": "dogs bark", "c": "fish swim"},
        ...                       negatives_per_query=1)
        >>> [(p.passage, p.label) for p in pairs]
        [('cats purr', 1.0), ('dogs bark', 0.0)]
    """
    pairs: list[Pair] = []
    for qid in query_ids:
        query = queries[qid]
        relevant = set(relevant_ids(qrels.get(qid, {})))
        pairs.extend(Pair(query, passages[d], 1.0) for d in sorted(relevant) if d in passages)
        negatives = [d for d in first_stage.get(qid, ()) if d not in relevant and d in passages]
        pairs.extend(Pair(query, passages[d], 0.0) for d in negatives[:negatives_per_query])
    return pairs


def ranking_samples(
    query_ids: Sequence[str],
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    first_stage: Mapping[str, Sequence[str]],
    passages: Mapping[str, str],
) -> list[RankingSample]:
    """Dev queries as rerank tasks over their first-stage hits (positives the first stage missed count as misses)."""
    samples = []
    for qid in query_ids:
        relevant = relevant_ids(qrels.get(qid, {}))
        hits = [d for d in first_stage.get(qid, ()) if d in passages]
        samples.append(
            RankingSample(
                query=queries[qid],
                positives=tuple(passages[d] for d in relevant if d in passages),
                documents=tuple(passages[d] for d in hits),
            )
        )
    return samples


def check_pairs(pairs: Sequence[Pair], what: str) -> None:
    """Refuse a training set without both classes: a model cannot learn to rank from one."""
    positives = sum(1 for p in pairs if p.label > 0)
    negatives = len(pairs) - positives
    if positives == 0 or negatives == 0:
        missing = "relevant documents found in the corpus" if positives == 0 else "hard negatives"
        msg = (
            f"too little data to tune: the {what} split has no {missing} "
            f"({positives} positive and {negatives} negative pairs); "
            "check that the qrels' document ids are in the corpus and that the index holds the corpus"
        )
        raise TuningDataError(msg)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainSettings:
    """How long and how hard to train; defaults suit a CPU and a few hundred judged queries."""

    epochs: float = 1.0
    batch_size: int = 16
    learning_rate: float = 2e-5
    max_length: int = 256
    eval_steps: int = 50
    patience: int = 3
    max_minutes: float | None = None
    seed: int = 0
    device: str | None = None
    progress: bool = False


@dataclass(slots=True)
class TrainResult:
    """What :func:`train` did: losses seen, dev nDCG@10 per evaluation, why it stopped."""

    output_dir: Path
    losses: list[float] = field(default_factory=list)
    dev_ndcg: list[float] = field(default_factory=list)
    steps: int = 0
    start_step: int = 0
    stopped_by_budget: bool = False
    best_checkpoint: str | None = None


def _require_training() -> None:
    try:
        import accelerate  # noqa: F401
        import datasets  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(package=exc.name or "datasets", extra="tune") from exc


def train(
    *,
    base: str,
    train_pairs: Sequence[Pair],
    dev_samples: Sequence[RankingSample],
    output_dir: Path,
    settings: TrainSettings,
    resume: bool = False,
    on_log: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Fine-tune ``base`` (hub id or directory) and save the best model into ``output_dir``.

    ``base`` may be a cross-encoder or a bi-encoder (e.g. the packaged
    all-MiniLM-L6-v2): sentence-transformers puts a new one-logit
    classification head on the encoder. Checkpoints go to
    ``output_dir/checkpoints`` every ``eval_steps`` steps, right after a dev
    evaluation; ``resume`` continues from the newest one. Training stops at
    the end of the epochs, after ``patience`` evaluations without a better dev
    nDCG@10, or once ``max_minutes`` of training have passed (then it evaluates
    and saves once more); the checkpoint with the best dev nDCG@10 is what is
    saved.
    """
    _require_training()
    from datasets import Dataset
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    from transformers import EarlyStoppingCallback, TrainerCallback, set_seed

    set_seed(settings.seed)
    checkpoints = output_dir / CHECKPOINT_DIR
    if resume and not _has_checkpoint(checkpoints):
        msg = f"--resume: no checkpoint in {checkpoints} to continue from"
        raise ConfigurationError(msg)
    model = CrossEncoder(
        base, num_labels=1, max_length=settings.max_length, device=settings.device,
        local_files_only=_is_local(base),
    )  # fmt: skip
    result = TrainResult(output_dir=output_dir)
    started = time.monotonic()
    budget_s = None if settings.max_minutes is None else settings.max_minutes * 60.0

    class _Watch(TrainerCallback):  # type: ignore[misc]
        """Record losses and dev figures; stop (after a last evaluation and save) when the budget is spent."""

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            result.start_step = int(state.global_step)  # > 0 when resumed from a checkpoint

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if budget_s is not None and time.monotonic() - started >= budget_s:
                result.stopped_by_budget = True
                control.should_training_stop = True
                control.should_evaluate = True
                control.should_save = True
            return control

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            logs = logs or {}
            if "loss" in logs:
                result.losses.append(float(logs["loss"]))
            key = f"eval_dev_{DEV_METRIC}"
            if key in logs:
                result.dev_ndcg.append(float(logs[key]))
            if on_log is not None:
                on_log({k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})

    train_dataset = Dataset.from_dict(
        {
            "query": [p.query for p in train_pairs],
            "passage": [p.passage for p in train_pairs],
            "label": [p.label for p in train_pairs],
        }
    )
    evaluator = CrossEncoderRerankingEvaluator(
        samples=[s.as_dict() for s in dev_samples], at_k=10, always_rerank_positives=False,
        name="dev", batch_size=settings.batch_size * 2, write_csv=False,
    )  # fmt: skip
    positives = sum(1 for p in train_pairs if p.label > 0)
    pos_weight = (len(train_pairs) - positives) / max(1, positives)
    import torch

    loss = BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(pos_weight))
    args = CrossEncoderTrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        warmup_steps=0.1,  # a float is a share of all steps (transformers >= 5)
        eval_strategy="steps",
        eval_steps=settings.eval_steps,
        save_strategy="steps",
        save_steps=settings.eval_steps,
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model=f"eval_dev_{DEV_METRIC}",
        greater_is_better=True,
        logging_steps=max(1, settings.eval_steps // 5),
        seed=settings.seed,
        data_seed=settings.seed,
        use_cpu=settings.device == "cpu",
        disable_tqdm=not settings.progress,
        report_to="none",
        dataloader_num_workers=0,
    )
    trainer = CrossEncoderTrainer(
        model=model, args=args, train_dataset=train_dataset, loss=loss, evaluator=evaluator,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=settings.patience), _Watch()],
    )  # fmt: skip
    output = trainer.train(resume_from_checkpoint=True if resume else None)
    result.steps = int(output.global_step)
    result.best_checkpoint = trainer.state.best_model_checkpoint
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(output_dir), safe_serialization=True)
    return result


def _has_checkpoint(folder: Path) -> bool:
    return folder.is_dir() and any(p.name.startswith("checkpoint-") for p in folder.iterdir())


def _is_local(base: str) -> bool:
    return Path(base).expanduser().exists()



def first_stage_hits(
    connector: Any, queries: Mapping[str, str], query_ids: Sequence[str], *, depth: int
) -> dict[str, list[str]]:
    """Each query's top ``depth`` document ids from the engine's own ranking (BM25), through ``connector``."""
    from secondpass.pipeline.first_stage import LexicalStage

    stage = LexicalStage(connector)
    return {qid: [h.id for h in stage.retrieve(queries[qid], size=depth)] for qid in query_ids}


def read_passages(documents: Iterable[Any], wanted: set[str]) -> dict[str, str]:
    """Passage text (title and text, as the reranker reads them) of the ``wanted`` ids only.

    The corpus is streamed and only the documents training needs are kept.
    """
    return {doc.id: doc.passage for doc in documents if doc.id in wanted}
