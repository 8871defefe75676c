"""The rank-change JSONL log: one record per compared search, and its bounded writer.

Why a file and not only Prometheus: histograms answer "how much does reranking
change things on average", but ``secondpass report`` and ``secondpass eval
--clicks`` need the per-query orders to join with clicks. The record schema below
is a contract shared by the writer (proxy, service) and those readers; change it
only together with them.

One record is one JSON object on one line::

    {"ts": 1767370000.25, "request_id": "r-1", "arm": "shadow", "index": "docs",
     "query_id": "9f86d081884c7d65", "query": null,
     "first_stage": ["d3", "d1", "d2"], "reranked": ["d1", "d3", "d2"],
     "scores": [4.2, 1.5, -0.3], "outcome": "ok",
     "metrics": {"kendall_tau": 0.33, "top10_overlap": 1.0, "top1_from": 2,
                 "top3_changed": true},
     "rerank_ms": 12.5}

``query`` is the query text only when the operator opted in (``--rank-log-text``);
otherwise it is ``null`` and ``query_id`` (the first 16 hex characters of the
sha256 of the query text) is what joins records with clicks. Document text is
never written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from secondpass.errors import ConfigurationError

__all__ = ["RankLogWriter", "RankRecord", "query_id"]

_log = logging.getLogger(__name__)

Arm = Literal["live", "shadow"]
Outcome = Literal["ok", "failed", "dropped"]

_ARMS = ("live", "shadow")
_OUTCOMES = ("ok", "failed", "dropped")
_METRIC_KEYS = ("kendall_tau", "top10_overlap", "top1_from", "top3_changed")


def query_id(query: str) -> str:
    """Return the stable, text-free id of a query: the first 16 hex chars of its sha256.

    >>> query_id("test")
    '9f86d081884c7d65'
    """
    return hashlib.sha256(query.encode("utf-8")).hexdigest()[:16]


def _empty_metrics() -> dict[str, Any]:
    return dict.fromkeys(_METRIC_KEYS)


@dataclass(frozen=True, kw_only=True)
class RankRecord:
    """One compared search: the first-stage order, the reranked order and how they differ.

    ``reranked`` and ``scores`` are ``None`` when the rerank failed or was dropped;
    ``metrics`` then holds ``None`` values. ``from_json`` validates the shape so a
    reader fails with a clear ``ConfigurationError`` naming the bad field instead of
    a ``KeyError`` deep in a report.

    Example:
        >>> r = RankRecord(ts=1.0, request_id="r1", arm="live", index="docs",
        ...                query_id=query_id("q"), first_stage=["a", "b"],
        ...                reranked=["b", "a"], scores=[2.0, 1.0], outcome="ok")
        >>> RankRecord.from_json(r.to_json()) == r
        True
    """

    ts: float
    request_id: str
    arm: Arm
    index: str
    query_id: str
    first_stage: list[str]
    reranked: list[str] | None
    scores: list[float] | None
    outcome: Outcome
    query: str | None = None
    metrics: dict[str, Any] = field(default_factory=_empty_metrics)
    rerank_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the record as the contract's JSON-ready dict (fixed key order)."""
        return {
            "ts": self.ts,
            "request_id": self.request_id,
            "arm": self.arm,
            "index": self.index,
            "query_id": self.query_id,
            "query": self.query,
            "first_stage": list(self.first_stage),
            "reranked": None if self.reranked is None else list(self.reranked),
            "scores": None if self.scores is None else [float(s) for s in self.scores],
            "outcome": self.outcome,
            "metrics": {key: self.metrics.get(key) for key in _METRIC_KEYS},
            "rerank_ms": self.rerank_ms,
        }

    def to_json(self) -> str:
        """Return the record as one line of JSON (no trailing newline)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str | bytes) -> RankRecord:
        """Parse one log line; raise ``ConfigurationError`` naming what is wrong."""
        try:
            data = json.loads(line)
        except ValueError as exc:
            msg = f"rank log line is not JSON: {exc}"
            raise ConfigurationError(msg) from exc
        if not isinstance(data, dict):
            msg = "rank log line is not a JSON object"
            raise ConfigurationError(msg)
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RankRecord:
        """Build a record from a parsed dict, checking every contract field."""
        missing = [k for k in ("ts", "request_id", "arm", "index", "query_id", "first_stage", "outcome") if k not in data]
        if missing:
            msg = f"rank log record lacks field(s): {', '.join(missing)}"
            raise ConfigurationError(msg)
        if data["arm"] not in _ARMS:
            msg = f"rank log record has arm={data['arm']!r}; expected one of {_ARMS}"
            raise ConfigurationError(msg)
        if data["outcome"] not in _OUTCOMES:
            msg = f"rank log record has outcome={data['outcome']!r}; expected one of {_OUTCOMES}"
            raise ConfigurationError(msg)
        metrics = data.get("metrics") or {}
        if not isinstance(metrics, dict):
            msg = "rank log record field 'metrics' is not an object"
            raise ConfigurationError(msg)
        try:
            reranked = data.get("reranked")
            scores = data.get("scores")
            rerank_ms = data.get("rerank_ms")
            return cls(
                ts=float(data["ts"]),
                request_id=str(data["request_id"]),
                arm=data["arm"],
                index=str(data["index"]),
                query_id=str(data["query_id"]),
                query=None if data.get("query") is None else str(data["query"]),
                first_stage=[str(d) for d in data["first_stage"]],
                reranked=None if reranked is None else [str(d) for d in reranked],
                scores=None if scores is None else [float(s) for s in scores],
                outcome=data["outcome"],
                metrics={key: metrics.get(key) for key in _METRIC_KEYS},
                rerank_ms=None if rerank_ms is None else float(rerank_ms),
            )
        except (TypeError, ValueError) as exc:
            msg = f"rank log record has a field of the wrong type: {exc}"
            raise ConfigurationError(msg) from exc


class RankLogWriter:
    """Append records to a JSONL file from a background thread, never blocking the caller.

    ``submit`` only puts the record on a bounded queue; when the queue is full the
    record is dropped and counted (``dropped``) so a slow disk can never slow a
    search. The file is capped at ``max_bytes``: when the next line would pass the
    cap the file is rotated to ``<path>.1`` (one previous file kept), so the log
    uses at most about twice ``max_bytes`` of disk.

    Construction does no I/O; the thread and the file start on ``start()``.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "rank.jsonl"
        >>> w = RankLogWriter(path=path)
        >>> w.start()
        >>> w.submit(RankRecord(ts=1.0, request_id="r", arm="live", index="i",
        ...          query_id="q", first_stage=[], reranked=[], scores=[], outcome="ok"))
        True
        >>> w.close()
        >>> len(path.read_text().splitlines())
        1
    """

    def __init__(self, *, path: str | os.PathLike[str], max_queue: int = 10_000, max_bytes: int = 100 * 1024 * 1024) -> None:
        if max_queue < 1:
            msg = f"rank log max_queue must be >= 1, got {max_queue}"
            raise ConfigurationError(msg)
        if max_bytes < 1024:
            msg = f"rank log max_bytes must be >= 1024, got {max_bytes}"
            raise ConfigurationError(msg)
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._queue: queue.Queue[RankRecord | None] = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.dropped = 0
        self.written = 0

    def start(self) -> None:
        """Open the log (creating its folder) and start the writer thread; idempotent."""
        with self._lock:
            if self._thread is not None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._thread = threading.Thread(target=self._run, name="secondpass-rank-log", daemon=True)
            self._thread.start()

    def submit(self, record: RankRecord) -> bool:
        """Queue a record for writing; return False (and count it) when the queue is full."""
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            with self._lock:
                self.dropped += 1
            return False
        return True

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued record is written; return False on timeout."""
        done = threading.Event()

        def _wait() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=_wait, daemon=True).start()
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the thread (bounded by ``timeout`` seconds)."""
        thread = self._thread
        if thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        handle = self.path.open("a", encoding="utf-8")
        size = handle.tell()
        try:
            while True:
                record = self._queue.get()
                try:
                    if record is None:
                        return
                    line = record.to_json() + "\n"
                    encoded = len(line.encode("utf-8"))
                    if size and size + encoded > self.max_bytes:
                        handle.close()
                        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                        handle = self.path.open("a", encoding="utf-8")
                        size = 0
                    handle.write(line)
                    handle.flush()
                    size += encoded
                    self.written += 1
                except OSError:
                    _log.exception("rank log write failed; record dropped")
                    with self._lock:
                        self.dropped += 1
                finally:
                    self._queue.task_done()
        finally:
            handle.close()
