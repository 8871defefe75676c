"""docs/quickstart.md and docs/evaluation.md: their Python examples run against a real engine."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.docs_examples import run_blocks

pytestmark = pytest.mark.integration


@pytest.fixture
def docs_env(monkeypatch: pytest.MonkeyPatch, opensearch_url: str, tiny_cross_encoder_dir: Path) -> None:
    monkeypatch.setenv("SECONDPASS_ENGINE_ENGINE", "opensearch")
    monkeypatch.setenv("SECONDPASS_ENGINE_HOSTS", opensearch_url)
    monkeypatch.setenv("SECONDPASS_RERANK_MODEL", str(tiny_cross_encoder_dir))
    monkeypatch.setenv("SECONDPASS_RERANK_DEVICE", "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.usefixtures("docs_env")
def test_quickstart_examples_run(capsys: pytest.CaptureFixture[str], tiny_cross_encoder_dir: Path) -> None:
    ns = run_blocks("quickstart.md")
    out = capsys.readouterr().out
    assert "created index: 300 indexed" in out
    assert f"scorer: cross-encoder {tiny_cross_encoder_dir}" in out
    result = ns["result"]
    assert result.status == "ok" and len(result.hits) == 3  # type: ignore[attr-defined]
    assert ns["report"].count == 300  # type: ignore[attr-defined]


@pytest.mark.usefixtures("docs_env")
def test_evaluation_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    ns = run_blocks("evaluation.md")
    out = capsys.readouterr().out
    report = ns["report"]
    assert set(report.pipelines) == {"bm25", "hybrid", "bm25+rerank@10", "bm25+rerank@30"}  # type: ignore[attr-defined]
    assert report.queries == 10  # type: ignore[attr-defined]
    assert "nDCG@10" in out and "['bm25+rerank@10.trec'" in out.replace('"', "'")
    assert Path(str(ns["out_dir"]), "metrics.png").is_file()
