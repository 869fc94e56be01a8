#!/usr/bin/env bash
# Start the seed's convenience cluster in the background: 1 aggregator + 3 workers on
# localhost:5000..5003, logs and PIDs in runs/cluster/, data and the quick start's own CA (mutual
# TLS, no flags needed) in .raftfl/cluster/, where `raftfl status` finds it. Kill nodes by hand, e.g.
#   kill -9 "$(cat runs/cluster/node0.pid)"
# and stop everything with: scripts/run_cluster.sh stop
set -euo pipefail
cd "$(dirname "$0")/.."
dir=runs/cluster
if [ "${1:-}" = "stop" ]; then
  for f in "$dir"/node*.pid; do
    [ -f "$f" ] || continue
    kill "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
  echo "stopped"; exit 0
fi
scripts/setup.sh
mkdir -p "$dir"
rounds=${ROUNDS:-10}
nodes=(localhost:5000 localhost:5001 localhost:5002 localhost:5003)
for i in "${!nodes[@]}"; do
  me=${nodes[$i]}
  peers=("${nodes[@]/$me}")
  if [ "$i" = 0 ]; then agg=(-a self -r "$rounds"); else agg=(-a "${nodes[0]}"); fi
  nohup .venv/bin/raftfl node start "${agg[@]}" -s "$me" -n ${peers[@]} \
    --cluster cluster > "$dir/node$i.log" 2>&1 &
  echo $! > "$dir/node$i.pid"
  echo "node$i $me pid $(cat "$dir/node$i.pid") log $dir/node$i.log"
done
echo "status: .venv/bin/raftfl status -n ${nodes[*]} --cluster cluster"
