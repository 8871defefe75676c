"""Overload benchmark of ``POST /v1/rerank`` with default settings: admission, fairness, waste.

Starts one ``secondpass serve`` on loopback (defaults except the model, which the
benchmark builds: a seeded 6-layer cross-encoder, slow enough on a CPU that a
few dozen clients overload it) and runs two phases, each bounded in time:

1. **Ramp.** 4 -> 16 -> 32 -> 64 concurrent clients, ``--step-s`` seconds each,
   every request 50 fresh documents (no cache hits). Clients ignore
   ``Retry-After`` as an attacker would (they pause 0.1 s after a 429).
   Reported per step: answers by status, p50/p99 of *admitted* requests (every
   answer that was not a 429, errors included) and p99 of the 429 answers.
2. **Victim and waste.** 4 costly requests (1,000 documents x 2,000 characters)
   whose clients leave after ``--leave-after-s``; meanwhile a 1-document
   "victim" client sends one request after another. Reported: the victim's
   p99, and the CPU seconds the server process spends after the last costly
   client left (read from ``/proc/<pid>/stat``: utime + stime, all threads,
   until it has been idle for 1 s or ``--drain-cap-s`` passed).

Latency is the client's wall time of one POST (JSON both ways, queueing,
scoring); the clients run in this process on the same machine.
The last line is machine-readable:

    RESULT admitted_p99_s=<x> shed_429=<n> victim_p99_s=<y> wasted_cpu_s=<z> probe_429_p99_ms=<p>

``probe_429_p99_ms`` is the 429 p99 seen by a client in a process of its own
(see :func:`probe`), next to the ramp clients' own figures.

Goals (issue 13): admitted p99 <= the admission limit (10 s by default), every
429 in < 50 ms, victim p99 < 2 s, wasted CPU < 1 s.

    python benchmarks/overload.py                  # the whole run, ~2 minutes
    python benchmarks/overload.py --steps 4,16 --step-s 2 --costly 2   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fixtures.service import ServiceProcess, start_service  # noqa: E402

WORDS = "cat dog sleep purr bark food energy house garden night day play toy mouse bird".split()
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Answers:
    """Latencies by outcome for one phase or step."""

    statuses: Counter[str] = field(default_factory=Counter)
    admitted_s: list[float] = field(default_factory=list)
    refused_s: list[float] = field(default_factory=list)
    probe: Answers | None = None  # the ramp's separate probe process, when it ran

    def add(self, status: str, seconds: float) -> None:
        self.statuses[status] += 1
        (self.refused_s if status == "429" else self.admitted_s).append(seconds)

    def merge(self, other: Answers) -> None:
        self.statuses.update(other.statuses)
        self.admitted_s += other.admitted_s
        self.refused_s += other.refused_s


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank); NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def documents(rng: random.Random, n: int, chars: int) -> list[str]:
    """``n`` fresh texts of about ``chars`` characters (a random tail defeats the cache).

    Texts come from a pool built once per length, so the clients, which share
    the machine with the server, spend little CPU making requests.
    """
    pool = _POOLS.get(chars)
    if pool is None:
        pool = _POOLS[chars] = [_text(random.Random(i), chars) for i in range(256)]
    return [f"{rng.choice(pool)} {rng.random():.12f}" for _ in range(n)]


_POOLS: dict[int, list[str]] = {}


def _text(rng: random.Random, chars: int) -> str:
    words: list[str] = []
    size = 0
    while size < chars - 14:
        word = rng.choice(WORDS)
        words.append(word)
        size += len(word) + 1
    return " ".join(words)


async def post(client: httpx.AsyncClient, payload: dict[str, object]) -> tuple[str, float]:
    started = time.perf_counter()
    try:
        status = str((await client.post("/v1/rerank", json=payload)).status_code)
    except httpx.HTTPError as exc:
        status = type(exc).__name__
    return status, time.perf_counter() - started


async def ramp_client(
    url: str, answers: Answers, stop_at: float, args: argparse.Namespace, seed: int
) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=args.client_timeout_s) as client:
        while time.monotonic() < stop_at:
            payload = {
                "query": " ".join(rng.choice(WORDS) for _ in range(4)),
                "documents": documents(rng, args.docs, args.chars),
                "top_n": 5,
            }
            status, seconds = await post(client, payload)
            answers.add(status, seconds)
            if status == "429":
                await asyncio.sleep(args.pause_after_429_s)


def probe(url: str, args: argparse.Namespace, seconds: float, out: Any) -> None:
    """A client in a process of its own: one request of the ramp's shape every 50 ms.

    The ramp's clients share one event loop (and, here, the machine's CPUs) with
    each other, so the latency they record includes their own queueing behind
    63 others. The probe's process has nothing else to do: its figures are what
    one well-behaved client of the overloaded service sees. Sends
    ``(status, seconds)`` pairs to ``out`` (a pipe), then closes it.
    """
    rng = random.Random(424242)
    answers: list[tuple[str, float]] = []
    stop_at = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=args.client_timeout_s) as client:
        while time.monotonic() < stop_at:
            payload = {
                "query": " ".join(rng.choice(WORDS) for _ in range(4)),
                "documents": documents(rng, args.docs, args.chars),
                "top_n": 5,
            }
            started = time.perf_counter()
            try:
                status = str(client.post("/v1/rerank", json=payload).status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            answers.append((status, time.perf_counter() - started))
            time.sleep(0.05)
    out.send(answers)
    out.close()


async def loop_lag(lags: list[float], tick_s: float = 0.01) -> None:
    """Record how late this process's event loop wakes from a ``tick_s`` sleep.

    The clients share the machine (and one event loop) with each other and,
    here, 2 cores with the server: when the loop runs late, every latency the
    clients measure includes that wait. Printed next to the figures it inflates.
    """
    while True:
        started = time.perf_counter()
        await asyncio.sleep(tick_s)
        lags.append(max(0.0, time.perf_counter() - started - tick_s))


async def ramp(url: str, args: argparse.Namespace) -> Answers:
    total = Answers()
    print(
        f"{'clients':>8}{'answers':>9}{'200':>7}{'429':>7}{'other':>7}"
        f"{'adm p50 s':>11}{'adm p99 s':>11}{'429 p99 ms':>12}{'probe 429 p99':>15}"
    )
    probe_total = Answers()
    for step, clients in enumerate(args.steps):
        answers = Answers()
        stop_at = time.monotonic() + args.step_s
        lags: list[float] = []
        monitor = asyncio.create_task(loop_lag(lags))
        context = multiprocessing.get_context("spawn")
        receiving, sending = context.Pipe(duplex=False)
        prober = context.Process(target=probe, args=(url, args, args.step_s, sending))
        prober.start()
        await asyncio.gather(
            *[
                ramp_client(url, answers, stop_at, args, seed=step * 1000 + i)
                for i in range(clients)
            ]
        )
        monitor.cancel()
        probed = Answers()
        if await asyncio.to_thread(receiving.poll, args.client_timeout_s + 30):
            for status, seconds in receiving.recv():
                probed.add(status, seconds)
        prober.join(10)
        probe_total.merge(probed)
        other = sum(v for k, v in answers.statuses.items() if k not in ("200", "429"))
        print(
            f"{clients:>8}{sum(answers.statuses.values()):>9}{answers.statuses['200']:>7}"
            f"{answers.statuses['429']:>7}{other:>7}{pct(answers.admitted_s, 0.5):>11.2f}"
            f"{pct(answers.admitted_s, 0.99):>11.2f}{pct(answers.refused_s, 0.99) * 1000:>12.1f}"
            f"{pct(probed.refused_s, 0.99) * 1000:>12.1f} ms"
        )
        if other:
            print(f"         other answers: {dict(answers.statuses)}")
        print(
            f"         this benchmark's own event loop ran late by p50 {pct(lags, 0.5) * 1000:.0f} ms,"
            f" p99 {pct(lags, 0.99) * 1000:.0f} ms (a latency above includes up to that much"
            " of the load generator's own wait for a CPU)"
        )
        total.merge(answers)
    print(
        f"probe (a separate process, one request per 50 ms): {dict(probe_total.statuses)}; "
        f"429 p50 {pct(probe_total.refused_s, 0.5) * 1000:.1f} ms, "
        f"p99 {pct(probe_total.refused_s, 0.99) * 1000:.1f} ms; "
        f"admitted p99 {pct(probe_total.admitted_s, 0.99):.2f} s"
    )
    total.probe = probe_total
    return total


async def costly_client(url: str, args: argparse.Namespace, seed: int) -> str:
    """One costly request; the client gives up (closes the connection) after leave_after_s."""
    rng = random.Random(seed)
    payload = {
        "query": "what do cats eat",
        "documents": documents(rng, args.costly_docs, args.costly_chars),
    }
    async with httpx.AsyncClient(base_url=url, timeout=args.leave_after_s) as client:
        status, _ = await post(client, payload)
    return status


async def victim_client(url: str, answers: Answers, stop: asyncio.Event, seed: int) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while not stop.is_set():
            payload = {"query": "cats", "documents": documents(rng, 1, 200)}
            status, seconds = await post(client, payload)
            answers.add(status, seconds)


async def victim_and_waste(svc: ServiceProcess, args: argparse.Namespace) -> tuple[Answers, float]:
    victim = Answers()
    stop = asyncio.Event()
    costly = [
        asyncio.create_task(costly_client(svc.url, args, seed=90_000 + i))
        for i in range(args.costly)
    ]
    await asyncio.sleep(args.victim_delay_s)  # let the costly bodies arrive and queue first
    victim_task = asyncio.create_task(victim_client(svc.url, victim, stop, seed=7))
    costly_statuses = await asyncio.gather(*costly)
    left_cpu = cpu_seconds(svc.process.pid)
    left_at = time.monotonic()
    stop.set()
    await victim_task
    # Idle = less than 20 ms of CPU in 1 s; the server's own idle loop is far below that.
    previous = left_cpu
    while time.monotonic() - left_at < args.drain_cap_s:
        await asyncio.sleep(1.0)
        now = cpu_seconds(svc.process.pid)
        if now - previous < 0.02:
            break
        previous = now
    wasted = cpu_seconds(svc.process.pid) - left_cpu
    print(
        f"costly requests ({args.costly} x {args.costly_docs} docs x {args.costly_chars} chars, "
        f"clients leave after {args.leave_after_s:g} s): {dict(Counter(costly_statuses))}"
    )
    print(
        f"victim (1 document, back to back): {len(victim.admitted_s)} admitted, "
        f"{victim.statuses['429']} refused; p50 {pct(victim.admitted_s, 0.5):.2f} s, "
        f"p99 {pct(victim.admitted_s, 0.99):.2f} s; statuses {dict(victim.statuses)}"
    )
    print(
        f"server CPU after the last costly client left: {wasted:.2f} s "
        f"(measured for {time.monotonic() - left_at:.1f} s, victim traffic included)"
    )
    return victim, wasted


async def run(svc: ServiceProcess, args: argparse.Namespace) -> None:
    print(
        f"POST /v1/rerank, defaults, {args.docs} documents of ~{args.chars} chars per request, "
        f"{args.step_s:g} s per step"
    )
    total = await ramp(svc.url, args)
    print(
        f"ramp: {total.statuses['429']} refused with 429 (p99 {pct(total.refused_s, 0.99) * 1000:.1f} ms, "
        f"max {max(total.refused_s, default=0.0) * 1000:.1f} ms); admitted p99 "
        f"{pct(total.admitted_s, 0.99):.2f} s"
    )
    await asyncio.sleep(args.settle_s)  # the ramp's last admitted requests finish
    victim, wasted = await victim_and_waste(svc, args)
    print(
        f"RESULT admitted_p99_s={pct(total.admitted_s, 0.99):.2f} shed_429={total.statuses['429']} "
        f"victim_p99_s={pct(victim.admitted_s, 0.99):.2f} wasted_cpu_s={wasted:.2f} "
        f"probe_429_p99_ms={pct(total.probe.refused_s if total.probe else [], 0.99) * 1000:.1f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="cross-encoder directory (default: built, 6 layers)")
    parser.add_argument("--steps", default="4,16,32,64", help="clients per ramp step")
    parser.add_argument("--step-s", type=float, default=4.0, help="seconds per ramp step")
    parser.add_argument("--docs", type=int, default=50, help="documents per ramp request")
    parser.add_argument("--chars", type=int, default=300, help="characters per ramp document")
    parser.add_argument(
        "--pause-after-429-s", type=float, default=0.1, help="a client's pause after a 429"
    )
    parser.add_argument("--client-timeout-s", type=float, default=60.0)
    parser.add_argument("--settle-s", type=float, default=2.0)
    parser.add_argument("--costly", type=int, default=4, help="costly requests in phase 2")
    parser.add_argument("--costly-docs", type=int, default=1000)
    parser.add_argument("--costly-chars", type=int, default=2000)
    parser.add_argument("--leave-after-s", type=float, default=5.0)
    parser.add_argument("--victim-delay-s", type=float, default=1.0)
    parser.add_argument("--drain-cap-s", type=float, default=60.0)
    args = parser.parse_args()
    args.steps = [int(x) for x in args.steps.split(",") if x.strip()]

    with tempfile.TemporaryDirectory(prefix="secondpass-overload-") as tmp:
        model = args.model
        if model is None:
            from tests.support.models import build_tiny_cross_encoder

            model = str(
                build_tiny_cross_encoder(Path(tmp) / "model", seed=1, hidden_size=256, num_layers=6)
            )
        svc = start_service(model, Path(tmp), ready_timeout=300)
        try:
            asyncio.run(run(svc, args))
        finally:
            svc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
