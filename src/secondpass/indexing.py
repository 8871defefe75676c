"""Bulk-index a corpus (optionally with embeddings) through a connector's admin primitives.

Evaluation and the demo need an index to search; this module builds one on
either engine without speaking to it directly: it only calls the connector's
``ensure_index``, ``existing_ids``, ``bulk_index``, ``refresh`` and ``count``.

Indexing is **resumable**: documents are handled in batches, and each batch
first asks the engine which of its ids are already there, so an interrupted
run picks up where it stopped and a second run over a complete index costs
only the id look-ups (no embedding, no writes). The corollary: an existing
document is never updated, so to change a mapping or an embedding model,
index into a new index name.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from secondpass.datasets import Document, iter_corpus
from secondpass.errors import ConfigurationError
from secondpass.pipeline.protocols import DenseEncoder

T = TypeVar("T")

DEFAULT_VECTOR_FIELD = "embedding"
TEXT_FIELDS = ("title", "text")


class IndexAdmin(Protocol):
    """The connector primitives indexing needs (both engine connectors provide them)."""

    def ensure_index(
        self,
        *,
        text_fields: Sequence[str],
        vector_field: str | None = None,
        dims: int | None = None,
        similarity: str = "cosine",
    ) -> bool:
        """Create the index unless it exists; ``True`` when this call created it."""
        ...

    def bulk_index(
        self, docs: Iterable[Mapping[str, Any]], *, id_field: str = "_id", chunk_size: int = 500
    ) -> Any:
        """Index documents; returns counts with ``indexed``, ``failed`` and ``errors``."""
        ...

    def existing_ids(self, ids: Iterable[str]) -> set[str]:
        """Which of ``ids`` the index already holds."""
        ...

    def refresh(self) -> None:
        """Make what was indexed visible to search."""
        ...

    def count(self) -> int:
        """Documents visible to search."""
        ...


@dataclass(frozen=True, slots=True)
class IndexReport:
    """What :func:`index_documents` did. ``seconds`` is wall time of the whole call."""

    created: bool
    seen: int
    skipped: int
    indexed: int
    failed: int
    count: int
    seconds: float
    errors: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line for a command's output."""
        return (
            f"{'created' if self.created else 'reused'} index: {self.indexed} indexed, "
            f"{self.skipped} already present, {self.failed} failed, {self.count} searchable "
            f"({self.seconds:.1f} s)"
        )


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def index_documents(
    connector: IndexAdmin,
    docs: Iterable[Document],
    *,
    encoder: DenseEncoder | None = None,
    vector_field: str = DEFAULT_VECTOR_FIELD,
    batch_size: int = 256,
    chunk_size: int = 500,
    progress: bool = False,
    total: int | None = None,
    description: str = "indexing",
) -> IndexReport:
    """Create the index if needed and add every document not already in it.

    With an ``encoder``, each document's ``title + " " + text`` is embedded and
    stored in ``vector_field`` (mapped as a dense/knn vector of the encoder's
    dimension, cosine similarity). Per-document failures are counted in the
    report, not raised. ``progress`` shows a tqdm bar over documents.

    Example:
        >>> report = index_documents(connector, iter_corpus("corpus.jsonl"))  # doctest: +SKIP
        >>> report.summary()  # doctest: +SKIP
        'created index: 300 indexed, 0 already present, 0 failed, 300 searchable (1.2 s)'
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        msg = f"batch_size must be >= 1, got {batch_size}"
        raise ConfigurationError(msg)
    started = time.perf_counter()
    created = connector.ensure_index(
        text_fields=TEXT_FIELDS,
        vector_field=vector_field if encoder is not None else None,
        dims=encoder.dimension if encoder is not None else None,
        similarity="cosine",
    )
    seen = skipped = indexed = failed = 0
    errors: list[str] = []
    with tqdm(total=total, unit="doc", desc=description, disable=not progress) as bar:
        for batch in _batches(docs, batch_size):
            seen += len(batch)
            # A fresh index can only hold what this call wrote, so skip the look-ups.
            present = set() if created else connector.existing_ids(d.id for d in batch)
            todo = [d for d in batch if d.id not in present]
            skipped += len(batch) - len(todo)
            if todo:
                sources: list[dict[str, Any]] = [{"_id": d.id, **d.as_source()} for d in todo]
                if encoder is not None:
                    vectors = encoder.encode([d.passage for d in todo])
                    for source, vector in zip(sources, vectors, strict=True):
                        source[vector_field] = vector
                counts = connector.bulk_index(sources, chunk_size=chunk_size)
                indexed += int(getattr(counts, "indexed", len(todo)))
                failed += int(getattr(counts, "failed", 0))
                errors.extend(getattr(counts, "errors", ())[: max(0, 10 - len(errors))])
            bar.update(len(batch))
    connector.refresh()
    return IndexReport(
        created=created,
        seen=seen,
        skipped=skipped,
        indexed=indexed,
        failed=failed,
        count=connector.count(),
        seconds=time.perf_counter() - started,
        errors=tuple(errors),
    )


def index_corpus_file(
    connector: IndexAdmin,
    corpus_path: str,
    *,
    encoder: DenseEncoder | None = None,
    vector_field: str = DEFAULT_VECTOR_FIELD,
    batch_size: int = 256,
    progress: bool = False,
) -> IndexReport:
    """Index a BEIR ``corpus.jsonl`` (streamed); see :func:`index_documents`."""
    total = None
    if progress:
        with open(corpus_path, "rb") as fh:
            total = sum(1 for line in fh if line.strip())
    return index_documents(
        connector,
        iter_corpus(corpus_path),
        encoder=encoder,
        vector_field=vector_field,
        batch_size=batch_size,
        progress=progress,
        total=total,
    )
