#!/usr/bin/env bash
# Set up (idempotent), lint, then run the test suite on real etcd members and Flower processes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check raftfl tests
.venv/bin/lint-imports
exec .venv/bin/python -m pytest -q --durations=25 "$@"
