#!/usr/bin/env bash
# The whole test suite: installs what is missing (idempotent), then lint, types,
# unit, integration and reliability tests. Integration tests start real
# Elasticsearch, OpenSearch and Redis processes on loopback (or docker compose
# with SECONDPASS_TEST_DOCKER=1 where a Docker engine runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
echo "== ruff"; .venv/bin/ruff check src tests benchmarks
echo "== mypy"; .venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest -p no:cacheprovider --timeout=600 --durations=25 "$@"
