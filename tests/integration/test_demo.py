"""The README's main job, ``secondpass demo``, end to end on OpenSearch.

The first test runs the installed console script exactly as scripts/demo.sh
does: it starts its own local OpenSearch, indexes the packaged sample corpus,
reranks with whatever scorer it can load offline, and stops the node.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from secondpass.cli import main
from secondpass.commands.demo import DEMO_INDEX, sample_documents, sample_queries

pytestmark = pytest.mark.integration
SECONDPASS = Path(sys.executable).with_name("secondpass")


def test_sample_data_is_packaged_and_self_consistent() -> None:
    docs = sample_documents()
    queries = sample_queries()
    ids = {d.id for d in docs}
    assert len(docs) == 300 and len(ids) == 300 and len(queries) == 10
    for query in queries:
        assert query.relevant and set(query.relevant) <= ids, query.id
    attribution = Path(__file__).resolve().parents[2] / "src" / "secondpass" / "data" / "ATTRIBUTION.md"
    text = attribution.read_text(encoding="utf-8")
    assert "Wadden" in text and "CC BY 4.0" in text and "ODC-By 1.0" in text and "Thakur" in text


def test_demo_starts_opensearch_reranks_offline_and_stops_it() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("SECONDPASS_RERANK_MODEL", None)
    proc = subprocess.run(
        [str(SECONDPASS), "demo", "--queries", "2", "--window", "10"],
        capture_output=True, text=True, env=env, timeout=900, check=False, cwd="/",
    )  # fmt: skip
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, err[-3000:]
    # the default cross-encoder is not cached here: one line says so, the output names the fallback
    notices = [line for line in err.splitlines() if "BAAI/bge-reranker-v2-m3" in line]
    assert len(notices) == 1 and "not available" in notices[0]
    assert "scorer: bi-encoder all-MiniLM-L6-v2 fused with first-stage rank (fallback)" in out
    assert "created index: 300 indexed" in out
    queries = sample_queries()[:2]
    for query in queries:
        assert f"query {query.id}: {query.text}" in out
    assert out.count("first stage (BM25, 10 hits):") == 2
    assert out.count("reranked (top 10 of the window):") == 2
    assert len(re.findall(r"rerank status: ok; timings: first stage [\d.]+ ms, tokenize [\d.]+ ms, "
                          r"model [\d.]+ ms, rerank total [\d.]+ ms", out)) == 2  # fmt: skip
    assert re.search(r"\[\s*-?[\d.]+ bm25\]", out) and re.search(r"\[\s*-?[\d.]+ rerank, was #\d+\]", out)
    assert "summary: 2/2 queries reranked (status ok)" in out
    # the node it started is gone
    match = re.search(r"is up at (http://127\.0\.0\.1:\d+)", err)
    assert match, err[-2000:]
    with pytest.raises(httpx.HTTPError):
        httpx.get(match.group(1), timeout=2.0)


def test_demo_on_a_given_cluster_with_a_cross_encoder_cleans_up(
    opensearch_url: str, tiny_cross_encoder_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["demo", "--url", opensearch_url, "--model", str(tiny_cross_encoder_dir), "--queries", "1",
                 "--window", "5", "--device", "cpu"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert f"scorer: cross-encoder {tiny_cross_encoder_dir}" in out and "fallback" not in out
    assert "reranked (top 5 of the window):" in out
    assert httpx.head(f"{opensearch_url}/{DEMO_INDEX}", timeout=5.0).status_code == 404
