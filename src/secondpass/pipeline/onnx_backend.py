"""ONNX Runtime backend for the cross-encoder: export once, cache on disk, run on CPU.

Why: on a CPU, ONNX Runtime's fused kernels (attention, skip-layer-norm,
bias-GELU) run a BERT-sized cross-encoder about twice as fast as eager torch,
with fp32 scores equal to torch's within 1e-6; dynamic int8 quantization
(VNNI kernels) is faster still, at the cost of ranking fidelity that depends
on the model (measure it: ``benchmarks/rerank_bench.py --backend onnx``).

The already-loaded ``transformers`` model is exported (``torch.onnx.export``,
TorchScript tracer, dynamic batch and sequence axes) into a directory keyed by
a digest of its weights, its identity and the library versions, so the export
happens once per model and is reused by every later process. The scorer keeps
tokenizing and batching exactly as on the torch path (``PairTokenizer`` and
``plan_batches``); this module only replaces the forward pass, so the model
sees byte-identical inputs.

Every ``onnxruntime``/``onnx`` import is inside a function: importing this
module costs nothing, and a missing package is a ``MissingDependencyError``
naming the ``fast`` extra.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from secondpass.errors import MissingDependencyError, ModelLoadError

logger = logging.getLogger(__name__)

Quantize = Literal["int8"] | None

OPSET = 17  # LayerNormalization is a single op from 17 on
# bump when the export recipe changes, so old caches are not reused
# (2: tensors of large models kept in a ``.data`` sidecar; format 1 left them behind)
EXPORT_FORMAT = 2
EXTERNAL_DATA_THRESHOLD = 1 << 30
"""Weight bytes from which an export keeps its tensors in a ``<graph>.data`` sidecar file.

A protobuf message cannot exceed 2 GiB, so an ONNX graph holding the weights of
bge-reranker-v2-m3 (2.3 GB in fp32) cannot be written as one file. From 1 GiB of
weights on, every file of an export (traced, fused, int8) is a small graph plus
one external-data file beside it, which ONNX Runtime and OpenVINO both read.
"""
_DATA_SUFFIX = ".data"  # the sidecar of ``model.onnx`` is ``model.onnx.data``
_FP32_FILE = "model.onnx"
_INT8_FILE = "model.int8.onnx"
_PORTABLE_FILE = "model.portable.onnx"  # traced, standard operators only (for OpenVINO)
_META_FILE = "export.json"
# Families whose graph ORT's transformer optimizer knows how to fuse (attention, layer norms, GELU).
_FUSABLE = {"bert", "roberta", "xlm-roberta", "electra", "camembert"}
_PROBE_TOLERANCE = 1e-3  # fp32 export vs torch on a probe batch; typical difference is 1e-6


def import_fast_extra(package: str) -> Any:
    """Import a package of the ``fast`` extra, or raise ``MissingDependencyError`` naming the extra.

    Imported on first use, never at module import: the torch backend must not
    pay for (or need) ONNX Runtime or OpenVINO.
    """
    try:
        return __import__(package)
    except ImportError as exc:
        raise MissingDependencyError(package=package, extra="fast") from exc


def import_onnxruntime() -> Any:
    """Import ``onnxruntime`` or raise ``MissingDependencyError`` naming the ``fast`` extra."""
    return import_fast_extra("onnxruntime")


def _import_onnx() -> Any:
    return import_fast_extra("onnx")


def default_cache_root(cache_folder: str | None) -> Path:
    """Where exports live: ``<cache_folder>/secondpass-onnx``, else under the Hugging Face home."""
    if cache_folder:
        return Path(cache_folder).expanduser() / "secondpass-onnx"
    try:
        from huggingface_hub import constants

        home = Path(constants.HF_HOME)
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        home = Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser()
    return home / "secondpass-onnx"


def weights_digest(network: Any) -> str:
    """sha256 of every parameter and buffer (name, dtype, shape, bytes) of the torch model.

    Keying the export on the weights themselves, not on a model name, means a
    hub model that changed upstream or a local directory rebuilt in place can
    never be served a stale export. Hashing costs about a second per GB.
    """
    import torch

    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in [*network.named_parameters(), *network.named_buffers()]:
            data = tensor.detach().to("cpu").contiguous()
            digest.update(f"{name}|{data.dtype}|{tuple(data.shape)};".encode())
            digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def export_key(network: Any, *, identity: str) -> dict[str, str]:
    """Everything an export depends on; its hash names the cache directory."""
    import torch

    onnxruntime = import_onnxruntime()
    return {
        "identity": identity,
        "weights": weights_digest(network),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "opset": str(OPSET),
        "format": str(EXPORT_FORMAT),
    }


def export_dir(root: Path, key: Mapping[str, str]) -> Path:
    """The directory for ``key`` under ``root`` (a short hash of the sorted key)."""
    blob = json.dumps(dict(key), sort_keys=True).encode()
    return root / hashlib.sha256(blob).hexdigest()[:24]


@contextlib.contextmanager
def _eager_attention(network: Any) -> Iterator[None]:
    """Trace with the plain (eager) attention, whose pattern ORT's optimizer fuses into one op."""
    config = getattr(network, "config", None)
    before = getattr(config, "_attn_implementation", None)
    switched = False
    if before not in (None, "eager") and hasattr(network, "set_attn_implementation"):
        try:
            network.set_attn_implementation("eager")
            switched = True
        except Exception as exc:  # an architecture without eager attention: trace what it has
            logger.debug("keeping %s attention for the ONNX export: %s", before, exc)
    try:
        yield
    finally:
        if switched:
            network.set_attn_implementation(before)


def weights_bytes(network: Any) -> int:
    """Bytes of every parameter and buffer: what decides an external-data export."""
    return sum(
        t.numel() * t.element_size() for t in [*network.parameters(), *network.buffers()]
    )


def _with_sidecar(path: Path) -> list[Path]:
    """``path``'s external-data file (when there is one) first, then ``path`` itself.

    The data goes first wherever files are moved, so a reader that finds the graph
    in the cache also finds its tensors.
    """
    sidecar = path.with_name(path.name + _DATA_SUFFIX)
    return [sidecar, path] if sidecar.is_file() else [path]


def _copy_export(source: Path, target: Path) -> None:
    """Copy a cached graph and its sidecar (same file names, so the graph's references hold)."""
    for item in _with_sidecar(source):
        shutil.copy2(item, target.parent / item.name)


def _export_fp32(
    network: Any, target: Path, *, input_names: list[str], external: bool = False
) -> None:
    """Trace ``network`` to ONNX with dynamic batch and sequence axes.

    With ``external``, the tensors end up in one ``<target>.data`` file. The
    tracer itself writes a graph over 2 GiB as one file per tensor (hundreds of
    them), so the trace goes to a scratch directory and is re-saved from there.
    """
    import torch

    class _Logits(torch.nn.Module):
        """Positional inputs in, the logits tensor out: what the tracer needs."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *inputs: Any) -> Any:
            return self.inner(**dict(zip(input_names, inputs, strict=True))).logits

    dummy = tuple(torch.ones((2, 16), dtype=torch.long) for _ in input_names)
    axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    axes["logits"] = {0: "batch"}
    scratch = Path(tempfile.mkdtemp(prefix=".trace-", dir=target.parent)) if external else None
    traced = target if scratch is None else scratch / target.name
    with _eager_attention(network), warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about Python branches on shapes; the probe check after export
        # is what proves the graph right for other shapes.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Logits(network).eval(),
            dummy,
            str(traced),
            input_names=input_names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    if scratch is not None:
        try:
            _save_external(traced, target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _save_external(source: Path, target: Path) -> None:
    """Re-save ``source`` (and whatever external files it reads) as ``target`` + one sidecar."""
    onnx = _import_onnx()
    onnx.save_model(
        onnx.load(str(source)),
        str(target),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=target.name + _DATA_SUFFIX,
        size_threshold=1024,
    )


def _fuse(source: Path, target: Path, config: Any, *, external: bool = False) -> bool:
    """Offline transformer fusions (attention, skip-layer-norm, bias-GELU); False if not applicable."""
    model_type = str(getattr(config, "model_type", ""))
    heads = getattr(config, "num_attention_heads", None)
    hidden = getattr(config, "hidden_size", None)
    if model_type not in _FUSABLE or not isinstance(heads, int) or not isinstance(hidden, int):
        return False
    try:
        from onnxruntime.transformers import optimizer

        fused = optimizer.optimize_model(
            str(source), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=1
        )
        fused.save_model_to_file(str(target), use_external_data_format=external)
    except Exception as exc:  # the unfused graph is correct, only slower
        logger.warning("ONNX transformer fusion skipped (%s: %s)", type(exc).__name__, exc)
        return False
    return True


def _quantize_int8(source: Path, target: Path, *, external: bool = False) -> None:
    """Dynamic int8: weights quantized per output channel, activations per batch at run time."""
    onnx = _import_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    root.addFilter(_drop_root_records)  # the quantizer logs progress on the root logger
    try:
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            per_channel=True,  # per-tensor weights cost ~0.05 Spearman on MiniLM-sized rerankers
            use_external_data_format=external,
            # fused ops have no inferred types
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        root.removeFilter(_drop_root_records)


def _drop_root_records(record: logging.LogRecord) -> bool:
    """Keep every record except those logged straight on the root logger."""
    return record.name != "root"


def ensure_export(
    network: Any,
    *,
    root: Path,
    identity: str,
    quantize: Quantize = None,
    input_names: list[str],
    portable: bool = False,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
) -> Path:
    """Path of the ONNX file for ``network`` (and ``quantize``), exporting it first if absent.

    ``portable=True`` asks for the plain traced graph (standard ONNX operators
    only, no ONNX Runtime contrib fusions), which other runtimes such as
    OpenVINO read. An export is built in a temporary directory beside its
    final place and renamed into it, so a crashed or concurrent export never
    leaves a half written model where a later process would load it. A model
    with at least ``external_data_threshold`` bytes of weights is exported with
    its tensors in a ``<file>.data`` sidecar (see :data:`EXTERNAL_DATA_THRESHOLD`).
    """
    key = export_key(network, identity=identity)
    key["inputs"] = ",".join(input_names)
    directory = export_dir(root, key)
    if portable:
        wanted = directory / _PORTABLE_FILE
    else:
        wanted = directory / (_INT8_FILE if quantize == "int8" else _FP32_FILE)
    if wanted.is_file():
        logger.debug("reusing ONNX export %s", wanted)
        return wanted
    _import_onnx()  # both the exporter and the quantizer need it; fail before any work
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        external = weights_bytes(network) >= external_data_threshold
        _build_in(
            staging,
            directory,
            network,
            wanted=wanted.name,
            input_names=input_names,
            external=external,
        )
        (staging / _META_FILE).write_text(
            json.dumps(key, indent=2, sort_keys=True), encoding="utf-8"
        )
        directory.mkdir(parents=True, exist_ok=True)
        for name in (wanted.name, _FP32_FILE, _META_FILE):
            if (staging / name).is_file() and not (directory / name).exists():
                for item in _with_sidecar(staging / name):
                    os.replace(item, directory / item.name)
    except MissingDependencyError:
        raise
    except Exception as exc:
        msg = f"could not export the cross-encoder to ONNX: {error_summary(exc)}"
        raise ModelLoadError(msg) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("exported cross-encoder to %s in %.1f s", wanted, time.perf_counter() - started)
    return wanted


def _build_in(
    staging: Path,
    directory: Path,
    network: Any,
    *,
    wanted: str,
    input_names: list[str],
    external: bool,
) -> None:
    """Write ``wanted`` (and the fused fp32 graph it derives from) into ``staging``.

    Files already in ``directory`` are copied rather than rebuilt: the trace
    and the fusion run at most once per model. Only the fused fp32 graph is
    kept besides what was asked for (the traced graph is as large as the
    weights, and only a portable request keeps it).
    """
    traced = staging / _PORTABLE_FILE

    def trace() -> Path:
        if not traced.is_file():
            if (directory / _PORTABLE_FILE).is_file():
                _copy_export(directory / _PORTABLE_FILE, traced)
            else:
                _export_fp32(network, traced, input_names=input_names, external=external)
        return traced

    if wanted == _PORTABLE_FILE:
        trace()
        return
    fused = staging / _FP32_FILE
    if (directory / _FP32_FILE).is_file():
        _copy_export(directory / _FP32_FILE, fused)
    elif not _fuse(trace(), fused, getattr(network, "config", None), external=external):
        _save_copy(traced, fused, external=external)  # a family the fuser does not know runs unfused
    if wanted == _INT8_FILE:
        _quantize_int8(fused, staging / _INT8_FILE, external=external)


def _save_copy(source: Path, target: Path, *, external: bool) -> None:
    """``source`` under another name; a sidecar is re-written, its name is inside the graph."""
    if external:
        _save_external(source, target)
    else:
        shutil.copy2(source, target)


@dataclass(slots=True)
class OnnxCrossEncoder:
    """An ONNX Runtime session over an exported cross-encoder; the forward pass only."""

    session: Any
    path: Path
    input_names: tuple[str, ...]
    quantize: Quantize

    def logits(self, features: Mapping[str, Any]) -> list[float]:
        """One logit per row of ``features`` (CPU tensors or arrays named like the model inputs)."""
        import numpy as np

        feeds = {}
        for name in self.input_names:
            value = features[name]
            feeds[name] = np.ascontiguousarray(
                value.numpy() if hasattr(value, "numpy") else value, dtype=np.int64
            )
        (out,) = self.session.run(["logits"], feeds)
        return [float(value) for value in np.asarray(out, dtype=np.float64).reshape(-1)]


@dataclass(frozen=True, slots=True)
class ExportSource:
    """What a runtime's export is made of and where it is cached: one per loaded model.

    The scorer describes the torch model once; each runtime's loader asks it
    for the export it needs (ONNX Runtime's optimized graph or the portable one
    OpenVINO reads), so the export recipe and its cache key live here only.
    """

    network: Any
    identity: str
    cache_folder: str | None
    input_names: tuple[str, ...]
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD

    def export(self, *, quantize: Quantize = None, portable: bool = False) -> Path:
        """The cached export's path, made first if absent (see :func:`ensure_export`)."""
        return ensure_export(
            self.network,
            root=default_cache_root(self.cache_folder),
            identity=self.identity,
            quantize=quantize,
            input_names=list(self.input_names),
            portable=portable,
            external_data_threshold=self.external_data_threshold,
        )

    def check(
        self, model: LogitsModel, *, tolerance: float = _PROBE_TOLERANCE, runtime: str = "ONNX"
    ) -> None:
        """Compare ``model`` with the torch network on a probe batch (see :func:`check_probe`)."""
        check_probe(
            model, self.network, list(self.input_names), tolerance=tolerance, runtime=runtime
        )


def error_summary(exc: BaseException) -> str:
    """``Type: first line of the message`` (300 characters at most): a load error's cause.

    A runtime's messages run to whole graph dumps; the first line names the problem.
    """
    lines = str(exc).splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


def load_onnx_cross_encoder(
    source: ExportSource, *, quantize: Quantize, threads: int
) -> OnnxCrossEncoder:
    """Export (or reuse) the model as ONNX and open an InferenceSession on it.

    The session uses every graph optimization and ``threads`` intra-op
    threads (the scorer passes torch's thread count, so both backends use the
    same cores). An fp32 export is checked against the torch model on a probe
    batch of two different lengths: a trace that baked in a shape fails here,
    at load, instead of returning wrong scores later.
    """
    onnxruntime = import_onnxruntime()
    path = source.export(quantize=quantize)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # Idle ORT threads spin by default; here they would steal the cores that
    # tokenize and collate the next batch between runs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        msg = f"could not open the ONNX export {str(path)!r}: {error_summary(exc)}"
        raise ModelLoadError(msg) from exc
    model = OnnxCrossEncoder(
        session=session, path=path, input_names=source.input_names, quantize=quantize
    )
    if quantize is None:
        source.check(model)
    return model


class LogitsModel(Protocol):
    """A forward pass outside torch: model inputs in, one relevance logit per row out."""

    def logits(self, features: Mapping[str, Any]) -> list[float]:
        """One logit per row of ``features`` (CPU tensors or arrays named like the model inputs)."""
        ...


def check_probe(
    model: LogitsModel,
    network: Any,
    input_names: list[str],
    *,
    tolerance: float = _PROBE_TOLERANCE,
    runtime: str = "ONNX",
) -> None:
    """Compare ``model`` and torch logits on a padded batch; raise ``ModelLoadError`` if they disagree.

    ``tolerance`` is absolute for logits up to 1 and relative above. Two rows
    of different lengths (one padded) catch an export that baked in a shape or
    mishandles the attention mask, at load instead of at query time.
    """
    import torch

    ids = torch.tensor(
        [
            [101, 2054, 2003, 1037, 4937, 102, 1037, 2235, 102, 0, 0],
            [101, 4937, 102, 2235] + [0] * 7,
        ]
    )
    mask = (torch.arange(ids.shape[1]) < torch.tensor([[9], [4]])).long()
    vocab = int(getattr(getattr(network, "config", None), "vocab_size", 30522))
    ids = ids % vocab
    features = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    features = {name: features[name] for name in input_names}
    with torch.inference_mode():
        expected = network(**features).logits.float().reshape(-1).tolist()
    got = model.logits(features)
    # NaN compares False with everything: count a non-finite logit as infinitely wrong.
    worst = max(
        abs(a - b) if math.isfinite(b) else math.inf for a, b in zip(expected, got, strict=True)
    )
    if worst > tolerance * max(1.0, *(abs(value) for value in expected)):
        msg = (
            f"the {runtime} run of this model disagrees with torch by {worst:.2e} on a probe batch; "
            "use backend='torch' for it"
        )
        raise ModelLoadError(msg)
