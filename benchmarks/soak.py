"""Soak test of the HTTP service: steady load for minutes, watching memory, file descriptors and the queue.

Drives ``secondpass serve`` with N concurrent keep-alive clients posting to the
three rerank endpoints (Cohere v1/v2 and TEI) for a fixed time, and samples the
server process every second: resident memory (VmRSS), open file descriptors,
and the batching queue depth from ``/metrics``. At the end it prints status
counts, latency percentiles and whether memory and descriptors stayed flat
after the warm-up, and exits non-zero when the service erred or leaked.

Latency is the client-side wall time of one POST (JSON both ways, queueing,
scoring). "Flat" compares the mean of the first and last fifth of the samples
taken after the warm-up. Texts come from a bounded pool, so the score cache
fills and then only turns over (a growing cache is not a leak).

    python benchmarks/soak.py --minutes 10                  # starts its own service (tiny model)
    python benchmarks/soak.py --seconds 60 --concurrency 8
    python benchmarks/soak.py --minutes 10 --url http://127.0.0.1:8080 --pid 12345
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WORDS = (
    "cat dog sleep purr bark food energy house garden night day play toy mouse bird river stone "
    "tree rain cloud wind engine search rank query index vector shard node cluster cache"
).split()
ENDPOINTS = ("/v1/rerank", "/v2/rerank", "/rerank")


@dataclass
class Sample:
    """One look at the server process."""

    at_s: float
    rss_mb: float
    fds: int
    queue_pairs: float


@dataclass
class SoakReport:
    """What a soak saw; ``verdict()`` turns it into pass/fail reasons."""

    seconds: float
    concurrency: int
    warmup_s: float
    statuses: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    retry_after_missing: int = 0
    samples: list[Sample] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def errors(self) -> int:
        """Answers that are neither 200 nor 429, plus client-side failures (timeouts, resets)."""
        return sum(n for status, n in self.statuses.items() if status not in ("200", "429"))

    def pct_ms(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0

    def steady(self) -> list[Sample]:
        return [s for s in self.samples if s.at_s >= self.warmup_s]

    def _ends(self, values: list[float]) -> tuple[float, float]:
        fifth = max(1, len(values) // 5)
        return statistics.fmean(values[:fifth]), statistics.fmean(values[-fifth:])

    @property
    def rss_growth_mb(self) -> float:
        values = [s.rss_mb for s in self.steady()]
        if len(values) < 2:
            return float("nan")
        first, last = self._ends(values)
        return last - first

    @property
    def rss_slope_mb_per_min(self) -> float:
        steady = self.steady()
        if len(steady) < 3:
            return float("nan")
        slope = statistics.linear_regression([s.at_s for s in steady], [s.rss_mb for s in steady]).slope
        return slope * 60.0

    @property
    def fd_growth(self) -> float:
        values = [float(s.fds) for s in self.steady()]
        if len(values) < 2:
            return float("nan")
        first, last = self._ends(values)
        return last - first

    @property
    def max_queue_pairs(self) -> float:
        return max((s.queue_pairs for s in self.samples), default=0.0)

    def verdict(self, *, max_rss_growth_mb: float, max_fd_growth: float) -> list[str]:
        """Reasons the soak failed (empty: passed)."""
        problems = []
        if self.errors:
            bad = {k: v for k, v in self.statuses.items() if k not in ("200", "429")}
            problems.append(f"{self.errors} failed request(s): {bad}")
        if not self.statuses.get("200"):
            problems.append("no request succeeded")
        if self.rss_growth_mb > max_rss_growth_mb:
            problems.append(f"RSS grew {self.rss_growth_mb:.1f} MB after warm-up (limit {max_rss_growth_mb} MB)")
        if self.fd_growth > max_fd_growth:
            problems.append(f"open file descriptors grew by {self.fd_growth:.1f} (limit {max_fd_growth})")
        if self.retry_after_missing:
            problems.append(f"{self.retry_after_missing} 429 answer(s) without Retry-After")
        return problems

    def summary(self) -> str:
        steady = self.steady()
        rss = [s.rss_mb for s in steady] or [float("nan")]
        fds = [s.fds for s in steady] or [0]
        ok = self.statuses.get("200", 0)
        return "\n".join(
            [
                f"{self.concurrency} clients x {self.seconds:.0f} s (warm-up {self.warmup_s:.0f} s excluded from the memory figures)",
                f"requests {self.requests}, {ok / max(self.seconds, 1e-9):.1f} ok/s, statuses {dict(self.statuses)}",
                f"latency of 200s: p50 {self.pct_ms(0.5):.1f} ms, p99 {self.pct_ms(0.99):.1f} ms, max {self.pct_ms(1.0):.1f} ms",
                f"RSS after warm-up: {min(rss):.1f}..{max(rss):.1f} MB, growth {self.rss_growth_mb:+.1f} MB "
                f"(first vs last fifth), slope {self.rss_slope_mb_per_min:+.2f} MB/min",
                f"open fds after warm-up: {min(fds)}..{max(fds)}, growth {self.fd_growth:+.1f}",
                f"max queue depth seen: {self.max_queue_pairs:.0f} pairs",
            ]
        )


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _text(rng: random.Random, words: int, pool: int) -> str:
    # A bounded pool of texts: seed by a small id so texts repeat and the cache turns over.
    local = random.Random(rng.randrange(pool))
    return " ".join(local.choice(WORDS) for _ in range(words))


def _payload(endpoint: str, rng: random.Random, docs: int, words: int, pool: int) -> dict[str, object]:
    query = _text(rng, 4, pool)
    texts = [_text(rng, words, pool) for _ in range(docs)]
    if endpoint == "/rerank":
        return {"query": query, "texts": texts}
    return {"query": query, "documents": texts}


async def _client(
    url: str, report: SoakReport, stop_at: float, seed: int, docs: int, words: int, pool: int, timeout_s: float
) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s) as client:
        while time.monotonic() < stop_at:
            endpoint = ENDPOINTS[rng.randrange(len(ENDPOINTS))]
            started = time.perf_counter()
            try:
                response = await client.post(endpoint, json=_payload(endpoint, rng, docs, words, pool))
                status = str(response.status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
                response = None
            report.statuses[status] += 1
            if status == "200":
                report.latencies_s.append(time.perf_counter() - started)
            elif status == "429" and response is not None:
                if not response.headers.get("Retry-After"):
                    report.retry_after_missing += 1
                await asyncio.sleep(0.05)  # a polite client backs off instead of spinning


async def _sampler(url: str, pid: int, report: SoakReport, started: float, stop_at: float, every_s: float) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while time.monotonic() < stop_at:
            queue = 0.0
            try:
                text = (await client.get("/metrics")).text
                for family in text_string_to_metric_families(text):
                    for sample in family.samples:
                        if sample.name == "secondpass_queue_depth_pairs":
                            queue = sample.value
            except httpx.HTTPError:
                queue = float("nan")
            report.samples.append(Sample(time.monotonic() - started, _rss_mb(pid), _fds(pid), queue))
            await asyncio.sleep(every_s)


async def soak(
    url: str,
    pid: int,
    *,
    seconds: float,
    concurrency: int = 8,
    docs: int = 8,
    words: int = 30,
    pool: int = 500,
    warmup_s: float | None = None,
    sample_every_s: float = 1.0,
    timeout_s: float = 30.0,
) -> SoakReport:
    """Run the load and the sampler for ``seconds`` against a service at ``url`` (process ``pid``)."""
    warmup = min(15.0, seconds / 4) if warmup_s is None else warmup_s
    report = SoakReport(seconds=seconds, concurrency=concurrency, warmup_s=warmup)
    started = time.monotonic()
    stop_at = started + seconds
    await asyncio.gather(
        _sampler(url, pid, report, started, stop_at, sample_every_s),
        *(_client(url, report, stop_at, i + 1, docs, words, pool, timeout_s) for i in range(concurrency)),
    )
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, help="soak length in minutes")
    length.add_argument("--seconds", type=float, help="soak length in seconds (default 60)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent keep-alive clients")
    parser.add_argument("--docs", type=int, default=8, help="documents per request")
    parser.add_argument("--words", type=int, default=30, help="words per document")
    parser.add_argument("--url", help="an already running service (needs --pid); default: start one")
    parser.add_argument("--pid", type=int, help="process id of the service at --url")
    parser.add_argument("--model", help="cross-encoder directory (default: the tiny test model)")
    parser.add_argument("--max-rss-growth-mb", type=float, default=64.0)
    parser.add_argument("--max-fd-growth", type=float, default=8.0)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    seconds = args.minutes * 60 if args.minutes is not None else (args.seconds or 60.0)
    if args.url and args.pid is None:
        parser.error("--url needs --pid (the soak samples the server process)")

    with tempfile.TemporaryDirectory(prefix="secondpass-soak-") as tmp:
        service = None
        url, pid = args.url, args.pid
        if url is None:
            from tests.fixtures.service import start_service
            from tests.support.models import build_tiny_cross_encoder

            model = args.model or str(build_tiny_cross_encoder(Path(tmp) / "model", seed=0))
            service = start_service(
                model, Path(tmp), settings={"max_wait_ms": 2, "cache": {"max_entries": 5000}}, ready_timeout=300
            )
            url, pid = service.url, service.process.pid
        try:
            print(f"soaking {url} (pid {pid}) for {seconds:.0f} s ...", flush=True)
            report = asyncio.run(soak(url, pid, seconds=seconds, concurrency=args.concurrency, docs=args.docs, words=args.words))
        finally:
            if service is not None:
                service.stop()
    print(report.summary())
    problems = report.verdict(max_rss_growth_mb=args.max_rss_growth_mb, max_fd_growth=args.max_fd_growth)
    if args.json:
        data = {**asdict(report), "statuses": dict(report.statuses), "latencies_s": None, "problems": problems}
        args.json.write_text(json.dumps(data, indent=2))
    print("PASS" if not problems else "FAIL: " + "; ".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
