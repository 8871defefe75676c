"""The rerank service on a local Ray Serve instance: two CPU replicas of the tiny model.

* requests spread over both replicas (``X-SecondPass-Replica``);
* a replica killed mid-load (``ray.kill``, as a crashed worker) is replaced by
  Ray and the load keeps being answered. Which requests can fail: those the
  dead replica was holding when it died (Ray's proxy answers them 500, or 408
  when its wait on the dead replica times out first; Ray does not replay a
  request a replica already accepted); new requests go to
  the surviving replica at once. The test states the count it saw.
* under steady load, an autoscaled application (1 to 2 replicas) gets its
  second replica within ``upscale_delay_s`` plus the time the load takes to
  reach Ray's autoscaler (see ``DECISION_MARGIN_S``), read from
  ``serve.status()``; the new replica then answers.
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


def _tiny_model_settings(model_dir: Path) -> ServiceSettings:
    return ServiceSettings(
        max_wait_ms=2,
        rerank={"model": str(model_dir), "device": "cpu", "dtype": "float32", "backend": "torch"},
        cache={"backend": "none"},
    )


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
    settings = _tiny_model_settings(tiny_cross_encoder_dir)
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
    # Only the requests the dead replica held may fail: Ray's proxy answers them 500
    # (the actor died under them) or 408 (its wait on the dead actor timed out first,
    # ray.serve http_util.get_http_response_status); everything else answers 200.
    assert report.ok >= 30
    assert report.failed <= 4, dict(report.outcomes)
    assert set(report.outcomes) <= {"200", "500", "408"}, dict(report.outcomes)


# Autoscaling under load. The application is deployed after the failover test
# (tests run in file order) next to the fixed one, on the same Ray instance:
# 2 fixed replicas at 0.5 CPU plus up to 2 autoscaled ones at 0.25 CPU fit the
# fixture's num_cpus=2 with room for the failover test's replacement.
SCALED_APP = "secondpass-autoscaled"
SCALED_PREFIX = "/scaled"
UPSCALE_DELAY_S = 3.0
METRICS_INTERVAL_S = 0.5
LOOK_BACK_PERIOD_S = 2.0
SCHEDULING_SLACK_S = 5.0
DECISION_MARGIN_S = METRICS_INTERVAL_S + LOOK_BACK_PERIOD_S + SCHEDULING_SLACK_S
"""How much later than ``upscale_delay_s`` (counted from the first loaded request) Ray may decide.

* ``METRICS_INTERVAL_S``: the proxy's handle pushes its queued + ongoing
  request count to the controller this often, so the first loaded sample
  arrives up to one interval late;
* ``LOOK_BACK_PERIOD_S``: the autoscaler compares the mean over this window
  with the target; 4 clients keep about 4 requests ongoing against a target of
  1, so the mean passes it within a quarter of the window (the whole window
  is the bound); only then does the ``upscale_delay_s`` clock start;
* ``SCHEDULING_SLACK_S``: the controller's 0.1 s loop, this test's
  ``serve.status()`` polls and the proxy are late on the shared 2-core
  machine (load average ~15 while the new replica's model loads).
"""
NEW_REPLICA_TIMEOUT_S = 300.0
"""A new replica loads the model before it may answer; minutes on this machine, but bounded."""


def _scaled_replica_states() -> dict[str, int]:
    """The autoscaled deployment's replica counts by state, as Ray Serve reports them."""
    from ray import serve

    deployment = serve.status().applications[SCALED_APP].deployments[SCALED_APP]
    # keys are ReplicaState values (plain strings once they crossed from the controller)
    return {str(getattr(s, "value", s)): n for s, n in deployment.replica_states.items()}


def test_scale_up_under_load_within_the_upscale_delay(
    ray_app: str, tiny_cross_encoder_dir: Path
) -> None:
    from ray import serve

    options = RayServeOptions(
        name=SCALED_APP,
        min_replicas=1,
        max_replicas=2,
        target_ongoing_requests=1,
        upscale_delay_s=UPSCALE_DELAY_S,
        metrics_interval_s=METRICS_INTERVAL_S,
        look_back_period_s=LOOK_BACK_PERIOD_S,
        num_cpus=0.25,
        health_check_period_s=2,
    )
    application = build_application(
        settings=_tiny_model_settings(tiny_cross_encoder_dir), options=options
    )
    serve.run(application, name=SCALED_APP, route_prefix=SCALED_PREFIX)
    url = f"{ray_app}{SCALED_PREFIX}"
    try:
        assert _scaled_replica_states() == {"RUNNING": 1}
        decided_after = None
        with SteadyLoad(url, clients=4, timeout_s=60) as load:
            started = time.monotonic()
            bound = started + UPSCALE_DELAY_S + DECISION_MARGIN_S
            while time.monotonic() < bound + 30:  # keep looking past the bound, to report it
                states = _scaled_replica_states()
                if sum(states.values()) >= 2:
                    decided_after = time.monotonic() - started
                    break
                load.wait_for(1)
            shown = "never" if decided_after is None else f"{decided_after:.1f} s"
            print(f"ray upscale: decided {shown} after the load began; replicas {states}")
            seen: set[str] = set()
            deadline = time.monotonic() + NEW_REPLICA_TIMEOUT_S
            while decided_after is not None and len(seen) < 2 and time.monotonic() < deadline:
                load.wait_for(4)
                seen |= _replicas_answering(url, f"scaled {load.answered()}", 4)
            answered_after = time.monotonic() - started
            report = load.stop()
        print(
            f"ray upscale: {len(seen)} replicas answered {answered_after:.0f} s after the load "
            f"began; load {dict(report.outcomes)}"
        )
        assert decided_after is not None, f"no second replica in {bound - started + 30:.1f} s"
        # Ray must wait out the delay (the load was already there), and not much longer.
        assert UPSCALE_DELAY_S <= decided_after <= UPSCALE_DELAY_S + DECISION_MARGIN_S
        assert len(seen) == 2, f"the new replica did not answer in {NEW_REPLICA_TIMEOUT_S:g} s"
        # scaling up costs the clients nothing: the old replica serves while the new one loads
        assert report.failed == 0, dict(report.outcomes)
    finally:
        serve.delete(SCALED_APP)
    assert SCALED_APP not in serve.status().applications
