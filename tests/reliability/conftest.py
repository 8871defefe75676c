"""Shared plumbing of the reliability suite: a figure recorder and a summary at the end.

Reliability tests assert behaviour (no hang past a deadline, no 5xx, ...) and
also *measure* how far inside the promise they stayed. ``figures`` collects
those measurements; ``pytest -m reliability`` prints them as one table at the
end of the run, and ``SECONDPASS_RELIABILITY_FIGURES=path.json`` writes them to
a file (docs/reliability.md quotes a run of it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import pytest


@dataclass(frozen=True)
class Figure:
    scenario: str
    name: str
    value: float
    unit: str


_FIGURES: list[Figure] = []


class Figures:
    """``figures.add("engine killed", "max call latency", 2.31, "s")``."""

    def add(self, scenario: str, name: str, value: float, unit: str) -> None:
        _FIGURES.append(Figure(scenario, name, round(float(value), 4), unit))


@pytest.fixture(scope="session")
def figures() -> Figures:
    return Figures()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("reliability figures")
    for f in _FIGURES:
        terminalreporter.write_line(f"{f.scenario:<42} {f.name:<48} {f.value:>12g} {f.unit}")
    target = os.environ.get("SECONDPASS_RELIABILITY_FIGURES")
    if target:
        with open(target, "w", encoding="utf-8") as handle:
            json.dump([asdict(f) for f in _FIGURES], handle, indent=2)


@pytest.fixture(autouse=True)
def _no_secret_in_any_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fail any reliability test whose logs (in-process, or a process's log file) carry a test secret.

    A root handler at DEBUG sees every record of the test (before any redaction:
    the library itself must not log secrets); the ``*.log`` files written during
    the test under the session's temp directory (service and proxy processes)
    are searched at the end. Secrets: SECURE_PASSWORD, those of
    tests/support/secrets.py and any registered for redaction during the test.
    """
    import logging
    import time

    from secondpass.redaction import registered_secrets
    from tests.fixtures.servers import SECURE_PASSWORD
    from tests.support.secrets import TEST_SECRETS, LeakWatch

    watch = LeakWatch((SECURE_PASSWORD, *TEST_SECRETS), extra=registered_secrets)
    root = logging.getLogger()
    level, started = root.level, time.time() - 1  # mtime granularity
    root.addHandler(watch)
    root.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(watch)
        root.setLevel(level)
    watch.check_files(tmp_path_factory.getbasetemp(), started)
    assert watch.leaks == [], f"a test secret reached a log: {watch.leaks}"
