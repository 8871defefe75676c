"""Offline evaluation: run retrieval pipelines over a BEIR test set and measure them.

A pipeline is a first stage (``bm25``, ``dense`` or ``hybrid``), optionally
followed by reranking the top ``window`` hits (``bm25+rerank``,
``hybrid+rerank``). Each query's first stage is fetched once and shared by every
pipeline built on it, so pipelines differ only in what they do after it, and
reranking runs through the same :class:`~secondpass.pipeline.retriever.Retriever`
a service uses.

Metrics come from ``ir-measures`` (nDCG@10, RR@10 i.e. MRR@10, R@100), never
from hand-written formulas. Two details make the figures trustworthy:

* **Order, not raw scores, is evaluated.** Run files carry the score
  ``depth + 1 - rank``, so every evaluator sees exactly the order the pipeline
  produced. (Evaluators sort by score and break ties by document id; BM25 ties
  and unscored hits past the rerank window would otherwise be re-ordered.)
* **Every judged query counts.** A query with no hits scores 0 instead of being
  left out of the mean, as an evaluator that only sees the run would do.

Latency is wall-clock time per query, in milliseconds: the first stage (query
embedding plus engine round trips) plus, for rerank pipelines, the reranking
call (passage rendering, model forward passes). One warm-up query runs first
and is not counted.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secondpass.datasets import BeirDataset
from secondpass.errors import ConfigurationError, MissingDependencyError
from secondpass.pipeline.first_stage import (
    AnyConnector,
    DenseStage,
    FirstStage,
    HybridStage,
    LexicalStage,
)
from secondpass.pipeline.protocols import DenseEncoder, Scorer
from secondpass.pipeline.retriever import Retriever

FIRST_STAGES = ("bm25", "dense", "hybrid")
PIPELINES = ("bm25", "dense", "hybrid", "bm25+rerank", "hybrid+rerank")
MEASURE_NAMES = ("nDCG@10", "RR@10", "R@100")
"""Reported measures, in ir-measures notation (RR@10 is MRR@10 averaged over queries)."""
PRIMARY_MEASURE = "nDCG@10"
DEFAULT_DEPTH = 100
LATENCY_WHAT = (
    "wall clock per query: first stage (query embedding + engine round trips) "
    "+ reranking for rerank pipelines; one warm-up query excluded"
)


@dataclass(frozen=True, slots=True)
class PipelineSpec:
    """One pipeline to evaluate: a first stage, and a rerank window or none."""

    first_stage: str
    window: int | None = None

    @property
    def rerank(self) -> bool:
        """Whether hits are reranked after the first stage."""
        return self.window is not None

    @property
    def label(self) -> str:
        """Name in reports and file names, e.g. ``bm25`` or ``bm25+rerank@100``."""
        return self.first_stage if self.window is None else f"{self.first_stage}+rerank@{self.window}"


def parse_pipelines(names: Sequence[str], windows: Sequence[int] = (DEFAULT_DEPTH,)) -> list[PipelineSpec]:
    """Expand pipeline names into specs; each rerank pipeline gets one spec per window.

    Example:
        >>> [s.label for s in parse_pipelines(["bm25", "bm25+rerank"], [20, 100])]
        ['bm25', 'bm25+rerank@20', 'bm25+rerank@100']
    """
    if not names:
        msg = f"give at least one pipeline ({', '.join(PIPELINES)})"
        raise ConfigurationError(msg)
    if not windows or any(w < 1 for w in windows):
        msg = f"rerank windows must be positive integers, got {list(windows)}"
        raise ConfigurationError(msg)
    specs: list[PipelineSpec] = []
    for name in names:
        if name not in PIPELINES:
            msg = f"unknown pipeline {name!r}; choose from {', '.join(PIPELINES)}"
            raise ConfigurationError(msg)
        stage, _, rerank = name.partition("+")
        if rerank:
            specs.extend(PipelineSpec(stage, w) for w in dict.fromkeys(windows))
        else:
            specs.append(PipelineSpec(stage))
    unique = list(dict.fromkeys(specs))
    return unique


def build_stage(
    name: str, connector: AnyConnector, *, encoder: DenseEncoder | None, vector_field: str
) -> FirstStage:
    """The first stage called ``name`` (``bm25``, ``dense`` or ``hybrid``)."""
    if name == "bm25":
        return LexicalStage(connector)
    if encoder is None:
        msg = f"the {name!r} first stage needs a dense encoder"
        raise ConfigurationError(msg)
    if name == "dense":
        return DenseStage(connector, encoder, vector_field)
    if name == "hybrid":
        return HybridStage(connector, encoder, vector_field)
    msg = f"unknown first stage {name!r}; choose from {', '.join(FIRST_STAGES)}"
    raise ConfigurationError(msg)


@dataclass(slots=True)
class PipelineRun:
    """Ranked doc ids and latency per query for one pipeline."""

    spec: PipelineSpec
    ranking: dict[str, list[str]] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)

    def run_dict(self, depth: int = DEFAULT_DEPTH) -> dict[str, dict[str, float]]:
        """``{qid: {doc_id: depth + 1 - rank}}``: scores that encode the exact order."""
        return {
            qid: {doc: float(depth + 1 - rank) for rank, doc in enumerate(docs[:depth], start=1)}
            for qid, docs in self.ranking.items()
        }


def _require_ir_measures() -> Any:
    try:
        import ir_measures
    except ImportError as exc:
        raise MissingDependencyError(package="ir-measures", extra="eval") from exc
    return ir_measures


def compute_metrics(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    measures: Sequence[str] = MEASURE_NAMES,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Mean and per-query values of ``measures`` with ir-measures.

    Every query in ``qrels`` is counted; one absent from ``run`` scores 0.

    Example:
        >>> compute_metrics({"q": {"d1": 1}}, {"q": {"d2": 2.0, "d1": 1.0}}, ["RR@10"])[0]
        {'RR@10': 0.5}
    """
    ir_measures = _require_ir_measures()
    parsed = [ir_measures.parse_measure(m) for m in measures]
    per_query: dict[str, dict[str, float]] = {qid: dict.fromkeys(measures, 0.0) for qid in qrels}
    judged = {qid: dict(docs) for qid, docs in qrels.items()}
    scored = {qid: dict(docs) for qid, docs in run.items() if qid in judged and docs}
    if scored:
        for metric in ir_measures.iter_calc(parsed, judged, scored):
            per_query[metric.query_id][str(metric.measure)] = float(metric.value)
    count = max(1, len(per_query))
    aggregate = {m: math.fsum(values[m] for values in per_query.values()) / count for m in measures}
    return aggregate, per_query


def compare_per_query(
    baseline: Mapping[str, Mapping[str, float]],
    other: Mapping[str, Mapping[str, float]],
    measure: str = PRIMARY_MEASURE,
    *,
    tolerance: float = 1e-9,
) -> dict[str, Any]:
    """Wins, losses and ties of ``other`` against ``baseline`` on one measure, per query."""
    deltas = [other[qid][measure] - baseline[qid][measure] for qid in baseline if qid in other]
    wins = sum(1 for d in deltas if d > tolerance)
    losses = sum(1 for d in deltas if d < -tolerance)
    return {
        "measure": measure,
        "wins": wins,
        "losses": losses,
        "ties": len(deltas) - wins - losses,
        "mean_delta": statistics.fmean(deltas) if deltas else 0.0,
    }


def latency_summary(values_ms: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/mean in milliseconds (nearest-rank-interpolated percentiles)."""
    import numpy as np

    if not values_ms:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "mean": 0.0, "n": 0}
    arr = np.asarray(values_ms, dtype=float)
    p50, p95, p99 = (float(v) for v in np.percentile(arr, [50, 95, 99]))
    return {"p50": p50, "p95": p95, "p99": p99, "mean": float(arr.mean()), "n": len(values_ms)}


def run_pipelines(
    dataset: BeirDataset,
    connector: AnyConnector,
    specs: Sequence[PipelineSpec],
    *,
    encoder: DenseEncoder | None = None,
    scorer: Scorer | None = None,
    vector_field: str = "embedding",
    depth: int = DEFAULT_DEPTH,
    query_ids: Sequence[str] | None = None,
    progress: bool = False,
) -> list[PipelineRun]:
    """Run every pipeline on every (selected) test query; see the module docstring."""
    from tqdm.auto import tqdm

    if any(s.rerank for s in specs) and scorer is None:
        msg = "rerank pipelines need a scorer"
        raise ConfigurationError(msg)
    stages = {
        name: build_stage(name, connector, encoder=encoder, vector_field=vector_field)
        for name in dict.fromkeys(s.first_stage for s in specs)
    }
    retrievers: dict[int, Retriever] = {}
    for spec in specs:
        if spec.window is not None and spec.window not in retrievers:
            assert scorer is not None
            retrievers[spec.window] = Retriever(scorer=scorer, window=spec.window)
    runs = {spec: PipelineRun(spec) for spec in specs}
    qids = list(dataset.queries) if query_ids is None else list(query_ids)
    if not qids:
        msg = "no queries to evaluate"
        raise ConfigurationError(msg)

    def one_query(qid: str, record: bool) -> None:
        text = dataset.queries[qid]
        for name, stage in stages.items():
            started = time.perf_counter()
            hits = stage.retrieve(text, size=depth)
            first_ms = (time.perf_counter() - started) * 1000
            for spec in specs:
                if spec.first_stage != name:
                    continue
                if spec.window is None:
                    ranked, took = [h.id for h in hits], first_ms
                    status, reason = None, None
                else:
                    started = time.perf_counter()
                    result = retrievers[spec.window].rerank_hits(text, hits, k=depth)
                    took = first_ms + (time.perf_counter() - started) * 1000
                    ranked = [r.hit.id for r in result.hits]
                    status, reason = result.status, result.reason
                if record:
                    run = runs[spec]
                    run.ranking[qid] = ranked
                    run.latency_ms[qid] = took
                    if status is not None:
                        run.statuses[status] += 1
                    if reason:
                        run.reasons[reason] += 1

    try:
        one_query(qids[0], record=False)  # warm-up: model kernels, connection pool, caches
        for qid in tqdm(qids, unit="query", desc="evaluating", disable=not progress):
            one_query(qid, record=True)
    finally:
        for retriever in retrievers.values():
            retriever.close()
    return [runs[s] for s in specs]


@dataclass(slots=True)
class EvalReport:
    """Everything ``secondpass eval`` writes to ``report.json``."""

    dataset: str
    split: str
    engine: str
    queries: int
    depth: int
    scorer: str | None
    encoder: str | None
    baseline: str | None
    pipelines: dict[str, dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form; measure names are ir-measures notation."""
        return {
            "dataset": self.dataset,
            "split": self.split,
            "engine": self.engine,
            "queries": self.queries,
            "depth": self.depth,
            "measures": list(MEASURE_NAMES),
            "metrics_library": "ir-measures",
            "run_scores": "depth + 1 - rank (the exact order each pipeline produced)",
            "latency_what": LATENCY_WHAT,
            "scorer": self.scorer,
            "encoder": self.encoder,
            "baseline": self.baseline,
            "pipelines": self.pipelines,
        }


def build_report(
    dataset: BeirDataset,
    runs: Sequence[PipelineRun],
    *,
    engine: str,
    depth: int = DEFAULT_DEPTH,
    baseline: str | None = None,
    scorer: str | None = None,
    encoder: str | None = None,
    query_ids: Sequence[str] | None = None,
) -> tuple[EvalReport, dict[str, dict[str, dict[str, float]]]]:
    """Score every run and compare each with the baseline; also returns per-query values."""
    qids = list(dataset.queries) if query_ids is None else list(query_ids)
    qrels = {qid: dataset.qrels[qid] for qid in qids}
    labels = [r.spec.label for r in runs]
    if baseline is not None and baseline not in labels:
        msg = f"baseline {baseline!r} is not among the evaluated pipelines ({', '.join(labels)})"
        raise ConfigurationError(msg)
    per_query_all: dict[str, dict[str, dict[str, float]]] = {}
    pipelines: dict[str, dict[str, Any]] = {}
    for run in runs:
        aggregate, per_query = compute_metrics(qrels, run.run_dict(depth))
        per_query_all[run.spec.label] = per_query
        pipelines[run.spec.label] = {
            "first_stage": run.spec.first_stage,
            "rerank_window": run.spec.window,
            "metrics": aggregate,
            "latency_ms": latency_summary(list(run.latency_ms.values())),
            "rerank_status": dict(run.statuses),
            "rerank_reasons": dict(run.reasons.most_common(5)),
            "run_file": f"{run.spec.label}.trec",
        }
    if baseline is not None:
        for label, entry in pipelines.items():
            if label != baseline:
                entry["vs_baseline"] = {
                    m: compare_per_query(per_query_all[baseline], per_query_all[label], m)
                    for m in MEASURE_NAMES
                }
    report = EvalReport(
        dataset=dataset.name,
        split=dataset.split,
        engine=engine,
        queries=len(qids),
        depth=depth,
        scorer=scorer,
        encoder=encoder,
        baseline=baseline,
        pipelines=pipelines,
    )
    return report, per_query_all


def write_trec_run(path: str | Path, run: PipelineRun, *, depth: int = DEFAULT_DEPTH) -> Path:
    """Write a TREC run file (``qid Q0 doc rank score tag``) in the pipeline's order."""
    target = Path(path)
    tag = run.spec.label.replace(" ", "_")
    with target.open("w", encoding="utf-8") as fh:
        for qid, docs in run.ranking.items():
            for rank, doc in enumerate(docs[:depth], start=1):
                fh.write(f"{qid} Q0 {doc} {rank} {depth + 1 - rank} {tag}\n")
    return target


def plot_report(report: EvalReport, path: str | Path) -> Path:
    """Bar chart of each measure per pipeline; plus latency vs nDCG@10 when windows vary."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingDependencyError(package="matplotlib", extra="eval") from exc

    labels = list(report.pipelines)
    windows = {e["rerank_window"] for e in report.pipelines.values() if e["rerank_window"] is not None}
    with_tradeoff = len(windows) > 1
    fig, axes = plt.subplots(1, 2 if with_tradeoff else 1, figsize=(13 if with_tradeoff else 8, 4.8))
    bar_ax = axes[0] if with_tradeoff else axes
    width = 0.8 / len(MEASURE_NAMES)
    for i, measure in enumerate(MEASURE_NAMES):
        values = [report.pipelines[label]["metrics"][measure] for label in labels]
        positions = [x + (i - (len(MEASURE_NAMES) - 1) / 2) * width for x in range(len(labels))]
        bars = bar_ax.bar(positions, values, width, label=measure)
        bar_ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=1)
    bar_ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    bar_ax.set_ylim(0, 1.18)
    bar_ax.set_ylabel("score (mean over queries)")
    bar_ax.set_title(f"{report.dataset} ({report.split}, {report.queries} queries) on {report.engine}")
    bar_ax.legend(loc="upper center", ncols=len(MEASURE_NAMES), fontsize=8)
    if with_tradeoff:
        ax = axes[1]
        for stage in dict.fromkeys(e["first_stage"] for e in report.pipelines.values()):
            points = sorted(
                (e["latency_ms"]["p50"], e["metrics"][PRIMARY_MEASURE], e["rerank_window"] or 0)
                for e in report.pipelines.values()
                if e["first_stage"] == stage
            )
            xs, ys, ws = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", label=stage)
            for x, y, w in points:
                ax.annotate("no rerank" if w == 0 else f"window {w}", (x, y), fontsize=7,
                            textcoords="offset points", xytext=(4, 4))
        ax.set_xlabel("p50 latency per query (ms)")
        ax.set_ylabel(PRIMARY_MEASURE)
        ax.set_title("rerank window: latency vs quality")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if report.scorer:
        fig.suptitle(f"reranker: {report.scorer}", fontsize=9)
    fig.tight_layout()
    target = Path(path)
    fig.savefig(target, dpi=120)
    plt.close(fig)
    return target


def write_outputs(
    report: EvalReport,
    runs: Sequence[PipelineRun],
    out_dir: str | Path,
    *,
    per_query: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
) -> dict[str, Path]:
    """Write ``report.json``, one ``<pipeline>.trec`` per run and ``metrics.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for run in runs:
        paths[run.spec.label] = write_trec_run(out / f"{run.spec.label}.trec", run, depth=report.depth)
    data = report.as_dict()
    if per_query is not None:
        data["per_query"] = per_query
    report_path = out / "report.json"
    report_path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    paths["report"] = report_path
    paths["plot"] = plot_report(report, out / "metrics.png")
    return paths


def format_table(report: EvalReport) -> str:
    """A plain-text summary table of the report (for the terminal)."""
    header = f"{'pipeline':<24} {'nDCG@10':>8} {'RR@10':>8} {'R@100':>8} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9}"
    if report.baseline:
        header += f"  vs {report.baseline} (nDCG@10 W/L/T)"
    lines = [header, "-" * len(header)]
    for label, entry in report.pipelines.items():
        m, lat = entry["metrics"], entry["latency_ms"]
        line = (
            f"{label:<24} {m['nDCG@10']:>8.4f} {m['RR@10']:>8.4f} {m['R@100']:>8.4f} "
            f"{lat['p50']:>9.1f} {lat['p95']:>9.1f} {lat['p99']:>9.1f}"
        )
        vs = entry.get("vs_baseline")
        if vs:
            d = vs[PRIMARY_MEASURE]
            line += f"  {d['wins']}/{d['losses']}/{d['ties']} (mean {d['mean_delta']:+.4f})"
        lines.append(line)
    return "\n".join(lines)
