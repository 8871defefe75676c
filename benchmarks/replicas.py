"""Replicas behind HAProxy: kill -9, rolling restart, shared cache, throughput with 1-3 replicas.

Starts a local Redis and ``--replicas`` (3) ``secondpass serve`` processes on the
tiny seeded cross-encoder (``--shape minilm``: a MiniLM-L6-shaped random one),
sharing the Redis score cache, and HAProxy in front (health check ``GET
/readyz`` every 300 ms, out after 2 failures; ``retry-on conn-failure
empty-response junk-response response-timeout 502 503 504`` with ``option
redispatch``, 3 retries). ``--clients`` closed-loop threads post /v1/rerank
(4 documents, a query never sent before, so every pair reaches a model).
Printed, in this order:

1. cache: a query scored on replica r0 (straight to it) and then sent to r1:
   r1's ``meta.cache_hits``.
2. throughput: requests/s through HAProxy over 1, 2, then 3 replicas,
   ``--duration`` seconds each (all replicas stay up; HAProxy instances over
   subsets). On a 2-core machine this does not scale: every replica's model
   thread competes for the same two cores.
3. rolling restart: replacements load first (a rollout's surge pods), then
   each replica in turn gets SIGTERM, and once HAProxy has it DOWN and it
   exited, its replacement takes its slot (runtime API) and must be UP before
   the next; client outcomes.
4. kill -9 of r2 under load through the retrying HAProxy; client outcomes and
   HAProxy's retry/redispatch counters.
5. control: kill -9 of r1 under load through an HAProxy with ``retries 0``.

Bounded: replica start (parallel) + 3 x ``--duration`` + one parallel reload + 2 short
kill phases (``--kill-answers`` answers before and after each kill).

    .venv/bin/python benchmarks/replicas.py --duration 10
    .venv/bin/python benchmarks/replicas.py --shape minilm --clients 8 --skip-rolling
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("SECONDPASS_RERANK_BACKEND", "torch")

from tests.support.models import (  # noqa: E402
    build_minilm_cross_encoder,
    build_tiny_cross_encoder,
)
from tests.support.replicas import (  # noqa: E402
    DOCUMENTS,
    LoadReport,
    ReplicaSet,
    SteadyLoad,
    rerank_body,
)

from secondpass.servers import LocalRedis  # noqa: E402
from secondpass.servers.haproxy import HealthCheck, LocalHAProxy  # noqa: E402

CHECK = HealthCheck(inter_ms=300, fall=2, rise=1)


def timed_load(url: str, clients: int, seconds: float) -> LoadReport:
    """Closed-loop load for ``seconds`` of wall time."""
    with SteadyLoad(url, clients=clients) as load:
        time.sleep(seconds)
        return load.stop()


def retry_counters(balancer: LocalHAProxy) -> dict[str, int]:
    """HAProxy's backend-wide retries (wretr) and redispatches (wredis)."""
    import csv
    import io
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{balancer.stats_port}/stats;csv") as answer:
        rows = csv.DictReader(io.StringIO(answer.read().decode().lstrip("# ")))
        for row in rows:
            if row["pxname"] == "replicas" and row["svname"] == "BACKEND":
                return {"retries": int(row["wretr"] or 0), "redispatches": int(row["wredis"] or 0)}
    return {}


def kill_under_load(group: ReplicaSet, balancer: LocalHAProxy, index: int, args) -> dict:
    victim = group.replicas[index]
    with SteadyLoad(balancer.url, clients=args.clients) as load:
        load.wait_for(args.kill_answers)
        victim.process.kill()
        victim.process.wait(10)
        balancer.wait_for_states({group.name(index): "DOWN"})
        load.wait_for(args.kill_answers)
        report = load.stop()
    return {"outcomes": dict(report.outcomes), **retry_counters(balancer)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per throughput step")
    parser.add_argument("--kill-answers", type=int, default=40)
    parser.add_argument("--shape", choices=["tiny", "minilm"], default="tiny")
    parser.add_argument("--skip-rolling", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="secondpass-replicas-"))
    build = build_tiny_cross_encoder if args.shape == "tiny" else build_minilm_cross_encoder
    model = build(workdir / "model", seed=0)
    results: dict[str, object] = {"cpus": os.cpu_count(), "shape": args.shape}
    with LocalRedis() as redis:
        settings = {
            "max_wait_ms": 2,
            "shutdown_delay_s": 1.5,
            "shutdown_timeout_s": 10,
            "cache": {"backend": "redis", "redis_url": redis.url},
        }
        group = ReplicaSet(
            model_dir=model, log_dir=workdir, count=args.replicas, settings=settings, check=CHECK
        )
        try:
            group.start()
            body = rerank_body("benchmark cache probe")
            httpx.post(f"{group.replicas[0].url}/v1/rerank", json=body, timeout=60)
            hit = httpx.post(f"{group.replicas[1].url}/v1/rerank", json=body, timeout=60).json()
            results["cache_hits_on_r1_of_r0_query"] = (
                f"{hit['meta']['cache_hits']}/{len(DOCUMENTS)}"
            )
            print("cache:", results["cache_hits_on_r1_of_r0_query"], flush=True)

            sweep = {}
            for n in range(1, args.replicas + 1):
                servers = [(group.name(i), f"127.0.0.1:{group.ports[i]}") for i in range(n)]
                with LocalHAProxy(servers=servers, check=CHECK) as lb:
                    lb.wait_for_states({name: "UP" for name, _ in servers})
                    report = timed_load(lb.url, args.clients, args.duration)
                sweep[n] = {"requests_per_s": round(report.per_second, 1), "failed": report.failed}
                print(f"throughput {n} replica(s): {sweep[n]}", flush=True)
            results["throughput"] = sweep

            assert group.balancer is not None
            if not args.skip_rolling:
                with SteadyLoad(group.url, clients=args.clients) as load:
                    load.wait_for(10)
                    for index, replacement in enumerate(group.start_replacements()):
                        group.swap(index, replacement)
                    report = load.stop()
                results["rolling_restart"] = {
                    "outcomes": dict(report.outcomes),
                    "seconds": round(report.seconds, 1),
                }
                print("rolling restart:", results["rolling_restart"], flush=True)

            results["kill9_with_retries"] = kill_under_load(group, group.balancer, 2, args)
            print("kill -9 (retries 3, redispatch):", results["kill9_with_retries"], flush=True)
            servers = [(group.name(i), f"127.0.0.1:{group.ports[i]}") for i in range(2)]
            with LocalHAProxy(servers=servers, check=CHECK, retries=0) as control:
                control.wait_for_states({name: "UP" for name, _ in servers})
                results["kill9_without_retries"] = kill_under_load(group, control, 1, args)
            print("kill -9 (retries 0, control):", results["kill9_without_retries"], flush=True)
        finally:
            group.close()
    print("RESULT", json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
