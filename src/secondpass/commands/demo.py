"""``secondpass demo``: the README's main job, end to end on a real engine.

Starts a local OpenSearch (or Elasticsearch) node unless ``--url`` is given,
indexes the sample corpus shipped inside the package (300 SciFact abstracts, see
``secondpass/data/ATTRIBUTION.md``), and for each sample query prints the
first-stage (BM25) top hits next to the reranked ones, with scores, the rerank
status and timings. Everything it reads is inside the installed package, so it
runs offline; when the default cross-encoder cannot be had it says so and uses
the packaged bi-encoder instead.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from secondpass.commands import _engine
from secondpass.commands._engine import note, say

DEMO_INDEX = "secondpass-demo"
SHOWN = 5


@dataclass(frozen=True, slots=True)
class SampleQuery:
    """A sample claim and the ids of the abstracts judged relevant to it."""

    id: str
    text: str
    relevant: tuple[str, ...]


def sample_documents() -> list[Any]:
    """The packaged sample corpus as :class:`~secondpass.datasets.Document` values."""
    from secondpass.datasets import sample_dataset

    return list(sample_dataset().iter_corpus())


def sample_queries() -> list[SampleQuery]:
    """The packaged sample queries, with their relevant document ids (file order)."""
    from secondpass.datasets import sample_dataset

    dataset = sample_dataset()
    return [
        SampleQuery(qid, text, tuple(dataset.qrels[qid])) for qid, text in dataset.queries.items()
    ]


_SUMMARY = "index a bundled sample corpus and show first-stage vs reranked hits"
_DESCRIPTION = (
    "Start a local engine (unless --url), index 300 SciFact abstracts shipped with "
    "SecondPass, and show BM25 vs reranked top hits for 10 sample claims."
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``demo`` sub-command."""
    parser = _engine.add_engine_command(
        subparsers, "demo", run, _SUMMARY, _DESCRIPTION, local_default=True
    )
    _engine.add_model_arguments(parser, what="the reranker")
    parser.add_argument(
        "--window", type=int, default=50, help="first-stage hits to rerank (default: 50)"
    )
    parser.add_argument(
        "--queries", type=int, default=None, metavar="N", help="only the first N sample queries"
    )
    parser.add_argument(
        "--keep-index",
        action="store_true",
        help=f"with --url: keep the {DEMO_INDEX!r} index afterwards",
    )


def _first_relevant(ids: Sequence[str], relevant: Sequence[str]) -> str:
    for rank, doc_id in enumerate(ids, start=1):
        if doc_id in relevant:
            return str(rank)
    return f">{len(ids)}"


def _movement(before: str, after: str) -> str:
    """Compare two ranks as printed by :func:`_first_relevant` (``">N"`` means not found)."""
    rank_before = int(before) if before.isdigit() else 10**9
    rank_after = int(after) if after.isdigit() else 10**9
    if rank_after < rank_before:
        return "up"
    return "down" if rank_after > rank_before else "unchanged"


def _title(hit: Any, width: int = 70) -> str:
    title = hit.fields.get("title") or hit.fields.get("text") or ""
    return textwrap.shorten(title, width=width, placeholder="...")


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns 0 when every query was reranked (status ok)."""
    _engine.quiet_client_logs()
    import time

    from secondpass.errors import ConfigurationError
    from secondpass.indexing import index_documents
    from secondpass.pipeline.first_stage import LexicalStage
    from secondpass.pipeline.models import load_scorer
    from secondpass.pipeline.retriever import Retriever

    if args.window < 1:
        msg = f"--window must be >= 1, got {args.window}"
        raise ConfigurationError(msg)
    if args.url is not None:
        _engine.check_reachable(args.engine, args.url)  # before loading the model
    queries = sample_queries()[: args.queries]
    docs = sample_documents()

    load_started = time.perf_counter()
    scorer, description = load_scorer(
        args.model, allow_fallback=True, device=args.device, notify=note
    )
    say(f"scorer: {description} (loaded in {time.perf_counter() - load_started:.1f} s)")

    statuses: list[str] = []
    moves: dict[str, int] = {"up": 0, "down": 0, "unchanged": 0}
    with _engine.engine_url(args.engine, args.url) as url:
        connector = _engine.make_connector(args.engine, url, DEMO_INDEX)
        created = False
        try:
            report = index_documents(
                connector,
                docs,
                progress=args.progress,
                total=len(docs),
                description="indexing sample corpus",
            )
            created = report.created
            say(f"index {DEMO_INDEX!r} on {args.engine}: {report.summary()}")
            stage = LexicalStage(connector)
            with Retriever(scorer=scorer, window=args.window) as retriever:
                for query in queries:
                    started = time.perf_counter()
                    hits = stage.retrieve(query.text, size=args.window)
                    first_ms = (time.perf_counter() - started) * 1000
                    result = retriever.rerank_hits(query.text, hits)
                    first_ids = [h.id for h in hits]
                    reranked_ids = [r.hit.id for r in result.hits]
                    statuses.append(result.status)
                    before = _first_relevant(first_ids, query.relevant)
                    after = _first_relevant(reranked_ids, query.relevant)
                    moves[_movement(before, after)] += 1
                    _print_query(query, hits, result, first_ms, before, after)
        finally:
            if args.url is not None and created and not args.keep_index:
                connector.delete_index()
            connector.close()

    ok = sum(1 for s in statuses if s == "ok")
    say(
        f"summary: {ok}/{len(statuses)} queries reranked (status ok); first relevant abstract moved up in "
        f"{moves['up']}, down in {moves['down']}, unchanged in {moves['unchanged']} queries; scorer: {description}"
    )
    return 0 if ok == len(statuses) else 1


def _print_query(
    query: SampleQuery, hits: Sequence[Any], result: Any, first_ms: float, before: str, after: str
) -> None:
    timings = result.timings_ms
    say("")
    say(f"query {query.id}: {query.text}")
    say(
        f"  relevant: {', '.join(query.relevant)}  (first relevant at rank {before} -> {after} after reranking)"
    )
    say(f"  first stage (BM25, {len(hits)} hits):")
    for hit in hits[:SHOWN]:
        mark = "*" if hit.id in query.relevant else " "
        say(f"   {mark}{hit.rank:>3}. [{hit.score:7.3f} bm25] {hit.id:>9}  {_title(hit)}")
    say(f"  reranked (top {result.reranked} of the window):")
    for ranked in result.hits[:SHOWN]:
        mark = "*" if ranked.hit.id in query.relevant else " "
        score = "   n/a " if ranked.score is None else f"{ranked.score:7.3f}"
        say(
            f"   {mark}{ranked.rank:>3}. [{score} rerank, was #{ranked.hit.rank}] {ranked.hit.id:>9}  {_title(ranked.hit)}"
        )
    status = result.status if result.reason is None else f"{result.status} ({result.reason})"
    say(
        f"  rerank status: {status}; timings: first stage {first_ms:.1f} ms, "
        f"tokenize {timings.get('tokenize', 0.0):.1f} ms, model {timings.get('model', 0.0):.1f} ms, "
        f"rerank total {timings.get('total', 0.0):.1f} ms"
    )
