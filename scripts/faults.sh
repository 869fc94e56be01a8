#!/usr/bin/env bash
# The fault-injection matrix on real processes: scripts/faults.sh [--quick|--all] [--only NAME]
# Prints one table; writes runs/faults/faults.csv and faults.png.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
mkdir -p runs/faults
exec .venv/bin/raftfl faults --csv runs/faults/faults.csv "${@:---quick}"
