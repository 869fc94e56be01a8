"""The ServerApp: FedAvg over every connected worker, as Flower's examples write it
(`strategy.start`); raftfl makes that call resumable."""

import time
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


class FedAvgAll(FedAvg):
    """FedAvg that waits for `min_available_nodes` at a 50 ms grain (bounded by `wait_s`)
    before it samples: Flower's sampler re-checks only once a second, and after a failover
    the workers come back within that. Waiting here, inside `strategy.start`, rather than
    before it keeps the polls out of raftfl's journal of an own-loop app's grid calls (each
    change of the connected set would be written to etcd while a thousand workers return)."""

    def __init__(self, *, wait_s: float, **kwargs):
        super().__init__(**kwargs)
        self.wait_s = wait_s

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        deadline = time.monotonic() + self.wait_s
        while (len(list(grid.get_node_ids())) < self.min_available_nodes
               and time.monotonic() < deadline):
            time.sleep(0.05)
        return super().configure_train(server_round, arrays, config, grid)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    nodes = int(cfg["min-nodes"])
    strategy = FedAvgAll(wait_s=float(cfg["wait-s"]), fraction_train=1.0,
                         fraction_evaluate=0.0, min_train_nodes=nodes,
                         min_available_nodes=nodes)
    arrays = ArrayRecord({"w": Array(np.zeros(int(cfg["params"]), dtype=np.float32))})
    strategy.start(grid=grid, initial_arrays=arrays, num_rounds=int(cfg["num-server-rounds"]))
