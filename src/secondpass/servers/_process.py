"""Process plumbing shared by the local engines and Redis.

Each server runs in its own process group so that one signal reaches every
process it spawned (Elasticsearch runs a CLI launcher JVM that forks the server
JVM). Log tails are what a failed start reports, so they are read defensively.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Protocol, TypeVar

from secondpass.errors import ServerStartError

LOOPBACK = "127.0.0.1"
# uid/gid the engines see when we are root: both engines refuse to run as root.
_UNPRIVILEGED_ID = 1000


class _Closable(Protocol):
    def close(self) -> None: ...


# Servers started by this interpreter; stopped at exit so that a script or test run
# that forgets close() (or dies on an exception) leaves no JVM eating memory behind.
_LIVE: weakref.WeakSet[_Closable] = weakref.WeakSet()


def track(server: _Closable) -> None:
    """Stop ``server`` when the interpreter exits, unless it was closed before."""
    _LIVE.add(server)


@atexit.register
def _close_all() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.close()


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on right now (the usual bind-to-0 trick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether ``port`` can be bound now, i.e. no old process still holds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def tail(path: Path, lines: int = 60, max_bytes: int = 64_000) -> str:
    """The last ``lines`` lines of a log file; empty when there is none yet."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


@functools.cache
def drop_root_prefix() -> tuple[str, ...]:
    """Command prefix that makes a root caller look unprivileged to the child.

    Elasticsearch and OpenSearch refuse to run as root and offer no override. A
    user namespace that maps uid 1000 inside to root outside fixes that without
    creating users or changing file ownership: files stay root's on disk and the
    engine sees itself as uid 1000 owning them. Empty when we are not root.
    """
    if os.geteuid() != 0:
        return ()
    unshare = shutil.which("unshare")
    prefix = (
        (unshare, "--user", f"--map-user={_UNPRIVILEGED_ID}", f"--map-group={_UNPRIVILEGED_ID}")
        if unshare
        else None
    )
    if prefix is not None:
        probe = subprocess.run([*prefix, "true"], capture_output=True, check=False)
        if probe.returncode == 0:
            return prefix
    msg = (
        "Elasticsearch/OpenSearch refuse to run as root and user namespaces are unavailable "
        "here (util-linux 'unshare --user --map-user' failed); run the tests as a normal user"
    )
    raise ServerStartError(msg)


def spawn(
    argv: Sequence[str],
    *,
    env: dict[str, str],
    log_path: Path,
    cwd: Path | None = None,
    stdin_text: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session with stdout+stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            list(argv),
            env=env,
            cwd=cwd,
            stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    if stdin_text is not None and proc.stdin is not None:
        proc.stdin.write(stdin_text.encode("utf-8"))
        proc.stdin.close()
    return proc


def executable(name: str, *, package: str) -> str:
    """The path of the server binary ``name``, or a :class:`ServerStartError` saying what installs it."""
    path = shutil.which(name)
    if path is None:
        msg = (
            f"{name} not found or not executable (scripts/bootstrap.sh installs Debian's {package})"
        )
        raise ServerStartError(msg)
    return path


def signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send ``sig`` to the whole process group of ``proc`` (ignored if already gone)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` still exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def terminate(proc: subprocess.Popen[bytes], *, grace_s: float) -> None:
    """SIGTERM the group, wait up to ``grace_s``, then SIGKILL whatever is left.

    A stopped (SIGSTOPped) group cannot act on SIGTERM, so it is continued first.
    The wait covers every process of the group, not just the leader, so the
    port is free when this returns.
    """
    if proc.poll() is None or group_alive(proc.pid):
        signal_group(proc, signal.SIGCONT)
        signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            proc.poll()
            if not group_alive(proc.pid):
                break
            time.sleep(0.1)
    kill(proc)


def kill(proc: subprocess.Popen[bytes], *, wait_s: float = 10.0) -> None:
    """SIGKILL the group and reap the leader."""
    signal_group(proc, signal.SIGKILL)
    try:
        proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + wait_s
    while group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)


_Server = TypeVar("_Server", bound="ManagedServer")


class ManagedServer:
    """The process-group lifecycle every local server shares: stop, crash, hang, restart.

    Why one base: fault tests drive Elasticsearch, OpenSearch and Redis the
    same way (SIGKILL as a crash, SIGSTOP as a hang), so the signals and the
    order they are sent in live here once. Subclasses start the process into
    ``_proc`` and say in ``close`` what else they clean up.
    """

    _proc: subprocess.Popen[bytes] | None = None
    _workdir: Path | None = None
    port: int | None = None
    stop_grace_s: ClassVar[float] = 30.0

    def _claim_workdir_and_port(self, name: str) -> tuple[Path, int]:
        """On the first start, make the private working directory and pick a free port.

        Both are kept across :meth:`stop`/:meth:`start`, so a restarted server
        finds its files and clients reconnect to the same address.
        """
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix=f"secondpass-{name}-"))
        if self.port is None:
            self.port = free_port()
        return self._workdir, self.port

    def _loopback_url(self, scheme: str, path: str = "") -> str:
        """``<scheme>://127.0.0.1:<port><path>``; there is none before the first start picks a port."""
        if self.port is None:
            msg = f"{type(self).__name__} has no port until it is started"
            raise ServerStartError(msg)
        return f"{scheme}://{LOOPBACK}:{self.port}{path}"

    def start(self: _Server) -> _Server:
        """Start the server and wait until it answers."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop the server and remove what :meth:`start` created."""
        raise NotImplementedError

    def stop(self, *, grace_s: float | None = None) -> None:
        """SIGTERM the group (SIGKILL after ``grace_s``); the next :meth:`start` reuses the port."""
        if self._proc is not None:
            terminate(self._proc, grace_s=self.stop_grace_s if grace_s is None else grace_s)
            self._proc = None

    def kill(self) -> None:
        """SIGKILL the group at once, as a crash would."""
        if self._proc is not None:
            kill(self._proc)
            self._proc = None

    def pause(self) -> None:
        """SIGSTOP the group: the kernel still accepts connections, nothing answers."""
        if self._proc is not None:
            signal_group(self._proc, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self._proc is not None:
            signal_group(self._proc, signal.SIGCONT)

    def restart(self: _Server) -> _Server:
        """Stop (if running) and start again on the same port."""
        self.stop()
        return self.start()

    def __enter__(self: _Server) -> _Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
