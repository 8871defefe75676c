"""Run the model below the request-handling threads in CPU priority.

Why: on a machine with few cores the model's compute threads (the engine's
model thread and the pools its runtime starts: OpenMP for torch, ONNX Runtime's
intra-op pool, OpenVINO's TBB workers, the tokenizers' Rayon pool) take every
core, and the event loops that read requests, refuse them with 429 and answer
health checks wait behind them. Measured on 2 cores with 64 clients flooding
``/v1/rerank``: a 429 took up to 2.3 s to leave although refusing costs
microseconds. A lower priority (a higher Linux *nice* value) for the compute
threads leaves the model every idle cycle and lets the loops in first.

Linux gives each thread its own nice value, and a thread starts with its
creator's: so the model thread is lowered before its first forward (pools it
starts inherit the value), and :func:`lower_native_threads` lowers the pools a
runtime started while the model loaded on another thread. Python threads (the
event loops, the HTTP server's workers) are left as they are. Elsewhere than
Linux both are no-ops.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

_TASKS = Path("/proc/self/task")


def supported() -> bool:
    """True where threads have their own nice values (Linux)."""
    return _TASKS.is_dir() and hasattr(os, "setpriority")


def lower_thread(nice: int, tid: int | None = None) -> bool:
    """Raise thread ``tid``'s nice value to ``nice`` (the calling thread by default).

    Never raises a value already higher (an operator's ``nice`` stays), and
    needs no privilege. Returns whether the value was changed.
    """
    if nice <= 0 or not supported():
        return False
    tid = threading.get_native_id() if tid is None else tid
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) >= nice:
            return False
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError:  # the thread ended meanwhile
        return False
    return True


_LOOP_HELPERS = frozenset({"libuv-worker"})
"""Native threads that work for an event loop (uvloop's DNS and file I/O pool)."""


def native_thread_ids() -> set[int]:
    """Ids of this process's threads that Python did not start (runtime pools)."""
    if not supported():
        return set()
    python = {t.native_id for t in threading.enumerate() if t.native_id is not None}
    found = set()
    for task in _TASKS.iterdir():
        if not task.name.isdigit() or int(task.name) in python:
            continue
        try:
            name = (task / "comm").read_text().strip()
        except OSError:  # ended meanwhile
            continue
        if name not in _LOOP_HELPERS:
            found.add(int(task.name))
    return found


def lower_native_threads(nice: int, *, also: Iterable[int] = ()) -> int:
    """Lower every thread Python did not start, plus ``also``; returns how many changed.

    Run once the model has loaded and scored a first batch, when its runtime's
    pools exist. The process's main thread is a Python thread, so an HTTP server
    running there is never lowered.
    """
    return sum(lower_thread(nice, tid) for tid in native_thread_ids() | set(also))
