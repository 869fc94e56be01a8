#!/usr/bin/env bash
# Install what is needed (idempotent), then run the main job: a local federation that loses
# its aggregator mid-round and heals. Extra arguments go to `raftfl demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/raftfl demo --nodes 4 --rounds 4 --kill-aggregator-at 2 \
  --summary-json runs/demo/summary.json "$@"
