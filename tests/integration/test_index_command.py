"""``secondpass index`` on both engines: mappings with vectors, and resuming an interrupted run."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest

from secondpass.cli import main
from secondpass.datasets import sample_dataset

pytestmark = pytest.mark.integration


def _corpus(dest: Path, n: int) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    docs = list(sample_dataset().iter_corpus())[:n]
    with (dest / "corpus.jsonl").open("w", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n")
    return dest


def test_index_is_dense_and_resumable(
    engine: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, url = engine
    index = f"sp-index-{uuid.uuid4().hex[:8]}"
    partial, full = _corpus(tmp_path / "partial", 12), _corpus(tmp_path / "full", 30)
    argv = ["index", "--engine", name, "--url", url, "--index", index, "--dense", "--batch-size", "8"]
    try:
        assert main([*argv, str(partial)]) == 0  # an "interrupted" run: only the first 12 docs
        assert main([*argv, str(full)]) == 0
        out = capsys.readouterr().out
        mapping = httpx.get(f"{url}/{index}/_mapping", timeout=10).json()[index]["mappings"]["properties"]
        doc = httpx.get(f"{url}/{index}/_doc/{json.loads((full / 'corpus.jsonl').open().readline())['_id']}",
                        timeout=10).json()["_source"]  # fmt: skip
    finally:
        httpx.delete(f"{url}/{index}", timeout=10)
    assert f"{index}: created index: 12 indexed, 0 already present, 0 failed, 12 searchable" in out
    assert f"{index}: reused index: 18 indexed, 12 already present, 0 failed, 30 searchable" in out
    assert mapping["title"]["type"] == "text" and mapping["text"]["type"] == "text"
    vector_type = {"elasticsearch": "dense_vector", "opensearch": "knn_vector"}[name]
    assert mapping["embedding"]["type"] == vector_type
    assert len(doc["embedding"]) == 384 and set(doc) == {"title", "text", "embedding"}


def test_index_reports_a_missing_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["index", str(tmp_path), "--url", "http://127.0.0.1:9", "--index", "x"])
    assert code == 2
    assert "corpus file not found" in capsys.readouterr().err
