"""The service under steady load and under overload, as a real process with the tiny real model.

One service process with a deliberately small queue (64 pairs) runs three
phases: a soak below capacity (4 clients x 8 documents = at most 32 pairs
queued), an overload (48 clients), and a check that it is healthy and
error-free again afterwards. The load driver is ``benchmarks/soak.py`` itself,
so CI runs the same code as the 10-minute soak (``--minutes 10``); here the
soak lasts ``SECONDPASS_SOAK_SECONDS`` (default 60).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.fixtures.service import ServiceProcess

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]

QUEUE_PAIRS = 64
SOAK_S = float(os.environ.get("SECONDPASS_SOAK_SECONDS", "60"))
# Flatness limits after the warm-up: the first vs the last fifth of the samples.
MAX_RSS_GROWTH_MB = 48.0
MAX_FD_GROWTH = 4.0


def _load_soak() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"
    spec = importlib.util.spec_from_file_location("secondpass_soak_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


soak_module = _load_soak()


@pytest.fixture(scope="module")
def svc(service_factory: Callable[..., ServiceProcess]) -> ServiceProcess:
    return service_factory(
        settings={"max_wait_ms": 2, "max_queue_pairs": QUEUE_PAIRS, "retry_after_s": 1, "cache": {"max_entries": 5000}}
    )


def test_soak_below_capacity_has_no_errors_and_flat_memory_and_fds(svc: ServiceProcess, figures: Any) -> None:
    report = asyncio.run(soak_module.soak(svc.url, svc.process.pid, seconds=SOAK_S, concurrency=4, docs=8))
    print(report.summary())
    assert svc.alive()
    assert report.statuses.get("200", 0) > 0
    assert set(report.statuses) == {"200"}, f"errors or 429s below capacity: {dict(report.statuses)}"
    assert report.max_queue_pairs <= QUEUE_PAIRS
    assert report.verdict(max_rss_growth_mb=MAX_RSS_GROWTH_MB, max_fd_growth=MAX_FD_GROWTH) == []
    scenario = f"soak below capacity ({SOAK_S:.0f} s, 4 clients)"
    figures.add(scenario, "requests (all 200)", report.requests, "requests")
    figures.add(scenario, "p99 latency", report.pct_ms(0.99), "ms")
    figures.add(scenario, "RSS growth after warm-up", report.rss_growth_mb, "MB")
    figures.add(scenario, "open fd growth after warm-up", report.fd_growth, "fds")


def test_overload_sheds_with_429_and_recovers(svc: ServiceProcess, figures: Any) -> None:
    over = asyncio.run(soak_module.soak(svc.url, svc.process.pid, seconds=10, concurrency=48, docs=8, warmup_s=0))
    print(over.summary())
    assert svc.alive()
    assert set(over.statuses) <= {"200", "429"}, f"overload must shed with 429, not fail: {dict(over.statuses)}"
    assert over.statuses["429"] > 0 and over.statuses["200"] > 0
    assert over.retry_after_missing == 0
    assert over.max_queue_pairs <= QUEUE_PAIRS, "the queue grew past its bound"
    ready = httpx.get(f"{svc.url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    after = asyncio.run(soak_module.soak(svc.url, svc.process.pid, seconds=5, concurrency=4, docs=8, warmup_s=0))
    assert set(after.statuses) == {"200"}, dict(after.statuses)
    shed = over.statuses["429"] / over.requests
    scenario = "overload (48 clients, queue 64 pairs)"
    figures.add(scenario, "answers that were 429", shed * 100, "%")
    figures.add(scenario, "client timeouts / 5xx", over.errors, "requests")
    figures.add(scenario, "max queue depth sampled", over.max_queue_pairs, "pairs")
    figures.add(scenario, "p99 latency of accepted requests", over.pct_ms(0.99), "ms")
