"""docs/reliability.md: its example runs, and every command in its table names a real test."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.docs_examples import DOCS, run_blocks

pytestmark = [pytest.mark.reliability, pytest.mark.integration]


def test_example_runs() -> None:
    namespace = run_blocks("reliability.md")
    assert namespace["result"].status == "skipped"  # type: ignore[attr-defined]


def test_table_commands_point_at_existing_tests() -> None:
    text = (DOCS / "reliability.md").read_text(encoding="utf-8")
    paths = set(re.findall(r"tests/reliability/test_\w+\.py", text))
    assert paths, "the table names no test files"
    root = Path(__file__).resolve().parents[2]
    for path in paths:
        assert (root / path).is_file(), path
    for node in re.findall(r"tests/reliability/test_\w+\.py::(\w+)", text):
        assert any(f"def {node}(" in (root / p).read_text() for p in paths), node
