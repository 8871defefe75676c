"""Plot the Grafana dashboard's panels from a real scrape sequence of a loaded ``secondpass serve``.

Why: docs/observability.md shows what deploy/grafana/secondpass.json looks like
with real numbers, and Grafana is not installable everywhere the docs are built.
This starts one ``secondpass serve`` process on loopback (the tiny test
cross-encoder unless ``--model`` is given, CPU, memory cache), drives it with a
stepped load (few clients, then more, then a burst with invalid requests mixed
in), scrapes ``/metrics`` every ``--interval`` seconds, and evaluates each
panel's query over the scrapes the way Prometheus does (``rate`` as the
difference of two scrapes over their interval, ``histogram_quantile`` by linear
interpolation inside the bucket). The PNG is a matplotlib plot of those
figures, not a Grafana render; its title says so.

    python benchmarks/dashboard_snapshot.py --duration 45 --out docs/img/observability-dashboard.png
    python benchmarks/dashboard_snapshot.py --model /path/to/cross-encoder --device cuda

It stops the process it started, also on error. ``--scrapes FILE`` keeps the raw
scrapes (JSON lines) for a second look.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fixtures.service import start_service  # noqa: E402

WORDS = "cat dog sleep purr bark food energy house garden night day play toy mouse bird".split()
Key = tuple[str, tuple[tuple[str, str], ...]]


@dataclass
class Scrape:
    at: float  # seconds since the load started
    samples: dict[Key, float]

    def total(self, name: str, **match: str) -> float:
        return sum(
            v for (n, labels), v in self.samples.items() if n == name and _has(labels, match)
        )

    def by(self, name: str, label: str, **match: str) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for (n, labels), v in self.samples.items():
            if n == name and _has(labels, match):
                out[dict(labels).get(label, "")] += v
        return out


def _has(labels: tuple[tuple[str, str], ...], match: Mapping[str, str]) -> bool:
    have = dict(labels)
    return all(have.get(k) == v for k, v in match.items())


def parse(text: str, at: float) -> Scrape:
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return Scrape(at, samples)


def quantile(q: float, buckets: Mapping[float, float]) -> float:
    """Prometheus' ``histogram_quantile`` over cumulative bucket counts (``le`` -> count)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return math.nan
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def bucket_rates(a: Scrape, b: Scrape, name: str, **match: str) -> dict[float, float]:
    le_a = a.by(f"{name}_bucket", "le", **match)
    le_b = b.by(f"{name}_bucket", "le", **match)
    return {float(le): le_b[le] - le_a.get(le, 0.0) for le in le_b}


async def client(url: str, seed: int, stop_at: float, docs: int, bad_every: int) -> None:
    rng = random.Random(seed)
    shared = random.Random(0)  # every client draws from the same texts and queries: cache hits
    pool = [" ".join(shared.choices(WORDS, k=30)) for _ in range(12)]
    queries = [" ".join(shared.choices(WORDS, k=3)) for _ in range(6)]
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        n = 0
        while time.monotonic() < stop_at:
            n += 1
            texts = [
                rng.choice(pool) if rng.random() < 0.5 else " ".join(rng.choices(WORDS, k=30))
                for _ in range(docs)
            ]
            query = rng.choice(queries)
            if bad_every and n % bad_every == 0:
                await http.post("/v1/rerank", json={"query": query, "documents": "not a list"})
            elif n % 3 == 0:
                await http.post("/rerank", json={"query": query, "texts": texts})
            else:
                await http.post("/v1/rerank", json={"query": query, "documents": texts})


async def scrape_loop(url: str, started: float, stop_at: float, every: float) -> list[Scrape]:
    scrapes = []
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        next_at = time.monotonic()
        while next_at <= stop_at + every:
            text = (await http.get("/metrics")).text
            scrapes.append(parse(text, time.monotonic() - started))
            next_at += every
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    return scrapes


async def load(url: str, args: argparse.Namespace) -> list[Scrape]:
    started = time.monotonic()
    stop_at = started + args.duration
    third = args.duration / 3
    phases = [(2, 0), (args.concurrency // 2, 0), (args.concurrency, 7)]  # (clients, bad_every)
    scraper = asyncio.create_task(scrape_loop(url, started, stop_at, args.interval))
    for i, (clients, bad_every) in enumerate(phases):
        phase_end = min(stop_at, started + (i + 1) * third)
        await asyncio.gather(
            *[client(url, 100 * i + c, phase_end, args.docs, bad_every) for c in range(clients)]
        )
    return await scraper


def series(scrapes: list[Scrape]) -> dict[str, dict[str, list[float]]]:
    """Each panel's lines, one point per scrape interval."""
    out: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for a, b in zip(scrapes, scrapes[1:], strict=False):
        dt = b.at - a.at

        def rate(name: str, _a: Scrape = a, _b: Scrape = b, _dt: float = dt, **m: str) -> float:
            return (_b.total(name, **m) - _a.total(name, **m)) / _dt

        for endpoint in ("/v1/rerank", "/rerank"):
            out["Throughput (requests/s)"][endpoint] .append(
                rate("secondpass_http_requests_total", endpoint=endpoint)
            )  # fmt: skip
        out["Throughput (requests/s)"]["pairs scored / 10"].append(
            rate("secondpass_batch_pairs_sum") / 10
        )
        for q in (0.5, 0.95, 0.99):
            out["HTTP latency /v1/rerank (s)"][f"p{round(q * 100)}"].append(
                quantile(q, bucket_rates(a, b, "secondpass_http_request_duration_seconds",
                                         endpoint="/v1/rerank"))
            )  # fmt: skip
        for stage in ("queue_wait", "tokenize", "model", "cache"):
            out["Latency by stage, p95 (s)"][stage].append(
                quantile(0.95, bucket_rates(a, b, "secondpass_stage_duration_seconds", stage=stage))
            )
        for status in ("200", "422", "429", "503"):
            out["Outcomes (answers/s by status)"][status].append(
                rate("secondpass_http_requests_total", status=status)
            )
        batches = rate("secondpass_batch_pairs_count")
        out["Batch size (mean per batch)"]["pairs"].append(
            rate("secondpass_batch_pairs_sum") / batches if batches else math.nan
        )
        out["Batch size (mean per batch)"]["requests"].append(
            rate("secondpass_batch_requests_sum") / batches if batches else math.nan
        )
        out["Queue depth and cache hit rate"]["pairs waiting"].append(
            b.total("secondpass_queue_depth_pairs")
        )
        hits, misses = rate("secondpass_cache_hits_total"), rate("secondpass_cache_misses_total")
        out["Queue depth and cache hit rate"]["cache hit rate (%)"].append(
            100 * hits / (hits + misses) if hits + misses else math.nan
        )
    return out


def plot(scrapes: list[Scrape], panels: Mapping[str, Mapping[str, list[float]]], path: Path,
         caption: str) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [s.at for s in scrapes[1:]]
    fig, axes = plt.subplots(3, 2, figsize=(14, 11), constrained_layout=True)
    fig.patch.set_facecolor("#181b1f")
    for ax, (title, lines) in zip(axes.flat, panels.items(), strict=False):
        ax.set_facecolor("#111217")
        for label, values in lines.items():
            ax.plot(x, values, label=label, linewidth=1.6)
        ax.set_title(title, color="#d8d9da", fontsize=11, loc="left")
        ax.tick_params(colors="#9fa7b3", labelsize=8)
        ax.grid(color="#2c3235", linewidth=0.6)
        ax.set_xlabel("seconds since the load started", color="#9fa7b3", fontsize=8)
        for spine in ax.spines.values():
            spine.set_color("#2c3235")
        ax.legend(fontsize=8, facecolor="#181b1f", labelcolor="#d8d9da", edgecolor="#2c3235")
    fig.suptitle(caption, color="#d8d9da", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, facecolor=fig.get_facecolor())


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="cross-encoder directory (default: the tiny test model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--duration", type=float, default=45.0, help="seconds of load")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between scrapes")
    parser.add_argument("--concurrency", type=int, default=12, help="clients in the last phase")
    parser.add_argument("--docs", type=int, default=8, help="documents per request")
    parser.add_argument("--out", type=Path, default=REPO / "docs/img/observability-dashboard.png")
    parser.add_argument("--scrapes", type=Path, default=None, help="write raw scrapes (JSON lines)")
    args = parser.parse_args(None if argv is None else list(argv))

    with tempfile.TemporaryDirectory(prefix="secondpass-dash-") as tmp:
        model = args.model
        if model is None:
            from tests.support.models import build_tiny_cross_encoder

            model = str(build_tiny_cross_encoder(Path(tmp) / "model", seed=0))
        svc = start_service(
            model, Path(tmp),
            args=["--rerank-device", args.device, "--cache-backend", "memory", "--max-wait-ms", "5"],
            ready_timeout=600,  # loading a model on a busy machine
        )  # fmt: skip
        try:
            scrapes = asyncio.run(load(svc.url, args))
        finally:
            svc.stop()
    if args.scrapes is not None:
        with args.scrapes.open("w") as f:
            for s in scrapes:
                f.write(json.dumps({"at": s.at, "samples": [[n, dict(lb), v] for (n, lb), v in s.samples.items()]}) + "\n")  # fmt: skip
    model_name = "tiny test cross-encoder" if args.model is None else Path(args.model).name
    caption = (
        f"deploy/grafana/secondpass.json panels, plotted with matplotlib (not a Grafana render)\n"
        f"from {len(scrapes)} real /metrics scrapes of `secondpass serve` "
        f"({model_name}, {args.device}) under a stepped load of 2, {args.concurrency // 2}, "
        f"{args.concurrency} clients"
    )
    plot(scrapes, series(scrapes), args.out, caption)
    print(f"wrote {args.out} from {len(scrapes)} scrapes over {args.duration:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
