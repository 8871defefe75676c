"""Small load drivers for fault tests: N threads (or asyncio tasks) calling one function.

Each call is recorded with its start and end time and its outcome, so a test can
ask afterwards "did anything take longer than its deadline?", "which errors
were seen while the node was down?" and "when did the first call succeed after
the restart?". A driver never lets an exception escape a worker: an unexpected
exception type is itself an outcome the test asserts on.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Call:
    """One call: monotonic start/end, outcome (``ok``/``degraded``/exception class) and detail."""

    worker: str
    started: float
    ended: float
    outcome: str
    detail: str

    @property
    def seconds(self) -> float:
        return self.ended - self.started


Outcome = tuple[str, str]
"""``("ok" | "degraded" | <label>, detail)`` returned by the function under load."""


class ThreadLoad:
    """Call ``fn()`` in a loop from ``threads`` threads until :meth:`stop`."""

    def __init__(self, fn: Callable[[], Outcome], *, threads: int, name: str = "sync", pause_s: float = 0.02) -> None:
        self.fn = fn
        self.pause_s = pause_s
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(f"{name}-{i}",), daemon=True) for i in range(threads)
        ]

    def _run(self, worker: str) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                outcome, detail = self.fn()
            except Exception as exc:  # recorded, asserted on by the test
                outcome, detail = type(exc).__name__, str(exc)
            call = Call(worker, started, time.monotonic(), outcome, detail)
            with self._lock:
                self.calls.append(call)
            time.sleep(self.pause_s)

    def start(self) -> ThreadLoad:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> list[Call]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout_s)
        alive = [t.name for t in self._threads if t.is_alive()]
        assert not alive, f"load threads still running {timeout_s} s after stop (a call hangs): {alive}"
        with self._lock:
            return sorted(self.calls, key=lambda c: c.started)


class AsyncLoad:
    """Run ``tasks`` asyncio tasks on a loop in its own thread, with a loop-lag ticker.

    ``make`` is awaited once inside the loop (so async clients and apps bind to
    it) and returns the coroutine functions to call (task ``i`` calls function
    ``i % len(fns)`` in a loop) plus an async ``close``.
    """

    def __init__(
        self,
        make: Callable[[], Awaitable[tuple[Sequence[Callable[[], Awaitable[Outcome]]], Callable[[], Awaitable[None]]]]],
        *,
        tasks: int,
        name: str = "async",
        pause_s: float = 0.02,
    ) -> None:
        self.make = make
        self.tasks = tasks
        self.name = name
        self.pause_s = pause_s
        self.calls: list[Call] = []
        self.max_lag_s = 0.0
        self.lags: list[tuple[float, float]] = []  # (monotonic time, lag) of every tick
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self.error: BaseException | None = None

    async def _ticker(self, period_s: float = 0.01) -> None:
        """Measure event-loop lag: how late a 10 ms sleep wakes up."""
        while not self._stop.is_set():
            before = time.monotonic()
            await asyncio.sleep(period_s)
            lag = time.monotonic() - before - period_s
            self.lags.append((time.monotonic(), lag))
            self.max_lag_s = max(self.max_lag_s, lag)

    async def _worker(self, fn: Callable[[], Awaitable[Outcome]], worker: str) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                outcome, detail = await fn()
            except Exception as exc:  # recorded, asserted on by the test
                outcome, detail = type(exc).__name__, str(exc)
            self.calls.append(Call(worker, started, time.monotonic(), outcome, detail))
            await asyncio.sleep(self.pause_s)

    async def _main(self) -> None:
        try:
            fns, close = await self.make()
            self.ready.set()
            try:
                await asyncio.gather(
                    self._ticker(),
                    *(self._worker(fns[i % len(fns)], f"{self.name}-{i % len(fns)}-{i}") for i in range(self.tasks)),
                )
            finally:
                await close()
        except BaseException as exc:  # surfaced by stop()
            self.error = exc
            self.ready.set()

    def start(self, timeout_s: float = 120.0) -> AsyncLoad:
        """Start the loop thread and wait until ``make`` has finished."""
        self._thread.start()
        self.ready.wait(timeout_s)
        if self.error is not None:
            raise AssertionError(f"async load could not start: {self.error!r}") from self.error
        return self

    def stop(self, timeout_s: float = 30.0) -> list[Call]:
        self._stop.set()
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"async load still running {timeout_s} s after stop"
        if self.error is not None:
            raise AssertionError(f"async load crashed: {self.error!r}") from self.error
        return sorted(self.calls, key=lambda c: c.started)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
