"""Load retrieval test collections in the BEIR layout.

BEIR is the de-facto exchange format for IR test collections, so supporting it
means any BEIR dataset (SciFact, NFCorpus, FiQA, ...) can be evaluated with
``secondpass eval`` without conversion::

    DATASET_DIR/
      corpus.jsonl      {"_id": ..., "title": ..., "text": ...} per line
      queries.jsonl     {"_id": ..., "text": ...} per line (all splits together)
      qrels/test.tsv    query-id <TAB> corpus-id <TAB> score, with a header line

``queries.jsonl`` holds the queries of every split, so only the queries that
appear in the chosen qrels file are returned: evaluating the others would count
queries that have no judgements as zero.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from secondpass.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class Document:
    """One corpus document; ``title`` may be empty."""

    id: str
    title: str
    text: str

    def as_source(self) -> dict[str, str]:
        """The fields indexed into the engine (the id goes in ``_id``, not the source)."""
        return {"title": self.title, "text": self.text}

    @property
    def passage(self) -> str:
        """Title and text joined, the string a model reads for this document."""
        return f"{self.title} {self.text}".strip() if self.title else self.text


@dataclass(frozen=True, slots=True)
class BeirDataset:
    """A loaded collection: its test queries and their judgements.

    The corpus is not held here (it can be large); iterate it with
    :meth:`iter_corpus`. ``queries`` only contains queries judged in ``qrels``.
    """

    path: Path
    split: str
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    name: str = field(default="")
    corpus_file: Path | None = None

    @property
    def corpus_path(self) -> Path:
        """Where the corpus lives (``corpus.jsonl`` in the folder unless ``corpus_file`` says otherwise)."""
        return self.path / "corpus.jsonl" if self.corpus_file is None else self.corpus_file

    def iter_corpus(self) -> Iterator[Document]:
        """Yield every corpus document in file order (streamed, not held in memory)."""
        return iter_corpus(self.corpus_path)

    def corpus_size(self) -> int:
        """Number of non-blank lines in the corpus file (for progress bars)."""
        with self.corpus_path.open("rb") as fh:
            return sum(1 for line in fh if line.strip())


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        msg = f"{what} not found: {path} (expected the BEIR layout: corpus.jsonl, queries.jsonl, qrels/<split>.tsv)"
        raise ConfigurationError(msg)
    return path


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, object]]]:
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                msg = f"{path}:{lineno}: not valid JSON ({exc.msg})"
                raise ConfigurationError(msg) from exc
            if not isinstance(row, dict):
                msg = f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}"
                raise ConfigurationError(msg)
            yield lineno, row


def _field(row: dict[str, object], key: str, path: Path, lineno: int, *, required: bool) -> str:
    value = row.get(key)
    if value is None:
        if required:
            msg = f"{path}:{lineno}: missing required field {key!r}"
            raise ConfigurationError(msg)
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key == "_id":
        return str(value)
    if not isinstance(value, str):
        msg = f"{path}:{lineno}: field {key!r} must be a string, got {type(value).__name__}"
        raise ConfigurationError(msg)
    return value


def iter_corpus(path: str | Path) -> Iterator[Document]:
    """Stream ``corpus.jsonl``; each line needs ``_id`` and ``text`` (``title`` optional)."""
    corpus = _require(Path(path), "corpus file")
    seen: set[str] = set()
    for lineno, row in _iter_jsonl(corpus):
        doc_id = _field(row, "_id", corpus, lineno, required=True)
        if doc_id in seen:
            msg = f"{corpus}:{lineno}: duplicate document id {doc_id!r}"
            raise ConfigurationError(msg)
        seen.add(doc_id)
        yield Document(
            id=doc_id,
            title=_field(row, "title", corpus, lineno, required=False),
            text=_field(row, "text", corpus, lineno, required=True),
        )


def load_queries(path: str | Path) -> dict[str, str]:
    """Read ``queries.jsonl`` into ``{query_id: text}``."""
    queries_file = _require(Path(path), "queries file")
    queries: dict[str, str] = {}
    for lineno, row in _iter_jsonl(queries_file):
        query_id = _field(row, "_id", queries_file, lineno, required=True)
        queries[query_id] = _field(row, "text", queries_file, lineno, required=True)
    return queries


def load_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Read a BEIR qrels TSV (header ``query-id corpus-id score``) into nested dicts."""
    qrels_file = _require(Path(path), "qrels file")
    qrels: dict[str, dict[str, int]] = {}
    with qrels_file.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        for lineno, row in enumerate(reader, start=1):
            if not row or not "".join(row).strip():
                continue
            if lineno == 1 and row[0].strip().lower() in {"query-id", "query_id", "qid"}:
                continue
            if len(row) < 3:
                msg = f"{qrels_file}:{lineno}: expected 3 tab-separated columns (query-id, corpus-id, score), got {len(row)}"
                raise ConfigurationError(msg)
            query_id, doc_id, score = (cell.strip() for cell in row[:3])
            try:
                relevance = int(float(score))
            except ValueError as exc:
                msg = f"{qrels_file}:{lineno}: relevance score {score!r} is not a number"
                raise ConfigurationError(msg) from exc
            qrels.setdefault(query_id, {})[doc_id] = relevance
    if not qrels:
        msg = f"{qrels_file} has no judgements"
        raise ConfigurationError(msg)
    return qrels


def load_beir(path: str | Path, *, split: str = "test") -> BeirDataset:
    """Load a BEIR dataset directory's queries and qrels for one split.

    Raises :class:`~secondpass.errors.ConfigurationError` naming the file (and
    line) when a file is missing or malformed, or when qrels mention a query
    that ``queries.jsonl`` lacks. The corpus file must exist; it is streamed later.

    Example:
        >>> ds = load_beir("data/scifact")                   # doctest: +SKIP
        >>> len(ds.queries), sum(len(d) for d in ds.qrels.values())
        (300, 339)
    """
    root = Path(path)
    if not root.is_dir():
        msg = f"dataset directory not found: {root}"
        raise ConfigurationError(msg)
    _require(root / "corpus.jsonl", "corpus file")
    all_queries = load_queries(root / "queries.jsonl")
    qrels = load_qrels(root / "qrels" / f"{split}.tsv")
    missing = sorted(set(qrels) - set(all_queries))
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        msg = f"qrels/{split}.tsv judges {len(missing)} queries absent from queries.jsonl: {shown}"
        raise ConfigurationError(msg)
    queries = {qid: all_queries[qid] for qid in qrels}
    return BeirDataset(path=root, split=split, queries=queries, qrels=qrels, name=root.name)


def _package_data() -> Path:
    return Path(str(resources.files("secondpass").joinpath("data")))


def sample_dataset() -> BeirDataset:
    """The small SciFact slice shipped inside the package (300 abstracts, 10 claims).

    It is what ``secondpass demo`` indexes, and lets examples and tests run
    offline without downloading anything. Attribution and licences:
    ``secondpass/data/ATTRIBUTION.md`` (SciFact CC BY 4.0, S2ORC abstracts
    ODC-By 1.0, BEIR packaging).

    Example:
        >>> ds = sample_dataset()
        >>> len(ds.queries), ds.corpus_size()
        (10, 300)
    """
    data = _package_data()
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    path = data / "sample_queries.jsonl"
    for lineno, row in _iter_jsonl(path):
        query_id = _field(row, "_id", path, lineno, required=True)
        queries[query_id] = _field(row, "text", path, lineno, required=True)
        relevant = row.get("relevant") or []
        if not isinstance(relevant, list):
            msg = f"{path}:{lineno}: 'relevant' must be a list of document ids"
            raise ConfigurationError(msg)
        qrels[query_id] = {str(doc_id): 1 for doc_id in relevant}
    return BeirDataset(
        path=data,
        split="test",
        queries=queries,
        qrels=qrels,
        name="scifact-sample",
        corpus_file=data / "sample_corpus.jsonl",
    )
