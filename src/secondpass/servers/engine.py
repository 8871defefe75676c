"""A single Elasticsearch or OpenSearch node on loopback, for tests and the demo.

Every node gets its own working directory (config, data, logs, tmp), so nodes
never share state with each other or with the cached distribution, and a
restart on the same port and data directory finds its indices again. The node is
started with the distribution's own launcher and our own ``config`` directory,
whose ``jvm.options`` is rewritten for the chosen JDK and a small heap.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from secondpass.errors import ConfigurationError, ServerStartError
from secondpass.servers import _java, _process, distributions
from secondpass.servers.versions import DEFAULT_HEAP_MB, EngineSpec, spec

log = logging.getLogger(__name__)

SettingValue = str | int | float | bool
# C1 only: about halves start-up on 2 cores (measured 41 -> 22 s for OpenSearch, 34 -> 12 s
# for Elasticsearch under load) at the cost of peak query throughput, which tests never reach.
_FAST_START_OPTION = "-XX:TieredStopAtLevel=1"
# jvm.options lines may start with a Java version range: "17-:", "9-:", "8:", "20-23:".
_JVM_OPTION_RANGE = re.compile(r"^\d+(-\d*)?:")


def _yaml_scalar(value: SettingValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _rewrite_jvm_options(text: str, jdk: _java.Jdk, logs: Path) -> str:
    """Adapt the stock jvm.options to ``jdk`` and to a per-node log directory.

    Heap lines go (the heap comes from the ``*_JAVA_OPTS`` variable), GC logging
    goes (it writes relative to the shared distribution directory), and
    ``--add-modules`` of a module the JDK lacks goes (a trimmed JDK would refuse
    to boot).
    """
    kept: list[str] = []
    for line in text.splitlines():
        stripped = _JVM_OPTION_RANGE.sub("", line.strip())
        if stripped.startswith(("-Xms", "-Xmx", "-Xlog:gc", "-Xloggc", "-XX:HeapDumpPath", "-XX:ErrorFile")):
            continue
        if stripped.startswith("--add-modules="):
            module = stripped.split("=", 1)[1]
            if module not in jdk.modules:
                continue
        kept.append(line)
    kept.append(f"-XX:HeapDumpPath={logs}")
    kept.append(f"-XX:ErrorFile={logs}/hs_err_pid%p.log")
    return "\n".join(kept) + "\n"


class LocalEngine(_process.ManagedServer):
    """One single-node Elasticsearch or OpenSearch process on 127.0.0.1.

    Construction does no I/O; :meth:`start` fetches the distribution if needed,
    picks a free port (unless one was given), writes the node's config into a
    temporary working directory and waits until the cluster answers. Security is
    off unless ``password`` is given (Elasticsearch only: basic auth for the
    ``elastic`` user over plain HTTP). ``fast_start`` runs the JVM with the C1
    compiler only, which halves start-up; pass ``False`` when measuring the
    engine's own query speed.

    Example:
        >>> node = LocalEngine("opensearch")  # doctest: +SKIP
        >>> with node:  # doctest: +SKIP
        ...     print(node.url)
        http://127.0.0.1:41213
    """

    username = "elastic"

    def __init__(
        self,
        name: str,
        *,
        port: int | None = None,
        heap_mb: int = DEFAULT_HEAP_MB,
        password: str | None = None,
        settings: Mapping[str, SettingValue] | None = None,
        start_timeout_s: float = 180.0,
        workdir: Path | None = None,
        jvm_options: Sequence[str] = (),
        fast_start: bool = True,
    ) -> None:
        self.spec: EngineSpec = spec(name)
        if password is not None and self.spec.name != "elasticsearch":
            msg = "password is only supported for elasticsearch (the OpenSearch zip has no security plugin)"
            raise ConfigurationError(msg)
        self.name = self.spec.name
        self.version = self.spec.version
        self.port = port
        self.transport_port: int | None = None
        self.heap_mb = heap_mb
        self.password = password
        self.settings = dict(settings or {})
        self.start_timeout_s = start_timeout_s
        self.jvm_options = tuple(jvm_options)
        self.fast_start = fast_start
        self._workdir = workdir
        self._owns_workdir = workdir is None
        self._proc = None
        self._configured = False
        self.last_start_s: float | None = None

    # -- paths ---------------------------------------------------------------
    @property
    def workdir(self) -> Path:
        """The node's private directory (created on first :meth:`start`)."""
        if self._workdir is None:
            msg = "the node has not been started yet"
            raise ConfigurationError(msg)
        return self._workdir

    @property
    def log_path(self) -> Path:
        """The node's console output (stdout and stderr of the launcher)."""
        return self.workdir / "logs" / "console.log"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return self._loopback_url("http")

    @property
    def auth(self) -> tuple[str, str] | None:
        """Basic-auth credentials, or ``None`` for an unsecured node."""
        return None if self.password is None else (self.username, self.password)

    @property
    def pid(self) -> int | None:
        """Process-group id of the running node, if any."""
        return None if self._proc is None else self._proc.pid

    def is_running(self) -> bool:
        """Whether the node's process group is alive (it may still be paused)."""
        return self._proc is not None and _process.group_alive(self._proc.pid)

    def log_tail(self, lines: int = 60) -> str:
        """The last lines the node printed; what a failed start reports."""
        if self._workdir is None:
            return ""
        return _process.tail(self.log_path, lines)

    # -- configuration -------------------------------------------------------
    def _node_settings(self) -> dict[str, SettingValue]:
        work = self.workdir
        base: dict[str, SettingValue] = {
            "cluster.name": f"secondpass-{self.name}",
            "node.name": f"secondpass-{self.name}-{self.port}",
            "network.host": _process.LOOPBACK,
            "http.port": self.port or 0,
            "transport.port": self.transport_port or 0,
            "discovery.type": "single-node",
            "path.data": str(work / "data"),
            "path.logs": str(work / "logs"),
            "cluster.routing.allocation.disk.threshold_enabled": False,
            "action.auto_create_index": True,
        }
        if self.name == "elasticsearch":
            secure = self.password is not None
            base["xpack.security.enabled"] = secure
            if secure:
                base["xpack.security.http.ssl.enabled"] = False
                base["xpack.security.transport.ssl.enabled"] = False
        base.update(self.settings)
        return base

    def _configure(self, home: Path, jdk: _java.Jdk, env: dict[str, str]) -> None:
        work = self.workdir
        conf = work / "config"
        if conf.exists():
            shutil.rmtree(conf)
        shutil.copytree(home / "config", conf)
        for sub in ("data", "logs", "tmp"):
            (work / sub).mkdir(parents=True, exist_ok=True)
        jvm = conf / "jvm.options"
        jvm.write_text(
            _rewrite_jvm_options(jvm.read_text(encoding="utf-8"), jdk, work / "logs"),
            encoding="utf-8",
        )
        lines = [f"{key}: {_yaml_scalar(value)}" for key, value in self._node_settings().items()]
        (conf / self.spec.config_file).write_text("\n".join(lines) + "\n", encoding="utf-8")
        if self.password is not None:
            self._write_keystore(home, env)

    def _write_keystore(self, home: Path, env: dict[str, str]) -> None:
        """Store ``bootstrap.password`` so the ``elastic`` user has a known password."""
        tool = str(home / "bin" / "elasticsearch-keystore")
        prefix = list(_process.drop_root_prefix())
        steps = (
            ([*prefix, tool, "create"], None),
            ([*prefix, tool, "add", "-x", "-f", "bootstrap.password"], self.password),
        )
        for argv, stdin in steps:
            done = subprocess.run(
                argv, env=env, input=stdin, capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                out = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
                msg = f"elasticsearch-keystore {argv[len(prefix) + 1]} failed:\n{out}"
                raise ServerStartError(msg)

    def _environment(self, home: Path, jdk: _java.Jdk) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"JAVA_HOME", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "CLASSPATH"}
            and not key.startswith(("ES_", "OPENSEARCH_"))
        }
        env[self.spec.env("JAVA_HOME")] = str(jdk.home)
        options = [f"-Xms{self.heap_mb}m", f"-Xmx{self.heap_mb}m"]
        if self.fast_start:
            options.append(_FAST_START_OPTION)
        options.extend(_java.extra_jvm_options(self.spec, jdk))
        env[self.spec.env("JAVA_OPTS")] = " ".join((*options, *self.jvm_options))
        env[self.spec.env("PATH_CONF")] = str(self.workdir / "config")
        env[self.spec.env("TMPDIR")] = str(self.workdir / "tmp")
        return env

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> LocalEngine:
        """Start the node and wait until ``_cluster/health`` answers; idempotent.

        Raises ``ServerStartError`` with the tail of the node's output when the
        process exits early or does not answer within ``start_timeout_s``.
        """
        if self.is_running():
            return self
        home = distributions.fetch(self.spec)
        jdk = _java.find_jdk(self.spec)
        self._claim_workdir_and_port(self.name)
        if self.transport_port is None:
            self.transport_port = _process.free_port()
        env = self._environment(home, jdk)
        if not self._configured:
            self._configure(home, jdk, env)
            self._configured = True
        self._wait_port_free()
        argv = [*_process.drop_root_prefix(), str(home / self.spec.executable)]
        log.info("starting %s %s on %s (Java %s)", self.name, self.version, self.url, jdk.major)
        started = time.monotonic()
        with self.log_path.open("ab") as handle:
            handle.write(f"\n===== secondpass: starting {self.name} on {self.url}\n".encode())
        self._proc = _process.spawn(argv, env=env, log_path=self.log_path, cwd=home)
        _process.track(self)
        try:
            self._wait_ready()
        except BaseException:
            _process.terminate(self._proc, grace_s=5.0)
            raise
        self.last_start_s = time.monotonic() - started
        log.info("%s ready on %s after %.1f s", self.name, self.url, self.last_start_s)
        return self

    def _wait_port_free(self, timeout_s: float = 30.0) -> None:
        """After a kill the old JVM may hold the port for a moment; wait for it."""
        assert self.port is not None
        deadline = time.monotonic() + timeout_s
        while not _process.port_is_free(self.port):
            if time.monotonic() > deadline:
                msg = f"port {self.port} for {self.name} is still in use by another process"
                raise ServerStartError(msg)
            time.sleep(0.2)

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout_s
        probe = f"{self.url}/_cluster/health?wait_for_status=yellow&timeout=1s"
        with httpx.Client(timeout=2.0, auth=self.auth, trust_env=False) as client:
            while True:
                code = self._proc.poll()
                if code is not None:
                    msg = (
                        f"{self.name} {self.version} exited with code {code} while starting; "
                        f"last lines of {self.log_path}:\n{self.log_tail()}"
                    )
                    raise ServerStartError(msg)
                try:
                    if client.get(probe).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    msg = (
                        f"{self.name} {self.version} did not answer on {self.url} within "
                        f"{self.start_timeout_s:.0f} s; last lines of {self.log_path}:\n"
                        f"{self.log_tail()}"
                    )
                    raise ServerStartError(msg)
                time.sleep(0.25)

    def close(self) -> None:
        """Stop the node and delete its working directory (if we created it)."""
        self.stop()
        if self._owns_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
            self._configured = False

    def __repr__(self) -> str:
        where = self.url if self.port is not None else "not started"
        return f"LocalEngine({self.name} {self.version}, {where})"
