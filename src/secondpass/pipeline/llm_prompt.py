"""Prompts and tokenization for LLM (causal-LM) rerankers.

Qwen3-Reranker, bge-reranker-v2-gemma and mxbai-rerank-v2 are causal language
models: a (query, passage) pair is written into an instruction prompt and the
score is the log-odds of the next token being ``yes`` rather than ``no``
(sentence-transformers' ``LogitScore``; its sigmoid is P(yes), the softmax over
[no, yes] of Qwen's reference code). This module turns pairs into such model
inputs for :class:`~secondpass.pipeline.scorer.CrossEncoderScorer`, which keeps
doing the batching, windows, dtype, devices and out-of-memory halving.

Why each pair is tokenized whole: byte-level BPE attaches the space before a
word to it (``"<Query>: what"`` -> ``":"``, ``" what"``), so tokenizing the
query alone and gluing it into a tokenized template gives other tokens, and
other scores, than the model was trained on. :class:`PromptTokenizer` renders
the whole prompt, tokenizes it once with character offsets, and splits the
tokens back into template, query and passage runs; rebuilt unchanged they are
exactly the tokens of the rendered prompt, and a long passage can still be cut
or chunked by tokens.

Where the prompt comes from, in order:

1. the model's chat template, when it renders the ``query``/``document`` roles
   sentence-transformers maps a pair to (the instruction, if any, goes in as a
   ``system`` message, as ``CrossEncoder.predict(..., prompt=...)`` does), so
   scores equal ``CrossEncoder.predict``;
2. otherwise Qwen3-Reranker's documented format (:data:`DEFAULT_INSTRUCTION`
   when none is given): the original Qwen checkpoints ship a generic chat
   template that cannot carry a pair.

Example:
    >>> frame = DocumentedQwen3Format().frame(None)
    >>> frame.head.endswith("<Query>: "), frame.middle.strip()
    (True, '<Document>:')
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from secondpass.errors import ConfigurationError, ModelLoadError, RerankError
from secondpass.pipeline.batching import EncodedPair, private_backend, truncate_text

__all__ = [
    "DEFAULT_INSTRUCTION",
    "LLM_DEFAULT_WINDOW",
    "ChatTemplateFormat",
    "DocumentedQwen3Format",
    "PromptFormat",
    "PromptFrame",
    "PromptPair",
    "PromptTokenizer",
    "prompt_format_for",
]

logger = logging.getLogger(__name__)

DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
"""Qwen3-Reranker's documented instruction when a request gives none."""

QWEN3_SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".'
)

LLM_DEFAULT_WINDOW = 8192
"""Window of an LLM reranker when ``max_length`` is not set: Qwen's reference code uses 8192;
the models' 32k positions would let one pair cost as much as a whole batch."""

# Private-use characters: no template writes them and no tokenizer merges them with text.
_QUERY_MARK = "\ue000secondpass-query\ue001"
_PASSAGE_MARK = "\ue000secondpass-passage\ue001"
_INSTRUCTION_MARK = "\ue000secondpass-instruction\ue001"
# apply_chat_template arguments that only size the tokenization (ST hoists them), not the render
_SIZE_KWARGS = {"padding", "truncation", "max_length", "return_tensors", "restore_suffix"}


@dataclass(frozen=True, slots=True)
class PromptFrame:
    """The prompt around one pair: the text before, between and after query and passage."""

    head: str
    middle: str
    tail: str
    query_first: bool = True

    def render(self, query: str, passage: str) -> tuple[str, tuple[int, int], tuple[int, int]]:
        """The prompt text and the character spans of the query and of the passage in it."""
        first, second = (query, passage) if self.query_first else (passage, query)
        a = (len(self.head), len(self.head) + len(first))
        b_start = a[1] + len(self.middle)
        b = (b_start, b_start + len(second))
        text = f"{self.head}{first}{self.middle}{second}{self.tail}"
        return (text, a, b) if self.query_first else (text, b, a)


class PromptFormat(Protocol):
    """Where a model's prompt comes from; :meth:`frame` is cached per instruction by the caller."""

    name: str
    takes_instruction: bool
    default_instruction: str | None

    def frame(self, instruction: str | None) -> PromptFrame:
        """The frame for ``instruction`` (``None``: the model's default)."""
        ...


class DocumentedQwen3Format:
    """Qwen3-Reranker's documented prompt (its model card's ``format_instruction``)."""

    name = "Qwen3-Reranker documented prompt"
    takes_instruction = True
    default_instruction: str | None = DEFAULT_INSTRUCTION

    def frame(self, instruction: str | None) -> PromptFrame:
        """The system judgement, the instruction, then ``<Query>``/``<Document>``, and an empty think block."""
        task = DEFAULT_INSTRUCTION if instruction is None else instruction
        return PromptFrame(
            head=(
                f"<|im_start|>system\n{QWEN3_SYSTEM}<|im_end|>\n<|im_start|>user\n"
                f"<Instruct>: {task}\n<Query>: "
            ),
            middle="\n<Document>: ",
            tail="<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
        )


class ChatTemplateFormat:
    """The model's own chat template, rendered the way sentence-transformers renders a pair.

    Rendered once per instruction with marker strings in place of the query
    and passage; the text around the markers is the frame. Raises
    :class:`ValueError` when the template does not place both markers exactly
    once (it cannot carry a pair).
    """

    name = "the model's chat template"

    def __init__(self, module: Any, tokenizer: Any) -> None:
        self._formatter = module.input_formatter
        self._tokenizer = tokenizer
        merged = getattr(module, "_merge_processing_kwargs", None)
        kwargs = (merged(None) if callable(merged) else {}).get("chat_template", {}) or {}
        self._kwargs = {k: v for k, v in dict(kwargs).items() if k not in _SIZE_KWARGS}
        self.default_instruction: str | None = None
        self.frame(None)  # raises when the template cannot carry a pair
        try:
            probe = self.frame(_INSTRUCTION_MARK)
        except ValueError:
            probe = None
        self.takes_instruction = probe is not None and any(
            _INSTRUCTION_MARK in part for part in (probe.head, probe.middle, probe.tail)
        )

    def frame(self, instruction: str | None) -> PromptFrame:
        """Render the template around the markers (the instruction as a ``system`` message)."""
        messages = [self._formatter.pair_to_messages((_QUERY_MARK, _PASSAGE_MARK))]
        if instruction is not None:
            messages = self._formatter.prepend_prompt_to_messages(messages, instruction)
        text = self._tokenizer.apply_chat_template(messages[0], tokenize=False, **self._kwargs)
        if not isinstance(text, str) or text.count(_QUERY_MARK) != 1 or text.count(_PASSAGE_MARK) != 1:
            msg = "the chat template does not render the query and the document exactly once"
            raise ValueError(msg)
        q, p = text.index(_QUERY_MARK), text.index(_PASSAGE_MARK)
        if q < p:
            return PromptFrame(
                head=text[:q],
                middle=text[q + len(_QUERY_MARK) : p],
                tail=text[p + len(_PASSAGE_MARK) :],
            )
        return PromptFrame(
            head=text[:p],
            middle=text[p + len(_PASSAGE_MARK) : q],
            tail=text[q + len(_QUERY_MARK) :],
            query_first=False,
        )


def prompt_format_for(model: Any) -> PromptFormat:
    """The prompt of a causal-LM ``CrossEncoder``: its chat template if it carries a pair, else Qwen3's."""
    module = model[0]
    tokenizer = model.tokenizer
    if "message" in getattr(module, "modality_config", {}) and getattr(
        tokenizer, "chat_template", None
    ):
        try:
            return ChatTemplateFormat(module, tokenizer)
        except Exception as exc:  # a template error of any kind: use the documented prompt
            logger.info(
                "the chat template cannot carry a (query, document) pair (%s); "
                "using Qwen3-Reranker's documented prompt",
                str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__,
            )
    return DocumentedQwen3Format()


@dataclass(frozen=True, slots=True)
class PromptPair:
    """One pair's prompt tokens, split into template, query and passage runs.

    ``build(query_ids, passage_ids)`` with the full runs gives back exactly the
    tokens of the rendered prompt; ``budget`` is how many query plus passage
    tokens fit beside this pair's template in the window.
    """

    before: list[int]
    between: list[int]
    after: list[int]
    query_ids: list[int]
    passage_ids: list[int]
    query_first: bool
    max_length: int

    @property
    def budget(self) -> int:
        """Query plus passage tokens that fit in the window beside this pair's template."""
        return self.max_length - len(self.before) - len(self.between) - len(self.after)

    def build(self, query_ids: Sequence[int], passage_ids: Sequence[int]) -> EncodedPair:
        """The model input with (possibly cut) query and passage runs."""
        first, second = (query_ids, passage_ids) if self.query_first else (passage_ids, query_ids)
        ids = [*self.before, *first, *self.between, *second, *self.after]
        if len(ids) > self.max_length:
            msg = f"prompt of {len(ids)} tokens exceeds the model window of {self.max_length}"
            raise RerankError(msg)
        return EncodedPair(ids)


class PromptTokenizer:
    """Tokenizes (query, passage, instruction) prompts of an LLM reranker; left padding.

    Plays the part :class:`~secondpass.pipeline.batching.PairTokenizer` plays
    for sequence-classification models (``pad_id``, ``padding_side``,
    ``truncate``, ``build``), plus :meth:`encode_pairs`.
    """

    pad_type_id = 0
    with_token_types = False
    padding_side = "left"  # the score is read at the last position, so it must be a real token

    def __init__(
        self,
        backend: Any,
        *,
        prompt: PromptFormat,
        max_length: int,
        pad_id: int,
        default_instruction: str | None = None,
    ) -> None:
        self._backend = backend
        self.prompt = prompt
        self.max_length = max_length
        self.pad_id = pad_id
        self.default_instruction = default_instruction
        self._lock = threading.Lock()
        self._frame = functools.lru_cache(maxsize=64)(prompt.frame)
        empty = self.encode_pairs([("", "x", None)])[0]
        if empty.budget < 2:
            msg = f"model max length {max_length} leaves no room for text beside the prompt"
            raise ModelLoadError(msg)
        self.pair_budget = empty.budget

    @classmethod
    def from_cross_encoder(
        cls, model: Any, *, max_length: int, default_instruction: str | None = None
    ) -> PromptTokenizer:
        """Wrap a loaded causal-LM ``CrossEncoder``'s fast tokenizer and prompt."""
        tokenizer = model.tokenizer
        backend = private_backend(tokenizer)
        pad_id = tokenizer.pad_token_id
        if pad_id is None:  # padding is masked out: any id will do
            pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        if default_instruction is None:
            prompts = getattr(model, "prompts", None) or {}
            default_instruction = prompts.get(getattr(model, "default_prompt_name", None) or "")
        return cls(
            backend,
            prompt=prompt_format_for(model),
            max_length=max_length,
            pad_id=int(pad_id),
            default_instruction=default_instruction,
        )

    @property
    def takes_instruction(self) -> bool:
        """Whether the prompt has a place for an instruction."""
        return self.prompt.takes_instruction

    def check_instruction(self, instruction: str | None, model: str) -> None:
        """Refuse an instruction the prompt has no place for (a :class:`ConfigurationError`)."""
        if instruction is not None and not self.takes_instruction:
            msg = (
                f"instruction: {model!r} takes no instruction (its prompt, {self.prompt.name}, "
                "has no place for one); leave it out"
            )
            raise ConfigurationError(msg)

    def encode_pairs(self, pairs: Sequence[tuple[str, str, str | None]]) -> list[PromptPair]:
        """Tokenize each (query, passage, instruction) prompt whole and split it into runs."""
        rendered = [
            self._frame(self.default_instruction if instruction is None else instruction).render(
                query, passage
            )
            for query, passage, instruction in pairs
        ]
        if not rendered:
            return []
        with self._lock:
            encodings = self._backend.encode_batch(
                [text for text, _, _ in rendered], add_special_tokens=False
            )
        return [
            self._split(list(encoding.ids), list(encoding.offsets), q_span, p_span)
            for encoding, (_, q_span, p_span) in zip(encodings, rendered, strict=True)
        ]

    def _split(
        self,
        ids: list[int],
        offsets: list[tuple[int, int]],
        q_span: tuple[int, int],
        p_span: tuple[int, int],
    ) -> PromptPair:
        """Cut ``ids`` into runs; a token reaching into the passage (else the query) belongs to it."""

        def inside(start: int, end: int, span: tuple[int, int]) -> bool:
            lo, hi = span
            return start < hi and end > lo if end > start else lo <= start < hi

        labels = [
            "p" if inside(s, e, p_span) else "q" if inside(s, e, q_span) else "t"
            for s, e in offsets
        ]
        query_first = q_span[0] <= p_span[0]
        first, second = ("q", "p") if query_first else ("p", "q")
        first_span, second_span = (q_span, p_span) if query_first else (p_span, q_span)

        def run(label: str, span: tuple[int, int], after: int) -> tuple[int, int]:
            at = [i for i, mark in enumerate(labels) if mark == label and i >= after]
            if at:
                return at[0], at[-1] + 1
            # empty text: an empty run where its text would start
            where = next(
                (i for i in range(after, len(ids)) if offsets[i][0] >= span[0]), len(ids)
            )
            return where, where

        a0, a1 = run(first, first_span, 0)
        b0, b1 = run(second, second_span, a1)
        runs = {first: ids[a0:a1], second: ids[b0:b1]}
        return PromptPair(
            before=ids[:a0],
            between=ids[a1:b0],
            after=ids[b1:],
            query_ids=runs["q"],
            passage_ids=runs["p"],
            query_first=query_first,
            max_length=self.max_length,
        )

    def build(self, query_ids: Sequence[int], passage_ids: Sequence[int]) -> EncodedPair:
        """A model input from ids in the default prompt (warm-up and calibration)."""
        frame = self.encode_pairs([("", "", None)])[0]
        return frame.build(query_ids, passage_ids)

    def truncate(self, text: str, max_tokens: int) -> str:
        """Longest prefix of ``text`` holding at most ``max_tokens`` tokens (a ``TokenTruncator``)."""
        return truncate_text(self._backend, self._lock, text, max_tokens)
