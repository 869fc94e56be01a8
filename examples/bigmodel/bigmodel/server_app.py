"""The ServerApp: FedAvg over the big linear model, with raftfl's one line (`raftfl.start`)."""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

import raftfl
from bigmodel import task

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_config = context.run_config
    raftfl.start(FedAvg(fraction_evaluate=0.0), grid=grid,
                 initial_arrays=task.initial_arrays(run_config),
                 num_rounds=int(run_config["num-server-rounds"]))
