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
