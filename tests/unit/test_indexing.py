"""Indexing logic against an in-memory stand-in for the connector's admin primitives.

The real engines are exercised in tests/integration/test_eval.py; here we check
what indexing decides: mappings asked for, vectors attached, and resumption.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from secondpass.datasets import Document
from secondpass.errors import ConfigurationError
from secondpass.indexing import index_documents


@dataclass
class MemoryIndex:
    exists: bool = False
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    mapping: dict[str, Any] = field(default_factory=dict)
    bulk_calls: int = 0
    lookups: int = 0
    fail_ids: set[str] = field(default_factory=set)

    def ensure_index(self, *, text_fields: Sequence[str], vector_field: str | None = None,
                     dims: int | None = None, similarity: str = "cosine") -> bool:
        if self.exists:
            return False
        self.exists = True
        self.mapping = {"text_fields": tuple(text_fields), "vector_field": vector_field, "dims": dims}
        return True

    def bulk_index(self, docs: Iterable[Mapping[str, Any]], *, id_field: str = "_id", chunk_size: int = 500) -> Any:
        self.bulk_calls += 1
        ok = failed = 0
        for doc in docs:
            source = dict(doc)
            doc_id = source.pop("_id")
            if doc_id in self.fail_ids:
                failed += 1
                continue
            self.docs[doc_id] = source
            ok += 1
        return type("Counts", (), {"indexed": ok, "failed": failed, "errors": ("id=x status=400 boom",) * failed})()

    def existing_ids(self, ids: Iterable[str]) -> set[str]:
        self.lookups += 1
        return {i for i in ids if i in self.docs}

    def refresh(self) -> None:
        pass

    def count(self) -> int:
        return len(self.docs)


class FakeEncoder:
    dimension = 3

    def __init__(self) -> None:
        self.encoded: list[str] = []

    def encode(self, texts: Sequence[str]) -> list[list[float]]:
        self.encoded.extend(texts)
        return [[float(len(t)), 0.0, 1.0] for t in texts]


def _docs(n: int) -> list[Document]:
    return [Document(id=str(i), title=f"t{i}", text=f"text {i}") for i in range(n)]


def test_creates_text_mapping_and_indexes_everything() -> None:
    index = MemoryIndex()
    report = index_documents(index, _docs(10), batch_size=4)
    assert index.mapping == {"text_fields": ("title", "text"), "vector_field": None, "dims": None}
    assert report.created and report.indexed == 10 and report.skipped == 0 and report.count == 10
    assert index.docs["3"] == {"title": "t3", "text": "text 3"}
    assert index.lookups == 0  # a fresh index needs no look-ups


def test_dense_adds_vectors_of_title_and_text() -> None:
    index, encoder = MemoryIndex(), FakeEncoder()
    index_documents(index, _docs(3), encoder=encoder, vector_field="vec")
    assert index.mapping["vector_field"] == "vec" and index.mapping["dims"] == 3
    assert encoder.encoded == ["t0 text 0", "t1 text 1", "t2 text 2"]
    assert index.docs["1"]["vec"] == [float(len("t1 text 1")), 0.0, 1.0]


def test_rerun_skips_what_is_there_and_embeds_nothing_again() -> None:
    index, encoder = MemoryIndex(), FakeEncoder()
    first = index_documents(index, _docs(5), encoder=encoder, batch_size=2)
    encoder.encoded.clear()
    calls = index.bulk_calls
    again = index_documents(index, _docs(5), encoder=encoder, batch_size=2)
    assert first.indexed == 5 and not again.created
    assert again.skipped == 5 and again.indexed == 0
    assert encoder.encoded == [] and index.bulk_calls == calls


def test_interrupted_run_is_resumed() -> None:
    index = MemoryIndex()
    index_documents(index, _docs(4))
    report = index_documents(index, _docs(9), batch_size=3)
    assert report.skipped == 4 and report.indexed == 5 and report.count == 9


def test_per_document_failures_are_counted_not_raised() -> None:
    index = MemoryIndex(fail_ids={"2"})
    report = index_documents(index, _docs(4))
    assert report.failed == 1 and report.indexed == 3
    assert report.errors and "status=400" in report.errors[0]
    assert "1 failed" in report.summary()


def test_batch_size_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="batch_size"):
        index_documents(MemoryIndex(), _docs(1), batch_size=0)
