#!/usr/bin/env bash
# Set up (idempotent), lint, check the import layers, then run the tests on real etcd members
# and Flower processes: scripts/test.sh [--all] [pytest args]. CI's tier leaves out the
# long experiments, soaks and latency labs (marker `ondemand`); --all runs them too.
set -euo pipefail
cd "$(dirname "$0")/.."
tier=(-m "not ondemand")
if [ "${1:-}" = "--all" ]; then tier=(); shift; fi
scripts/setup.sh
.venv/bin/ruff check raftfl tests
.venv/bin/lint-imports
# Three test files at a time (pytest-xdist): most of a test's time is waiting on leases, etcd
# and sockets, not the CPU (two files at a time kept the 2 cores 65% busy); each worker probes
# ports in its own range (localcluster.port_slice). Clusters starting at once on two cores can
# cost a node its 3 s lease before round 1, which some end-to-end tests read as a failover they
# did not inject: a failed test runs once more (R in the progress line, named at the end by
# -rfER); one that fails twice fails the run. RAFTFL_TEST_WORKERS sets the number of workers.
# Files are handed out longest first (tests/conftest.py, LONGEST_FIRST), so that the
# workers end together.
exec .venv/bin/python -m pytest -q --durations=25 -n "${RAFTFL_TEST_WORKERS:-3}" --dist loadfile \
  --no-loadscope-reorder --reruns 1 --reruns-delay 2 -rfER "${tier[@]}" "$@"
