"""OpenVINO backend for the cross-encoder: the CPU fast mode, fp32 or bf16.

Why: on an x86 CPU with AVX512-BF16 (or AMX), OpenVINO runs a BERT-sized
cross-encoder in bf16 about 2.5-3x faster than ONNX Runtime in fp32 with a
ranking that stays within Spearman 0.999 of fp32, where ONNX Runtime's
dynamic int8 loses far more order (activations quantized per tensor). In
fp32 it is exact (scores equal torch's within 1e-5) and a little faster than
ONNX Runtime. ``benchmarks/rerank_bench.py`` prints the figures for a CPU.

OpenVINO reads the plain traced ONNX graph that :mod:`onnx_backend` exports
and caches (keyed by the model's weights), and keeps its own compiled blobs
beside it. The scorer keeps tokenizing and batching as on every other path;
only the forward pass runs here.

Every ``openvino`` import is inside a function, so importing this module is
free and a missing package is a ``MissingDependencyError`` naming ``fast``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from secondpass.errors import ModelLoadError
from secondpass.pipeline.onnx_backend import ExportSource, error_summary, import_fast_extra

logger = logging.getLogger(__name__)

Precision = Literal["float32", "bfloat16"]

_HINTS = {"float32": "f32", "bfloat16": "bf16"}
# bf16 keeps 8 bits of mantissa: logits move by about 1% through a few layers;
# the probe only has to catch a broken graph, not rounding.
_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.1}


def import_openvino() -> Any:
    """Import ``openvino`` or raise ``MissingDependencyError`` naming the ``fast`` extra."""
    return import_fast_extra("openvino")


def cpu_supports_bf16() -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 natively here (AVX512-BF16 or AMX)."""
    openvino = import_openvino()
    capabilities = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "BF16" in [str(item) for item in capabilities]


@dataclass(slots=True)
class OpenVinoCrossEncoder:
    """A compiled OpenVINO model over an exported cross-encoder; the forward pass only.

    An infer request is not safe to share between threads, so each thread that
    scores gets its own (creating one is cheap; the compiled model is shared).
    """

    compiled: Any
    path: Path
    input_names: tuple[str, ...]
    precision: str  # what the CPU plugin actually runs ("f32" or "bf16")
    _local: threading.local = field(default_factory=threading.local)

    def logits(self, features: Mapping[str, Any]) -> list[float]:
        """One logit per row of ``features`` (CPU tensors or arrays named like the model inputs)."""
        import numpy as np

        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        feeds = {}
        for name in self.input_names:
            value = features[name]
            feeds[name] = np.ascontiguousarray(
                value.numpy() if hasattr(value, "numpy") else value, dtype=np.int64
            )
        result = request.infer(feeds)
        out = result[self.compiled.output(0)]
        return [float(value) for value in np.asarray(out, dtype=np.float64).reshape(-1)]


def load_openvino_cross_encoder(
    source: ExportSource, *, precision: Precision, threads: int
) -> OpenVinoCrossEncoder:
    """Export (or reuse) the model as portable ONNX and compile it for the CPU.

    ``precision`` is OpenVINO's inference precision hint: ``bfloat16`` runs
    bf16 kernels where the CPU has them (a warning says so where it has not,
    and the model then runs fp32). One stream of ``threads`` threads, tuned for
    latency: the scorer sends one batch at a time. The compiled model is
    checked against torch on a probe batch before it is used.
    """
    openvino = import_openvino()
    path = source.export(portable=True)
    if precision == "bfloat16" and not cpu_supports_bf16():
        logger.warning(
            "this CPU has no native bf16 (AVX512-BF16 or AMX); OpenVINO runs the model in fp32"
        )
    config = {
        "INFERENCE_PRECISION_HINT": _HINTS[precision],
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": max(1, threads),
        # OpenVINO's blob cache key ignores the precision hint: one directory per precision,
        # or a bf16 compile would load the fp32 blob (and return NaN).
        "CACHE_DIR": str(path.parent / f"openvino-cache-{_HINTS[precision]}"),
    }
    try:
        core = openvino.Core()
        compiled = core.compile_model(str(path), "CPU", config)
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")
        actual = hint.to_string() if hasattr(hint, "to_string") else str(hint)
    except Exception as exc:
        msg = f"OpenVINO could not compile {str(path)!r}: {error_summary(exc)}"
        raise ModelLoadError(msg) from exc
    model = OpenVinoCrossEncoder(
        compiled=compiled, path=path, input_names=source.input_names, precision=actual
    )
    source.check(model, tolerance=_TOLERANCE[precision], runtime=f"OpenVINO {actual}")
    return model
