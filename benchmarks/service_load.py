"""Load benchmark of the HTTP service: dynamic batching on vs off, and /v1/search batching.

Scenario ``rerank``: starts two ``secondpass serve`` processes on loopback one
after the other (same model, cache off so every pair reaches the model; one with
``--batching``, one with ``--no-batching``), drives each with N concurrent httpx
clients for a fixed duration and prints throughput, p50/p95/p99 latency and
error counts, then the ratio batching-on / batching-off.

Scenario ``search``: starts a local OpenSearch node and a service whose
``/v1/search`` reranks a window of its hits, drives ``POST /v1/search`` with N
concurrent clients (distinct queries, cache off) and reports how many searches
and pairs each forward batch held. Every search feeds the service's one scoring
engine, so concurrent searches share batches (before the engine, a 4-thread pool
capped a batch at 4 searches). Its last line is ``RESULT search_mean_batch=<n>``:
the mean number of distinct requests per forward batch.

It stops by itself and always stops the processes it started. Latency is the
client-side wall time of one request (connect reuse, JSON both ways, queueing,
scoring; for search also the first stage).

    python benchmarks/service_load.py --concurrency 16 --duration 15 --docs 8
    python benchmarks/service_load.py --scenario search --concurrency 16 --duration 10
    python benchmarks/service_load.py --model /path/to/cross-encoder --device cuda
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fixtures.service import ServiceProcess, start_service  # noqa: E402

WORDS = "cat dog sleep purr bark food energy house garden night day play toy mouse bird".split()


@dataclass
class Run:
    label: str
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    pairs: int = 0
    elapsed_s: float = 0.0
    mean_batch_pairs: float = 0.0
    mean_batch_requests: float = 0.0

    def pct(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0

    @property
    def ok(self) -> int:
        return self.statuses.get("200", 0)

    @property
    def errors(self) -> int:
        return sum(v for k, v in self.statuses.items() if k != "200")


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)) + f" {rng.random():.12f}"


async def client_loop(
    url: str, run: Run, stop_at: float, docs: int, words: int, seed: int, *, search: bool = False
) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        while time.monotonic() < stop_at:
            if search:  # two words of the corpus plus a unique token: a fresh cache key each time
                path = "/v1/search"
                payload: dict[str, object] = {
                    "query": f"{rng.choice(WORDS)} {rng.choice(WORDS)} q{rng.random():.12f}",
                    "k": 10,
                }
            else:
                path = "/rerank"
                payload = {"query": text(rng, 4), "texts": [text(rng, words) for _ in range(docs)]}
            started = time.perf_counter()
            try:
                r = await client.post(path, json=payload)
                status = str(r.status_code)
                if search and status == "200" and r.json()["rerank_status"] != "ok":
                    status = f"200 {r.json()['rerank_status']}"
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            run.statuses[status] += 1
            if status == "200":
                run.latencies_s.append(time.perf_counter() - started)
                run.pairs += r.json()["reranked"] if search else docs


async def drive(
    svc: ServiceProcess, run: Run, args: argparse.Namespace, *, search: bool = False
) -> None:
    warm = Run("warm-up")
    await client_loop(svc.url, warm, time.monotonic() + 2.0, args.docs, args.words, 0, search=search)
    before_pairs = svc.metric("secondpass_batch_pairs_sum")
    before_batches = svc.metric("secondpass_batch_pairs_count")
    before_reqs = svc.metric("secondpass_batch_requests_sum")
    started = time.monotonic()
    stop_at = started + args.duration
    await asyncio.gather(
        *[
            client_loop(svc.url, run, stop_at, args.docs, args.words, seed=i + 1, search=search)
            for i in range(args.concurrency)
        ]
    )
    run.elapsed_s = time.monotonic() - started
    batches = svc.metric("secondpass_batch_pairs_count") - before_batches
    if batches:
        run.mean_batch_pairs = (svc.metric("secondpass_batch_pairs_sum") - before_pairs) / batches
        run.mean_batch_requests = (
            svc.metric("secondpass_batch_requests_sum") - before_reqs
        ) / batches


def serve_args(args: argparse.Namespace) -> list[str]:
    """The ``serve`` flags every scenario shares: device, no cache, batch shape."""
    return [
        "--rerank-device",
        args.device,
        "--cache-backend",
        "none",
        "--max-wait-ms",
        str(args.max_wait_ms),
        "--max-batch-pairs",
        str(args.max_batch_pairs),
    ]


def rerank_scenario(model: str, tmp: Path, args: argparse.Namespace) -> list[Run]:
    runs = []
    for label, flag in (("batching on", "--batching"), ("batching off", "--no-batching")):
        svc = start_service(
            model,
            tmp,
            args=[flag, *serve_args(args)],
            ready_timeout=300,
        )
        run = Run(label)
        try:
            asyncio.run(drive(svc, run, args))
        finally:
            svc.stop()
        runs.append(run)
    return runs


def search_scenario(model: str, tmp: Path, args: argparse.Namespace) -> Run:
    """/v1/search over a local OpenSearch index of ``--search-docs`` documents."""
    from secondpass.config import ConnectionSettings
    from secondpass.connectors import connect
    from secondpass.servers import LocalEngine

    rng = random.Random(7)
    docs = [
        {"_id": str(i), "title": text(rng, 3), "text": text(rng, args.words)}
        for i in range(args.search_docs)
    ]
    with LocalEngine("opensearch") as node:
        settings = ConnectionSettings(engine="opensearch", hosts=[node.url])
        with connect(index="load", fields=["title", "text"], settings=settings) as connector:
            connector.ensure_index(text_fields=["title", "text"])
            connector.bulk_index(docs, id_field="_id")
            connector.refresh()
        svc = start_service(
            model,
            tmp,
            settings={
                "search_index": "load",
                "search_fields": ["title", "text"],
                "search_window": args.search_window,
                "engine": {"engine": "opensearch", "hosts": [node.url]},
            },
            args=serve_args(args),
            ready_timeout=300,
        )
        run = Run("/v1/search")
        try:
            asyncio.run(drive(svc, run, args, search=True))
        finally:
            svc.stop()
    return run


def print_runs(title: str, runs: list[Run]) -> None:
    print(title)
    print(
        f"{'mode':<14}{'req/s':>8}{'pairs/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        f"{'errors':>8}{'pairs/batch':>13}{'req/batch':>11}"
    )
    for r in runs:
        print(
            f"{r.label:<14}{r.ok / r.elapsed_s:>8.1f}{r.pairs / r.elapsed_s:>10.1f}"
            f"{r.pct(0.50):>9.1f}{r.pct(0.95):>9.1f}{r.pct(0.99):>9.1f}{r.errors:>8d}"
            f"{r.mean_batch_pairs:>13.1f}{r.mean_batch_requests:>11.2f}"
        )
    for r in runs:
        if r.errors:
            print(f"{r.label} errors by status: {dict(r.statuses)}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="cross-encoder directory (default: the tiny test model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scenario", choices=["rerank", "search", "all"], default="all")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per mode")
    parser.add_argument("--docs", type=int, default=8, help="texts per /rerank request")
    parser.add_argument("--words", type=int, default=40, help="words per text")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--max-batch-pairs", type=int, default=64)
    parser.add_argument("--search-docs", type=int, default=200, help="documents indexed for search")
    parser.add_argument("--search-window", type=int, default=20, help="hits reranked per search")
    args = parser.parse_args()

    search_run: Run | None = None
    with tempfile.TemporaryDirectory(prefix="secondpass-load-") as tmp:
        model = args.model
        if model is None:
            from tests.support.models import build_tiny_cross_encoder

            model = str(build_tiny_cross_encoder(Path(tmp) / "model", seed=0))
        if args.scenario in ("rerank", "all"):
            on, off = rerank_scenario(model, Path(tmp), args)
            print_runs(
                f"\nPOST /rerank, {args.concurrency} clients x {args.duration:.0f} s per mode, "
                f"{args.docs} texts of ~{args.words} words per request, cache off, "
                f"device {args.device}",
                [on, off],
            )
            if off.ok and on.ok:
                print(
                    f"batching on / off: throughput "
                    f"x{(on.ok / on.elapsed_s) / (off.ok / off.elapsed_s):.2f}, "
                    f"p50 x{on.pct(0.5) / off.pct(0.5):.2f}, p99 x{on.pct(0.99) / off.pct(0.99):.2f}"
                )
        if args.scenario in ("search", "all"):
            search_run = search_scenario(model, Path(tmp), args)
            print_runs(
                f"\nPOST /v1/search, {args.concurrency} clients x {args.duration:.0f} s, window "
                f"{args.search_window} over {args.search_docs} documents, cache off, "
                f"device {args.device}",
                [search_run],
            )
    if search_run is not None:
        print(f"RESULT search_mean_batch={search_run.mean_batch_requests:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
