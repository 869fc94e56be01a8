"""The ServerApp: FedAvg over every connected worker, as Flower's examples write it
(`strategy.start`); raftfl makes that call resumable."""

import time

import numpy as np
from flwr.app import Array, ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    nodes = int(cfg["min-nodes"])
    # Flower's sampler re-checks once a second; after a failover the workers come back
    # within that, so wait here at a finer grain (bounded) before the resumed round.
    deadline = time.monotonic() + float(cfg["wait-s"])
    while len(list(grid.get_node_ids())) < nodes and time.monotonic() < deadline:
        time.sleep(0.05)
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=nodes,
                      min_available_nodes=nodes)
    arrays = ArrayRecord({"w": Array(np.zeros(int(cfg["params"]), dtype=np.float32))})
    strategy.start(grid=grid, initial_arrays=arrays, num_rounds=int(cfg["num-server-rounds"]))
