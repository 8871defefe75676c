"""The README and the quickstart tell a new user things that work from a clone.

SecondPass is not on a package index, so ``pip install 'secondpass[...]'`` is
not an install instruction; the wheel file the docs tell you to install must
be the name the build gives it; no instruction or benchmark may depend on a folder
beside the repository (``../shared``) that a clone does not have.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
USER_DOCS = (REPO / "README.md", REPO / "docs" / "quickstart.md")


def test_no_install_from_a_package_index() -> None:
    for doc in USER_DOCS:
        text = doc.read_text(encoding="utf-8")
        assert not re.search(r"pip install '?secondpass\[", text), doc.name


def test_no_instruction_reads_beside_the_repository() -> None:
    for doc in USER_DOCS:
        assert "../shared" not in doc.read_text(encoding="utf-8"), doc.name


def test_the_wheel_the_docs_name_is_the_one_the_build_makes() -> None:
    """A pure-Python wheel is named ``<name>-<version>-py3-none-any.whl`` (PEP 427 / 491).

    The version comes from the installed metadata, so a version bump that
    leaves the README's file name behind fails here.
    """
    expected = {f"secondpass-{version('secondpass')}-py3-none-any.whl"}
    for doc in USER_DOCS:
        named = set(
            re.findall(r"dist/(secondpass-[^\s'\[]+\.whl)", doc.read_text(encoding="utf-8"))
        )
        assert named == expected, doc.name
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "-m pip wheel --no-deps -w dist ." in readme


def test_rerank_bench_takes_its_data_from_the_command_line(tmp_path: Path) -> None:
    source = (REPO / "benchmarks" / "rerank_bench.py").read_text(encoding="utf-8")
    assert '"shared"' not in source and "../shared" not in source
    missing = tmp_path / "scifact"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "rerank_bench.py"), "--data", str(missing)],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"--data {missing}: no corpus.jsonl and queries.jsonl there" in result.stderr
