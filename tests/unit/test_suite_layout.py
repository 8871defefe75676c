"""The suite collects on a clean clone: no two test modules outside packages share a basename.

tests/unit and tests/integration are rootdir-relative (no ``__init__.py``), so pytest
imports their modules by basename; two files named alike abort collection
("import file mismatch"), which a clean CI clone hit once.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_modules_outside_packages_share_a_basename() -> None:
    loose = [
        path for path in TESTS.rglob("test_*.py") if not (path.parent / "__init__.py").exists()
    ]
    clashes = [name for name, n in Counter(p.name for p in loose).items() if n > 1]
    assert len(loose) > 10 and clashes == []
