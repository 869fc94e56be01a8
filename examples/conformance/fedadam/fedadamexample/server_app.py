"""fedadamexample: A Flower / PyTorch app (Flower's quickstart-pytorch ServerApp, FedAdam).

Unmodified Flower: the strategy runs through its own `strategy.start(grid=...)`. FedAdam keeps
server-side moments (m_t, v_t) across rounds, so a host that loses them mid-run steers the
model differently from one that kept them.
"""

from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAdam

from fedadamexample.task import Net, initial_model, load_centralized_dataset, test

# Create ServerApp
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Main entry point for the ServerApp."""
    cfg = context.run_config
    num_rounds = int(cfg["num-server-rounds"])
    lr = float(cfg["learning-rate"])
    seed = int(cfg["seed"])

    # Load global model
    arrays = ArrayRecord(initial_model(seed).state_dict())
    testloader = load_centralized_dataset(int(cfg["test-examples"]), seed)

    def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Evaluate the global model on the central test set."""
        model = Net()
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = test(model, testloader)
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    # Initialize FedAdam strategy
    strategy = FedAdam(fraction_evaluate=float(cfg["fraction-evaluate"]),
                       eta=float(cfg["server-learning-rate"]), eta_l=lr)

    # Start strategy, run FedAdam for `num_rounds`
    result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=num_rounds,
                            train_config=ConfigRecord({"lr": lr}), evaluate_fn=global_evaluate)
    final = result.evaluate_metrics_serverapp.get(num_rounds)
    log(INFO, "final central evaluation: %s", dict(final) if final else None)
