"""Per-request truncation: how one caller wants its passages cut before scoring.

The rerank APIs SecondPass speaks let a client shape the model's input per
request: Cohere v2's ``max_tokens_per_doc`` (keep the first N tokens), Cohere
v1's ``max_chunks_per_doc`` (score at most N windows of a long document, the
best one counts) and TEI's ``truncation_direction`` (cut from the left, keeping
the end of the text). A :class:`Truncation` carries those choices from the HTTP
layer to the one place that tokenizes, the scorer, through the
:class:`~secondpass.pipeline.engine.ScoringEngine`, whose cache keys include
:meth:`Truncation.key`: a score of a 4-token prefix is never served for a
request that asked for the whole document. It also carries the optional
per-request ``instruction`` of an LLM reranker (Qwen3-Reranker's
``<Instruct>``), which changes every score and is therefore in the key too.

Example:
    >>> Truncation().is_default, Truncation().key()
    (True, '')
    >>> Truncation(max_tokens=4).key()
    '|truncation=max_tokens:4,side:right,max_chunks:-'
    >>> Truncation(side="left").cut([1, 2, 3, 4, 5], 3)
    [3, 4, 5]
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar, runtime_checkable

from secondpass.errors import ConfigurationError
from secondpass.types import PassageScore

__all__ = ["MAX_INSTRUCTION_CHARS", "NO_TRUNCATION", "Truncation", "TruncatingScorer"]

MAX_INSTRUCTION_CHARS = 1000
"""Longest per-request instruction accepted (characters); LLM rerankers put it in every prompt."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Truncation:
    """What a request asks to be done to each passage before the model sees it.

    ``max_tokens`` keeps at most that many passage tokens (of the model's own
    tokenizer); the model's window then applies as usual, so a value above it
    changes nothing. ``side`` says which end is cut when a passage is too long,
    by ``max_tokens`` or by the window: ``"right"`` keeps the start (the
    default everywhere), ``"left"`` keeps the end. ``max_chunks`` asks for the
    long-document ``chunk`` policy with at most that many windows, whatever the
    scorer's own policy; ``None`` keeps the scorer's policy. ``instruction``
    is the task description an LLM reranker puts in its prompt (``None``: the
    model's default); a scorer whose model takes none refuses it.
    """

    max_tokens: int | None = None
    side: Literal["right", "left"] = "right"
    max_chunks: int | None = None
    instruction: str | None = None

    def __post_init__(self) -> None:
        if self.side not in ("right", "left"):
            msg = f"truncation side must be 'right' or 'left', got {self.side!r}"
            raise ConfigurationError(msg)
        if self.instruction is not None:
            if not isinstance(self.instruction, str) or not self.instruction.strip():
                msg = "instruction must be a non-blank string or None"
                raise ConfigurationError(msg)
            if len(self.instruction) > MAX_INSTRUCTION_CHARS:
                msg = (
                    f"instruction is {len(self.instruction)} characters long; "
                    f"at most {MAX_INSTRUCTION_CHARS} are accepted"
                )
                raise ConfigurationError(msg)
        for name in ("max_tokens", "max_chunks"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < 1):
                msg = f"truncation {name} must be a positive integer or None, got {value!r}"
                raise ConfigurationError(msg)

    @property
    def is_default(self) -> bool:
        """True when nothing is asked beyond the scorer's own settings."""
        return self == NO_TRUNCATION

    def key(self) -> str:
        """The part of a cache fingerprint that names these choices ('' for the default).

        The default adds nothing, so requests without per-request truncation
        keep the keys they always had.
        """
        if self.is_default:
            return ""
        if self == Truncation(instruction=self.instruction):  # an instruction alone
            return _instruction_key(self.instruction)
        return (
            f"|truncation=max_tokens:{self.max_tokens or '-'},side:{self.side},"
            f"max_chunks:{self.max_chunks or '-'}"
        ) + _instruction_key(self.instruction)

    def cut(self, ids: Sequence[T], limit: int) -> list[T]:
        """The ``limit`` tokens of ``ids`` this side keeps (all of them when they fit)."""
        if len(ids) <= limit:
            return list(ids)
        return list(ids[len(ids) - limit :] if self.side == "left" else ids[:limit])


NO_TRUNCATION = Truncation()
"""The scorer's own settings, unchanged."""


def _instruction_key(instruction: str | None) -> str:
    """The cache-key part naming an instruction: a hash, so keys stay short and unambiguous."""
    if instruction is None:
        return ""
    return f"|instruction={hashlib.sha256(instruction.encode()).hexdigest()[:32]}"


@runtime_checkable
class TruncatingScorer(Protocol):
    """A scorer that honours a :class:`Truncation` per pair.

    The engine batches pairs of many requests together, so each pair brings
    its own; ``None`` in ``truncations`` (or no list) means the default.
    """

    @property
    def fingerprint(self) -> str:
        """See :class:`~secondpass.pipeline.protocols.Scorer`."""
        ...

    def score_truncated(
        self,
        pairs: Sequence[tuple[str, str]],
        truncations: Sequence[Truncation],
        *,
        timings: dict[str, float] | None = None,
    ) -> list[PassageScore]:
        """Score ``pairs``, each cut as its own ``truncations`` entry says; input order."""
        ...

    def effective_truncation(self, truncation: Truncation) -> Truncation:
        """``truncation`` reduced to what changes a score for this scorer.

        A ``max_tokens`` no passage can reach inside the model's window (or
        chunks) changes nothing and is dropped, so such requests share the
        default cache entries.
        """
        ...
