"""A throwaway HAProxy on loopback in front of several ``secondpass serve`` replicas.

Why HAProxy: it is the load balancer many teams already run, it health-checks
backends on an HTTP path (``/readyz``, so a draining or loading replica leaves
the rotation), and it can retry an idempotent request on another replica when
the first one dies mid-request (``retry-on`` + ``option redispatch``). The
replica tests and ``benchmarks/replicas.py`` use it to show what a client sees
when a replica is killed or restarted; ``docker-compose.yml`` runs the same
configuration (:func:`haproxy_config`).
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
import socket
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from secondpass.errors import ConfigurationError, ServerStartError
from secondpass.servers import _process

log = logging.getLogger(__name__)

HAPROXY_BINARY = "haproxy"


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """How HAProxy decides a replica is in rotation.

    ``inter_ms`` between checks, ``fall`` failures to take a replica out and
    ``rise`` successes to put it back; ``path`` must answer 200 only when the
    replica can score (the service's ``/readyz``, which turns 503 on SIGTERM).
    """

    path: str = "/readyz"
    inter_ms: int = 500
    fall: int = 2
    rise: int = 2


def haproxy_config(
    *,
    bind: str,
    servers: Sequence[tuple[str, str]],
    stats_bind: str | None = None,
    check: HealthCheck | None = None,
    retries: int = 3,
    timeout_server_s: float = 30.0,
    admin_socket: str | None = None,
) -> str:
    """The HAProxy configuration: one frontend on ``bind``, round robin over ``servers``.

    ``servers`` are ``(name, "host:port")``. Failed attempts (refused connection,
    empty or junk response, 502/503/504) are retried up to ``retries`` times,
    on another replica (``option redispatch 1``): rerank and search requests
    are idempotent, so a retry never scores anything twice in a way a client
    can see. The request is buffered so a POST body can be replayed.
    ``admin_socket`` (a Unix socket path) enables the runtime API, through
    which a replica's address can be changed without a reload.
    """
    if not servers:
        msg = "haproxy_config needs at least one backend server"
        raise ConfigurationError(msg)
    check = HealthCheck() if check is None else check
    lines = [
        "global",
        "    maxconn 4096",
        *([f"    stats socket {admin_socket} level admin"] if admin_socket else []),
        "defaults",
        "    mode http",
        "    timeout connect 1s",
        "    timeout client 60s",
        f"    timeout server {int(timeout_server_s * 1000)}ms",
        "    timeout check 1s",
        f"    retries {retries}",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response junk-response response-timeout 502 503 504",
        "    option http-buffer-request",
        "frontend rerank",
        f"    bind {bind}",
        "    default_backend replicas",
        "backend replicas",
        "    balance roundrobin",
        f"    option httpchk GET {check.path}",
        "    http-check expect status 200",
    ]
    for name, address in servers:
        lines.append(
            f"    server {name} {address} check inter {check.inter_ms}ms "
            f"fall {check.fall} rise {check.rise}"
        )
    if stats_bind is not None:
        lines += [
            "frontend stats",
            f"    bind {stats_bind}",
            "    stats enable",
            "    stats uri /stats",
        ]
    return "\n".join(lines) + "\n"


class LocalHAProxy(_process.ManagedServer):
    """One ``haproxy`` process on 127.0.0.1 balancing over loopback replicas.

    Construction does no I/O; :meth:`start` writes the configuration, starts
    HAProxy in the foreground and waits until it accepts connections.
    :meth:`server_states` reads the stats page so a caller can wait until the
    health checks agree with what it expects.

    Example:
        >>> with LocalHAProxy(servers=[("r0", "127.0.0.1:8081")]) as lb:  # doctest: +SKIP
        ...     httpx.post(f"{lb.url}/v1/rerank", json=...)
    """

    stop_grace_s = 10.0

    def __init__(
        self,
        *,
        servers: Sequence[tuple[str, str]],
        port: int | None = None,
        check: HealthCheck | None = None,
        retries: int = 3,
        binary: str | None = None,
        start_timeout_s: float = 20.0,
    ) -> None:
        self.servers = list(servers)
        self.port = port
        self.check = HealthCheck() if check is None else check
        self.retries = retries
        self.binary = binary
        self.start_timeout_s = start_timeout_s
        self.stats_port: int | None = None
        self._workdir: Path | None = None
        self._proc = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``, the frontend clients talk to."""
        if self.port is None:
            msg = "LocalHAProxy has no port until it is started"
            raise ServerStartError(msg)
        return f"http://{_process.LOOPBACK}:{self.port}"

    def start(self) -> LocalHAProxy:
        """Write the configuration, start HAProxy and wait until the frontend accepts."""
        if self._proc is not None and self._proc.poll() is None:
            return self
        binary = shutil.which(self.binary or HAPROXY_BINARY)
        if binary is None:
            msg = (
                f"{self.binary or HAPROXY_BINARY} not found "
                "(scripts/bootstrap.sh installs Debian's haproxy)"
            )
            raise ServerStartError(msg)
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="secondpass-haproxy-"))
        if self.port is None:
            self.port = _process.free_port()
        if self.stats_port is None:
            self.stats_port = _process.free_port()
        config = self._workdir / "haproxy.cfg"
        config.write_text(
            haproxy_config(
                bind=f"{_process.LOOPBACK}:{self.port}",
                stats_bind=f"{_process.LOOPBACK}:{self.stats_port}",
                servers=self.servers,
                check=self.check,
                retries=self.retries,
                admin_socket=str(self._workdir / "admin.sock"),
            ),
            encoding="utf-8",
        )
        console = self._workdir / "console.log"
        # -db: stay in the foreground, so the process group is HAProxy's own
        self._proc = _process.spawn(
            [binary, "-db", "-f", str(config)], env={"PATH": "/usr/bin:/bin"}, log_path=console
        )
        _process.track(self)
        deadline = time.monotonic() + self.start_timeout_s
        while not self._stats_answers():
            code = self._proc.poll()
            if code is not None or time.monotonic() > deadline:
                why = f"exited with code {code}" if code is not None else "did not listen in time"
                _process.kill(self._proc)
                self._proc = None
                msg = f"haproxy {why}; log:\n{_process.tail(console)}"
                raise ServerStartError(msg)
            time.sleep(0.05)
        log.info("haproxy ready on %s over %d replicas", self.url, len(self.servers))
        return self

    def _stats_answers(self) -> bool:
        try:
            self.server_states()
        except OSError:
            return False
        return True

    def server_states(self) -> dict[str, str]:
        """Each backend server's health-check state, e.g. ``{"r0": "UP", "r1": "DOWN"}``."""
        url = f"http://{_process.LOOPBACK}:{self.stats_port}/stats;csv"
        with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 (loopback)
            text = answer.read().decode("utf-8")
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {
            row["svname"]: row["status"]
            for row in rows
            if row.get("pxname") == "replicas" and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def wait_for_states(self, want: dict[str, str], *, timeout_s: float = 30.0) -> None:
        """Block until the named servers report the wanted states (``UP``/``DOWN``)."""
        deadline = time.monotonic() + timeout_s
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = self.server_states()
            if all(states.get(name, "").startswith(state) for name, state in want.items()):
                return
            time.sleep(0.1)
        msg = f"haproxy servers did not reach {want} in {timeout_s}s (now {states})"
        raise ServerStartError(msg)

    def set_server_address(self, name: str, address: str) -> None:
        """Point backend server ``name`` at ``host:port`` (runtime API; no reload, no lost request).

        Used to swap a replica for its replacement: the slot keeps its name and
        health-check state machine, and only the new address is checked.
        """
        assert self._workdir is not None
        host, _, port = address.rpartition(":")
        command = f"set server replicas/{name} addr {host} port {port}\n"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self._workdir / "admin.sock"))
            sock.sendall(command.encode("ascii"))
            answer = sock.recv(4096).decode("utf-8", "replace")
        if "changed" not in answer and "no need to change" not in answer:
            msg = f"haproxy refused {command.strip()!r}: {answer.strip()}"
            raise ServerStartError(msg)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of HAProxy's console output."""
        return "" if self._workdir is None else _process.tail(self._workdir / "console.log", lines)

    def close(self) -> None:
        """Stop HAProxy and remove its working directory."""
        self.stop()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
