"""A bounded runner for shadow reranks: enqueue in O(1), drop when full, never block a search.

Why not a plain ``asyncio.create_task`` per search: under overload the shadow
work would pile up without limit and compete with live searches for the model.
Here at most ``max_pending`` shadow reranks wait or run, at most ``workers`` of
them run at once; anything more is dropped and counted by reason, and the caller
learns it at once (``submit`` returns ``False``). The reranks themselves go
through the same :class:`~secondpass.pipeline.engine.ScoringEngine` as live work,
so they are admitted, deadline-bounded and cancelled like it; ``cancel`` stops
what is still queued or running.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from secondpass.errors import ConfigurationError

__all__ = ["ShadowQueue"]

logger = logging.getLogger(__name__)


class ShadowQueue:
    """Background shadow work with a hard bound on what waits.

    Example:
        >>> import asyncio
        >>> async def demo():
        ...     q = ShadowQueue(max_pending=1, workers=1)
        ...     gate = asyncio.Event()
        ...     first = q.submit(gate.wait)
        ...     second = q.submit(gate.wait)  # the queue is full: dropped
        ...     gate.set()
        ...     await q.drain()
        ...     return first, second, q.dropped
        >>> asyncio.run(demo())
        (True, False, {'queue_full': 1})
    """

    def __init__(
        self,
        *,
        max_pending: int = 64,
        workers: int = 2,
        on_drop: Callable[[str], None] | None = None,
    ) -> None:
        if max_pending < 1 or workers < 1:
            msg = f"shadow queue needs max_pending >= 1 and workers >= 1, got {max_pending}, {workers}"
            raise ConfigurationError(msg)
        self.max_pending = max_pending
        self.workers = workers
        self._on_drop = on_drop
        self._tasks: set[asyncio.Task[Any]] = set()
        self._slots: asyncio.Semaphore | None = None
        self.dropped: dict[str, int] = {}

    @property
    def pending(self) -> int:
        """Shadow reranks waiting or running now."""
        return len(self._tasks)

    def submit(self, work: Callable[[], Awaitable[Any]]) -> bool:
        """Schedule ``work()`` in the background; ``False`` (and counted) when it was dropped.

        Must be called from the event loop that runs the work. Never waits.
        """
        if len(self._tasks) >= self.max_pending:
            self._drop("queue_full")
            return False
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.workers)
        task = asyncio.get_running_loop().create_task(self._run(self._slots, work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def drain(self) -> None:
        """Wait until every submitted shadow rerank finished (tests, graceful shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def cancel(self) -> None:
        """Cancel what is queued or running (shutdown); the queue stays usable."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        if self._on_drop is not None:
            self._on_drop(reason)

    @staticmethod
    async def _run(slots: asyncio.Semaphore, work: Callable[[], Awaitable[Any]]) -> None:
        async with slots:
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception:  # a shadow failure must never surface anywhere but the log
                logger.warning("shadow rerank failed", exc_info=True)
