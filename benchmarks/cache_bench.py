"""Score cache speed: keys, LRU and Redis per 100 keys (prints figures, asserts nothing).

Baselines measured in the same run: a plain ``dict`` lookup of the same 100 keys
(the floor for any in-process cache) and one Redis ``PING`` (the floor for any
network round trip). Redis is a private ``redis-server`` started on a free
loopback port and stopped at the end.

    .venv/bin/python benchmarks/cache_bench.py [--repeat 2000]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable

import redis

from secondpass.pipeline.cache import LRUScoreCache, RedisScoreCache, cache_key, cache_keys
from secondpass.types import PassageScore

N = 100
QUERY = "how do cross-encoders rerank first-stage hits"
FP = "BAAI/bge-reranker-v2-m3@main|max_length=512|template={title}\n{body}|long=truncate"


def per_call_us(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median and p95 microseconds per call, after a short warm-up."""
    for _ in range(min(50, repeat)):
        fn()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def row(name: str, figures: tuple[float, float], baseline: float | None = None) -> None:
    median, p95 = figures
    ratio = f"  x{median / baseline:6.1f} baseline" if baseline else ""
    print(f"  {name:<46} median {median:9.1f} us   p95 {p95:9.1f} us{ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    repeat = args.repeat

    items = [
        ("articles", str(i), f"passage {i} " + "lorem ipsum dolor sit amet " * 60) for i in range(N)
    ]
    score = PassageScore(raw=1.25, normalized=0.777, tokens_in=420, tokens_scored=420)

    print(f"cache figures per call of {N} keys (passages ~1.6 kB, {repeat} repeats)")
    print("keys")
    row(
        "cache_key() x100 (one hasher per item)",
        per_call_us(lambda: [cache_key(FP, QUERY, *it) for it in items], repeat),
    )
    row(
        "cache_keys() x100 (query prefix hashed once)",
        per_call_us(lambda: cache_keys(FP, QUERY, items), repeat),
    )
    keys = cache_keys(FP, QUERY, items)

    print("in-process")
    plain = dict.fromkeys(keys, score)
    base = per_call_us(lambda: {k: plain[k] for k in keys if k in plain}, repeat)
    row("baseline: dict lookup of 100 keys", base)
    lru = LRUScoreCache(max_entries=100_000)
    batch = dict.fromkeys(keys, score)
    row("LRUScoreCache.set_many (100)", per_call_us(lambda: lru.set_many(batch), repeat), base[0])
    row(
        "LRUScoreCache.get_many (100 hits)",
        per_call_us(lambda: lru.get_many(keys), repeat),
        base[0],
    )
    missing = [k[::-1] for k in keys]
    row(
        "LRUScoreCache.get_many (100 misses)",
        per_call_us(lambda: lru.get_many(missing), repeat),
        base[0],
    )

    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        server = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"redis://127.0.0.1:{port}/0"
            admin = redis.Redis.from_url(url)
            deadline = time.monotonic() + 10
            while True:
                try:
                    admin.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            print(
                f"redis (loopback, redis-server {admin.info()['redis_version']}, redis-py {redis.__version__})"
            )
            ping = per_call_us(admin.ping, repeat)
            row("baseline: PING (one round trip)", ping)
            cache = RedisScoreCache(url=url, timeout_s=1.0, connect_timeout_s=1.0, ttl_s=3600)
            row(
                "RedisScoreCache.set_many (100, pipelined SET EX)",
                per_call_us(lambda: cache.set_many(batch), repeat),
                ping[0],
            )
            row(
                "RedisScoreCache.get_many (100 hits, one MGET)",
                per_call_us(lambda: cache.get_many(keys), repeat),
                ping[0],
            )
            row(
                "RedisScoreCache.get_many (100 misses)",
                per_call_us(lambda: cache.get_many(missing), repeat),
                ping[0],
            )
            stats = cache.stats.snapshot()
            print(
                f"  redis cache counters after the run: errors={stats['errors']} corrupt={stats['corrupt']}"
            )
            cache.close()
            admin.close()
        finally:
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    main()
