"""Compute threads run below the request-handling threads (Linux per-thread nice).

The threads are real: the engine's model thread, a thread started outside
``threading`` (as a runtime's pool thread is), and the calling thread, whose
priority must never change.
"""

from __future__ import annotations

import _thread
import os
import threading
from collections.abc import Sequence

import pytest
from tests.fixtures.service import FakeScorer

from secondpass.config import ScoringEngineSettings
from secondpass.pipeline import cpu_priority
from secondpass.pipeline.batcher import BatchingOptions
from secondpass.pipeline.engine import ScoringEngine
from secondpass.types import PassageScore

pytestmark = pytest.mark.skipif(not cpu_priority.supported(), reason="Linux per-thread nice only")


def _nice(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


class NiceRecordingScorer(FakeScorer):
    """Records the nice value of the thread each batch runs on."""

    def __init__(self) -> None:
        super().__init__()
        self.nice_seen: list[int] = []

    def score_pairs(
        self, pairs: Sequence[tuple[str, str]], *, timings: dict[str, float] | None = None
    ) -> list[PassageScore]:
        self.nice_seen.append(_nice(threading.get_native_id()))
        return super().score_pairs(pairs, timings=timings)


def _native_thread() -> tuple[int, threading.Event]:
    """Start a thread ``threading`` does not know of (as a C++ pool thread); return its id."""
    started, release = threading.Event(), threading.Event()
    box: list[int] = []

    def body() -> None:
        box.append(threading.get_native_id())
        started.set()
        release.wait(30)

    _thread.start_new_thread(body, ())
    assert started.wait(10)
    return box[0], release


@pytest.mark.parametrize(("setting", "expected"), [(None, 10), (0, 0), (5, 5)])
def test_the_model_thread_runs_at_the_configured_priority(setting: int | None, expected: int) -> None:
    scorer = NiceRecordingScorer()
    options = BatchingOptions() if setting is None else BatchingOptions(compute_nice=setting)
    here = _nice(threading.get_native_id())
    with ScoringEngine(scorer=scorer, options=options) as engine:
        engine.score_sync("cats", [("docs", "1", "cats purr")])
    assert scorer.nice_seen == [max(expected, here)]
    assert _nice(threading.get_native_id()) == here  # the caller's thread is left alone


def test_calibration_lowers_pool_threads_but_not_python_threads() -> None:
    pool_thread, release = _native_thread()
    python_thread = threading.Thread(target=threading.Event().wait, args=(5,), daemon=True)
    python_thread.start()
    assert python_thread.native_id is not None
    here = _nice(threading.get_native_id())
    try:
        with ScoringEngine(scorer=FakeScorer(), options=BatchingOptions(compute_nice=7)) as engine:
            engine.calibrate()
        assert _nice(pool_thread) == max(7, here)
        assert _nice(python_thread.native_id) == here
        assert _nice(threading.get_native_id()) == here
    finally:
        release.set()


def test_a_higher_nice_set_by_the_operator_is_kept() -> None:
    pool_thread, release = _native_thread()
    try:
        os.setpriority(os.PRIO_PROCESS, pool_thread, 15)
        assert not cpu_priority.lower_thread(10, pool_thread)
        assert _nice(pool_thread) == 15
        assert cpu_priority.lower_thread(18, pool_thread)
        assert _nice(pool_thread) == 18
    finally:
        release.set()


def test_zero_changes_nothing_and_the_setting_is_bounded() -> None:
    pool_thread, release = _native_thread()
    try:
        before = _nice(pool_thread)
        assert cpu_priority.lower_native_threads(0) == 0
        assert _nice(pool_thread) == before
    finally:
        release.set()
    assert ScoringEngineSettings().compute_nice == 10
    with pytest.raises(ValueError, match="compute_nice"):
        ScoringEngineSettings(compute_nice=20)
