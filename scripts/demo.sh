#!/usr/bin/env bash
# The main job: start a local OpenSearch (or Elasticsearch with --engine elasticsearch),
# index the sample corpus shipped in the repo, and show first-stage vs reranked hits.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
exec .venv/bin/secondpass demo "$@"
