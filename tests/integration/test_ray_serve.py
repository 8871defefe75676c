"""The rerank service on a local Ray Serve instance: two CPU replicas of the tiny model.

* requests spread over both replicas (``X-SecondPass-Replica``);
* a replica killed mid-load (``ray.kill``, as a crashed worker) is replaced by
  Ray and the load keeps being answered. Which requests can fail: those the
  dead replica was holding when it died (Ray's proxy answers them 500; Ray
  does not replay a request a replica already accepted); new requests go to
  the surviving replica at once. The test states the count it saw.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from tests.support.replicas import SteadyLoad, rerank_body

from secondpass.deploy.ray import REPLICA_HEADER, RayServeOptions, build_application
from secondpass.servers._process import free_port
from secondpass.service.settings import ServiceSettings

pytestmark = [pytest.mark.integration, pytest.mark.reliability, pytest.mark.slow]

APP = "secondpass"


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def ray_app(tiny_cross_encoder_dir: Path, monkeypatch_module: pytest.MonkeyPatch) -> Iterator[str]:
    import ray
    from ray import serve

    # The raylet waits this long for its metrics agent (default 30 s); on a busy
    # 2-core machine the agent's Python start alone can take longer.
    monkeypatch_module.setenv("RAY_agent_register_timeout_ms", "300000")
    monkeypatch_module.setenv("RAY_raylet_start_wait_time_s", "300")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        namespace="secondpass-test",
        _system_config={"agent_register_timeout_ms": 300_000},
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    settings = ServiceSettings(
        max_wait_ms=2,
        rerank={
            "model": str(tiny_cross_encoder_dir),
            "device": "cpu",
            "dtype": "float32",
            "backend": "torch",
        },
        cache={"backend": "none"},
    )
    options = RayServeOptions(num_replicas=2, num_cpus=0.5, health_check_period_s=2)
    try:
        serve.run(build_application(settings=settings, options=options), name=APP, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _replica_of(url: str, query: str) -> str:
    answer = httpx.post(f"{url}/v1/rerank", json=rerank_body(query), timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.headers[REPLICA_HEADER]


def test_requests_spread_over_both_replicas(ray_app: str) -> None:
    with ThreadPoolExecutor(8) as pool:
        replicas = Counter(pool.map(lambda i: _replica_of(ray_app, f"spread {i}"), range(40)))
    assert len(replicas) == 2, replicas
    # the same API as `secondpass serve`: TEI route and health answer too
    tei = httpx.post(f"{ray_app}/rerank", json={"query": "q", "texts": ["a", "b"]}, timeout=60)
    assert tei.status_code == 200 and len(tei.json()) == 2
    assert httpx.get(f"{ray_app}/readyz", timeout=10).status_code == 200


def _replicas_answering(url: str, tag: str, count: int = 8) -> set[str]:
    """Replica ids of the 200 answers to ``count`` parallel requests (others ignored)."""

    def one(i: int) -> str | None:
        answer = httpx.post(f"{url}/v1/rerank", json=rerank_body(f"{tag} {i}"), timeout=60)
        return answer.headers.get(REPLICA_HEADER) if answer.status_code == 200 else None

    with ThreadPoolExecutor(count) as pool:
        return {r for r in pool.map(one, range(count)) if r is not None}


def test_a_killed_replica_is_replaced_and_requests_keep_succeeding(ray_app: str) -> None:
    import ray

    before = _replicas_answering(ray_app, "before", 16)
    assert len(before) == 2, before
    victim = sorted(before)[0]
    replacement: set[str] = set()
    with SteadyLoad(ray_app, clients=4, timeout_s=60) as load:
        load.wait_for(10)
        actor = ray.get_actor(f"SERVE_REPLICA::{APP}#{APP}#{victim}", namespace="serve")
        ray.kill(actor, no_restart=True)
        # Ray notices the death, starts a new replica, and routes to it once it is ready
        deadline = time.monotonic() + 240
        while not replacement and time.monotonic() < deadline:
            load.wait_for(4)
            replacement = _replicas_answering(ray_app, f"after {load.answered()}") - before
        load.wait_for(10)
        report = load.stop()
    print(f"ray failover: {dict(report.outcomes)}; replacement replica: {replacement}")
    assert replacement, "Ray did not start a replacement replica in 240 s"
    after = _replicas_answering(ray_app, "final", 16)
    assert victim not in after
    # Only the requests the dead replica held may fail (Ray's proxy answers them 500);
    # everything else, before and after the replacement, answers 200.
    assert report.ok >= 30
    assert report.failed <= 4, dict(report.outcomes)
    assert set(report.outcomes) <= {"200", "500"}, dict(report.outcomes)
