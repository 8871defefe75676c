"""Three ``secondpass serve`` replicas behind a real HAProxy, sharing one real Redis.

HAProxy health-checks ``/readyz`` and retries a failed attempt on another
replica (``retry-on`` + ``option redispatch``). Under a steady rerank load:

* a ``kill -9`` of one replica: no client sees an error (requests in flight on
  the dead replica are replayed elsewhere: rerank requests are idempotent);
* a rolling restart (the replacements load first, as a Kubernetes rollout's
  surge pods do; then each replica in turn gets SIGTERM, and once HAProxy has
  it DOWN and it exited its replacement takes its slot and must be UP before
  the next): no client sees an error (SIGTERM turns ``/readyz`` 503 and the
  replica keeps serving for ``shutdown_delay_s``, longer than HAProxy needs to
  take it out of rotation);
* a query scored on one replica is a cache hit on another (shared Redis).

The throughput sweep over 1, 2 and 3 replicas is in benchmarks/replicas.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.support.replicas import DOCUMENTS, ReplicaSet, SteadyLoad, rerank_body

from secondpass.servers import LocalRedis
from secondpass.servers.haproxy import HealthCheck

pytestmark = [pytest.mark.integration, pytest.mark.reliability, pytest.mark.slow]

# HAProxy takes a replica out after fall x inter = 0.6 s of failed checks; the drain
# delay keeps a SIGTERMed replica serving well past that.
CHECK = HealthCheck(inter_ms=300, fall=2, rise=1)
SETTINGS = {"max_wait_ms": 2, "shutdown_delay_s": 1.5, "shutdown_timeout_s": 10}


@pytest.fixture(scope="module")
def replicas(
    tiny_cross_encoder_dir: Path,
    redis_server: LocalRedis,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ReplicaSet]:
    settings = {**SETTINGS, "cache": {"backend": "redis", "redis_url": redis_server.url}}
    group = ReplicaSet(
        model_dir=tiny_cross_encoder_dir,
        log_dir=tmp_path_factory.mktemp("replicas"),
        count=3,
        settings=settings,
        check=CHECK,
    )
    try:
        yield group.start()
    finally:
        group.close()


def test_a_query_scored_on_one_replica_is_a_cache_hit_on_another(replicas: ReplicaSet) -> None:
    body = rerank_body("which replica scored this query first")
    first = httpx.post(f"{replicas.replicas[0].url}/v1/rerank", json=body, timeout=30)
    second = httpx.post(f"{replicas.replicas[1].url}/v1/rerank", json=body, timeout=30)
    assert first.status_code == second.status_code == 200
    assert first.json()["meta"]["cache_hits"] == 0
    assert second.json()["meta"]["cache_hits"] == len(DOCUMENTS)
    assert second.json()["results"] == first.json()["results"]
    assert replicas.replicas[1].metric("secondpass_cache_hits_total") >= len(DOCUMENTS)


def test_rolling_restart_under_load_fails_no_request(replicas: ReplicaSet) -> None:
    assert replicas.balancer is not None
    replicas.balancer.wait_for_states({f"r{i}": "UP" for i in range(3)}, timeout_s=120)
    with SteadyLoad(replicas.url, clients=4) as load:
        load.wait_for(10)
        replacements = replicas.start_replacements()
        for index, replacement in enumerate(replacements):
            old = replicas.replicas[index]
            assert replicas.swap(index, replacement) == 0, old.log()[-2000:]
            load.wait_for(10)
        report = load.stop()
    print(f"rolling restart: {dict(report.outcomes)} in {report.seconds:.0f} s")
    assert report.failed == 0, dict(report.outcomes)
    assert report.ok >= 40


def test_kill_minus_9_of_a_replica_under_load_fails_no_rerank_request(
    replicas: ReplicaSet,
) -> None:
    assert replicas.balancer is not None
    victim = replicas.replicas[2]
    with SteadyLoad(replicas.url, clients=4) as load:
        load.wait_for(20)
        victim.process.kill()  # SIGKILL: no drain, in-flight requests lose their connection
        victim.process.wait(10)
        replicas.balancer.wait_for_states({"r2": "DOWN"})
        load.wait_for(20)
        report = load.stop()
    print(f"kill -9: {dict(report.outcomes)}")
    assert report.failed == 0, dict(report.outcomes)
    assert report.ok >= 40
    # the other two kept serving: a request straight to each still answers
    for replica in replicas.replicas[:2]:
        assert httpx.post(
            f"{replica.url}/v1/rerank", json=rerank_body("after"), timeout=30
        ).is_success
