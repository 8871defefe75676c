"""Proxy load: cross-request batching on vs off, N concurrent clients searching through the proxy.

Starts a local OpenSearch node (512 MB heap, loopback, stopped at the end),
indexes ``--docs`` random documents, and serves two proxies one after the other
in this process at the same time (a uvicorn thread each, the same scorer): one
with ``batching=True``, one with ``batching=False``. ``--concurrency`` asyncio
clients send ``_search`` requests (two corpus words plus a unique token, so
every search is new; the score cache is off, so every pair reaches the model)
to one proxy at a time, for ``--duration`` seconds per mode after a short
warm-up, in ``--rounds`` slices that alternate the modes (on/off, off/on, ...)
so that the shared machine's drifting load hits both alike. Each search reranks a window
of ``--window`` hits and answers a page of 10.

Printed per mode: searches per second, p50/p95/p99 client wall latency, how
many searches were not answered ``X-SecondPass-Rerank: ok``, and from the
proxy's own metrics (``secondpass_batch_*``) the mean searches and pairs per
forward batch. The deadline is off (``deadline_ms=None``), so a slow search is
measured rather than answered in engine order.

The model is the tiny seeded test cross-encoder (``--shape tiny``, default),
a MiniLM-L6-shaped random one (``--shape minilm``: the cost of a real small
reranker), or ``--model DIR``. The run is bounded: 2 modes x (2 s warm-up +
``--duration``), plus the node's start and the last searches' completion. Last line:
``RESULT proxy_batching_speedup=<on/off throughput> mean_batch=<searches per batch, on>``.

    .venv/bin/python benchmarks/proxy_load.py --concurrency 16 --window 20 --duration 15
    .venv/bin/python benchmarks/proxy_load.py --shape minilm --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
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

from secondpass.pipeline.models import load_scorer  # noqa: E402
from secondpass.pipeline.protocols import Scorer  # noqa: E402
from secondpass.proxy import BackgroundProxy, ProxySettings, RerankProxy  # noqa: E402

INDEX = "secondpass-bench-proxy-load"
WORDS = "cat dog sleep purr bark food energy house garden night day play toy mouse bird".split()
WARM_UP_S = 2.0


@dataclass
class Run:
    label: str
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    batches: float = 0.0
    batch_searches: float = 0.0
    batch_pairs: float = 0.0

    def pct(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0

    @property
    def ok(self) -> int:
        return self.statuses.get("ok", 0)

    @property
    def throughput(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def mean_batch(self) -> float:
        return self.batch_searches / self.batches if self.batches else 0.0


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def index_corpus(url: str, docs: int, words_per_doc: int) -> None:
    rng = random.Random(7)
    lines = []
    for i in range(docs):
        lines.append(json.dumps({"index": {"_index": INDEX, "_id": str(i)}}))
        lines.append(json.dumps({"title": words(rng, 3), "text": words(rng, words_per_doc)}))
    with httpx.Client(base_url=url, timeout=120) as http:
        http.delete(f"/{INDEX}")
        http.put(f"/{INDEX}", json={"settings": {"number_of_shards": 1, "number_of_replicas": 0},
                                    "mappings": {"properties": {"title": {"type": "text"},
                                                                "text": {"type": "text"}}}})  # fmt: skip
        answer = http.post("/_bulk?refresh=true", content="\n".join(lines) + "\n",
                           headers={"content-type": "application/x-ndjson"})  # fmt: skip
        answer.raise_for_status()
        if answer.json()["errors"]:
            raise SystemExit("bulk indexing failed")


async def client_loop(url: str, run: Run, stop_at: float, seed: int) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        while time.monotonic() < stop_at:
            query = f"{rng.choice(WORDS)} {rng.choice(WORDS)} q{rng.random():.12f}"
            body = {"query": {"match": {"text": query}}, "size": 10}
            started = time.perf_counter()
            try:
                response = await client.post(f"/{INDEX}/_search", json=body)
            except httpx.HTTPError as exc:
                run.statuses[type(exc).__name__] += 1
                continue
            status = response.headers.get("x-secondpass-rerank", f"HTTP {response.status_code}")
            status = status if response.status_code == 200 else f"HTTP {response.status_code}"
            run.statuses[status.split(";")[0]] += 1
            if status == "ok":
                run.latencies_s.append(time.perf_counter() - started)


def metric(proxy: RerankProxy, name: str) -> float:
    value = proxy.metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


async def drive(url: str, proxy: RerankProxy, run: Run, concurrency: int, seconds: float) -> None:
    """One measured slice: ``concurrency`` clients for ``seconds``, added to ``run``."""
    names = ("secondpass_batch_pairs_count", "secondpass_batch_pairs_sum",
             "secondpass_batch_requests_sum")  # fmt: skip
    before = {name: metric(proxy, name) for name in names}
    started = time.monotonic()
    stop_at = started + seconds
    seed = len(run.statuses) * 1000 + len(run.latencies_s)
    await asyncio.gather(*(client_loop(url, run, stop_at, seed + i) for i in range(concurrency)))
    run.elapsed_s += time.monotonic() - started
    moved = {name: metric(proxy, name) - before[name] for name in names}
    run.batches += moved["secondpass_batch_pairs_count"]
    run.batch_pairs += moved["secondpass_batch_pairs_sum"]
    run.batch_searches += moved["secondpass_batch_requests_sum"]


def proxy_for(
    upstream: str, scorer: Scorer, args: argparse.Namespace, *, batching: bool
) -> RerankProxy:
    settings = ProxySettings(
        upstream=upstream,
        listen="127.0.0.1:0",
        window=args.window,
        deadline_ms=None,  # measure every rerank; never the engine-order fallback
        batching=batching,
        indices={INDEX: {"fields": ["title", "text"]}},
        log_level="warning",
    )
    return RerankProxy(settings, scorer=scorer)


def measure(upstream: str, scorer: Scorer, args: argparse.Namespace) -> list[Run]:
    """Both proxies serve at once; the modes alternate in ``--rounds`` slices.

    The machine's load drifts (other work, the engine's JIT and caches), so
    each mode gets the same share of every stretch of time: on/off, off/on, ...
    """
    on = proxy_for(upstream, scorer, args, batching=True)
    off = proxy_for(upstream, scorer, args, batching=False)
    runs = {True: Run("batching on"), False: Run("batching off")}
    try:
        with BackgroundProxy(on) as on_url, BackgroundProxy(off) as off_url:
            targets = {True: (on_url, on), False: (off_url, off)}
            for url, proxy in targets.values():
                asyncio.run(drive(url, proxy, Run("warm-up"), args.concurrency, WARM_UP_S))
            slice_s = args.duration / args.rounds
            for i in range(args.rounds):
                for batching in (True, False) if i % 2 == 0 else (False, True):
                    url, proxy = targets[batching]
                    asyncio.run(drive(url, proxy, runs[batching], args.concurrency, slice_s))
    finally:
        on.close()
        off.close()
    return [runs[True], runs[False]]


def report(runs: list[Run], args: argparse.Namespace, description: str) -> None:
    print(
        f"\nproxy _search, {args.concurrency} clients x {args.duration:.0f} s per mode, window "
        f"{args.window} over {args.docs} documents, cache off, deadline off, {description}"
    )
    print(f"  {'mode':<14}{'searches/s':>11}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
          f"{'not ok':>8}{'searches/batch':>16}{'pairs/batch':>13}")  # fmt: skip
    for run in runs:
        not_ok = sum(v for k, v in run.statuses.items() if k != "ok")
        pairs = run.batch_pairs / run.batches if run.batches else 0.0
        print(f"  {run.label:<14}{run.throughput:>11.1f}{run.pct(0.5):>9.0f}{run.pct(0.95):>9.0f}"
              f"{run.pct(0.99):>9.0f}{not_ok:>8}{run.mean_batch:>16.2f}{pairs:>13.1f}")  # fmt: skip
        if not_ok:
            print(f"    not ok: {dict(run.statuses)}")
    on, off = runs
    speedup = on.throughput / off.throughput if off.throughput else float("nan")
    print(f"RESULT proxy_batching_speedup={speedup:.2f} mean_batch={on.mean_batch:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--upstream", help="an existing engine's URL (default: start a local one)")
    parser.add_argument("--model", help="cross-encoder directory (default: built from --shape)")
    parser.add_argument("--shape", choices=("tiny", "minilm"), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per mode")
    parser.add_argument(
        "--rounds", type=int, default=3, help="slices per mode, the modes alternating"
    )
    parser.add_argument("--window", type=int, default=20, help="hits reranked per search")
    parser.add_argument("--docs", type=int, default=500, help="documents indexed")
    parser.add_argument("--words", type=int, default=40, help="words per document")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="secondpass-proxy-load-") as tmp:
        model = args.model
        if model is None:
            from tests.support.models import build_minilm_cross_encoder, build_tiny_cross_encoder

            build = build_tiny_cross_encoder if args.shape == "tiny" else build_minilm_cross_encoder
            model = str(build(Path(tmp) / "model", seed=0))
        scorer, description = load_scorer(model, allow_fallback=False, device=args.device)
        if args.model is None:
            description = f"{args.shape} random cross-encoder, device {args.device}"
        if args.upstream:
            index_corpus(args.upstream.rstrip("/"), args.docs, args.words)
            runs = measure(args.upstream.rstrip("/"), scorer, args)
        else:
            from secondpass.servers import LocalEngine

            with LocalEngine("opensearch") as node:
                index_corpus(node.url, args.docs, args.words)
                runs = measure(node.url, scorer, args)
    report(runs, args, description)
    return 0


if __name__ == "__main__":
    sys.exit(main())
