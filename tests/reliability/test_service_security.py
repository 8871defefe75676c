"""The real ``secondpass serve`` process: API keys over TLS, the closed default, honest readiness.

* keys and TLS: a self-signed certificate made here (openssl CLI); every route
  but the probes refuses a request without a valid key, whatever the method,
  and plain HTTP gets no answer at all from the TLS port;
* the closed default: on a non-loopback host without keys the process exits
  with the remedies instead of listening (it never binds, so nothing is exposed);
* readiness on real engines: the index deleted (engine up) and the engine
  paused (SIGSTOP) both turn ``/readyz`` to 503 naming the reason, each answer
  within the readiness timeout; recovery turns it back to 200; a burst of 50
  concurrent probes costs at most a couple of engine searches, counted by the
  engine itself (``_stats/search``).
"""

from __future__ import annotations

import concurrent.futures
import math
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from secondpass.servers import LocalEngine
from tests.fixtures.service import ServiceProcess
from tests.reliability._common import corpus, temp_index
from tests.reliability.conftest import Figures

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

KEY = "reliability-key-5b1f0c9e77a2"
READINESS_TIMEOUT_S = 1.0
CHECK_INTERVAL_S = 1.5
# Scheduling slack on a busy 2-core machine (five test runs may share it).
SLACK_S = 1.0


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throw-away self-signed certificate for 127.0.0.1 (cert, key)."""
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def _wait_for_status(
    get: Callable[[], httpx.Response], status: int, *, timeout_s: float
) -> tuple[httpx.Response, float]:
    """Poll until an answer has ``status``; returns it and the longest single answer time."""
    deadline = time.monotonic() + timeout_s
    slowest = 0.0
    last = "no answer"
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            response = get()
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        else:
            slowest = max(slowest, time.monotonic() - started)
            if response.status_code == status:
                return response, slowest
            last = f"{response.status_code} {response.text[:300]}"
        time.sleep(0.05)
    pytest.fail(f"no {status} within {timeout_s} s (last: {last})", pytrace=False)


@pytest.fixture(scope="module")
def tls_service(
    service_factory: Callable[..., ServiceProcess], certificate: tuple[Path, Path]
) -> Iterator[tuple[ServiceProcess, str]]:
    cert, key = certificate
    svc = service_factory(
        settings={"api_keys": [KEY], "ssl_certfile": str(cert), "ssl_keyfile": str(key)},
        wait_ready=False,
    )
    url = f"https://127.0.0.1:{svc.port}"
    with httpx.Client(base_url=url, verify=str(cert), timeout=10) as client:
        _wait_for_status(lambda: client.get("/readyz"), 200, timeout_s=120)
    yield svc, url
    svc.stop()


ROUTES = [
    "/v1/rerank",
    "/v2/rerank",
    "/rerank",
    "/v1/search",
    "/metrics",
    "/docs",
    "/redoc",
    "/openapi.json",
    "/nope",
    "/livez/x",
]
REFUSED: list[dict[str, str]] = [
    {},
    {"Authorization": "Bearer wrong-key-0000000000"},
    {"X-API-Key": KEY[:-1]},
    {"Authorization": f"Basic {KEY}"},
    {"Authorization": "Bearer " + "k" * 9000},
]


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "OPTIONS"])
def test_every_route_needs_a_key_over_tls(
    tls_service: tuple[ServiceProcess, str], certificate: tuple[Path, Path], method: str
) -> None:
    svc, url = tls_service
    with httpx.Client(base_url=url, verify=str(certificate[0]), timeout=10) as client:
        for path in ROUTES:
            for headers in REFUSED:
                r = client.request(method, path, headers=headers, json={"query": "q"})
                assert r.status_code == 401, f"{method} {path} {list(headers)}: {r.text[:200]}"
                assert r.headers["www-authenticate"].startswith("Bearer")
                assert set(r.json()) >= {"message"}
        for path in ("/livez", "/readyz"):
            assert client.request(method, path).status_code != 401
    assert svc.alive() and KEY not in svc.log()


def test_a_valid_key_is_served_over_tls_and_plain_http_gets_nothing(
    tls_service: tuple[ServiceProcess, str], certificate: tuple[Path, Path]
) -> None:
    svc, url = tls_service
    with httpx.Client(base_url=url, verify=str(certificate[0]), timeout=30) as client:
        for headers in (
            {"Authorization": f"Bearer {KEY}"},
            {"x-api-key": KEY},
            {"authorization": f"bearer   {KEY}"},
        ):
            r = client.post(
                "/v1/rerank",
                headers=headers,
                json={"query": "cat food", "documents": ["cats eat fish", "the tower"]},
            )
            assert r.status_code == 200, r.text
            assert r.json()["meta"]["model"] == "local-model"  # never the model's path
            assert client.get("/metrics", headers=headers).status_code == 200
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{svc.port}/readyz", timeout=5)
    with pytest.raises(httpx.ConnectError):  # an unknown certificate is not trusted silently
        httpx.get(f"{url}/readyz", timeout=5)
    assert KEY not in svc.log()


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_serve_refuses_an_open_non_loopback_host(
    service_factory: Callable[..., ServiceProcess], host: str
) -> None:
    svc = service_factory(args=["--host", host], wait_ready=False)
    try:
        code = svc.process.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail("serve started on a non-loopback host without API keys")
    assert code == 2
    log = svc.log()
    assert f"refusing to serve {host} without authentication" in log
    assert "SECONDPASS_SERVICE_API_KEYS" in log and "--allow-unauthenticated" in log


# ----------------------------------------------------------------------- readiness


def _probe_storm(
    client: httpx.Client, *, threads: int, at_least_s: float
) -> tuple[list[int], float]:
    """``threads`` probers start together and probe back to back until ``at_least_s`` passed.

    Each prober has its own connection, as independent kubelets do: one httpx
    client shared by 50 threads once failed in CI with ``EBADF`` on the client's
    own socket (a client-side race, not an answer of the service).
    """
    started = time.monotonic()
    stop_at = started + at_least_s

    def prober(_: int) -> list[int]:
        with httpx.Client(base_url=client.base_url, headers=client.headers, timeout=client.timeout) as own:
            seen = [own.get("/readyz").status_code]
            while time.monotonic() < stop_at:
                seen.append(own.get("/readyz").status_code)
        return seen

    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        statuses = [s for seen in pool.map(prober, range(threads)) for s in seen]
    return statuses, time.monotonic() - started


def _searches(url: str, index: str) -> int:
    """Query-phase searches the engine ran on ``index`` (one shard: one per search)."""
    stats = httpx.get(f"{url}/{index}/_stats/search", timeout=10).json()
    return int(stats["_all"]["total"]["search"]["query_total"])


@pytest.fixture
def search_service(
    service_factory: Callable[..., ServiceProcess], local_engine_node: LocalEngine
) -> Iterator[tuple[ServiceProcess, LocalEngine, str]]:
    with temp_index(local_engine_node.url, corpus(20)) as index:
        svc = service_factory(
            settings={
                "search_index": index,
                "search_fields": ["title", "body"],
                "readiness_timeout_s": READINESS_TIMEOUT_S,
                "engine_check_interval_s": CHECK_INTERVAL_S,
                "engine": {
                    "engine": local_engine_node.name,
                    "hosts": [local_engine_node.url],
                    "request_timeout_s": 5,
                },
            }
        )
        try:
            yield svc, local_engine_node, index
        finally:
            local_engine_node.resume()
            svc.stop()


def test_readiness_tells_the_truth_about_the_engine(
    search_service: tuple[ServiceProcess, LocalEngine, str], figures: Figures
) -> None:
    svc, node, index = search_service
    scenario = f"serve /readyz ({node.name})"
    with svc.client(timeout=10) as client:
        # a probe storm: 50 threads probing back to back for two check intervals
        before = _searches(node.url, index)
        statuses, elapsed = _probe_storm(client, threads=50, at_least_s=2 * CHECK_INTERVAL_S)
        storm_calls = _searches(node.url, index) - before
        assert set(statuses) == {200} and len(statuses) >= 50
        allowed = math.ceil(elapsed / CHECK_INTERVAL_S) + 1
        assert 1 <= storm_calls <= allowed, (storm_calls, len(statuses), elapsed)
        figures.add(scenario, "probe storm: probes answered", len(statuses), "probes")
        figures.add(scenario, "probe storm: duration", elapsed, "s")
        figures.add(scenario, "probe storm: engine searches it cost", storm_calls, "calls")

        # the engine is up but the index is gone (a restart without data)
        httpx.delete(f"{node.url}/{index}", timeout=30).raise_for_status()
        started = time.monotonic()
        gone, slowest = _wait_for_status(lambda: client.get("/readyz"), 503, timeout_s=10)
        figures.add(scenario, "index deleted -> 503 after", time.monotonic() - started, "s")
        assert gone.json()["checks"]["engine"] == "index missing", gone.text
        assert index not in gone.text  # the reason, not the operator's index name
        assert slowest < READINESS_TIMEOUT_S + SLACK_S
        search = client.post("/v1/search", json={"query": "cat"})
        assert 400 <= search.status_code < 600 and search.status_code != 500, search.text

        # the index is back: ready again
        body = {"mappings": {"properties": {"title": {"type": "text"}, "body": {"type": "text"}}}}
        httpx.put(f"{node.url}/{index}", json=body, timeout=30).raise_for_status()
        started = time.monotonic()
        _wait_for_status(lambda: client.get("/readyz"), 200, timeout_s=15)
        figures.add(scenario, "index recreated -> 200 after", time.monotonic() - started, "s")

        # the engine hangs: connections accepted, nothing answered
        node.pause()
        try:
            started = time.monotonic()
            paused, slowest = _wait_for_status(lambda: client.get("/readyz"), 503, timeout_s=10)
            to_503 = time.monotonic() - started
            assert (
                paused.json()["checks"]["engine"] == f"no answer within {READINESS_TIMEOUT_S:g} s"
            )
            assert slowest < READINESS_TIMEOUT_S + SLACK_S, slowest
            assert to_503 < CHECK_INTERVAL_S + READINESS_TIMEOUT_S + SLACK_S, to_503
            figures.add(scenario, "engine paused: slowest /readyz answer", slowest, "s")
            figures.add(scenario, "engine paused -> 503 after", to_503, "s")
            # a storm while paused: every probe still answers within the timeout
            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
                statuses = list(pool.map(lambda _: client.get("/readyz").status_code, range(50)))
            storm_s = time.monotonic() - started
            assert set(statuses) == {503} and storm_s < READINESS_TIMEOUT_S + 2 * SLACK_S
            figures.add(scenario, "engine paused: 50 concurrent probes took", storm_s, "s")
        finally:
            node.resume()
        started = time.monotonic()
        _wait_for_status(lambda: client.get("/readyz"), 200, timeout_s=30)
        figures.add(scenario, "engine resumed -> 200 after", time.monotonic() - started, "s")
    assert svc.alive()
