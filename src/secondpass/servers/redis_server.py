"""A throwaway ``redis-server`` on loopback, for the score-cache tests and the demo.

Persistence is off (``save ''``, ``appendonly no``): the score cache is a cache,
and a test that restarts Redis must see it empty, as after a real crash of a
non-persistent cache. The configuration, password included, goes to
``redis-server -`` on stdin so the password never appears in ``ps`` output.
"""

from __future__ import annotations

import logging
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from secondpass.errors import ServerStartError
from secondpass.servers import _process
from secondpass.servers.versions import REDIS_SERVER_BINARY

log = logging.getLogger(__name__)


def _ping(port: int, timeout_s: float = 0.5) -> bool:
    """True once the server answers anything to PING (``+PONG`` or ``-NOAUTH``)."""
    try:
        with socket.create_connection((_process.LOOPBACK, port), timeout=timeout_s) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64)[:1] in (b"+", b"-")
    except OSError:
        return False


@dataclass(eq=False, repr=False, kw_only=True)
class LocalRedis(_process.ManagedServer):
    """One ``redis-server`` process on 127.0.0.1 with persistence off.

    Construction does no I/O; :meth:`start` picks a free port (kept across
    :meth:`stop`/:meth:`start`, so clients can reconnect to the same URL) and
    waits until the server answers. ``password`` turns on ``requirepass``,
    ``binary`` overrides ``redis-server`` on ``PATH`` and ``maxmemory_mb``
    (``None``: unbounded) caps memory with LRU eviction, as a cache is run.

    Example:
        >>> with LocalRedis() as server:  # doctest: +SKIP
        ...     server.url
        'redis://127.0.0.1:40197/0'
    """

    stop_grace_s = 10.0

    port: int | None = None
    password: str | None = None
    binary: str | None = None
    start_timeout_s: float = 20.0
    maxmemory_mb: int | None = 256

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0`` (no password: pass it separately)."""
        return self._loopback_url("redis", "/0")

    @property
    def host(self) -> str:
        """Always the loopback address."""
        return _process.LOOPBACK

    @property
    def log_path(self) -> Path | None:
        """The server's log file (``None`` before the first start)."""
        return None if self._workdir is None else self._workdir / "redis.log"

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log."""
        return "" if self.log_path is None else _process.tail(self.log_path, lines)

    def is_running(self) -> bool:
        """Whether the process is alive (it may be paused)."""
        return self._proc is not None and self._proc.poll() is None

    def _config(self) -> str:
        assert self._workdir is not None
        lines = [
            f"port {self.port}",
            f"bind {_process.LOOPBACK}",
            "protected-mode yes",
            "daemonize no",
            'save ""',
            "appendonly no",
            f'dir "{self._workdir}"',
            f'logfile "{self._workdir / "redis.log"}"',
        ]
        if self.maxmemory_mb is not None:
            lines += [f"maxmemory {self.maxmemory_mb}mb", "maxmemory-policy allkeys-lru"]
        if self.password is not None:
            lines.append(f'requirepass "{self.password}"')
        return "\n".join(lines) + "\n"

    def start(self) -> LocalRedis:
        """Start the server (same port as before, if any) and wait for PING; idempotent."""
        if self.is_running():
            return self
        binary = _process.executable(self.binary or REDIS_SERVER_BINARY, package="redis-server")
        workdir, port = self._claim_workdir_and_port("redis")
        console = workdir / "console.log"
        self._proc = _process.spawn(
            [binary, "-"], env={"PATH": "/usr/bin:/bin"}, log_path=console, stdin_text=self._config()
        )
        _process.track(self)
        deadline = time.monotonic() + self.start_timeout_s
        while not _ping(port):
            code = self._proc.poll()
            if code is not None or time.monotonic() > deadline:
                why = f"exited with code {code}" if code is not None else "did not answer in time"
                tail = self.log_tail() or _process.tail(console)
                _process.kill(self._proc)
                self._proc = None
                msg = f"redis-server on port {self.port} {why}; last log lines:\n{tail}"
                raise ServerStartError(msg)
            time.sleep(0.05)
        log.info("redis-server ready on %s", self.url)
        return self

    def close(self) -> None:
        """Stop and remove the working directory."""
        self.stop()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __repr__(self) -> str:
        where = self.url if self.port is not None else "not started"
        return f"LocalRedis({where})"
