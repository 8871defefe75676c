"""Exports of models over 2 GB: tensors in a ``.data`` sidecar, forced here on the tiny model.

bge-reranker-v2-m3 has 2.3 GB of fp32 weights, more than one protobuf message
may hold, so its ONNX export must keep them in an external-data file. Lowering
``external_data_threshold`` to 0 sends the tiny model down that same path, so CI
covers it in a second instead of exporting a real 2 GB model
(``benchmarks/default_model_bench.py`` does that).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from secondpass.pipeline.onnx_backend import ExportSource, load_onnx_cross_encoder

pytest.importorskip("onnxruntime")


def _source(scorer, cache: Path, threshold: int) -> ExportSource:
    return ExportSource(
        network=scorer.network,
        identity="tiny-external-data-test",
        cache_folder=str(cache),
        input_names=("input_ids", "attention_mask", "token_type_ids"),
        external_data_threshold=threshold,
    )


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".data")


def test_forced_external_data_export_runs_and_matches_torch(tiny_scorer, tmp_path) -> None:
    source = _source(tiny_scorer, tmp_path, threshold=0)
    model = load_onnx_cross_encoder(source, quantize=None, threads=1)  # probes against torch
    graph, data = model.path, _sidecar(model.path)
    assert data.is_file() and graph.is_file()
    # the weights really live in the sidecar, not in the graph
    assert data.stat().st_size > 10 * graph.stat().st_size
    export_dir = graph.parent
    # nothing of the staging or trace scratch directories is left behind
    assert [p.name for p in export_dir.parent.iterdir()] == [export_dir.name]

    int8 = load_onnx_cross_encoder(source, quantize="int8", threads=1)
    assert int8.path.parent == export_dir and _sidecar(int8.path).is_file()
    # the fused fp32 graph reused for int8 was copied with its sidecar, not rebuilt without it
    assert _sidecar(export_dir / "model.onnx").is_file()


def test_below_the_threshold_the_export_stays_one_file(tiny_scorer, tmp_path) -> None:
    model = load_onnx_cross_encoder(_source(tiny_scorer, tmp_path, threshold=1 << 40), quantize=None, threads=1)
    assert not _sidecar(model.path).exists()


def test_openvino_reads_the_portable_export_with_its_sidecar(tiny_scorer, tmp_path) -> None:
    pytest.importorskip("openvino")
    from secondpass.pipeline.openvino_backend import load_openvino_cross_encoder

    model = load_openvino_cross_encoder(
        _source(tiny_scorer, tmp_path, threshold=0), precision="float32", threads=1
    )  # probes against torch
    assert model.path.name == "model.portable.onnx" and _sidecar(model.path).is_file()
