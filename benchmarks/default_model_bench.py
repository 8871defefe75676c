"""What the default reranker really costs on this CPU: bge-reranker-v2-m3's shape, and Qwen3-Reranker-0.6B's.

The hubs are unreachable here, so the models are random-weight (seeded) copies of
the real architectures, built into a temporary directory; cost depends on the
shape, not on the weights:

* **bge-reranker-v2-m3**: ``XLMRobertaForSequenceClassification``, 24 layers,
  hidden 1024, 16 heads, intermediate 4096, vocabulary 250002, 8194 positions,
  one label (568M parameters, 2.27 GB in fp32). Loaded through SecondPass's own
  ``CrossEncoderScorer``, as a user's model would be.
* **Qwen3-Reranker-0.6B**: ``Qwen3ForCausalLM``, 28 layers, hidden 1024, 16
  heads, 8 key/value heads (head_dim 128), intermediate 3072, vocabulary 151669,
  tied embeddings (596M parameters). Measured through ``CrossEncoderScorer``
  when this checkout's scorer loads causal-LM rerankers, else through
  ``transformers`` directly (the forward pass the scorer would run: left-padded
  batches, the yes/no logits read at the last token only); each row says which.

Tokenizer: XLM-R's sentencepiece model (and Qwen's BPE) cannot be downloaded, so
both models use the packaged all-MiniLM-L6-v2 WordPiece tokenizer. Its ids
(0..30521) already lie inside both vocabularies, so they are used as they are (an
identity map into the 250k / 151k rows): an embedding lookup costs the same for any
row, and the vocabulary's size only changes memory and export size, which the
models still have in full. Passages are SciFact abstracts (``--data``, default
``../shared/data/scifact`` beside the repository) or seeded text, cut to exactly
``--tokens`` WordPiece tokens; the query is a SciFact claim.

Each mode runs in its own subprocess, so its peak RSS (``ru_maxrss``: model,
export, runtime) is its own:

  torch     torch fp32 (``backend="torch"``, ``dtype="float32"``): the baseline of every ratio
  exact     what ``backend="auto"`` picks on this CPU (OpenVINO fp32 with the ``fast``
            extra, else ONNX Runtime fp32): scores must equal torch's
  fast      OpenVINO bf16 where the CPU runs bf16 natively (AVX512-BF16/AMX), else
            ONNX Runtime dynamic int8; its fidelity is the Spearman vs torch fp32

Timing: wall time of one ``scorer.score(query, passages)`` call (tokenizing,
batching, forward passes) per query, after a warm-up call; ``--queries`` calls
are averaged. Load time includes the ONNX export when there is one (the export
alone is reported from the exporter's own log line).

    .venv/bin/python benchmarks/default_model_bench.py                    # full (many minutes)
    .venv/bin/python benchmarks/default_model_bench.py --passages 8 --tokens 64 --skip-qwen --layers 2

``--layers`` shrinks both models (for a quick check of the script only: the
figures are then not the real model's). Last line:
``RESULT bge_m3_shape_s_per_query=<exact> fast=<fast> rss_gb=<peak RSS of the exact mode>``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SEED = 17
BGE_M3 = {
    "vocab_size": 250002,
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "max_position_embeddings": 8194,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "num_labels": 1,
}
QWEN3_RERANKER_06B = {
    "vocab_size": 151669,
    "hidden_size": 1024,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 3072,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
}
# Qwen3-Reranker's prompt around each pair (its model card); the text matters only by its length.
QWEN_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n<Instruct>: Given a web search query, retrieve relevant passages that "
    "answer the query\n<Query>: "
)
QWEN_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
GB = 1e9


# ----------------------------------------------------------------------------- building


def _tokenizer() -> Any:
    """The packaged WordPiece tokenizer, without token types (XLM-R has one segment)."""
    from transformers import AutoTokenizer

    from secondpass.pipeline.dense import packaged_model_path

    return AutoTokenizer.from_pretrained(
        packaged_model_path(), model_input_names=["input_ids", "attention_mask"]
    )


def build_bge_m3_shape(path: Path, *, layers: int | None) -> Path:
    """A seeded ``XLMRobertaForSequenceClassification`` of bge-reranker-v2-m3's shape."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    tokenizer = _tokenizer()
    tokenizer.model_max_length = 8192  # bge-reranker-v2-m3's tokenizer window
    shape = dict(BGE_M3, num_hidden_layers=layers or BGE_M3["num_hidden_layers"])
    # Position ids count non-padding tokens, so the padding id must be the tokenizer's.
    config = XLMRobertaConfig(
        **shape,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        architectures=["XLMRobertaForSequenceClassification"],
    )
    torch.manual_seed(SEED)
    model = XLMRobertaForSequenceClassification(config).eval()
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def build_qwen3_reranker_shape(path: Path, *, layers: int | None) -> Path:
    """A seeded ``Qwen3ForCausalLM`` of Qwen3-Reranker-0.6B's shape (tied embeddings)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = _tokenizer()
    tokenizer.padding_side = "left"  # the score is read at the last token of every row
    shape = dict(QWEN3_RERANKER_06B, num_hidden_layers=layers or QWEN3_RERANKER_06B["num_hidden_layers"])
    config = Qwen3Config(
        **shape, pad_token_id=tokenizer.pad_token_id, architectures=["Qwen3ForCausalLM"]
    )
    torch.manual_seed(SEED)
    model = Qwen3ForCausalLM(config).eval()
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def workload(data: Path | None, passages: int, tokens: int, seed: int) -> tuple[str, list[str], str]:
    """One query and ``passages`` texts of exactly ``tokens`` WordPiece tokens each."""
    tokenizer = _tokenizer()
    rng = random.Random(seed)
    if data is not None and (data / "corpus.jsonl").is_file():
        texts = [
            (lambda d: f"{d['title']}. {d['text']}")(json.loads(line))
            for line in (data / "corpus.jsonl").open(encoding="utf-8")
        ]
        claims = [json.loads(line)["text"] for line in (data / "queries.jsonl").open(encoding="utf-8")]
        source = f"SciFact abstracts ({data})"
    else:
        words = "cell protein gene expression patients study results treatment risk model data".split()
        texts = [" ".join(rng.choice(words) for _ in range(400)) for _ in range(passages * 2)]
        claims = ["gene expression changes the risk of disease in patients"]
        source = "seeded text"
    rng.shuffle(texts)
    out: list[str] = []
    pool = iter(texts)
    while len(out) < passages:
        ids: list[int] = []
        while len(ids) < tokens:  # short abstracts are joined until the passage is long enough
            ids += tokenizer(next(pool), add_special_tokens=False)["input_ids"]
        out.append(tokenizer.decode(ids[:tokens]))
    return rng.choice(claims), out, source


# ----------------------------------------------------------------------------- workers


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB  # Linux: KiB


class _ExportLog(logging.Handler):
    """Catches the exporter's ``exported cross-encoder to %s in %.1f s`` line."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seconds: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("exported cross-encoder") and record.args:
            self.seconds = float(record.args[-1])  # type: ignore[index]


def _export_bytes(cache: Path) -> dict[str, int]:
    return {
        str(p.relative_to(cache)): p.stat().st_size
        for p in sorted(cache.rglob("*"))
        if p.is_file() and (p.suffix == ".onnx" or p.name.endswith(".onnx.data"))
    }


def run_scorer_mode(args: argparse.Namespace) -> dict[str, Any]:
    """Load ``args.model_dir`` through CrossEncoderScorer in one mode and time it."""
    from secondpass.pipeline.scorer import CrossEncoderScorer

    settings = json.loads(args.settings)
    catcher = _ExportLog()
    logging.getLogger("secondpass.pipeline.onnx_backend").addHandler(catcher)
    logging.getLogger("secondpass.pipeline.onnx_backend").setLevel(logging.INFO)
    query, passages = json.loads(Path(args.workload).read_text())
    started = time.perf_counter()
    scorer = CrossEncoderScorer(
        model=args.model_dir, device="cpu", cache_folder=args.cache, **settings
    )
    scorer.warm_up()
    load_s = time.perf_counter() - started
    result = {
        "path": "CrossEncoderScorer",
        "backend": scorer.backend,
        "dtype": scorer.dtype,
        "load_s": load_s,
        "export_s": catcher.seconds,
        "rss_gb": _peak_rss_gb(),
    }
    if args.queries == 0:  # the export run: load (and export) only
        return result
    scorer.score(query, passages[: max(1, len(passages) // 8)])  # warm-up: kernels, shapes
    times, scores = [], []
    for _ in range(args.queries):
        started = time.perf_counter()
        scores = scorer.score(query, passages)
        times.append(time.perf_counter() - started)
    return {
        **result,
        "s_per_query": statistics.mean(times),
        "tokens_scored": statistics.mean(s.tokens_scored or 0 for s in scores),
        "scores": [s.raw for s in scores],
        "rss_gb": _peak_rss_gb(),
    }


def run_causal_direct(args: argparse.Namespace) -> dict[str, Any]:
    """Qwen3-Reranker's forward pass through transformers: prompt, left padding, last-token yes/no."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings = json.loads(args.settings)
    dtype = getattr(torch, settings.get("dtype", "float32"))
    budget = int(settings.get("token_budget", 16384))
    query, passages = json.loads(Path(args.workload).read_text())
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=dtype).eval()
    load_s = time.perf_counter() - started
    yes, no = tokenizer.convert_tokens_to_ids(["yes", "no"])
    texts = [f"{QWEN_PREFIX}{query}\n<Document>: {p}{QWEN_SUFFIX}" for p in passages]

    def score(batch_texts: list[str]) -> list[float]:
        out: list[float] = []
        width = max(len(ids) for ids in tokenizer(batch_texts[:8])["input_ids"])
        step = max(1, budget // width)
        for start in range(0, len(batch_texts), step):
            feats = tokenizer(batch_texts[start : start + step], padding=True, return_tensors="pt")
            with torch.inference_mode():
                logits = model(**feats, logits_to_keep=1).logits[:, -1, :].float()
            out += (logits[:, yes] - logits[:, no]).tolist()
        return out

    score(texts[: max(1, len(texts) // 8)])
    times, scores = [], []
    for _ in range(args.queries):
        started = time.perf_counter()
        scores = score(texts)
        times.append(time.perf_counter() - started)
    return {
        "path": "transformers directly",
        "backend": "torch",
        "dtype": settings.get("dtype", "float32"),
        "load_s": load_s,
        "export_s": None,
        "s_per_query": statistics.mean(times),
        "tokens_scored": statistics.mean(len(t) for t in tokenizer(texts)["input_ids"]),
        "scores": scores,
        "rss_gb": _peak_rss_gb(),
    }


def worker_main(args: argparse.Namespace) -> None:
    runner = run_causal_direct if args.worker == "causal" else run_scorer_mode
    result = runner(args)
    Path(args.result).write_text(json.dumps(result))


# ----------------------------------------------------------------------------- driver


def _spawn(kind: str, model_dir: Path, settings: dict[str, Any], work: Path, cache: Path,
           queries: int, timeout: float) -> dict[str, Any]:
    result = work / f"result-{time.monotonic_ns()}.json"
    cmd = [
        sys.executable, __file__, "--worker", kind, "--model-dir", str(model_dir),
        "--settings", json.dumps(settings), "--workload", str(work / "workload.json"),
        "--cache", str(cache), "--result", str(result), "--queries", str(queries),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0 or not result.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail) or f"exit {proc.returncode}"}
    return json.loads(result.read_text())  # type: ignore[no-any-return]


def _spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def _row(label: str, res: dict[str, Any], base: dict[str, Any] | None) -> str:
    if "error" in res:
        return f"  {label:<34} FAILED: {res['error'][:300]}"
    ratio = ""
    fidelity = ""
    if base is not None and "error" not in base:
        ratio = f"{base['s_per_query'] / res['s_per_query']:5.2f}x"
        diff = max(abs(x - y) for x, y in zip(res["scores"], base["scores"], strict=True))
        fidelity = f"max|diff| {diff:.1e}, Spearman {_spearman(res['scores'], base['scores']):.4f}"
    export = "" if res["export_s"] is None else f", export {res['export_s']:.0f} s"
    return (
        f"  {label:<34} {res['s_per_query']:8.2f} s/query  {ratio:>6}  "
        f"peak RSS {res['rss_gb']:5.2f} GB  load {res['load_s']:.0f} s{export}  "
        f"[{res['backend']} {res['dtype']} via {res['path']}] {fidelity}"
    )


def _scorer_loads_causal_lm() -> bool:
    """Whether this checkout's CrossEncoderScorer claims causal-LM (LLM reranker) support."""
    text = (ROOT / "src/secondpass/pipeline/scorer.py").read_text(encoding="utf-8")
    return "ForCausalLM" in text or "LogitScore" in text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=256, help="WordPiece tokens per passage")
    parser.add_argument("--queries", type=int, default=1, help="timed calls per mode (averaged)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "scifact")
    parser.add_argument("--layers", type=int, default=None, help="shrink the models (script check only)")
    parser.add_argument("--skip-qwen", action="store_true")
    parser.add_argument("--skip-bge", action="store_true")
    parser.add_argument("--skip-fast", action="store_true")
    parser.add_argument(
        "--onnx", action="store_true", help="also run ONNX Runtime fp32 (its fused export of the model)"
    )
    parser.add_argument("--mode-timeout", type=float, default=1800.0, help="seconds per mode")
    parser.add_argument("--keep", type=Path, default=None, help="build in this directory and keep it")
    # worker-only arguments
    for name in ("--worker", "--model-dir", "--settings", "--workload", "--cache", "--result"):
        parser.add_argument(name, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker_main(args)
        return
    if min(args.passages, args.tokens, args.queries) < 1:
        parser.error("--passages, --tokens and --queries must be >= 1")

    from secondpass.pipeline.scorer import CrossEncoderScorer

    exact_backend = CrossEncoderScorer(model="unused", device="cpu", backend="auto").backend
    bf16 = False
    try:
        from secondpass.pipeline.openvino_backend import cpu_supports_bf16

        bf16 = cpu_supports_bf16()
    except Exception:  # noqa: BLE001 - no OpenVINO: the fast mode is ONNX int8
        bf16 = False
    fast = {"backend": "openvino", "dtype": "bfloat16"} if bf16 else {"backend": "onnx", "quantize": "int8"}
    import torch

    load = os.getloadavg()
    print(
        f"CPU: {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"native bf16: {bf16}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start "
        "(the machine is shared: other processes compete for the cores)"
    )
    tmp = tempfile.TemporaryDirectory(prefix="default-model-bench-") if args.keep is None else None
    work = Path(tmp.name) if tmp is not None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    query, passages, source = workload(args.data if args.data.is_dir() else None, args.passages, args.tokens, SEED)
    (work / "workload.json").write_text(json.dumps([query, passages]))
    print(f"workload: 1 query x {args.passages} passages x {args.tokens} WordPiece tokens from {source}; "
          f"{args.queries} timed call(s) per mode after a warm-up call")  # fmt: skip
    if args.layers:
        print(f"NOTE: --layers {args.layers}: shrunken models, these are NOT the real models' figures")

    results: dict[str, dict[str, Any]] = {}
    if not args.skip_bge:
        started = time.perf_counter()
        bge = build_bge_m3_shape(work / "bge-m3-shape", layers=args.layers)
        params = sum(p.stat().st_size for p in bge.glob("*.safetensors"))
        print(f"\nbge-reranker-v2-m3 shape: built in {time.perf_counter() - started:.0f} s, "
              f"safetensors {params / GB:.2f} GB")  # fmt: skip
        cache = work / "exports"
        modes = {
            "torch fp32": {"backend": "torch", "dtype": "float32"},
            f"exact ({exact_backend} fp32, auto)": {"backend": exact_backend, "dtype": "float32"},
        }
        if not args.skip_fast:
            modes[f"fast ({fast['backend']} {'bf16' if bf16 else 'int8'})"] = fast
        if args.onnx and exact_backend != "onnx":
            modes["onnx fp32 (ONNX Runtime, fused)"] = {"backend": "onnx", "dtype": "float32"}
        if exact_backend != "torch":
            # The export runs once, in its own process, so the modes below measure what
            # serving costs (a cached export) and the export's own peak memory is shown apart.
            res = _spawn("scorer", bge, list(modes.values())[1], work, cache, 0,
                         args.mode_timeout)  # fmt: skip
            if "error" in res:
                print(f"  ONNX export FAILED: {res['error'][:300]}")
            else:
                print(f"  ONNX export (first load of the exact mode): {res['export_s'] or 0:.0f} s, "
                      f"peak RSS {res['rss_gb']:.2f} GB (torch model + exporter), "
                      f"load incl. export {res['load_s']:.0f} s", flush=True)  # fmt: skip
        for label, settings in modes.items():
            results[label] = _spawn("scorer", bge, settings, work, cache, args.queries, args.mode_timeout)
            print(_row(label, results[label], None if label == "torch fp32" else results["torch fp32"]),
                  flush=True)  # fmt: skip
        sizes = _export_bytes(cache)
        for name, size in sizes.items():
            print(f"  export {name}: {size / GB:.2f} GB")
        if not sizes:
            print("  (no ONNX export: the exact and fast modes ran on torch)")

    if not args.skip_qwen:
        started = time.perf_counter()
        qwen = build_qwen3_reranker_shape(work / "qwen3-reranker-shape", layers=args.layers)
        print(f"\nQwen3-Reranker-0.6B shape: built in {time.perf_counter() - started:.0f} s")
        kind = "scorer" if _scorer_loads_causal_lm() else "causal"
        if kind == "causal":
            print("  CrossEncoderScorer has no causal-LM support in this checkout: measured through "
                  "transformers directly (prompt + left padding + last-token yes/no logits)")  # fmt: skip
        qwen_modes = {"qwen torch fp32": {"backend": "torch", "dtype": "float32"}}
        if not args.skip_fast:
            qwen_modes["qwen torch bf16"] = {"backend": "torch", "dtype": "bfloat16"}
        for label, settings in qwen_modes.items():
            res = _spawn(kind, qwen, settings, work, work / "qwen-exports", args.queries, args.mode_timeout)
            if kind == "scorer" and "error" in res:
                print(f"  {label}: the scorer refused it ({res['error'][:200]}); measuring directly")
                res = _spawn("causal", qwen, settings, work, work / "qwen-exports", args.queries,
                             args.mode_timeout)  # fmt: skip
            results[label] = res
            print(_row(label, res, None if label == "qwen torch fp32" else results["qwen torch fp32"]),
                  flush=True)  # fmt: skip

    load = os.getloadavg()
    print(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if tmp is not None:
        tmp.cleanup()
    exact = next((r for k, r in results.items() if k.startswith("exact")), {})
    fastest = next((r for k, r in results.items() if k.startswith("fast")), {})

    def fig(res: dict[str, Any], key: str) -> str:
        return "n/a" if key not in res else f"{res[key]:.2f}"

    print(f"RESULT bge_m3_shape_s_per_query={fig(exact, 's_per_query')} "
          f"fast={fig(fastest, 's_per_query')} rss_gb={fig(exact, 'rss_gb')}")  # fmt: skip


if __name__ == "__main__":
    main()
