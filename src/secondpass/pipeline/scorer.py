"""The cross-encoder scorer: a sentence-transformers ``CrossEncoder`` behind the ``Scorer`` protocol.

Everything that touches torch, transformers or sentence-transformers lives here
and in :mod:`secondpass.pipeline.batching`, and is imported on first use, so
``import secondpass.pipeline.scorer`` is cheap and the rest of the pipeline
never sees a tensor.

Loading is deliberately conservative: weights must be safetensors unless the
user allows pickle, remote code runs only when the user opts in *and* pins a
revision, and nothing is loaded before :meth:`CrossEncoderScorer.warm_up` or
the first call to score.

Example:
    >>> scorer = CrossEncoderScorer(model="cross-encoder/ms-marco-MiniLM-L-6-v2")
    >>> scorer.is_loaded  # construction loads nothing
    False
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secondpass.config import RerankSettings
from secondpass.errors import (
    ConfigurationError,
    MissingDependencyError,
    ModelLoadError,
    RerankError,
)
from secondpass.pipeline.batching import (
    BatchRunner,
    EncodedPair,
    PairTokenizer,
    collate_pairs,
    padded_length,
)
from secondpass.pipeline.llm_prompt import LLM_DEFAULT_WINDOW, PromptTokenizer
from secondpass.pipeline.passages import PassageTemplate, TokenTruncator, is_blank, plan_windows
from secondpass.pipeline.protocols import Scorer
from secondpass.pipeline.truncation import NO_TRUNCATION, Truncation
from secondpass.types import EMPTY_PASSAGE_RAW_SCORE, PassageScore

logger = logging.getLogger(__name__)

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
_DTYPES = ("auto", "float32", "bfloat16", "float16")
# OpenVINO compiles kernels per input shape and runs AMX/AVX-512 tiles of 16 best:
# widths rounded to 16 cost ~4% more padding and save ~20% of its time.
_PAD_MULTIPLE = {"openvino": 16}
# What each backend can run: checked before loading, named in the error.
_BACKEND_DTYPES = {
    "torch": _DTYPES,
    "onnx": ("auto", "float32"),
    "openvino": ("auto", "float32", "bfloat16"),
}
_BACKEND_RUNS = {
    "torch": "float32, bfloat16 or float16",
    "onnx": "float32 (int8 with quantize='int8')",
    "openvino": "float32 or bfloat16",
}
# backend="auto" on a CPU: the first runtime whose packages are all installed, fastest
# first (OpenVINO fp32 is a little faster than ONNX Runtime fp32; both are exact).
# Both read the ONNX export, so both need ``onnx`` for the exporter.
_AUTO_CPU_RUNTIMES = (("openvino", ("openvino", "onnx")), ("onnx", ("onnxruntime", "onnx")))


def _installed(packages: Sequence[str]) -> bool:
    """Whether every package can be imported, without importing it (a metadata lookup)."""
    return all(importlib.util.find_spec(name) is not None for name in packages)


def _sigmoid(value: float) -> float:
    if value >= 0:
        return 1.0 / (1.0 + math.exp(-value))
    exp = math.exp(value)
    return exp / (1.0 + exp)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise MissingDependencyError(package="torch", extra="rerank") from exc
    return torch


def _short(exc: BaseException) -> str:
    """First line of an exception message, bounded, for error messages without stack traces."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def _hub_offline() -> bool:
    return any(
        os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _looks_unreachable(exc: BaseException) -> bool:
    """True when a load failed because the hub could not be reached (so the cache may serve)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        name = type(current).__name__
        if name in {
            "ConnectionError",
            "ConnectTimeout",
            "ReadTimeout",
            "Timeout",
            "OfflineModeIsEnabled",
            "LocalEntryNotFoundError",
            "ConnectError",
            "TimeoutException",
            "MaxRetryError",
        }:
            return True
        if isinstance(current, (ConnectionError, TimeoutError)):
            return True
        current = current.__cause__ or current.__context__
    text = str(exc).lower()
    return "couldn't connect" in text or "connection" in text or "offline" in text


@dataclass(slots=True)
class _Loaded:
    """The loaded model and what was learned about it; built once by ``_load``."""

    model: Any  # sentence_transformers.CrossEncoder
    network: Any  # the transformers model inside it, where forward hooks go
    # PromptTokenizer for LLM (causal-LM) rerankers: prompt, left padding, last-token score
    tokenizer: PairTokenizer | PromptTokenizer
    device: Any
    dtype: Any
    max_length: int
    # backend="onnx"/"openvino": the LogitsModel that runs the forward pass instead
    runtime: Any = None
    causal: bool = False  # an LLM reranker: score = logit(yes) - logit(no) at the last token


class _LazyTruncator:
    """A :class:`TokenTruncator` that loads the scorer's tokenizer on first use, not when bound."""

    def __init__(self, scorer: CrossEncoderScorer) -> None:
        self._scorer = scorer

    def truncate(self, text: str, max_tokens: int) -> str:
        return self._scorer._ensure_loaded().tokenizer.truncate(text, max_tokens)


class CrossEncoderScorer(Scorer):
    """Scores (query, passage) pairs with a cross-encoder, implementing ``Scorer``.

    Every setting defaults to :class:`~secondpass.config.RerankSettings` (so
    ``SECONDPASS_RERANK_*`` environment variables apply); keyword arguments
    override single settings, ``None`` meaning "use the setting". The model
    loads on :meth:`warm_up` or on the first call to :meth:`score`, never in
    the constructor.

    Each :class:`~secondpass.types.PassageScore` carries the logit (``raw``)
    and its sigmoid (``normalized``); which one ranks, and any ``min_score``,
    is the retriever's decision. Blank passages are never sent to the model:
    they get ``EMPTY_PASSAGE_RAW_SCORE`` and 0.0.

    Example:
        >>> scorer = CrossEncoderScorer(model="/models/my-reranker", device="cpu")
        >>> scores = scorer.score("what do cats eat", ["Cats eat meat.", "Paris is in France."])
        ... # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        settings: RerankSettings | None = None,
        model: str | None = None,
        revision: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        max_length: int | None = None,
        token_budget: int | None = None,
        max_batch_size: int | None = None,
        long_document: str | None = None,
        max_chunks: int | None = None,
        chunk_overlap: int | None = None,
        overlap_collate: bool | None = None,
        cache_folder: str | None = None,
        trust_remote_code: bool | None = None,
        allow_pickle: bool | None = None,
        backend: str | None = None,
        quantize: str | None = None,
    ) -> None:
        base = RerankSettings() if settings is None else settings
        overrides = {
            "model": model,
            "revision": revision,
            "device": device,
            "dtype": dtype,
            "max_length": max_length,
            "token_budget": token_budget,
            "max_batch_size": max_batch_size,
            "long_document": long_document,
            "max_chunks": max_chunks,
            "chunk_overlap": chunk_overlap,
            "overlap_collate": overlap_collate,
            "cache_folder": cache_folder,
            "trust_remote_code": trust_remote_code,
            "allow_pickle": allow_pickle,
            "backend": backend,
            "quantize": quantize,
        }
        chosen = {name: value for name, value in overrides.items() if value is not None}
        try:
            self.settings = RerankSettings.model_validate({**base.model_dump(), **chosen})
        except ValueError as exc:
            msg = f"invalid rerank settings: {_short(exc)}"
            raise ConfigurationError(msg) from exc
        if self.settings.trust_remote_code and not self.settings.revision:
            msg = (
                "trust_remote_code=True runs the model repository's own Python code; "
                "it is only allowed together with a pinned revision (a commit hash)"
            )
            raise ConfigurationError(msg)
        self._check_backend()
        self._token_budget = self.settings.token_budget
        self._loaded: _Loaded | None = None
        self._lock = threading.Lock()
        self._fingerprint: str | None = None
        # Resolved on first use, not here: telling whether a GPU is there imports torch.
        self._backend: str | None = None
        self._backend_lock = threading.Lock()

    # -- state -------------------------------------------------------------------

    @property
    def is_loaded(self) -> bool:
        """Whether the model has been loaded (by :meth:`warm_up` or a first score call)."""
        return self._loaded is not None

    @property
    def token_budget(self) -> int:
        """The current batch token budget (lower than configured after an out-of-memory)."""
        return self._token_budget

    @property
    def max_length(self) -> int:
        """The model window in tokens actually used (loads the model)."""
        return self._ensure_loaded().max_length

    @property
    def device(self) -> str:
        """The device the model runs on, e.g. ``cpu`` or ``cuda:0`` (loads the model)."""
        return str(self._ensure_loaded().device)

    @property
    def dtype(self) -> str:
        """The precision of the forward pass, e.g. ``float32`` (loads no model; TEI's ``/info``)."""
        return self._resolve_dtype_name()

    @property
    def network(self) -> Any:
        """The underlying ``transformers`` model (loads it); e.g. to register forward hooks."""
        return self._ensure_loaded().network

    @property
    def backend(self) -> str:
        """The runtime of the forward pass: ``torch``, ``onnx`` or ``openvino`` (loads no model).

        An explicit ``backend`` setting is used as given. ``backend="auto"`` is
        resolved once, with one INFO log line saying what was chosen and why:
        torch when the model runs on a GPU (``device`` resolves to CUDA or MPS),
        when ``dtype`` asks for bf16/fp16 (auto only picks exact fp32 runtimes)
        or when no faster CPU runtime is installed; otherwise OpenVINO fp32, else
        ONNX Runtime fp32 (``quantize="int8"`` always means ONNX Runtime). All
        fp32 choices give scores equal to torch's within 1e-4. If the chosen
        CPU runtime cannot load the model, auto falls back to torch (a WARNING
        says why) rather than fail a model torch can run.
        """
        if self._backend is None:
            with self._backend_lock:
                if self._backend is None:
                    self._backend = self._resolve_backend()
        return self._backend

    def _resolve_backend(self) -> str:
        if self.settings.backend != "auto":
            return self.settings.backend
        backend, why = self._choose_auto_backend()
        logger.info("backend=auto: running %s on %s (%s)", self.settings.model, backend, why)
        return backend

    def _choose_auto_backend(self) -> tuple[str, str]:
        settings = self.settings
        if settings.quantize is not None:
            return "onnx", "quantize='int8' is an ONNX Runtime option"
        if settings.dtype not in ("auto", "float32"):
            return "torch", f"dtype={settings.dtype!r} runs on torch; auto picks exact fp32 runtimes only"
        device = self._torch_device()
        if device != "cpu":
            return "torch", f"device {device}: the CPU runtimes do not run on a GPU"
        for backend, packages in _AUTO_CPU_RUNTIMES:
            if _installed(packages):
                return backend, f"CPU with {packages[0]} installed: exact fp32, faster than torch"
        return "torch", "CPU without the 'fast' extra (install the 'fast' extra for OpenVINO)"

    @property
    def fingerprint(self) -> str:
        """Model id, revision and every setting that changes a score; score caches key on it.

        Computed without loading the model: a cache hit must not cost a load.
        For a local directory the fingerprint includes the size and change time
        of its config, weight and chat-template (an LLM reranker's prompt) files,
        so rebuilding a model there changes it.
        """
        if self._fingerprint is None:
            settings = self.settings
            parts = [
                f"model={settings.model}",
                f"revision={settings.revision or '-'}",
                f"dtype={self._resolve_dtype_name()}",
                f"max_length={settings.max_length or 'model'}",
                f"long_document={settings.long_document}",
            ]
            if settings.long_document == "chunk":
                parts += [
                    f"max_chunks={settings.max_chunks}",
                    f"chunk_overlap={settings.chunk_overlap}",
                ]
            if self.backend != "torch":
                parts += [f"backend={self.backend}", f"quantize={settings.quantize or '-'}"]
            if settings.instruction is not None:  # LLM rerankers: the default instruction
                digest_of = hashlib.sha256(settings.instruction.encode()).hexdigest()[:32]
                parts.append(f"instruction={digest_of}")
            local = Path(settings.model).expanduser()
            if local.is_dir():
                digest = hashlib.sha256()
                for path in sorted(local.iterdir()):
                    if path.is_file() and (
                        path.suffix in {".json", ".jinja", ".safetensors", *_PICKLE_SUFFIXES}
                    ):
                        stat = path.stat()
                        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
                parts.append(f"files={digest.hexdigest()[:16]}")
            self._fingerprint = "cross-encoder|" + "|".join(parts)
        return self._fingerprint

    def warm_up(self) -> None:
        """Load the model now (instead of on the first score call) and run one forward pass."""
        loaded = self._ensure_loaded()
        self._run_units([loaded.tokenizer.build([], [])], loaded)

    def close(self) -> None:
        """Drop the model and free its memory; a later call loads it again."""
        with self._lock:
            loaded, self._loaded = self._loaded, None
        if loaded is not None and str(loaded.device).startswith("cuda"):
            _import_torch().cuda.empty_cache()

    def bind_template(self, template: PassageTemplate) -> PassageTemplate:
        """Return ``template`` counting its field budgets in this model's tokens.

        Binding is free; the tokenizer loads with the model on the first render.
        """
        return template.bind(self.truncator)

    @property
    def truncator(self) -> TokenTruncator:
        """A :class:`~secondpass.pipeline.passages.TokenTruncator` using this model's tokenizer."""
        return _LazyTruncator(self)

    # -- scoring (``score`` is the protocol's, written on score_pairs) --------------

    def score_pairs(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        timings: dict[str, float] | None = None,
    ) -> list[PassageScore]:
        """Score (query, passage) pairs that may mix queries; results in input order.

        Adds milliseconds to ``timings["tokenize_ms"]`` (tokenizing and padding)
        and ``timings["model_ms"]`` (forward passes) when ``timings`` is given.
        """
        return self.score_truncated(pairs, (), timings=timings)

    def score_truncated(
        self,
        pairs: Sequence[tuple[str, str]],
        truncations: Sequence[Truncation],
        *,
        timings: dict[str, float] | None = None,
    ) -> list[PassageScore]:
        """:meth:`score_pairs`, each pair cut as its :class:`Truncation` says (empty: none asked).

        A pair's ``max_tokens`` cuts its passage's token ids (from the side it
        names) before the window is planned; ``max_chunks`` plans ``chunk``
        windows; ``side="left"`` mirrors the windows so the end of the passage
        is kept. ``tokens_in`` stays the passage's full length.
        """
        results: list[PassageScore | None] = [None] * len(pairs)
        live = []
        for index, (_, passage) in enumerate(pairs):
            if is_blank(passage):
                results[index] = PassageScore(raw=EMPTY_PASSAGE_RAW_SCORE, normalized=0.0, chunks=0)
            else:
                live.append(index)
        if live:
            loaded = self._ensure_loaded()
            started = time.perf_counter()
            cuts = [truncations[index] if truncations else NO_TRUNCATION for index in live]
            inputs = self._pair_inputs(loaded, [pairs[index] for index in live], cuts)
            units: list[EncodedPair] = []
            # (index, first unit, count, truncated, tokens_in)
            owners: list[tuple[int, int, int, bool, int]] = []
            unit_tokens: list[int] = []
            settings = self.settings
            for index, fit, (q_ids, ids, budget, build) in zip(live, cuts, inputs, strict=True):
                kept = ids if fit.max_tokens is None else fit.cut(ids, fit.max_tokens)
                plan = plan_windows(
                    len(q_ids),
                    len(kept),
                    budget,
                    policy="chunk" if fit.max_chunks is not None else settings.long_document,
                    max_chunks=fit.max_chunks or settings.max_chunks,
                    overlap=settings.chunk_overlap,
                )
                windows = plan.windows
                if fit.side == "left":  # the same windows, counted from the end
                    windows = tuple((len(kept) - e, len(kept) - s) for s, e in windows)
                cut = plan.truncated or len(kept) < len(ids)
                owners.append((index, len(units), len(windows), cut, len(ids)))
                for start, end in windows:
                    units.append(build(q_ids[: plan.query_keep], kept[start:end]))
                    unit_tokens.append(end - start)
            tokenize_ms = (time.perf_counter() - started) * 1000.0
            raw, collate_ms, model_ms = self._run_units(units, loaded)
            if timings is not None:
                timings["tokenize_ms"] = timings.get("tokenize_ms", 0.0) + tokenize_ms + collate_ms
                timings["model_ms"] = timings.get("model_ms", 0.0) + model_ms
            for index, first, count, truncated, tokens_in in owners:
                best = max(range(first, first + count), key=lambda unit: (raw[unit], -unit))
                results[index] = PassageScore(
                    raw=raw[best],
                    normalized=_sigmoid(raw[best]),
                    tokens_in=tokens_in,
                    tokens_scored=unit_tokens[best],
                    truncated=truncated,
                    chunks=count,
                )
        return [result for result in results if result is not None]

    def _pair_inputs(
        self, loaded: _Loaded, pairs: Sequence[tuple[str, str]], cuts: Sequence[Truncation]
    ) -> list[tuple[list[int], list[int], int, Callable[[list[int], list[int]], EncodedPair]]]:
        """(query ids, passage ids, query+passage budget, build) per pair, in order.

        A cross-encoder tokenizes each distinct query and each passage once and
        glues them into its special-token layout; an LLM reranker tokenizes each
        whole prompt (its instruction included), see
        :mod:`secondpass.pipeline.llm_prompt`.
        """
        tokenizer = loaded.tokenizer
        for cut in cuts:
            self._check_instruction(loaded, cut.instruction)
        if isinstance(tokenizer, PromptTokenizer):
            prompts = tokenizer.encode_pairs(
                [(q, p, cut.instruction) for (q, p), cut in zip(pairs, cuts, strict=True)]
            )
            return [(pp.query_ids, pp.passage_ids, pp.budget, pp.build) for pp in prompts]
        queries = list(dict.fromkeys(query for query, _ in pairs))
        query_ids = dict(zip(queries, tokenizer.encode(queries), strict=True))
        passage_ids = tokenizer.encode([passage for _, passage in pairs])
        return [
            (query_ids[query], ids, tokenizer.pair_budget, tokenizer.build)
            for (query, _), ids in zip(pairs, passage_ids, strict=True)
        ]

    def _check_instruction(self, loaded: _Loaded, instruction: str | None) -> None:
        """Refuse an instruction for a model that takes none (a 4xx for a service caller)."""
        if instruction is None:
            return
        if isinstance(loaded.tokenizer, PromptTokenizer):
            loaded.tokenizer.check_instruction(instruction, self.settings.model)
            return
        msg = (
            f"instruction: {self.settings.model!r} is a sequence-classification cross-encoder, "
            "which takes no instruction; only LLM rerankers (e.g. Qwen3-Reranker) do"
        )
        raise ConfigurationError(msg)

    def effective_truncation(self, truncation: Truncation) -> Truncation:
        """``truncation`` without what cannot change a score here (loads the model).

        Haystack sends ``max_tokens_per_doc=4096`` on every request: more than
        any window (or all of its chunks) holds, so it is dropped and those
        requests share the default cache entries. A ``max_chunks`` equal to the
        configured chunk policy is dropped too. An ``instruction`` is kept (it
        changes every score); one the model has no place for is refused here,
        before the cache or the queue is touched.
        """
        if truncation.is_default:
            return truncation
        self._check_instruction(self._ensure_loaded(), truncation.instruction)
        settings = self.settings
        chunked = truncation.max_chunks is not None or settings.long_document == "chunk"
        max_chunks = truncation.max_chunks
        if settings.long_document == "chunk" and max_chunks == settings.max_chunks:
            max_chunks = None
        max_tokens = truncation.max_tokens
        if max_tokens is not None:
            windows = (truncation.max_chunks or settings.max_chunks) if chunked else 1
            # No window plan reads past windows * budget passage tokens.
            if max_tokens >= windows * self._ensure_loaded().tokenizer.pair_budget:
                max_tokens = None
        return Truncation(
            max_tokens=max_tokens,
            side=truncation.side,
            max_chunks=max_chunks,
            instruction=truncation.instruction,
        )

    def _run_units(
        self, units: Sequence[EncodedPair], loaded: _Loaded
    ) -> tuple[list[float], float, float]:
        """Run model inputs through token-budget batches; raw logits in input order."""
        torch = _import_torch()
        on_cuda = str(loaded.device).startswith("cuda")
        tokenizer = loaded.tokenizer
        multiple = _PAD_MULTIPLE.get(self.backend, 1)

        def collate(batch: list[int]) -> dict[str, Any]:
            return collate_pairs(
                [units[index] for index in batch],
                pad_id=tokenizer.pad_id,
                pad_type_id=tokenizer.pad_type_id,
                padding_side=tokenizer.padding_side,
                pin_memory=on_cuda,
                pad_to_multiple_of=multiple,
            )

        def forward(features: dict[str, Any]) -> list[float]:
            if loaded.runtime is not None:
                runtime_logits: list[float] = loaded.runtime.logits(features)
                return runtime_logits
            moved: dict[str, Any] = {
                name: tensor.to(loaded.device, non_blocking=True)
                for name, tensor in features.items()
            }
            moved["modality"] = "text"
            if loaded.causal:  # only the last position's logits: not (batch x width x vocabulary)
                moved["logits_to_keep"] = 1
            with torch.inference_mode():
                logits = loaded.model(moved)["scores"]
            return [float(value) for value in logits.float().reshape(-1).cpu().tolist()]

        def is_oom(exc: BaseException) -> bool:
            oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
            text = str(exc).lower()
            return (
                (oom_type is not None and isinstance(exc, oom_type))
                or (isinstance(exc, RuntimeError) and "out of memory" in text)
                # ONNX Runtime's wording
                or (loaded.runtime is not None and "failed to allocate" in text)
            )

        runner: BatchRunner[dict[str, Any]] = BatchRunner(
            collate=collate,
            forward=forward,
            token_budget=self._token_budget,
            max_batch_size=self.settings.max_batch_size,
            overlap=self.settings.overlap_collate,
            is_oom=is_oom,
            on_oom=torch.cuda.empty_cache if on_cuda else None,
        )
        try:
            raw = runner.run([padded_length(len(unit), multiple) for unit in units])
        except RerankError:
            raise
        except Exception as exc:
            msg = f"cross-encoder forward pass failed: {type(exc).__name__}: {_short(exc)}"
            raise RerankError(msg) from exc
        finally:
            self._token_budget = min(self._token_budget, runner.token_budget)
        return raw, runner.stats.collate_ms, runner.stats.model_ms

    # -- loading -----------------------------------------------------------------

    def _ensure_loaded(self) -> _Loaded:
        loaded = self._loaded
        if loaded is not None:
            return loaded
        with self._lock:
            if self._loaded is None:
                self._loaded = self._load()
            return self._loaded

    def _resolve_device(self) -> str:
        if self.backend != "torch":
            return "cpu"
        return self._torch_device()

    def _torch_device(self) -> str:
        """Where torch would run the model: the ``device`` setting, ``auto`` resolved."""
        wanted = self.settings.device.strip().lower()
        if wanted != "auto":
            return wanted
        torch = _import_torch()
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"

    def _check_backend(self) -> None:
        """Refuse a dtype, quantization or device the chosen backend cannot run.

        Checked in the constructor, before anything loads. ONNX Runtime and
        OpenVINO run on the CPU; int8 is an ONNX Runtime option. ``auto`` adapts
        to the other settings, except that ``quantize`` pins it to ONNX Runtime.
        """
        settings = self.settings
        backend = settings.backend
        if backend == "auto":
            if settings.quantize is None:
                return
            backend = "onnx"
        runs = f"backend={backend!r} runs {_BACKEND_RUNS[backend]}"
        if settings.quantize is not None and backend != "onnx":
            msg = f"quantize='int8' needs backend='onnx' ({runs} via dtype)"
            raise ConfigurationError(msg)
        if settings.dtype not in _BACKEND_DTYPES[backend]:
            msg = f"{runs}; dtype={settings.dtype!r} needs backend='torch'"
            raise ConfigurationError(msg)
        if backend != "torch" and settings.device.strip().lower() not in ("auto", "cpu"):
            msg = f"backend={backend!r} runs on the CPU; device={settings.device!r} needs backend='torch'"
            raise ConfigurationError(msg)

    def _resolve_dtype_name(self) -> str:
        wanted = self.settings.dtype
        if self.backend == "onnx":
            return "float32"
        if self.backend == "openvino":
            return "bfloat16" if wanted == "bfloat16" else "float32"
        if wanted != "auto":
            return wanted
        device = self._resolve_device()
        if device.startswith("cuda"):
            return "bfloat16" if _import_torch().cuda.is_bf16_supported() else "float16"
        return "float32"

    def _check_weights(self, directory: Path) -> None:
        """Refuse a local model whose only weights are pickles, unless the user allowed them."""
        if self.settings.allow_pickle:
            return
        names = [path.name for path in directory.rglob("*") if path.is_file()]
        has_safe = any(name.endswith(".safetensors") for name in names)
        pickles = sorted(name for name in names if name.endswith(_PICKLE_SUFFIXES))
        if pickles and not has_safe:
            msg = (
                f"model directory {str(directory)!r} has only pickle weights ({', '.join(pickles[:3])}); "
                "loading a pickle can run arbitrary code, so it is refused. Convert the weights to "
                "safetensors, or opt in with allow_pickle=True (SECONDPASS_RERANK_ALLOW_PICKLE=true)"
            )
            raise ModelLoadError(msg)

    def _load(self) -> _Loaded:
        torch = _import_torch()
        try:
            from sentence_transformers import CrossEncoder
        except ImportError as exc:
            raise MissingDependencyError(package="sentence-transformers", extra="rerank") from exc
        settings = self.settings
        device = self._resolve_device()
        # ONNX and OpenVINO export the fp32 torch model; their own precision is applied after.
        dtype = getattr(torch, "float32" if self.backend != "torch" else self._resolve_dtype_name())
        local = Path(settings.model).expanduser()
        is_local = local.is_dir()
        if is_local:
            self._check_weights(local)
        reference = str(local) if is_local else settings.model
        model_kwargs: dict[str, Any] = {"dtype": dtype}
        if not settings.allow_pickle:
            model_kwargs["use_safetensors"] = True

        def build(local_only: bool) -> Any:
            return CrossEncoder(
                reference,
                device=device,
                revision=None if is_local else settings.revision,
                trust_remote_code=settings.trust_remote_code,
                local_files_only=local_only,
                cache_folder=settings.cache_folder,
                model_kwargs=dict(model_kwargs),
            )

        started = time.perf_counter()
        offline = is_local or _hub_offline()
        try:
            try:
                model = build(offline)
            except Exception as exc:
                if offline or not _looks_unreachable(exc):
                    raise
                logger.warning(
                    "model hub unreachable (%s); loading %s from the local cache",
                    _short(exc),
                    reference,
                )
                model = build(True)
        except Exception as exc:
            raise self._load_error(reference, exc) from exc
        model.eval()
        network = model.model
        if network is None:
            msg = f"{reference!r} has no transformers model inside; SecondPass needs a sequence-classification cross-encoder"
            raise ModelLoadError(msg)
        task = getattr(model[0], "transformer_task", "sequence-classification")
        causal = task == "text-generation"  # sentence-transformers' LLM reranker (LogitScore)
        if task != "sequence-classification" and not causal:
            msg = (
                f"{reference!r} is a {task!r} model; SecondPass reranks with sequence-classification "
                "cross-encoders and causal-LM (LLM) rerankers"
            )
            raise ModelLoadError(msg)
        if model.num_labels != 1:
            msg = f"{reference!r} has {model.num_labels} output labels; a reranker needs exactly one relevance logit"
            raise ModelLoadError(msg)
        max_length = self._window(model, network, causal=causal)
        tokenizer: PairTokenizer | PromptTokenizer
        runtime, runs = None, None
        if causal:
            self._llm_backend(reference)
            prompt = PromptTokenizer.from_cross_encoder(
                model, max_length=max_length, default_instruction=settings.instruction
            )
            prompt.check_instruction(settings.instruction, reference)
            logger.info("%s is an LLM reranker; prompt: %s", reference, prompt.prompt.name)
            tokenizer = prompt
        else:
            if settings.instruction is not None:
                logger.info(
                    "instruction setting ignored: %s is a sequence-classification cross-encoder",
                    reference,
                )
            pair = PairTokenizer.from_pretrained_tokenizer(model.tokenizer, max_length=max_length)
            runtime, runs = self._load_auto_runtime(network, pair, reference)
            tokenizer = pair
        logger.info(
            "loaded cross-encoder %s on %s (%s, window %d tokens) in %.1f s",
            reference,
            device,
            runs or str(dtype).replace("torch.", ""),
            max_length,
            time.perf_counter() - started,
        )
        return _Loaded(
            model=model,
            network=network,
            tokenizer=tokenizer,
            device=model.device,
            dtype=dtype,
            max_length=max_length,
            runtime=runtime,
            causal=causal,
        )

    def _llm_backend(self, reference: str) -> None:
        """LLM rerankers run on torch: ``auto`` switches to it, an explicit CPU runtime is refused.

        Our ONNX/OpenVINO export traces a model that outputs one relevance
        logit; a causal LM outputs a vocabulary-wide logit row per position
        (and wants a KV-cache-shaped export), so it is not exported here.
        """
        if self.backend == "torch":
            return
        if self.settings.backend == "auto":
            logger.info("backend=auto: %s is an LLM reranker, running it on torch", reference)
            self._backend = "torch"
            self._fingerprint = None
            return
        msg = (
            f"{reference!r} is an LLM (causal-LM) reranker, which runs on backend='torch' only; "
            f"backend={self.backend!r} runs sequence-classification cross-encoders "
            "(use backend='torch' or 'auto')"
        )
        raise ConfigurationError(msg)

    def _load_auto_runtime(
        self, network: Any, tokenizer: PairTokenizer, reference: str
    ) -> tuple[Any, str | None]:
        """:meth:`_load_runtime`; under ``backend="auto"`` a runtime that cannot load falls back to torch.

        The fallback keeps every model torch can run loadable under the default
        (an architecture the ONNX exporter cannot trace, a broken install, an
        export folder that cannot be written, as in a read-only container). The
        fingerprint is recomputed, so cache keys name the backend really used.
        """
        try:
            return self._load_runtime(network, tokenizer, reference)
        except (ModelLoadError, MissingDependencyError, OSError) as exc:
            if self.settings.backend != "auto":
                raise
            logger.warning(
                "backend=auto: %s could not load %s (%s); running it on torch instead",
                self.backend,
                reference,
                _short(exc),
            )
            self._backend = "torch"
            self._fingerprint = None
            return None, None

    def _load_runtime(
        self, network: Any, tokenizer: PairTokenizer, reference: str
    ) -> tuple[Any, str | None]:
        """The ONNX Runtime or OpenVINO forward pass for ``network`` (None on the torch backend)."""
        settings = self.settings
        if self.backend == "torch":
            return None, None
        threads = _import_torch().get_num_threads()
        input_names = ["input_ids", "attention_mask"] + (
            ["token_type_ids"] if tokenizer.with_token_types else []
        )
        from secondpass.pipeline.onnx_backend import ExportSource, load_onnx_cross_encoder

        source = ExportSource(
            network=network,
            identity=f"{reference}@{settings.revision or '-'}",
            cache_folder=settings.cache_folder,
            input_names=tuple(input_names),
        )
        if self.backend == "openvino":
            from secondpass.pipeline.openvino_backend import (
                Precision,
                load_openvino_cross_encoder,
            )

            precision: Precision = (
                "bfloat16" if self._resolve_dtype_name() == "bfloat16" else "float32"
            )
            model = load_openvino_cross_encoder(source, precision=precision, threads=threads)
            return model, f"openvino {model.precision}"
        onnx_model = load_onnx_cross_encoder(source, quantize=settings.quantize, threads=threads)
        return onnx_model, f"onnx {settings.quantize or 'fp32'}"

    def _window(self, model: Any, network: Any, *, causal: bool = False) -> int:
        """The real window: min of the setting, the tokenizer's max and the position table.

        A model whose learned positions have a padding offset (RoBERTa, XLM-R:
        514 rows, positions start after the padding index) fits two fewer
        tokens than its table has rows; going past that trips a device assert.
        An LLM reranker without a ``max_length`` setting gets
        :data:`~secondpass.pipeline.llm_prompt.LLM_DEFAULT_WINDOW` at most.
        """
        limits: list[int] = []
        if self.settings.max_length is not None:
            limits.append(self.settings.max_length)
        elif causal:
            limits.append(LLM_DEFAULT_WINDOW)
        tokenizer_max = getattr(model.tokenizer, "model_max_length", None)
        if isinstance(tokenizer_max, int) and 0 < tokenizer_max < 1_000_000:
            limits.append(tokenizer_max)
        table = None
        for name, module in network.named_modules():
            if name.endswith("position_embeddings") and hasattr(module, "num_embeddings"):
                table = module
                break
        if table is not None:
            padding_idx = getattr(table, "padding_idx", None)
            limits.append(
                int(table.num_embeddings) - (int(padding_idx) + 1 if padding_idx is not None else 0)
            )
        else:
            positions = getattr(network.config, "max_position_embeddings", None)
            if isinstance(positions, int) and positions > 0:
                limits.append(positions)
        if not limits:
            msg = "cannot tell the model's maximum input length; set max_length"
            raise ModelLoadError(msg)
        return min(limits)

    def _load_error(self, reference: str, exc: BaseException) -> ModelLoadError:
        text = str(exc).lower()
        if not self.settings.trust_remote_code and "trust_remote_code" in text:
            msg = (
                f"{reference!r} needs its own Python code to load; that code is not run unless you "
                "opt in with trust_remote_code=True together with a pinned revision"
            )
            return ModelLoadError(msg)
        if not self.settings.allow_pickle and ("safetensors" in text or ".bin" in text):
            msg = (
                f"{reference!r} has no safetensors weights; pickle (.bin) weights can run arbitrary "
                "code when loaded and are refused unless you opt in with allow_pickle=True"
            )
            return ModelLoadError(msg)
        msg = f"could not load cross-encoder {reference!r}: {type(exc).__name__}: {_short(exc)}"
        return ModelLoadError(msg)
