#!/usr/bin/env bash
# The fault-injection matrix on real processes: scripts/faults.sh [--quick|--all] [--only NAME]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/raftfl faults "${@:---quick}"
