"""A caller's deadline bounds every engine call: attempts, retries, sleeps and the engine's own timeout.

These tests run the policy on an injected clock (a failed attempt "takes" its
whole timeout by advancing it; a sleep advances it by the pause), so they check
the arithmetic exactly and never wait. ``test_retry.py`` checks the same over
the wire: the time left becomes both the client's timeout and the body's
server-side ``timeout``.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from secondpass.connectors._retry import MIN_ATTEMPT_S, RetryPolicy
from secondpass.errors import BackendUnavailableError, SearchDeadlineError


class FakeClock:
    """Monotonic seconds that move only when told: by an attempt's timeout or a sleep."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[tuple[float, float]] = []  # (start, pause)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append((self.now, seconds))
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


def _policy(clock: FakeClock, **overrides: Any) -> RetryPolicy:
    options: dict[str, Any] = {
        "max_attempts": 100,
        "deadline_s": 30.0,
        "request_timeout_s": 10.0,
        "initial_backoff_s": 0.2,
        "max_backoff_s": 2.0,
        **overrides,
    }
    return RetryPolicy(clock=clock, sleep=clock.sleep, asleep=clock.asleep, **options)


class TimingOut:
    """An attempt that always times out: it uses its whole timeout, then fails retryably."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.attempts: list[tuple[float, float]] = []  # (start, timeout)

    def __call__(self, timeout_s: float) -> None:
        self.attempts.append((self.clock.now, timeout_s))
        self.clock.now += timeout_s
        raise BackendUnavailableError("engine search: timed out")

    async def acall(self, timeout_s: float) -> None:
        self(timeout_s)


def _never(exc: BaseException, what: str) -> None:
    return None


def test_the_callers_deadline_caps_the_attempt_timeout_and_ends_the_call() -> None:
    clock = FakeClock()
    attempt = TimingOut(clock)
    deadline = clock.now + 2.0
    with pytest.raises(SearchDeadlineError, match="caller's deadline") as info:
        _policy(clock).call(attempt, what="search", translate=_never, deadline=deadline)
    # The first attempt gets the 2 s left, not the 10 s request timeout, and uses all of it:
    # no time is left for a sleep, so there is no second attempt and the call ends at the deadline.
    assert attempt.attempts == [(1000.0, 2.0)]
    assert clock.sleeps == []
    assert clock.now == deadline
    assert isinstance(info.value, BackendUnavailableError)  # handled like an unreachable engine
    assert isinstance(info.value.__cause__, BackendUnavailableError)
    assert "timed out" in str(info.value)


class FailingFast:
    """An attempt that fails at once (e.g. connection refused) after ``cost`` seconds."""

    def __init__(self, clock: FakeClock, cost: float) -> None:
        self.clock = clock
        self.cost = cost
        self.attempts: list[tuple[float, float]] = []  # (start, timeout)

    def __call__(self, timeout_s: float) -> None:
        self.attempts.append((self.clock.now, timeout_s))
        self.clock.now += min(self.cost, timeout_s)
        raise BackendUnavailableError("engine search: connection refused")


def test_retries_neither_sleep_nor_start_past_the_callers_deadline() -> None:
    # Backoff is random: many seeded runs reach the deadline at many different points.
    rng = random.Random(13)
    retried = 0
    for _ in range(300):
        clock = FakeClock()
        deadline = clock.now + rng.uniform(0.05, 3.0)
        attempt = FailingFast(clock, rng.uniform(0.0001, 0.1))
        random.seed(rng.random())  # tenacity's jitter draws from the global generator
        with pytest.raises(SearchDeadlineError):
            _policy(clock).call(attempt, what="search", translate=_never, deadline=deadline)
        assert all(start + timeout <= deadline for start, timeout in attempt.attempts)
        assert all(start + pause < deadline for start, pause in clock.sleeps)
        assert clock.now <= deadline
        retried += len(attempt.attempts) > 1
    assert retried > 250  # it does retry while time is left


def test_no_retry_starts_when_a_sleep_would_leave_less_than_the_shortest_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Make the jitter its maximum, so the first pause is exactly initial_backoff_s (0.2 s).
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    clock = FakeClock()
    attempt = FailingFast(clock, 0.1)
    # After the 0.1 s attempt and the 0.2 s pause, 0.5 ms would be left: less than any attempt.
    deadline = clock.now + 0.1 + 0.2 + MIN_ATTEMPT_S / 2
    with pytest.raises(SearchDeadlineError):
        _policy(clock).call(attempt, what="search", translate=_never, deadline=deadline)
    assert len(attempt.attempts) == 1 and clock.sleeps == []
    # With a little more time left the retry does happen, and still ends by the deadline.
    clock = FakeClock()
    attempt = FailingFast(clock, 0.1)
    deadline = clock.now + 0.1 + 0.2 + 0.05
    with pytest.raises(SearchDeadlineError):
        _policy(clock).call(attempt, what="search", translate=_never, deadline=deadline)
    assert len(attempt.attempts) == 2 and clock.sleeps == [(1000.1, 0.2)]
    assert attempt.attempts[1][1] == pytest.approx(0.05)


def test_an_expired_deadline_makes_no_attempt() -> None:
    clock = FakeClock()
    attempt = TimingOut(clock)
    with pytest.raises(SearchDeadlineError, match="had passed"):
        _policy(clock).call(attempt, what="search", translate=_never, deadline=clock.now - 0.1)
    assert attempt.attempts == []


def test_the_settings_deadline_still_binds_when_it_is_the_earlier_one() -> None:
    clock = FakeClock()
    attempt = TimingOut(clock)
    policy = _policy(clock, deadline_s=1.5, request_timeout_s=1.0)
    with pytest.raises(BackendUnavailableError, match="gave up") as info:
        policy.call(attempt, what="search", translate=_never, deadline=clock.now + 60.0)
    assert not isinstance(info.value, SearchDeadlineError)  # not the caller's deadline
    assert [timeout for _, timeout in attempt.attempts][0] == 1.0
    assert clock.now <= 1000.0 + 1.5


def test_running_out_of_attempts_is_not_a_deadline_error() -> None:
    clock = FakeClock()
    attempt = TimingOut(clock)
    policy = _policy(clock, max_attempts=2, request_timeout_s=0.1)
    with pytest.raises(BackendUnavailableError, match="gave up after 2") as info:
        policy.call(attempt, what="search", translate=_never, deadline=clock.now + 20.0)
    assert not isinstance(info.value, SearchDeadlineError)


def test_without_a_callers_deadline_attempts_get_the_request_timeout() -> None:
    clock = FakeClock()
    attempt = TimingOut(clock)
    with pytest.raises(BackendUnavailableError, match="gave up"):
        _policy(clock, max_attempts=2).call(attempt, what="search", translate=_never)
    assert attempt.attempts[0][1] == 10.0


async def test_async_calls_end_at_the_callers_deadline_too() -> None:
    clock = FakeClock()
    attempt = TimingOut(clock)
    deadline = clock.now + 0.75
    with pytest.raises(SearchDeadlineError):
        await _policy(clock).acall(
            attempt.acall, what="search", translate=_never, deadline=deadline
        )
    assert attempt.attempts == [(1000.0, 0.75)]
    assert clock.now == deadline


async def test_cancelling_the_caller_cancels_the_attempt_and_retries_nothing() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()
    attempts = 0

    async def hangs(timeout_s: float) -> None:
        nonlocal attempts
        attempts += 1
        started.set()
        try:
            await asyncio.Event().wait()  # an engine that never answers
        except asyncio.CancelledError:
            cancelled.set()
            raise

    policy = RetryPolicy(max_attempts=5, request_timeout_s=60.0)
    task = asyncio.create_task(policy.acall(hangs, what="search", translate=_never))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled.is_set() and attempts == 1


def test_the_service_answers_a_first_stage_timeout_as_engine_unavailable() -> None:
    # The HTTP service maps errors by type: a first stage that ran out of the
    # caller's time is a 503 with Retry-After, never a 500.
    from secondpass.service.errors import status_for

    error = SearchDeadlineError("opensearch search: no answer within the caller's deadline")
    assert status_for(error) == (503, "engine_unavailable")
    assert error.retry_after_s == 1.0
