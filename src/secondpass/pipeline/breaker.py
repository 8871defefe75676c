"""A circuit breaker for the scorer.

When the model keeps failing (a crashed GPU, a model server that times out),
every request would otherwise wait for its own failure before degrading. The
breaker remembers: after ``failure_threshold`` consecutive failures it *opens*
and callers skip scoring at once (``rerank_status="skipped"``), until
``reset_after_s`` have passed; then exactly one caller is let through as a
probe (*half-open*). A successful probe closes the breaker, a failed one opens
it again for another ``reset_after_s``.

The breaker holds no lock across the guarded call and never runs it itself, so
the same object serves threads and asyncio code alike: ask :meth:`allow`, do the
work however you like, then report :meth:`record_success` or
:meth:`record_failure`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

from secondpass.errors import ConfigurationError

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Consecutive-failure circuit breaker with a single half-open probe.

    Example:
        >>> breaker = CircuitBreaker(failure_threshold=2, reset_after_s=30)
        >>> breaker.record_failure(); breaker.record_failure()
        >>> breaker.state, breaker.allow()
        ('open', False)
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        reset_after_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            msg = f"failure_threshold must be >= 1, got {failure_threshold}"
            raise ConfigurationError(msg)
        if not reset_after_s > 0:
            msg = f"reset_after_s must be > 0, got {reset_after_s}"
            raise ConfigurationError(msg)
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self._probe_at = 0.0
        self.opened_count = 0

    @property
    def state(self) -> BreakerState:
        """``closed`` (calls flow), ``open`` (calls skipped) or ``half_open`` (probe due)."""
        with self._lock:
            return self._state_locked()

    def _state_locked(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.reset_after_s:
            return "half_open"
        return "open"

    def retry_after_s(self) -> float:
        """Seconds until the next probe is allowed (0 when closed or due)."""
        with self._lock:
            if self._opened_at is None:
                return 0.0
            return max(0.0, self.reset_after_s - (self._clock() - self._opened_at))

    def allow(self) -> bool:
        """Whether the caller may try the guarded call now (claims the probe when half-open)."""
        with self._lock:
            state = self._state_locked()
            if state == "closed":
                return True
            now = self._clock()
            # A probe whose caller never reported back must not wedge the breaker.
            stale = self._probing and now - self._probe_at >= self.reset_after_s
            if state == "half_open" and (not self._probing or stale):
                self._probing = True
                self._probe_at = now
                return True
            return False

    def record_success(self) -> None:
        """The guarded call worked: close the breaker and forget past failures."""
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._probing = False

    def record_failure(self) -> None:
        """The guarded call failed (or overran its deadline)."""
        with self._lock:
            self._failures += 1
            if self._probing or self._failures >= self.failure_threshold:
                if self._opened_at is None or self._probing:
                    self.opened_count += 1
                self._opened_at = self._clock()
                self._probing = False
