"""Shadow mode's cost to the client: latency with shadow on vs off, and drops under overload.

For each front-end (the drop-in proxy, and the service's ``/v1/search``), on one
local engine and one model, 16 concurrent clients (keep-alive, loopback, this
process) send the sample queries to two instances side by side, phases
interleaved (off, on, off, on) so drift hits both alike:

  off   first-stage answers with no shadow work (``--rerank-share 0
        --rerank-share-rest pass``: the proxy passes the search through, the
        service answers its first stage)
  on    every search shadowed (``--shadow``): the same first-stage answer, the
        rerank queued in the background on the same scoring engine

"added" is on minus off, p50 and p99 of client wall milliseconds. With 16 clients
and a CPU model, the background reranks cannot keep up: the bounded shadow queue
(``--shadow-queue``) drops the excess, and ``secondpass_shadow_dropped_total``
is the drop count reported. The last line is machine-readable::

    RESULT shadow_added_p50_ms=.. shadow_added_p99_ms=.. shadow_dropped=..

(the worse of the two front-ends for the latency figures; drops summed).

    .venv/bin/python benchmarks/shadow_latency.py --engine elasticsearch --requests 400
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx

# run as a script from benchmarks/: the proxy benchmark's corpus and percentile helpers
from proxy_latency import INDEX, index_sample_corpus, percentile, sample_queries  # type: ignore[import-not-found]

from secondpass.pipeline.models import load_scorer
from secondpass.proxy import BackgroundProxy, ProxySettings, RerankProxy
from secondpass.servers._process import free_port

FIELDS = ["title", "text"]


async def load(url: str, path: str, bodies: list[dict[str, Any]], clients: int) -> list[float]:
    """Send ``bodies`` from ``clients`` concurrent keep-alive clients; client wall ms each."""
    samples: list[float] = []
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            while not queue.empty():
                body = queue.get_nowait()
                started = time.perf_counter()
                answer = await http.post(path, json=body)
                samples.append((time.perf_counter() - started) * 1000)
                answer.raise_for_status()

    await asyncio.gather(*(client() for _ in range(clients)))
    return samples


def measure(
    name: str, urls: dict[str, str], path: str, bodies: list[dict[str, Any]], args: argparse.Namespace
) -> tuple[float, float]:
    wall: dict[str, list[float]] = {"off": [], "on": []}
    asyncio.run(load(urls["off"], path, bodies[: args.clients * 2], args.clients))  # warm-up
    asyncio.run(load(urls["on"], path, bodies[: args.clients * 2], args.clients))
    for _ in range(2):
        for mode in ("off", "on"):
            wall[mode] += asyncio.run(load(urls[mode], path, bodies, args.clients))
    added50 = percentile(wall["on"], 0.5) - percentile(wall["off"], 0.5)
    added99 = percentile(wall["on"], 0.99) - percentile(wall["off"], 0.99)
    print(f"\n{name}: {len(wall['on'])} searches per mode, {args.clients} concurrent clients")
    print(f"  {'':<8}{'p50 ms':>10}{'p99 ms':>10}")
    for mode in ("off", "on"):
        print(f"  {mode:<8}{percentile(wall[mode], 0.5):>10.2f}{percentile(wall[mode], 0.99):>10.2f}")
    print(f"  {'added':<8}{added50:>+10.2f}{added99:>+10.2f}")
    return added50, added99


@contextlib.contextmanager
def served(app: Any) -> Iterator[str]:
    """Serve an ASGI app (the service) with uvicorn from a thread on a free loopback port."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise SystemExit("the service did not start")
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(30)


def dropped(registry: Any) -> int:
    return int(registry.get_sample_value("secondpass_shadow_dropped_total", {"reason": "queue_full"}) or 0)


def run(url: str, args: argparse.Namespace) -> None:
    documents = index_sample_corpus(url)
    scorer, description = load_scorer(args.model, allow_fallback=True, device=args.device)
    queries = sample_queries()
    print(f"engine {url}, {documents} documents; scorer: {description}; window {args.window}, "
          f"shadow queue {args.shadow_queue}")  # fmt: skip
    rollout = {
        "off": {"rerank_share": 0.0, "rerank_share_rest": "pass"},
        "on": {"shadow": True, "shadow_queue": args.shadow_queue},
    }
    # -- proxy
    proxies = {
        mode: RerankProxy(
            ProxySettings(upstream=url, listen="127.0.0.1:0", window=args.window,
                          indices={INDEX: {"fields": FIELDS}}, log_level="warning", **extra),
            scorer=scorer,
        )  # fmt: skip
        for mode, extra in rollout.items()
    }
    bodies = [{"query": {"match": {"text": queries[i % len(queries)]}}, "size": 10} for i in range(args.requests)]
    with BackgroundProxy(proxies["off"]) as off, BackgroundProxy(proxies["on"]) as on:
        proxy_added = measure("proxy /{index}/_search", {"off": off, "on": on}, f"/{INDEX}/_search", bodies, args)
    proxy_dropped = dropped(proxies["on"].metrics.registry)
    print(f"  shadow reranks dropped (queue full): {proxy_dropped}")
    for proxy in proxies.values():
        proxy.close()
    # -- service
    from secondpass.service.app import create_app
    from secondpass.service.settings import ServiceSettings

    services = {
        mode: create_app(
            ServiceSettings(search_index=INDEX, search_fields=FIELDS, search_window=args.window,
                            engine={"engine": args.engine, "hosts": [url]}, **extra),
            scorer=scorer,
        )  # fmt: skip
        for mode, extra in rollout.items()
    }
    bodies = [{"query": queries[i % len(queries)], "k": 10} for i in range(args.requests)]
    with served(services["off"]) as off, served(services["on"]) as on:
        for base in (off, on):  # the service loads in the background: wait until it searches
            deadline = time.monotonic() + 120
            while httpx.get(f"{base}/readyz", timeout=10).status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.5)
        service_added = measure("service /v1/search", {"off": off, "on": on}, "/v1/search", bodies, args)
    service_dropped = dropped(services["on"].state.service.metrics.registry)
    print(f"  shadow reranks dropped (queue full): {service_dropped}")
    with httpx.Client(base_url=url, timeout=60) as http:
        http.delete(f"/{INDEX}")
    print(
        f"RESULT shadow_added_p50_ms={max(proxy_added[0], service_added[0]):.2f} "
        f"shadow_added_p99_ms={max(proxy_added[1], service_added[1]):.2f} "
        f"shadow_dropped={proxy_dropped + service_dropped}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", help="an existing engine's URL (default: start a local one)")
    parser.add_argument("--engine", choices=("opensearch", "elasticsearch"), default="elasticsearch")
    parser.add_argument("--model", help="cross-encoder id or directory (default: the configured one)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: auto)")
    parser.add_argument("--window", type=int, default=50, help="hits reranked per shadowed search")
    parser.add_argument("--requests", type=int, default=400, help="searches per mode and round")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--shadow-queue", type=int, default=64, help="shadow queue bound")
    args = parser.parse_args()
    if args.upstream:
        run(args.upstream.rstrip("/"), args)
        return
    from secondpass.servers import LocalEngine

    with LocalEngine(args.engine) as node:
        run(node.url, args)


if __name__ == "__main__":
    main()
