"""Proxy latency: a direct search vs the same search through the proxy (prints figures only).

One run, same engine, same queries, the three ways interleaved so that drift hits
them alike:

  direct       client -> engine                                  (the baseline)
  proxy, off   client -> proxy -> engine, X-SecondPass-Rerank: off (forwarding cost)
  proxy, on    client -> proxy -> engine, the window reranked       (what users get)

It prints p50/p99 of each in milliseconds of client wall time, the latency each
proxy mode adds over the direct search, and, from the proxy's ``Server-Timing``
header, the rerank time (``Retriever.arerank_hits`` wall time) and the proxy's own
time apart from the engine round trip and reranking.

The engine is ``--upstream URL`` (an index of the sample corpus is created there and
deleted at the end) or, without it, a local ``--engine`` node (512 MB heap) started
and stopped here. The model is ``--model`` (default: the configured cross-encoder,
falling back to the packaged all-MiniLM-L6-v2 bi-encoder when it cannot be loaded,
as the demo does; the header says which). The score cache is off unless
``--cache``, so every reranked search runs the model. The proxy runs in this
process (a uvicorn thread), like an in-process deployment.

    .venv/bin/python benchmarks/proxy_latency.py --engine opensearch --repeat 100
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from importlib import resources

import httpx

from secondpass.pipeline.cache import LRUScoreCache
from secondpass.pipeline.models import load_scorer
from secondpass.proxy import BackgroundProxy, ProxySettings, RerankProxy

INDEX = "secondpass-bench-proxy"


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def index_sample_corpus(url: str) -> int:
    corpus = resources.files("secondpass.data").joinpath("sample_corpus.jsonl").read_text("utf-8")
    lines = []
    for row in map(json.loads, corpus.splitlines()):
        lines.append(json.dumps({"index": {"_index": INDEX, "_id": row["_id"]}}))
        lines.append(json.dumps({"title": row.get("title", ""), "text": row["text"]}))
    with httpx.Client(base_url=url, timeout=120) as http:
        http.delete(f"/{INDEX}")
        http.put(f"/{INDEX}", json={"settings": {"number_of_shards": 1, "number_of_replicas": 0},
                                    "mappings": {"properties": {"title": {"type": "text"},
                                                                "text": {"type": "text"}}}})  # fmt: skip
        answer = http.post("/_bulk?refresh=true", content="\n".join(lines) + "\n",
                           headers={"content-type": "application/x-ndjson"})  # fmt: skip
        answer.raise_for_status()
        if answer.json()["errors"]:
            raise SystemExit("bulk indexing the sample corpus failed")
    return len(lines) // 2


def sample_queries() -> list[str]:
    text = resources.files("secondpass.data").joinpath("sample_queries.jsonl").read_text("utf-8")
    return [json.loads(line)["text"] for line in text.splitlines() if line.strip()]


def timed(fn: Callable[[], httpx.Response]) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = fn()
    elapsed = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    return elapsed, response


def server_timing(response: httpx.Response) -> dict[str, float]:
    parts = (p.strip().split(";dur=") for p in response.headers["server-timing"].split(","))
    return {name: float(value) for name, value in parts}


def run(url: str, args: argparse.Namespace) -> None:
    documents = index_sample_corpus(url)
    scorer, description = load_scorer(args.model, allow_fallback=True, device=args.device)
    settings = ProxySettings(
        upstream=url,
        listen="127.0.0.1:0",
        window=args.window,
        deadline_ms=None,  # measure the whole rerank, never the fallback
        indices={INDEX: {"fields": ["title", "text"]}},
        log_level="warning",
    )
    proxy = RerankProxy(settings, scorer=scorer, cache=LRUScoreCache() if args.cache else None)
    queries = sample_queries()
    modes = ("direct", "proxy, off", "proxy, on")
    wall: dict[str, list[float]] = {mode: [] for mode in modes}
    rerank_ms: list[float] = []
    own_ms: list[float] = []
    with BackgroundProxy(proxy) as proxy_url, httpx.Client(timeout=120) as http:
        targets = {
            "direct": (url, {}),
            "proxy, off": (proxy_url, {"X-SecondPass-Rerank": "off"}),
            "proxy, on": (proxy_url, {}),
        }
        for i in range(args.warmup + args.repeat):
            body = {"query": {"match": {"text": queries[i % len(queries)]}}, "size": args.size}
            for mode in modes:
                base, headers = targets[mode]
                ms, response = timed(
                    lambda b=base, h=headers, q=body: http.post(
                        f"{b}/{INDEX}/_search", json=q, headers=h
                    )  # type: ignore[misc]
                )
                if i < args.warmup:
                    continue
                wall[mode].append(ms)
                if mode == "proxy, on":
                    status = response.headers.get("x-secondpass-rerank")
                    if status != "ok":
                        raise SystemExit(f"a search was not reranked: {status}")
                    timing = server_timing(response)
                    rerank_ms.append(timing["rerank"])
                    own_ms.append(timing["total"] - timing["engine"] - timing["rerank"])
        http.delete(f"{url}/{INDEX}")
    proxy.retriever.close()

    print(f"\nproxy latency, {args.repeat} searches per mode after {args.warmup} warm-up rounds")
    print(f"  engine {url}, {documents} documents, size {args.size}, window {args.window}")
    print(
        f"  scorer: {description}, device {args.device or 'auto'}, cache {'on' if args.cache else 'off'}"
    )
    print("  times are client wall milliseconds (keep-alive connection, this process)\n")
    base50, base99 = percentile(wall["direct"], 0.5), percentile(wall["direct"], 0.99)
    print(f"  {'':<28}{'p50 ms':>10}{'p99 ms':>10}{'added p50':>12}{'added p99':>12}")
    for mode in modes:
        p50, p99 = percentile(wall[mode], 0.5), percentile(wall[mode], 0.99)
        added = "" if mode == "direct" else f"{p50 - base50:>+12.2f}{p99 - base99:>+12.2f}"
        label = f"{mode} (baseline)" if mode == "direct" else mode
        print(f"  {label:<28}{p50:>10.2f}{p99:>10.2f}{added}")
    print("\n  inside the proxy, reranked searches (Server-Timing):")
    print(
        f"  {'rerank (model + cache)':<28}{percentile(rerank_ms, 0.5):>10.2f}{percentile(rerank_ms, 0.99):>10.2f}"
    )
    print(
        f"  {'proxy own (parse, rewrite)':<28}{percentile(own_ms, 0.5):>10.2f}{percentile(own_ms, 0.99):>10.2f}"
    )
    ratio = percentile(wall["proxy, on"], 0.5) / base50
    print(
        f"\n  reranked p50 is x{ratio:.1f} the direct p50; mean direct {statistics.fmean(wall['direct']):.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", help="an existing engine's URL (default: start a local one)")
    parser.add_argument("--engine", choices=("opensearch", "elasticsearch"), default="opensearch")
    parser.add_argument(
        "--model", help="cross-encoder id or directory (default: the configured one)"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: auto)")
    parser.add_argument("--window", type=int, default=50, help="hits reranked per search")
    parser.add_argument("--size", type=int, default=10, help="hits per page")
    parser.add_argument("--repeat", type=int, default=100, help="measured searches per mode")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured rounds first")
    parser.add_argument("--cache", action="store_true", help="keep the score cache on")
    args = parser.parse_args()
    if args.upstream:
        run(args.upstream.rstrip("/"), args)
        return
    from secondpass.servers import LocalEngine

    with LocalEngine(args.engine) as node:
        run(node.url, args)


if __name__ == "__main__":
    main()
