"""Engine faults on real nodes: SIGKILL + restart under load, SIGSTOP, and a slow network.

Each engine gets a node of its own for this module (never the session's shared
nodes, which other tests rely on), started once and closed at the end. The
promises checked here:

* while the node is down every call ends within its deadline (plus scheduling
  slack) with :class:`BackendUnavailableError` naming what failed; nothing else
  is raised, no worker dies, nothing hangs;
* after the node is back, traffic is served again within seconds;
* a paused node (connections accepted, never answered) and a slow proxy make
  calls give up at the deadline instead of waiting for the engine.

Load runs through the full facade (:class:`Retriever`, sync and asyncio) with the
tiny real cross-encoder, so "degraded" and "failed" are the library's own answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from secondpass.connectors import (
    AsyncElasticsearchConnector,
    AsyncOpenSearchConnector,
    ElasticsearchConnector,
    OpenSearchConnector,
)
from secondpass.errors import BackendUnavailableError, SearchDeadlineError, ServerStartError
from secondpass.pipeline.retriever import Retriever
from secondpass.servers import LocalEngine
from secondpass.servers.versions import ENGINE_NAMES
from secondpass.service.app import create_app
from secondpass.service.settings import ServiceSettings
from tests.reliability._common import running_app
from tests.reliability._load import AsyncLoad, Call, Outcome, ThreadLoad, percentile
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]

SYNC = {"elasticsearch": ElasticsearchConnector, "opensearch": OpenSearchConnector}
ASYNC = {"elasticsearch": AsyncElasticsearchConnector, "opensearch": AsyncOpenSearchConnector}
WORDS = "cat dog bird fish horse mouse lion tiger bear wolf fox owl".split()
CORPUS = [
    {"_id": f"d{i}", "title": f"{WORDS[i % 12]} {WORDS[(i * 5) % 12]}", "body": " ".join(WORDS[(i + k) % 12] for k in range(6))}
    for i in range(40)
]
# Connection settings of the callers under test: one attempt may take 1 s, a
# whole call (retries included) 2 s. The facade's deadline adds 0.5 s for reranking.
CALL = {"request_timeout_s": 1.0, "deadline_s": 2.0, "max_attempts": 4, "initial_backoff_s": 0.05, "max_backoff_s": 0.25}
DEADLINE_S = 2.5
# Scheduling slack on a busy 2-core machine: a call counts as hung only past this.
SLACK_S = 1.5


@pytest.fixture(scope="module", params=list(ENGINE_NAMES))
def node(request: pytest.FixtureRequest) -> Iterator[LocalEngine]:
    """A node of our own for this module's fault tests (killed, paused, restarted)."""
    engine = LocalEngine(str(request.param))
    try:
        engine.start()
    except ServerStartError as exc:
        pytest.fail(f"could not start a dedicated {request.param} node: {exc}", pytrace=False)
    try:
        yield engine
    finally:
        engine.resume()
        engine.close()


@pytest.fixture(scope="module")
def index(node: LocalEngine) -> str:
    name = f"sp-rel-{uuid.uuid4().hex[:12]}"
    with SYNC[node.name](index=name, fields=["title", "body"], hosts=[node.url], deadline_s=60.0) as c:
        c.ensure_index(text_fields=["title", "body"])
        c.bulk_index(CORPUS)
        c.refresh()
    return name


@pytest.fixture
def healthy(node: LocalEngine, index: str) -> LocalEngine:
    """The node, running and answering (a failed earlier test may have left it down)."""
    node.resume()
    if not node.is_running():
        node.start()
    return node


def _query(rng: random.Random) -> str:
    return " ".join(rng.sample(WORDS, 2))


def _sync_outcome(retriever: Retriever, rng: random.Random) -> Outcome:
    try:
        result = retriever.search(_query(rng), k=5)
    except BackendUnavailableError as exc:
        return "unavailable", str(exc)
    return ("ok" if result.status == "ok" else "degraded"), result.reason or ""


def _check_bounded(calls: list[Call]) -> None:
    slow = [c for c in calls if c.seconds > DEADLINE_S + SLACK_S]
    assert not slow, f"{len(slow)} call(s) ran past the deadline: {[(c.outcome, round(c.seconds, 2)) for c in slow[:5]]}"
    unexpected = {c.outcome for c in calls} - {"ok", "degraded", "unavailable"}
    assert not unexpected, f"unexpected outcomes: {[(c.outcome, c.detail[:200]) for c in calls if c.outcome in unexpected][:5]}"


def test_killed_node_fails_fast_and_recovers_after_restart(
    healthy: LocalEngine, index: str, tiny_scorer: Any, figures: Any
) -> None:
    node = healthy
    sync_connector = SYNC[node.name](index=index, fields=["title", "body"], hosts=[node.url], **CALL)
    retriever = Retriever(connector=sync_connector, scorer=tiny_scorer, window=10, deadline_ms=DEADLINE_S * 1000)
    rngs = [random.Random(i) for i in range(3)]
    counter = iter(range(10**9))

    def one_sync() -> Outcome:
        return _sync_outcome(retriever, rngs[next(counter) % 3])

    async def make_async() -> tuple[list[Any], Any]:
        connector = ASYNC[node.name](index=index, fields=["title", "body"], hosts=[node.url], **CALL)
        aretriever = Retriever(connector=connector, scorer=tiny_scorer, window=10, deadline_ms=DEADLINE_S * 1000)
        # The HTTP service in this same loop, on the same node: its 503s and its event loop are measured too.
        settings = ServiceSettings(
            max_wait_ms=1,
            search_index=index,
            search_fields=["title", "body"],
            search_window=10,
            cache={"backend": "none"},
            engine={"engine": node.name, "hosts": [node.url], **CALL},
        )
        app_context = running_app(create_app(settings, scorer=tiny_scorer))
        client = await app_context.__aenter__()
        rng = random.Random(99)

        async def library() -> Outcome:
            try:
                result = await aretriever.asearch(_query(rng), k=5)
            except BackendUnavailableError as exc:
                return "unavailable", str(exc)
            return ("ok" if result.status == "ok" else "degraded"), result.reason or ""

        async def http() -> Outcome:
            r = await client.post("/v1/search", json={"query": _query(rng), "k": 5})
            if r.status_code == 200:
                return ("ok" if r.json()["rerank_status"] == "ok" else "degraded"), ""
            body = r.json()
            if r.status_code == 503 and body.get("error_type") == "engine_unavailable" and r.headers.get("retry-after"):
                return "unavailable", f"{node.name} search (HTTP 503): {body['message']}"
            return f"HTTP {r.status_code}", r.text

        async def close() -> None:
            await app_context.__aexit__(None, None, None)
            aretriever.close()
            await connector.close()

        return [library, http], close

    sync_load = ThreadLoad(one_sync, threads=3).start()
    async_load = AsyncLoad(make_async, tasks=4).start()
    try:
        time.sleep(3.0)
        killed_at = time.monotonic()
        node.kill()
        time.sleep(3.0)
        restart_at = time.monotonic()
        node.start()
        ready_at = time.monotonic()
        time.sleep(6.0)
    finally:
        calls = sync_load.stop() + async_load.stop()
        retriever.close()
        sync_connector.close()

    _check_bounded(calls)
    before = [c for c in calls if c.ended < killed_at]
    outage = [c for c in calls if c.started > killed_at + 0.2 and c.ended < restart_at]
    after = [c for c in calls if c.started >= ready_at]
    assert before and all(c.outcome == "ok" for c in before), {c.outcome for c in before}
    assert outage and all(c.outcome == "unavailable" for c in outage), {c.outcome for c in outage}
    assert all(node.name in c.detail and "search" in c.detail for c in outage)
    assert any(c.worker.startswith("async-1") for c in outage), "no HTTP request during the outage"
    assert all("Traceback" not in c.detail for c in calls)
    # Served again soon after the restart: the first success, and nothing but successes later on.
    first_ok = min((c.ended for c in calls if c.outcome == "ok" and c.started >= restart_at), default=None)
    assert first_ok is not None, "no successful call after the restart"
    assert all(c.outcome == "ok" for c in after if c.started > first_ok), "failures after recovery"
    recovery_s = max(0.0, first_ok - ready_at)
    assert recovery_s < 5.0, f"traffic not served again within 5 s of the restart ({recovery_s:.1f} s)"
    outage_s = [c.seconds for c in outage]
    scenario = f"{node.name} SIGKILL + restart under load"
    figures.add(scenario, "calls during outage (sync+async)", len(outage), "calls")
    figures.add(scenario, "p50 latency of a failing call", percentile(outage_s, 0.5), "s")
    figures.add(scenario, "max latency of a failing call (deadline 2.5 s)", max(outage_s), "s")
    figures.add(scenario, "max event-loop lag (library + in-process service)", async_load.max_lag_s, "s")
    figures.add(scenario, "node restart until healthy", ready_at - restart_at, "s")
    figures.add(scenario, "restart begun until first successful search", first_ok - restart_at, "s")
    figures.add(scenario, "node healthy until first successful search (0: at once)", recovery_s, "s")


def test_paused_node_calls_are_abandoned_at_the_deadline(healthy: LocalEngine, index: str, figures: Any) -> None:
    node = healthy
    connector = SYNC[node.name](index=index, fields=["title", "body"], hosts=[node.url], **CALL)
    from secondpass.types import SearchRequest

    assert connector.search(SearchRequest("cat", size=3))
    elapsed: list[float] = []
    node.pause()
    try:
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(BackendUnavailableError, match="timed out"):
                connector.search(SearchRequest("cat", size=3))
            elapsed.append(time.monotonic() - started)

        async def async_calls() -> list[float]:
            aconn = ASYNC[node.name](index=index, fields=["title", "body"], hosts=[node.url], **CALL)

            async def one() -> float:
                started = time.monotonic()
                with pytest.raises(BackendUnavailableError, match="timed out"):
                    await aconn.search(SearchRequest("dog", size=3))
                return time.monotonic() - started

            try:
                return list(await asyncio.gather(*(one() for _ in range(3))))
            finally:
                await aconn.close()

        async_elapsed = asyncio.run(async_calls())
    finally:
        node.resume()
    for seconds in elapsed + async_elapsed:
        assert seconds <= CALL["deadline_s"] + SLACK_S, seconds
    resumed = time.monotonic()
    while True:
        try:
            assert connector.search(SearchRequest("cat", size=3))
            break
        except BackendUnavailableError:
            assert time.monotonic() - resumed < 10, "not served again within 10 s of SIGCONT"
    recovered_s = time.monotonic() - resumed
    connector.close()
    scenario = f"{node.name} SIGSTOP (paused node)"
    figures.add(scenario, "max sync call latency (deadline 2 s)", max(elapsed), "s")
    figures.add(scenario, "max async call latency (deadline 2 s)", max(async_elapsed), "s")
    figures.add(scenario, "first success after SIGCONT", recovered_s, "s")


def test_slow_upstream_is_abandoned_at_the_deadline(healthy: LocalEngine, index: str, figures: Any) -> None:
    from secondpass.types import SearchRequest

    node = healthy
    assert node.port is not None
    with TcpProxy(("127.0.0.1", node.port)) as proxy:
        settings = {**CALL, "request_timeout_s": 0.5, "deadline_s": 1.0}
        connector = SYNC[node.name](index=index, fields=["title", "body"], hosts=[proxy.url], **settings)
        assert connector.search(SearchRequest("cat", size=3))
        proxy.delay_s = 3.0
        elapsed = []
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(BackendUnavailableError, match="timed out"):
                connector.search(SearchRequest("owl", size=3))
            elapsed.append(time.monotonic() - started)

        async def async_call() -> float:
            aconn = ASYNC[node.name](index=index, fields=["title", "body"], hosts=[proxy.url], **settings)
            try:
                started = time.monotonic()
                with pytest.raises(BackendUnavailableError, match="timed out"):
                    await aconn.search(SearchRequest("owl", size=3))
                return time.monotonic() - started
            finally:
                await aconn.close()

        async_elapsed = asyncio.run(async_call())
        proxy.delay_s = 0.0
        recovered = time.monotonic()
        while True:
            try:
                assert connector.search(SearchRequest("cat", size=3))
                break
            except BackendUnavailableError:
                assert time.monotonic() - recovered < 10, "not served again within 10 s"
        connector.close()
    for seconds in [*elapsed, async_elapsed]:
        assert seconds <= settings["deadline_s"] + SLACK_S, seconds
    scenario = f"{node.name} slow upstream (proxy +3 s)"
    figures.add(scenario, "max sync call latency (deadline 1 s)", max(elapsed), "s")
    figures.add(scenario, "async call latency (deadline 1 s)", async_elapsed, "s")


def _open_connections(port: int) -> set[int]:
    """Local ports of the ESTABLISHED TCP connections this process holds to ``port`` (Linux ``/proc``)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed while we looked
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    local_ports = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                parts = line.split()
                remote_port = int(parts[2].rsplit(":", 1)[1], 16)
                if parts[3] == "01" and remote_port == port and parts[9] in inodes:
                    local_ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return local_ports


async def _until(condition: Callable[[], bool], *, within_s: float) -> float:
    """Seconds until ``condition()`` holds, checked every 20 ms; fails past ``within_s``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within_s, f"condition not met within {within_s} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def test_request_deadline_bounds_the_first_stage_on_a_paused_node(
    healthy: LocalEngine, index: str, tiny_scorer: Any, figures: Any
) -> None:
    """``deadline_ms=2000`` ends the search at 2 s on a paused node, not at the settings' 10 s/30 s.

    The connectors keep their default settings (10 s per attempt, 30 s per call);
    only the per-call deadline is short. Then an asyncio search is cancelled (its
    client went away) while the node is paused: its connection must close.
    """
    node = healthy
    assert node.port is not None
    deadline_ms = 2000.0
    bound_s = deadline_ms / 1000 + SLACK_S
    sync_connector = SYNC[node.name](index=index, fields=["title", "body"], hosts=[node.url])
    retriever = Retriever(connector=sync_connector, scorer=tiny_scorer, window=10)
    assert retriever.search("cat", k=3, deadline_ms=deadline_ms).status == "ok"
    sync_elapsed: list[float] = []

    async def async_part() -> tuple[list[float], float]:
        connector = ASYNC[node.name](index=index, fields=["title", "body"], hosts=[node.url])
        aretriever = Retriever(connector=connector, scorer=tiny_scorer, window=10)
        try:
            elapsed = []
            for _ in range(2):
                started = time.monotonic()
                with pytest.raises(SearchDeadlineError, match="timed out"):
                    await aretriever.asearch("dog", k=3, deadline_ms=deadline_ms)
                elapsed.append(time.monotonic() - started)
            before = _open_connections(node.port)
            # A caller with all the time in the world, who leaves: its request must not linger.
            task = asyncio.create_task(aretriever.asearch("owl", k=3, deadline_ms=60_000))
            await _until(lambda: bool(_open_connections(node.port) - before), within_s=5.0)
            (ours,) = _open_connections(node.port) - before
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            closed_s = await _until(lambda: ours not in _open_connections(node.port), within_s=2.0)
            return elapsed, closed_s
        finally:
            aretriever.close()
            await connector.close()

    node.pause()
    try:
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(SearchDeadlineError, match="timed out"):
                retriever.search("cat", k=3, deadline_ms=deadline_ms)
            sync_elapsed.append(time.monotonic() - started)
        async_elapsed, closed_s = asyncio.run(async_part())
    finally:
        node.resume()
    assert retriever.search("cat", k=3).status == "ok"  # served again once resumed
    retriever.close()
    sync_connector.close()
    for seconds in sync_elapsed + async_elapsed:
        assert deadline_ms / 1000 - 0.1 <= seconds <= bound_s, seconds
    scenario = f"{node.name} SIGSTOP, deadline_ms=2000, default connection settings"
    figures.add(scenario, "max sync Retriever.search latency", max(sync_elapsed), "s")
    figures.add(scenario, "max async Retriever.asearch latency", max(async_elapsed), "s")
    figures.add(scenario, "cancelled asearch: connection closed after", closed_s, "s")
