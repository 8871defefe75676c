"""The single retry policy for every engine call.

The official clients retry on their own by default; stacking another layer on
top multiplies attempts (4 x 4 = 16 requests to an overloaded cluster). So the
connectors build their clients with ``max_retries=0`` and ``retry_on_timeout=False``
and every call goes through :class:`RetryPolicy` instead: a named retryable set
(connection errors, timeouts, HTTP 429/502/503/504), jittered exponential
backoff, an overall deadline that also caps each attempt's timeout, a log line
before each sleep and a typed error when it gives up. A call may also carry the
caller's own absolute deadline (a request's ``deadline_ms``): the earlier of the
two bounds the attempts and the sleeps, and running out of the caller's time is
reported as :class:`SearchDeadlineError`.

Client exceptions are translated to our own types at the attempt boundary (by a
``translate`` function each engine supplies), so what is retried is decided here
once, by type: :class:`BackendUnavailableError` is retried, :class:`QueryError`
is not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    wait_random_exponential,
)

from secondpass.errors import (
    BackendUnavailableError,
    ConnectorError,
    QueryError,
    SearchDeadlineError,
)

logger = logging.getLogger("secondpass.connectors")

T = TypeVar("T")

MIN_ATTEMPT_S = 0.001
"""The shortest attempt timeout (clients refuse 0); no attempt starts with less time left."""

RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
"""HTTP statuses that mean "try again later" rather than "your request is wrong"."""

Translate = Callable[[BaseException, str], "ConnectorError | None"]
"""Maps a client exception (and the operation's description) to our type, or ``None``."""

# Substrings of client error texts -> a fixed description. Messages are built
# from this vocabulary only, never from the client's text, which can carry URLs.
_TRANSPORT_CAUSES = (
    ("refused", "connection refused"),
    ("reset", "connection reset"),
    ("timed out", "timed out"),
    ("timeout", "timed out"),
    ("certificate", "TLS certificate verification failed"),
    ("ssl", "TLS error"),
    ("name or service not known", "host name not found"),
    ("nodename nor servname", "host name not found"),
    ("temporary failure in name resolution", "host name not found"),
    ("remotedisconnected", "connection closed by the server"),
    ("connection aborted", "connection closed by the server"),
    ("server disconnected", "connection closed by the server"),
    ("protocol", "malformed response"),
)


def describe_transport_failure(exc: BaseException) -> str:
    """Summarise why a request never got an HTTP answer, without echoing the error text."""
    seen: set[int] = set()
    texts: list[str] = []
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts.append(f"{type(current).__name__} {current}".lower())
        current = current.__cause__ or current.__context__
    blob = " ".join(texts)
    for needle, description in _TRANSPORT_CAUSES:
        if needle in blob:
            return description
    return "connection failed"


def engine_reason(body: Any) -> str:
    """The engine's own explanation from an error body (``type: reason``)."""
    if isinstance(body, Mapping):
        error = body.get("error", body)
        if isinstance(error, Mapping):
            causes = error.get("root_cause")
            cause = causes[0] if isinstance(causes, list) and causes else error
            if isinstance(cause, Mapping) and (cause.get("type") or cause.get("reason")):
                kind, reason = cause.get("type"), cause.get("reason")
                return f"{kind}: {reason}" if kind and reason else str(kind or reason)
        if isinstance(error, str):
            return error
    if isinstance(body, str) and body.strip():
        return body.strip()[:500]
    return "no reason given"


def error_for_status(status: int, body: Any, *, what: str) -> ConnectorError:
    """Map an HTTP error answer to our types: retryable statuses mean unavailable."""
    reason = engine_reason(body)
    if status in RETRYABLE_STATUSES:
        return BackendUnavailableError(f"{what}: HTTP {status} ({reason})")
    return QueryError(f"{what} failed: HTTP {status}: {reason}", status=status, reason=reason)


def unavailable(exc: BaseException, *, what: str) -> BackendUnavailableError:
    """A transport-level failure (no HTTP answer) as a retryable error."""
    return BackendUnavailableError(f"{what}: {describe_transport_failure(exc)}")


def _raise_translated(exc: Exception, translate: Translate, what: str) -> NoReturn:
    """Re-raise a failed attempt's exception as one of ours when the engine module knows it."""
    if isinstance(exc, ConnectorError):
        raise exc
    mapped = translate(exc, what)
    if mapped is None:
        raise exc
    raise mapped from exc


@dataclass(frozen=True, slots=True)
class _Budget:
    """The time limits of one call, on the policy's clock."""

    started: float
    ends: float  # the earlier of the policy's deadline and the caller's
    caller_bound: bool  # True when the caller's deadline is the earlier one


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempts, backoff and deadline for one engine call.

    ``deadline_s`` bounds the whole call: no sleep is started that would end past
    it, and each attempt's timeout is the smaller of ``request_timeout_s`` and
    the time left. A call given the caller's own ``deadline`` (absolute, on
    ``clock``) is bounded by whichever comes first. Backoff is "full jitter": a
    uniform draw between 0 and ``initial_backoff_s * 2**n`` capped at
    ``max_backoff_s``, so clients that failed together do not retry together.

    ``clock``, ``sleep`` and ``asleep`` are injectable so that tests can run the
    policy on a fake clock instead of waiting.

    Example:
        >>> RetryPolicy(max_attempts=3, deadline_s=5.0).max_attempts
        3
    """

    max_attempts: int = 4
    deadline_s: float = 30.0
    request_timeout_s: float = 10.0
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 2.0
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    asleep: Callable[[float], Awaitable[None]] = field(
        default=asyncio.sleep, repr=False, compare=False
    )

    def _budget(self, deadline: float | None) -> _Budget:
        started = self.clock()
        own = started + self.deadline_s
        if deadline is not None and deadline < own:
            return _Budget(started=started, ends=deadline, caller_bound=True)
        return _Budget(started=started, ends=own, caller_bound=False)

    def _kwargs(self, what: str, budget: _Budget) -> dict[str, Any]:
        return {
            "stop": self._stop(budget),
            "wait": wait_random_exponential(
                multiplier=self.initial_backoff_s, max=self.max_backoff_s
            ),
            "retry": retry_if_exception_type(BackendUnavailableError),
            "before_sleep": self._before_sleep(what),
            "reraise": False,
        }

    def _stop(self, budget: _Budget) -> Callable[[RetryCallState], bool]:
        # tenacity's own stop_before_delay reads its clock, not ours, and counts
        # from its start, not the caller's deadline: decide here, on one clock.
        def stop(state: RetryCallState) -> bool:
            if state.attempt_number >= self.max_attempts:
                return True
            return self.clock() + state.upcoming_sleep + MIN_ATTEMPT_S > budget.ends

        return stop

    def _before_sleep(self, what: str) -> Callable[[RetryCallState], None]:
        def log(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            pause = state.next_action.sleep if state.next_action else 0.0
            logger.warning(
                "%s (attempt %d of %d); retrying in %.2f s",
                exc,
                state.attempt_number,
                self.max_attempts,
                pause,
            )

        return log

    def attempt_timeout(self, started: float, deadline: float | None = None) -> float:
        """Seconds the next attempt may take: the request timeout, capped by the deadline.

        ``started`` is when the call began on ``clock``; ``deadline`` is the
        caller's absolute deadline, if any. Never below :data:`MIN_ATTEMPT_S`.
        """
        ends = started + self.deadline_s
        if deadline is not None:
            ends = min(ends, deadline)
        return max(MIN_ATTEMPT_S, min(self.request_timeout_s, ends - self.clock()))

    def _out_of_time(self, budget: _Budget, what: str) -> SearchDeadlineError | None:
        if budget.caller_bound and self.clock() + MIN_ATTEMPT_S > budget.ends:
            return SearchDeadlineError(f"{what}: the caller's deadline had passed before the call")
        return None

    def _gave_up(self, error: RetryError, what: str, budget: _Budget) -> BackendUnavailableError:
        last = error.last_attempt
        cause = last.exception()
        spent = self.clock() - budget.started
        if budget.caller_bound and last.attempt_number < self.max_attempts:
            return SearchDeadlineError(
                f"{what}: no answer within the caller's deadline "
                f"({budget.ends - budget.started:.2f} s) after {last.attempt_number} "
                f"attempt(s) in {spent:.2f} s: {cause}"
            )
        return BackendUnavailableError(
            f"{what}: gave up after {last.attempt_number} attempt(s) in {spent:.2f} s: {cause}"
        )

    def call(
        self,
        attempt: Callable[[float], T],
        *,
        what: str,
        translate: Translate,
        deadline: float | None = None,
    ) -> T:
        """Run ``attempt(timeout_s)`` under the policy; raise our typed errors only.

        ``deadline`` is the caller's absolute deadline on ``clock``: no attempt
        starts, and no sleep ends, after it.
        """
        budget = self._budget(deadline)
        late = self._out_of_time(budget, what)
        if late is not None:
            raise late

        def once() -> T:
            try:
                return attempt(self.attempt_timeout(budget.started, deadline))
            except Exception as exc:
                _raise_translated(exc, translate, what)

        try:
            return Retrying(sleep=self.sleep, **self._kwargs(what, budget))(once)
        except RetryError as exc:
            raise self._gave_up(exc, what, budget) from exc.last_attempt.exception()

    async def acall(
        self,
        attempt: Callable[[float], Awaitable[T]],
        *,
        what: str,
        translate: Translate,
        deadline: float | None = None,
    ) -> T:
        """The asyncio variant of :meth:`call`; sleeps without blocking the loop.

        Cancelling the awaiting task cancels the attempt in flight (the client
        closes its connection) and any pending sleep; nothing is retried after.
        """
        budget = self._budget(deadline)
        late = self._out_of_time(budget, what)
        if late is not None:
            raise late

        async def once() -> T:
            try:
                return await attempt(self.attempt_timeout(budget.started, deadline))
            except Exception as exc:
                _raise_translated(exc, translate, what)

        try:
            return await AsyncRetrying(sleep=self.asleep, **self._kwargs(what, budget))(once)
        except RetryError as exc:
            raise self._gave_up(exc, what, budget) from exc.last_attempt.exception()
