"""Several ``secondpass serve`` replicas behind a local HAProxy, and a steady load on them.

Shared by tests/integration/test_replicas_haproxy.py and benchmarks/replicas.py:
the replicas are real service processes on fixed loopback ports (so a
restarted replica comes back where HAProxy expects it), sharing one Redis score
cache; the load is a few closed-loop client threads that count every answer
that was not a 200, so a scenario's client-visible errors are a number.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from secondpass.servers._process import free_port
from secondpass.servers.haproxy import HealthCheck, LocalHAProxy
from tests.fixtures.service import ServiceProcess, start_service, wait_until_ready

DOCUMENTS = [
    "Cross-encoders score a query and a passage together.",
    "HAProxy retries an idempotent request on another server.",
    "Redis keeps the scores every replica can reuse.",
    "A rolling restart replaces one replica at a time.",
]


READY_TIMEOUT_S = 300.0
"""How long a replica may take to load; generous because the CI machine's 2 cores are shared."""


def start_replica(
    model_dir: Path, log_dir: Path, port: int, settings: Mapping[str, Any], *, wait: bool = True
) -> ServiceProcess:
    """Start one service on ``port`` (the service fixture picks a free one; the last --port wins)."""
    process = start_service(
        model_dir, log_dir, settings=settings, args=["--port", str(port)], wait_ready=False
    )
    replica = dataclasses.replace(process, url=f"http://127.0.0.1:{port}", port=port)
    if wait:
        wait_until_ready(replica, READY_TIMEOUT_S)
    return replica


@dataclass(kw_only=True)
class ReplicaSet:
    """``count`` replicas on fixed ports behind one HAProxy; :meth:`close` stops them all."""

    model_dir: Path
    log_dir: Path
    count: int
    settings: Mapping[str, Any]
    check: HealthCheck = field(default_factory=HealthCheck)
    ports: list[int] = field(default_factory=list)
    replicas: list[ServiceProcess] = field(default_factory=list)
    balancer: LocalHAProxy | None = None

    def start(self) -> ReplicaSet:
        """Start every replica at once (they load in parallel), then HAProxy; wait all UP."""
        self.ports = [free_port() for _ in range(self.count)]
        started = [
            start_replica(self.model_dir, self.log_dir, port, self.settings, wait=False)
            for port in self.ports
        ]
        self.replicas = started
        for replica in started:
            wait_until_ready(replica, READY_TIMEOUT_S)
        self.balancer = LocalHAProxy(
            servers=[(self.name(i), f"127.0.0.1:{p}") for i, p in enumerate(self.ports)],
            check=self.check,
        ).start()
        self.balancer.wait_for_states({self.name(i): "UP" for i in range(self.count)})
        return self

    @staticmethod
    def name(index: int) -> str:
        return f"r{index}"

    @property
    def url(self) -> str:
        assert self.balancer is not None
        return self.balancer.url

    def start_replacements(self) -> list[ServiceProcess]:
        """One new process per replica on a new port, all loading at once; wait until all ready.

        Like a Kubernetes rolling update's surge pods: the replacements load
        while the old replicas serve, so the rollout then costs one model load,
        not one per replica.
        """
        new = [
            start_replica(self.model_dir, self.log_dir, free_port(), self.settings, wait=False)
            for _ in self.replicas
        ]
        for replica in new:
            wait_until_ready(replica, READY_TIMEOUT_S)
        return new

    def swap(self, index: int, replacement: ServiceProcess) -> int:
        """SIGTERM replica ``index``; once HAProxy has it DOWN and it exited, put ``replacement``
        in its slot and wait until it is UP. Returns the old process's exit code."""
        assert self.balancer is not None
        name = self.name(index)
        old = self.replicas[index]
        old.terminate()
        self.balancer.wait_for_states({name: "DOWN"})
        code = old.process.wait(30)
        self.balancer.set_server_address(name, f"127.0.0.1:{replacement.port}")
        self.replicas[index] = replacement
        self.ports[index] = replacement.port
        self.balancer.wait_for_states({name: "UP"})
        return code

    def close(self) -> None:
        if self.balancer is not None:
            self.balancer.close()
        for replica in self.replicas:
            replica.stop()


def rerank_body(query: str) -> dict[str, Any]:
    return {"query": query, "documents": DOCUMENTS}


@dataclass
class LoadReport:
    """What the clients saw: answers by status (``"error:<Exception>"`` when none came)."""

    outcomes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def ok(self) -> int:
        return self.outcomes["200"]

    @property
    def failed(self) -> int:
        return sum(n for status, n in self.outcomes.items() if status != "200")

    @property
    def per_second(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


class SteadyLoad:
    """``clients`` threads posting /v1/rerank to ``url`` back to back until :meth:`stop`.

    Each request has a query never sent before (a counter in it), so it reaches
    the model rather than the cache. :meth:`wait_for` blocks until so many more
    answers arrived, which is how a scenario says "under load" without a sleep.
    """

    def __init__(self, url: str, *, clients: int = 4, timeout_s: float = 30.0) -> None:
        self.url = url
        self.clients = clients
        self.timeout_s = timeout_s
        self.report = LoadReport()
        self._stop = threading.Event()
        self._lock = threading.Condition()
        self._counter = itertools.count()
        self._threads: list[threading.Thread] = []
        self._started_at = 0.0

    def __enter__(self) -> SteadyLoad:
        self._started_at = time.monotonic()
        for _ in range(self.clients):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=self.timeout_s) as client:
            while not self._stop.is_set():
                query = f"replica load query {next(self._counter)}"
                try:
                    outcome = str(client.post("/v1/rerank", json=rerank_body(query)).status_code)
                except httpx.HTTPError as exc:
                    outcome = f"error:{type(exc).__name__}"
                with self._lock:
                    self.report.outcomes[outcome] += 1
                    self._lock.notify_all()

    def answered(self) -> int:
        with self._lock:
            return sum(self.report.outcomes.values())

    def wait_for(self, more: int, *, timeout_s: float = 60.0) -> None:
        """Block until ``more`` further answers (of any status) have arrived."""
        with self._lock:
            target = sum(self.report.outcomes.values()) + more
            if not self._lock.wait_for(
                lambda: sum(self.report.outcomes.values()) >= target, timeout=timeout_s
            ):
                msg = f"load stalled: {dict(self.report.outcomes)} after {timeout_s}s"
                raise AssertionError(msg)

    def stop(self) -> LoadReport:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout_s + 5)
        self._threads.clear()
        if self._started_at:
            self.report.seconds = time.monotonic() - self._started_at
        return self.report
