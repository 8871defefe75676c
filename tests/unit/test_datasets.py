"""BEIR loader: layout, split filtering and clear errors for broken files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from secondpass.datasets import iter_corpus, load_beir, load_qrels
from secondpass.errors import ConfigurationError

# ../shared beside the repository (as CI lays it), unless SECONDPASS_SCIFACT_DIR says otherwise.
SHARED_SCIFACT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "scifact"
SCIFACT = Path(os.environ.get("SECONDPASS_SCIFACT_DIR", str(SHARED_SCIFACT)))


def _write(root: Path, *, corpus: list[dict] | None = None, queries: list[dict] | None = None,
           qrels: str | None = None) -> Path:
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    corpus = corpus if corpus is not None else [
        {"_id": "d1", "title": "Cats", "text": "Cats purr."},
        {"_id": "d2", "title": "", "text": "Dogs bark."},
        {"_id": "d3", "text": "No title at all."},
    ]
    queries = queries if queries is not None else [
        {"_id": "q1", "text": "do cats purr"},
        {"_id": "q2", "text": "do dogs bark"},
        {"_id": "q9", "text": "a training query"},
    ]
    qrels = qrels if qrels is not None else "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\nq2\td3\t0\n"
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus), encoding="utf-8")
    (root / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries), encoding="utf-8")
    (root / "qrels" / "test.tsv").write_text(qrels, encoding="utf-8")
    return root


def test_loads_only_queries_judged_in_the_split(tmp_path: Path) -> None:
    ds = load_beir(_write(tmp_path / "tiny"))
    assert ds.name == "tiny" and ds.split == "test"
    assert ds.queries == {"q1": "do cats purr", "q2": "do dogs bark"}
    assert ds.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2, "d3": 0}}


def test_corpus_is_streamed_with_optional_titles(tmp_path: Path) -> None:
    ds = load_beir(_write(tmp_path / "tiny"))
    docs = list(ds.iter_corpus())
    assert [d.id for d in docs] == ["d1", "d2", "d3"]
    assert docs[0].passage == "Cats Cats purr."
    assert docs[1].passage == "Dogs bark." and docs[2].title == ""
    assert ds.corpus_size() == 3


def test_numeric_ids_become_strings(tmp_path: Path) -> None:
    root = _write(tmp_path / "n", corpus=[{"_id": 7, "title": "t", "text": "x"}])
    assert [d.id for d in iter_corpus(root / "corpus.jsonl")] == ["7"]


@pytest.mark.parametrize("missing", ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv"])
def test_missing_file_is_named(tmp_path: Path, missing: str) -> None:
    root = _write(tmp_path / "m")
    (root / missing).unlink()
    with pytest.raises(ConfigurationError, match=missing.split("/")[-1].replace(".", r"\.")):
        load_beir(root)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="dataset directory not found"):
        load_beir(tmp_path / "nope")


def test_malformed_json_line_names_file_and_line(tmp_path: Path) -> None:
    root = _write(tmp_path / "bad")
    (root / "queries.jsonl").write_text('{"_id": "q1", "text": "ok"}\n{not json\n', encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"queries\.jsonl:2: not valid JSON"):
        load_beir(root)


def test_missing_required_field(tmp_path: Path) -> None:
    root = _write(tmp_path / "f", corpus=[{"_id": "d1", "title": "only a title"}])
    with pytest.raises(ConfigurationError, match=r"corpus\.jsonl:1: missing required field 'text'"):
        list(iter_corpus(root / "corpus.jsonl"))


def test_duplicate_document_id(tmp_path: Path) -> None:
    root = _write(tmp_path / "dup", corpus=[{"_id": "d1", "text": "a"}, {"_id": "d1", "text": "b"}])
    with pytest.raises(ConfigurationError, match="duplicate document id 'd1'"):
        list(iter_corpus(root / "corpus.jsonl"))


def test_qrels_with_too_few_columns(tmp_path: Path) -> None:
    root = _write(tmp_path / "q", qrels="query-id\tcorpus-id\tscore\nq1\td1\n")
    with pytest.raises(ConfigurationError, match=r"test\.tsv:2: expected 3 tab-separated columns"):
        load_beir(root)


def test_qrels_with_non_numeric_score(tmp_path: Path) -> None:
    root = _write(tmp_path / "q", qrels="query-id\tcorpus-id\tscore\nq1\td1\thigh\n")
    with pytest.raises(ConfigurationError, match="relevance score 'high' is not a number"):
        load_qrels(root / "qrels" / "test.tsv")


def test_qrels_query_absent_from_queries(tmp_path: Path) -> None:
    root = _write(tmp_path / "q", qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\nq404\td2\t1\n")
    with pytest.raises(ConfigurationError, match="absent from queries.jsonl: q404"):
        load_beir(root)


def test_empty_qrels(tmp_path: Path) -> None:
    root = _write(tmp_path / "q", qrels="query-id\tcorpus-id\tscore\n")
    with pytest.raises(ConfigurationError, match="no judgements"):
        load_beir(root)


def test_other_split(tmp_path: Path) -> None:
    root = _write(tmp_path / "s")
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq9\td3\t1\n", encoding="utf-8")
    assert load_beir(root, split="train").queries == {"q9": "a training query"}


def test_scifact_counts_match_the_published_ones() -> None:
    ds = load_beir(SCIFACT)
    assert len(ds.queries) == 300
    assert sum(len(v) for v in ds.qrels.values()) == 339
    assert ds.corpus_size() == 5183


def test_packaged_sample_dataset() -> None:
    from secondpass.datasets import sample_dataset

    ds = sample_dataset()
    assert ds.name == "scifact-sample" and len(ds.queries) == 10 and ds.corpus_size() == 300
    ids = {d.id for d in ds.iter_corpus()}
    assert all(set(rel) <= ids for rel in ds.qrels.values())
    assert all(rel for rel in ds.qrels.values())
