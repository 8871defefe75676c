"""Token-budget batching for cross-encoder inference.

A fixed number of pairs per batch is the wrong unit: 32 pairs of 40 tokens
and 32 pairs of 512 tokens cost a factor of ten apart in time and memory. So
pairs are tokenized once, sorted by length, and packed into batches whose
padded size (longest sequence x batch size) stays under a token budget. The
scores are put back in input order before anyone sees them.

Inference is split the way infinity splits it (pre / core / post):
:class:`PairTokenizer` does the *pre* work once per call, :func:`collate_pairs`
pads one batch into tensors, and :class:`BatchRunner` drives the *core*
forward passes, collating the next batch on a one-slot producer thread while
the current one runs, halving a batch and shrinking the budget when the GPU
runs out of memory. Only :func:`collate_pairs` touches torch, and only
:class:`PairTokenizer` touches the Hugging Face ``tokenizers`` library; the
planner and the runner are plain Python so they can be tested without a model.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

from secondpass.errors import ModelLoadError, RerankError

logger = logging.getLogger(__name__)

Features = TypeVar("Features")

_PROBES = ("a", "b", "x", "y", "1", "2", "the", "of")


@dataclass(frozen=True, slots=True)
class EncodedPair:
    """One model input: token ids, and token type ids where the model uses them."""

    input_ids: list[int]
    token_type_ids: list[int] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


class PairTokenizer:
    """Tokenizes each query and passage once and assembles (query, passage) model inputs.

    The special-token layout (``[CLS] q [SEP] p [SEP]`` for BERT,
    ``<s> q </s></s> p </s>`` for XLM-R, ...) is read from the tokenizer's own
    post-processor once, so a passage can be cut into several windows, or its
    tail cut, without tokenizing it again. Inputs are identical to what the
    tokenizer returns for the pair with ``truncation="longest_first"``.

    Build it with :meth:`from_pretrained_tokenizer` from a loaded Hugging Face
    fast tokenizer; ``max_length`` is the model's real window.
    """

    def __init__(
        self,
        backend: Any,
        *,
        max_length: int,
        pad_id: int,
        pad_type_id: int = 0,
        padding_side: str = "right",
        with_token_types: bool = True,
    ) -> None:
        self._backend = backend
        self.max_length = max_length
        self.pad_id = pad_id
        self.pad_type_id = pad_type_id
        self.padding_side = padding_side
        self.with_token_types = with_token_types
        self._lock = threading.Lock()
        (
            self._prefix,
            self._middle,
            self._suffix,
            self._types,
        ) = self._read_template()
        self.num_special = len(self._prefix[0]) + len(self._middle[0]) + len(self._suffix[0])
        if self.max_length <= self.num_special + 1:
            msg = f"model max length {self.max_length} leaves no room for text"
            raise ModelLoadError(msg)

    @classmethod
    def from_pretrained_tokenizer(cls, tokenizer: Any, *, max_length: int) -> PairTokenizer:
        """Wrap a loaded Hugging Face fast tokenizer; raises ``ModelLoadError`` for a slow one."""
        backend = private_backend(tokenizer)
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            msg = "the model's tokenizer has no padding token"
            raise ModelLoadError(msg)
        return cls(
            backend,
            max_length=max_length,
            pad_id=int(pad_id),
            pad_type_id=int(getattr(tokenizer, "pad_token_type_id", 0) or 0),
            padding_side=str(getattr(tokenizer, "padding_side", "right")),
            with_token_types="token_type_ids" in getattr(tokenizer, "model_input_names", ()),
        )

    def _read_template(
        self,
    ) -> tuple[
        tuple[list[int], list[int]],
        tuple[list[int], list[int]],
        tuple[list[int], list[int]],
        tuple[int, int],
    ]:
        """Find where the two sequences sit among the special tokens by post-processing probes."""
        singles: list[Any] = []
        for probe in _PROBES:
            encoding = self._backend.encode(probe, add_special_tokens=False)
            if len(encoding.ids) == 1 and all(encoding.ids != other.ids for other in singles):
                singles.append(encoding)
            if len(singles) == 2:
                break
        if len(singles) < 2:
            msg = "could not read the tokenizer's pair template"
            raise ModelLoadError(msg)
        first, second = singles
        pair = self._backend.post_process(first, second, add_special_tokens=True)
        ids, types = list(pair.ids), list(pair.type_ids)
        try:
            at_first = ids.index(first.ids[0])
            at_second = ids.index(second.ids[0], at_first + 1)
        except ValueError as exc:
            msg = "could not read the tokenizer's pair template"
            raise ModelLoadError(msg) from exc
        prefix = (ids[:at_first], types[:at_first])
        middle = (ids[at_first + 1 : at_second], types[at_first + 1 : at_second])
        suffix = (ids[at_second + 1 :], types[at_second + 1 :])
        return prefix, middle, suffix, (types[at_first], types[at_second])

    @property
    def pair_budget(self) -> int:
        """Tokens of query plus passage that fit in one model input."""
        return self.max_length - self.num_special

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens and without truncation."""
        if not texts:
            return []
        with self._lock:
            encodings = self._backend.encode_batch(list(texts), add_special_tokens=False)
        return [list(encoding.ids) for encoding in encodings]

    def build(self, query_ids: Sequence[int], passage_ids: Sequence[int]) -> EncodedPair:
        """Assemble one model input from already-cut query and passage ids."""
        ids = [*self._prefix[0], *query_ids, *self._middle[0], *passage_ids, *self._suffix[0]]
        if len(ids) > self.max_length:
            msg = f"pair of {len(ids)} tokens exceeds the model window of {self.max_length}"
            raise RerankError(msg)
        if not self.with_token_types:
            return EncodedPair(ids)
        first_type, second_type = self._types
        types = [
            *self._prefix[1],
            *([first_type] * len(query_ids)),
            *self._middle[1],
            *([second_type] * len(passage_ids)),
            *self._suffix[1],
        ]
        return EncodedPair(ids, types)

    def truncate(self, text: str, max_tokens: int) -> str:
        """Longest prefix of ``text`` holding at most ``max_tokens`` tokens (a :class:`TokenTruncator`)."""
        return truncate_text(self._backend, self._lock, text, max_tokens)


def private_backend(tokenizer: Any) -> Any:
    """A private copy of a fast tokenizer's Rust backend, without truncation or padding.

    The Hugging Face wrapper sets truncation and padding on its backend per
    call, and we want neither. Raises ``ModelLoadError`` for a slow tokenizer.
    """
    import copy

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        msg = "the model's tokenizer has no fast (Rust) backend, which SecondPass needs"
        raise ModelLoadError(msg)
    backend = copy.deepcopy(backend)
    backend.no_truncation()
    backend.no_padding()
    return backend


def truncate_text(backend: Any, lock: threading.Lock, text: str, max_tokens: int) -> str:
    """Longest prefix of ``text`` holding at most ``max_tokens`` tokens of ``backend``.

    Only a growing head of the text is tokenized, cut at whitespace so no
    word is split, so cutting a 100,000-character field to 64 tokens stays cheap.
    ``lock`` guards the (not thread-safe) backend.
    """
    if max_tokens <= 0:
        return ""
    span = max_tokens * 8 + 64
    while True:
        head = text
        if span < len(text):
            cut = text.rfind(" ", 0, span)
            head = text[: cut if cut > 0 else span]
        with lock:
            offsets = backend.encode(head, add_special_tokens=False).offsets
        if len(offsets) > max_tokens:
            return str(text[: offsets[max_tokens - 1][1]])
        if len(head) >= len(text):
            return text
        span *= 2


def collate_pairs(
    pairs: Sequence[EncodedPair],
    *,
    pad_id: int,
    pad_type_id: int = 0,
    padding_side: str = "right",
    pin_memory: bool = False,
    pad_to_multiple_of: int = 1,
) -> dict[str, Any]:
    """Pad one batch to its longest input and return CPU tensors ready for the model.

    ``pad_to_multiple_of`` rounds the width up: compiled CPU runtimes run
    tile-aligned shapes faster, and reuse the kernels of a shape they have
    seen, so fewer distinct widths means fewer first-time shape costs.
    """
    import torch

    width = padded_length(max(len(pair) for pair in pairs), pad_to_multiple_of)
    count = len(pairs)
    input_ids = torch.full((count, width), pad_id, dtype=torch.long)
    attention = torch.zeros((count, width), dtype=torch.long)
    with_types = pairs[0].token_type_ids is not None
    types = torch.full((count, width), pad_type_id, dtype=torch.long) if with_types else None
    for row, pair in enumerate(pairs):
        size = len(pair)
        cols = slice(0, size) if padding_side == "right" else slice(width - size, width)
        input_ids[row, cols] = torch.tensor(pair.input_ids, dtype=torch.long)
        attention[row, cols] = 1
        if types is not None and pair.token_type_ids is not None:
            types[row, cols] = torch.tensor(pair.token_type_ids, dtype=torch.long)
    features: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention}
    if types is not None:
        features["token_type_ids"] = types
    if pin_memory:
        features = {name: tensor.pin_memory() for name, tensor in features.items()}
    return features


def padded_length(length: int, multiple: int) -> int:
    """``length`` rounded up to a multiple of ``multiple`` (itself when ``multiple`` is 1)."""
    return -(-length // multiple) * multiple if multiple > 1 else length


def plan_batches(
    lengths: Sequence[int],
    *,
    token_budget: int,
    max_batch_size: int,
    indices: Sequence[int] | None = None,
) -> list[list[int]]:
    """Pack items into batches whose padded size (longest x count) fits ``token_budget``.

    Items are taken longest first (ties by index, so plans are deterministic);
    an item longer than the budget still gets a batch of its own. Returns
    lists of indices into ``lengths``.

    Example:
        >>> plan_batches([10, 300, 20, 290], token_budget=600, max_batch_size=64)
        [[1, 3], [2, 0]]
    """
    if token_budget < 1 or max_batch_size < 1:
        msg = "token_budget and max_batch_size must be positive"
        raise ValueError(msg)
    order = sorted(
        range(len(lengths)) if indices is None else indices, key=lambda i: (-lengths[i], i)
    )
    batches: list[list[int]] = []
    current: list[int] = []
    widest = 0
    for index in order:
        if current and (
            (len(current) + 1) * widest > token_budget or len(current) >= max_batch_size
        ):
            batches.append(current)
            current = []
        if not current:
            widest = lengths[index]
        current.append(index)
    if current:
        batches.append(current)
    return batches


@dataclass(slots=True)
class BatchStats:
    """What one :meth:`BatchRunner.run` did: for logs, tests and benchmarks."""

    batches: int = 0
    oom_splits: int = 0
    padded_tokens: int = 0
    real_tokens: int = 0
    collate_ms: float = 0.0
    model_ms: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)


class _Stop(Exception):
    """Raised inside the producer thread when the consumer has gone away."""


class BatchRunner(Generic[Features]):
    """Runs planned batches through ``forward``, collating the next batch while one runs.

    ``collate(indices)`` turns a batch of item indices into model features;
    ``forward(features)`` returns one float per item of the batch, in batch
    order. ``is_oom(exc)`` says whether a failure is an out-of-memory error: the
    runner then calls ``on_oom()`` (free cached memory), halves the token
    budget below the failed batch's padded size, and re-plans what is left. A
    single item that still does not fit is a :class:`RerankError`. The adapted
    budget is kept in :attr:`token_budget` for the caller to reuse.
    """

    def __init__(
        self,
        *,
        collate: Callable[[list[int]], Features],
        forward: Callable[[Features], Sequence[float]],
        token_budget: int,
        max_batch_size: int = 256,
        overlap: bool = True,
        is_oom: Callable[[BaseException], bool] | None = None,
        on_oom: Callable[[], None] | None = None,
    ) -> None:
        self._collate = collate
        self._forward = forward
        self.token_budget = token_budget
        self.max_batch_size = max_batch_size
        self.overlap = overlap
        self._is_oom = is_oom if is_oom is not None else (lambda exc: False)
        self._on_oom = on_oom if on_oom is not None else (lambda: None)
        self.stats = BatchStats()

    def run(self, lengths: Sequence[int]) -> list[float]:
        """Score every item (given by its token length) and return scores in input order."""
        scores: list[float | None] = [None] * len(lengths)
        pending = plan_batches(
            lengths, token_budget=self.token_budget, max_batch_size=self.max_batch_size
        )
        while pending:
            pending = self._run_plan(pending, lengths, scores)
        missing = sum(1 for score in scores if score is None)
        if missing:
            msg = f"no score came back for {missing} inputs"
            raise RerankError(msg)
        return cast("list[float]", scores)

    def _run_plan(
        self, plan: list[list[int]], lengths: Sequence[int], scores: list[float | None]
    ) -> list[list[int]]:
        """Run ``plan``; return a new plan for what is left after an OOM, else ``[]``."""
        with contextlib.closing(self._prefetch(plan)) as batches:
            for position, (batch, features) in enumerate(batches):
                started = time.perf_counter()
                try:
                    batch_scores = self._forward(features)
                except Exception as exc:
                    if not self._is_oom(exc):
                        raise
                    del features
                    return self._after_oom(exc, batch, plan[position + 1 :], lengths)
                self.stats.model_ms += (time.perf_counter() - started) * 1000.0
                if len(batch_scores) != len(batch):
                    msg = f"model returned {len(batch_scores)} scores for a batch of {len(batch)}"
                    raise RerankError(msg)
                for index, value in zip(batch, batch_scores, strict=True):
                    scores[index] = float(value)
                widest = max(lengths[index] for index in batch)
                self.stats.batches += 1
                self.stats.batch_sizes.append(len(batch))
                self.stats.padded_tokens += widest * len(batch)
                self.stats.real_tokens += sum(lengths[index] for index in batch)
        return []

    def _after_oom(
        self,
        exc: BaseException,
        batch: list[int],
        rest: list[list[int]],
        lengths: Sequence[int],
    ) -> list[list[int]]:
        if len(batch) == 1:
            msg = f"out of memory on a single input of {lengths[batch[0]]} tokens"
            raise RerankError(msg) from exc
        self._on_oom()
        widest = max(lengths[index] for index in batch)
        padded = widest * len(batch)
        self.token_budget = max(widest, padded // 2)
        self.stats.oom_splits += 1
        logger.warning(
            "out of memory on a batch of %d inputs (%d padded tokens); token budget now %d",
            len(batch),
            padded,
            self.token_budget,
        )
        left = [index for part in [batch, *rest] for index in part]
        plan = plan_batches(
            lengths,
            token_budget=self.token_budget,
            max_batch_size=self.max_batch_size,
            indices=left,
        )
        if plan and len(plan[0]) >= len(batch):
            # Budget arithmetic can round back to the same batch; force the halving.
            half = len(batch) // 2
            plan = [
                batch[:half],
                batch[half:],
                *plan_batches(
                    lengths,
                    token_budget=self.token_budget,
                    max_batch_size=self.max_batch_size,
                    indices=[index for part in rest for index in part],
                ),
            ]
        return plan

    def _collate_timed(self, batch: list[int]) -> Features:
        started = time.perf_counter()
        features = self._collate(batch)
        self.stats.collate_ms += (time.perf_counter() - started) * 1000.0
        return features

    def _prefetch(self, plan: list[list[int]]) -> Generator[tuple[list[int], Features], None, None]:
        """Yield (batch, features), collating batch i+1 on a thread while batch i is used."""
        if not self.overlap or len(plan) < 2:
            for batch in plan:
                yield batch, self._collate_timed(batch)
            return
        slot: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
        stop = threading.Event()

        def put(item: tuple[str, Any]) -> None:
            while True:
                if stop.is_set():
                    raise _Stop
                try:
                    slot.put(item, timeout=0.05)
                    return
                except queue.Full:
                    continue

        def produce() -> None:
            try:
                for batch in plan:
                    put(("batch", (batch, self._collate_timed(batch))))
                put(("done", None))
            except _Stop:
                return
            except BaseException as exc:  # handed to the consumer, which re-raises it
                with contextlib.suppress(_Stop):
                    put(("error", exc))

        worker = threading.Thread(target=produce, name="secondpass-collate", daemon=True)
        worker.start()
        try:
            while True:
                kind, payload = slot.get()
                if kind == "done":
                    return
                if kind == "error":
                    raise payload
                yield payload
        finally:
            stop.set()
            with contextlib.suppress(queue.Empty):
                slot.get_nowait()
            worker.join()
