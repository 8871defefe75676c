"""Fetch engine distributions from Maven Central and unpack them into a shared cache.

The cache lives outside the repository (``$SECONDPASS_ENGINES_DIR``, else
``$XDG_CACHE_HOME/secondpass/engines``, else ``~/.cache/secondpass/engines``) so
that every checkout and CI run on a machine shares one unpacked copy. An engine
directory appears only once complete (unpacked and plugins installed in a
staging directory, then renamed), and a file lock serialises concurrent fetches,
so a second run, or a second process racing the first, costs a ``stat``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from secondpass.errors import ServerStartError
from secondpass.servers import _java
from secondpass.servers.versions import ENGINES, Artifact, EngineSpec

log = logging.getLogger(__name__)

_READY = ".secondpass-ready"


def cache_root() -> Path:
    """The directory holding every unpacked engine."""
    explicit = os.environ.get("SECONDPASS_ENGINES_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "secondpass" / "engines"


def engine_home(engine: EngineSpec) -> Path:
    """Where ``engine`` is (or will be) unpacked."""
    return cache_root() / engine.dir_name


def is_fetched(engine: EngineSpec) -> bool:
    """Whether a complete copy of ``engine`` is in the cache."""
    return (engine_home(engine) / _READY).is_file()


def maven_repository() -> Path:
    """The local Maven repository ``mvn dependency:get`` fills (``SECONDPASS_MAVEN_REPO`` overrides)."""
    explicit = os.environ.get("SECONDPASS_MAVEN_REPO")
    return Path(explicit) if explicit else Path.home() / ".m2" / "repository"


def maven_artifact(artifact: Artifact, *, timeout_s: float = 1800.0) -> Path:
    """Path of ``artifact`` in the local Maven repository, downloading it if missing."""
    path = maven_repository() / artifact.repository_path
    if path.is_file():
        return path
    mvn = shutil.which("mvn")
    if mvn is None:
        msg = f"{artifact.coordinate} is not in {maven_repository()} and Maven ('mvn') is not installed"
        raise ServerStartError(msg)
    log.info("downloading %s from Maven Central", artifact.coordinate)
    argv = [mvn, "-q", "-B", "dependency:get", f"-Dartifact={artifact.coordinate}", "-Dtransitive=false"]
    if os.environ.get("SECONDPASS_MAVEN_REPO"):
        argv.append(f"-Dmaven.repo.local={maven_repository()}")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        msg = f"mvn dependency:get {artifact.coordinate} did not finish within {timeout_s:.0f} s"
        raise ServerStartError(msg) from exc
    if done.returncode != 0 or not path.is_file():
        out = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        msg = f"mvn dependency:get {artifact.coordinate} failed (exit {done.returncode}):\n{out}"
        raise ServerStartError(msg)
    return path


@contextmanager
def _locked(name: str, *, timeout_s: float = 1800.0) -> Iterator[None]:
    """Hold an exclusive lock on ``cache_root()/.name.lock`` (waits for other fetchers)."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with (root / f".{name}.lock").open("a") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    msg = f"another process has held the fetch lock of {name} for {timeout_s:.0f} s"
                    raise ServerStartError(msg) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _unzip(archive: Path, dest: Path, *, progress: bool = False) -> None:
    """Extract ``archive`` into ``dest`` keeping Unix modes (zipfile drops them)."""
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        total = sum(info.file_size for info in members)
        with tqdm(
            total=total, unit="B", unit_scale=True, desc=f"unpack {archive.name}", disable=not progress
        ) as bar:
            for info in members:
                target = Path(zf.extract(info, dest))
                mode = (info.external_attr >> 16) & 0o7777
                if mode and not info.is_dir():
                    target.chmod(mode)
                bar.update(info.file_size)


def _single_child(directory: Path) -> Path:
    children = [p for p in directory.iterdir() if p.is_dir()]
    if len(children) != 1:
        msg = f"unexpected layout in {directory}: expected one top-level folder"
        raise ServerStartError(msg)
    return children[0]


def _install_plugins(engine: EngineSpec, home: Path) -> None:
    """Run ``bin/<engine>-plugin install --batch file://...`` for each recorded plugin."""
    if not engine.plugins:
        return
    jdk = _java.find_jdk(engine)
    tool = home / "bin" / f"{engine.name}-plugin"
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env[engine.env("JAVA_HOME")] = str(jdk.home)
    env[engine.env("PATH_CONF")] = str(home / "config")
    for plugin in engine.plugins:
        archive = maven_artifact(plugin.artifact)
        argv = [str(tool), "install", "--batch", archive.resolve().as_uri()]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            out = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
            msg = f"installing plugin {plugin.name} into {engine.name} failed:\n{out}"
            raise ServerStartError(msg)


def fetch(engine: EngineSpec, *, progress: bool = False) -> Path:
    """Make sure ``engine`` (with its plugins) is unpacked in the cache; return its home.

    Idempotent and cheap when already done. Raises ``ServerStartError`` when the
    download, the unpacking or a plugin installation fails. ``progress`` shows a
    progress bar while unpacking (the CLI turns it on).
    """
    home = engine_home(engine)
    if is_fetched(engine):
        return home
    with _locked(engine.dir_name):
        if is_fetched(engine):
            return home
        archive = maven_artifact(engine.artifact)
        for plugin in engine.plugins:
            maven_artifact(plugin.artifact)
        staging = Path(tempfile.mkdtemp(prefix=f".{engine.dir_name}.", dir=cache_root()))
        try:
            log.info("unpacking %s into %s", archive.name, home)
            _unzip(archive, staging, progress=progress)
            unpacked = _single_child(staging)
            if engine.plugins:
                log.info("installing %s", ", ".join(p.name for p in engine.plugins))
            _install_plugins(engine, unpacked)
            for jar in engine.lib_jars:
                shutil.copy2(maven_artifact(jar), unpacked / "lib" / Path(jar.repository_path).name)
            (unpacked / _READY).write_text(engine.dir_name + "\n", encoding="utf-8")
            if home.exists():  # an incomplete copy from an interrupted older layout
                shutil.rmtree(home)
            unpacked.rename(home)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return home


def fetch_all(*, progress: bool = False) -> dict[str, Path]:
    """Fetch every engine in ``versions.ENGINES``; returns name -> home."""
    return {name: fetch(engine, progress=progress) for name, engine in ENGINES.items()}
