"""The ServerApp: Flower's quickstart-pytorch ServerApp with its one raftfl line.

`result = strategy.start(grid=grid, ...)` became `result = raftfl.start(strategy, grid=grid, ...)`:
under raftfl it resumes at the global round after a failover; under `flwr run` it is
`strategy.start`.
"""

from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx, Strategy

import raftfl
from quickstart import task

app = ServerApp()


def make_strategy(run_config: dict) -> Strategy:
    name = run_config["strategy"]
    fraction_evaluate = float(run_config["fraction-evaluate"])
    if name == "fedavg":
        return FedAvg(fraction_evaluate=fraction_evaluate)
    if name == "fedprox":
        return FedProx(fraction_evaluate=fraction_evaluate,
                       proximal_mu=float(run_config["proximal-mu"]))
    if name == "fedadam":
        return FedAdam(fraction_evaluate=fraction_evaluate,
                       eta=float(run_config["server-learning-rate"]),
                       eta_l=float(run_config["learning-rate"]))
    raise ValueError(f"unknown strategy {name!r}: use fedavg, fedprox or fedadam")


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_config = context.run_config
    testset = task.load_centralized_testset(run_config)

    def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        loss, accuracy = task.test(arrays, testset)
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    result = raftfl.start(
        make_strategy(run_config), grid=grid, initial_arrays=task.initial_arrays(),
        num_rounds=int(run_config["num-server-rounds"]),
        train_config=ConfigRecord({"lr": float(run_config["learning-rate"])}),
        evaluate_fn=global_evaluate)
    final = result.evaluate_metrics_serverapp.get(int(run_config["num-server-rounds"]))
    # Flower's logger, not print(): a node's stdout is its own lines (JSON with --log-format json).
    log(INFO, "final central evaluation: %s", dict(final) if final else None)
