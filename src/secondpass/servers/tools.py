"""Command-line tools the deployment checks need, built once and cached like the engines.

Why build Helm from source: the Go module proxy is reachable where release
tarballs on get.helm.sh may not be, and ``go install`` of a pinned version is
reproducible. The binary goes to ``<cache>/tools/helm-<version>/helm`` next to
the engine distributions (``$SECONDPASS_TOOLS_DIR`` overrides the folder), so a
second run costs nothing.

Command line::

    python -m secondpass.servers.tools helm     # build if missing, print the path
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from secondpass.errors import ServerStartError
from secondpass.servers.distributions import cache_root

HELM_VERSION = "v3.22.0"
"""The Helm release the chart is linted and rendered with (``helm.sh/helm/v3``)."""

_HELM_MODULE = "helm.sh/helm/v3/cmd/helm"


def tools_root() -> Path:
    """``$SECONDPASS_TOOLS_DIR``, else ``tools/`` beside the engine cache."""
    override = os.environ.get("SECONDPASS_TOOLS_DIR")
    return Path(override) if override else cache_root().parent / "tools"


def helm_path(version: str = HELM_VERSION) -> Path:
    """Where the cached ``helm`` binary of ``version`` lives (it may not exist yet)."""
    return tools_root() / f"helm-{version}" / "helm"


def ensure_helm(version: str = HELM_VERSION, *, timeout_s: float = 1800.0) -> Path:
    """Return the cached ``helm`` binary, building it with ``go install`` when missing.

    The build goes to a temporary folder that is renamed into place, so an
    interrupted build never leaves a half-written binary that looks cached.
    """
    target = helm_path(version)
    if target.is_file() and os.access(target, os.X_OK):
        return target
    go = shutil.which("go")
    if go is None:
        msg = (
            f"helm {version} is not cached at {target} and Go is not installed to build it "
            "(install Go, or put a helm binary there)"
        )
        raise ServerStartError(msg)
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent.parent, prefix=".helm-build-") as tmp:
        env = {**os.environ, "GOBIN": tmp, "CGO_ENABLED": "0"}
        done = subprocess.run(
            [go, "install", f"{_HELM_MODULE}@{version}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if done.returncode != 0:
            msg = f"go install {_HELM_MODULE}@{version} failed:\n{done.stderr[-4000:]}"
            raise ServerStartError(msg)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(Path(tmp) / "helm", target)
    return target


def main(argv: list[str] | None = None) -> int:
    """``python -m secondpass.servers.tools helm``: build (if needed) and print the path."""
    parser = argparse.ArgumentParser(prog="python -m secondpass.servers.tools")
    parser.add_argument("tool", choices=["helm"], help="the tool to build or locate")
    args = parser.parse_args(argv)
    if args.tool == "helm":
        print(ensure_helm())
    return 0


if __name__ == "__main__":
    sys.exit(main())
