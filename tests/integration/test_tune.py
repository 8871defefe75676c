"""``secondpass tune`` end to end: a tiny seeded cross-encoder, a synthetic collection, real Elasticsearch.

The collection is built so BM25 gets it wrong and a reranker can learn to fix
it: each query is one word; its relevant document names the word once next to
the word "answer", its non-relevant documents repeat the word (BM25 ranks them
first). Hard negatives therefore come from the engine's own ranking, and a
model that learns "answer" means relevant lifts dev nDCG@10 above BM25's.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest

from secondpass.cli import main

pytestmark = pytest.mark.integration

TOPICS = ("river", "mountain", "music", "garden", "ocean", "doctor", "school", "market",
          "castle", "forest", "engine", "window", "bridge", "letter")  # fmt: skip


def make_collection(dest: Path, topics: tuple[str, ...] = TOPICS) -> Path:
    """A BEIR folder (train split) where relevance is marked by a word BM25 ignores."""
    (dest / "qrels").mkdir(parents=True)
    docs, queries, qrels = [], [], ["query-id\tcorpus-id\tscore"]
    for i, word in enumerate(topics):
        queries.append({"_id": f"q{i}", "text": word})
        docs.append({"_id": f"d{i}-rel", "title": "", "text": f"the {word} answer is here"})
        qrels.append(f"q{i}\td{i}-rel\t1")
        for j in range(4):
            docs.append({"_id": f"d{i}-n{j}", "title": "", "text": f"{word} {word} {word} story number {j}"})
    (dest / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    (dest / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    (dest / "qrels" / "train.tsv").write_text("\n".join(qrels) + "\n", encoding="utf-8")
    return dest


def _argv(data: Path, out: Path, url: str, index: str, base: Path, *extra: str) -> list[str]:
    return ["tune", str(data), "--engine", "elasticsearch", "--url", url, "--index", index,
            "--base", str(base), "--out", str(out), "--device", "cpu", "--batch-size", "8",
            "--learning-rate", "1e-3", "--eval-steps", "6", "--patience", "10", "--negatives", "4",
            "--dev-fraction", "0.3", "--seed", "1", *extra]  # fmt: skip


def _figures(text: str) -> tuple[list[float], list[float], dict[str, float]]:
    losses = [float(x) for x in re.search(r"training loss: first ([\d.]+), last ([\d.]+)", text).groups()]  # type: ignore[union-attr]
    dev = [float(x) for x in re.search(r"dev nDCG@10 at each evaluation: (.*)", text).group(1).split(", ")]  # type: ignore[union-attr]
    table = {m.group(1): float(m.group(2)) for m in re.finditer(r"^\s+(\S+)\s+nDCG@10 ([\d.]+)", text, re.M)}
    return losses, dev, table


def test_tune_learns_from_engine_negatives_and_resumes(
    elasticsearch_url: str, tiny_cross_encoder_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_collection(tmp_path / "data")
    out = tmp_path / "model"
    index = f"tune-{uuid.uuid4().hex[:8]}"
    assert main(_argv(data, out, elasticsearch_url, index, tiny_cross_encoder_dir, "--epochs", "4")) == 0
    text = capsys.readouterr().out
    losses, dev, table = _figures(text)
    assert losses[-1] < losses[0], text
    assert max(dev) > table["bm25"], text  # the tuned reranker fixes what BM25 got wrong
    assert table["bm25+rerank@20"] > table["bm25"], text

    # The output directory loads through the scorer every --model goes through.
    from secondpass.pipeline.scorer import CrossEncoderScorer

    scorer = CrossEncoderScorer(model=str(out), device="cpu", dtype="float32", backend="torch")
    try:
        scores = [s.raw for s in scorer.score_pairs(
            [("river", "the river answer is here"), ("river", "river river river story number 0")]
        )]  # fmt: skip
    finally:
        scorer.close()
    assert scores[0] > scores[1]

    # --resume continues from the newest checkpoint instead of starting again.
    steps = int(re.search(r"trained to step (\d+)", text).group(1))  # type: ignore[union-attr]
    assert main(_argv(data, out, elasticsearch_url, index, tiny_cross_encoder_dir, "--epochs", "6", "--resume")) == 0
    again = capsys.readouterr().out
    resumed_at = int(re.search(r"resumed at step (\d+)", again).group(1))  # type: ignore[union-attr]
    assert 0 < resumed_at <= steps
    assert int(re.search(r"trained to step (\d+)", again).group(1)) > steps  # type: ignore[union-attr]


def test_tune_refuses_too_little_data_with_a_clear_error(
    elasticsearch_url: str, tiny_cross_encoder_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_collection(tmp_path / "data", topics=("river", "ocean"))
    code = main(_argv(data, tmp_path / "m", elasticsearch_url, "unused", tiny_cross_encoder_dir))
    err = capsys.readouterr().err
    assert code == 2
    assert "too little data to tune: 2 judged queries" in err
    assert "Traceback" not in err
