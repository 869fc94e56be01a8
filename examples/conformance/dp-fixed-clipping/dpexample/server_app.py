"""dpexample: A Flower / PyTorch app (Flower's quickstart-pytorch ServerApp) with central DP.

Unmodified Flower: FedAvg wrapped in `DifferentialPrivacyClientSideFixedClipping`, run through
its own `strategy.start(grid=...)`. The wrapper below adds one thing Flower's public API lacks:
a privacy accountant, held as the strategy's `privacy_accountant` attribute and stepped once
per noised release (each round's aggregate). The central evaluation reports the epsilon spent
so far as the metric "epsilon", so every round's record says how much privacy the model cost.
"""

from collections.abc import Iterable
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg, Strategy

from dpexample.accountant import GaussianRdpAccountant
from dpexample.task import Net, initial_model, load_centralized_dataset, test

# Create ServerApp
app = ServerApp()


class AccountedClientSideFixedClipping(DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side fixed-clipping wrapper, with the privacy spent accounted."""

    def __init__(self, strategy: Strategy, noise_multiplier: float, clipping_norm: float,
                 num_sampled_clients: int, delta: float) -> None:
        super().__init__(strategy, noise_multiplier, clipping_norm, num_sampled_clients)
        self.privacy_accountant = GaussianRdpAccountant(noise_multiplier, delta)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None:  # a noised aggregate was released
            self.privacy_accountant.step()
            log(INFO, "privacy spent after round %d: epsilon %.4f at delta %g", server_round,
                self.privacy_accountant.epsilon(), self.privacy_accountant.delta)
        return arrays, metrics


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Main entry point for the ServerApp."""
    cfg = context.run_config
    num_rounds = int(cfg["num-server-rounds"])
    lr = float(cfg["learning-rate"])
    seed = int(cfg["seed"])
    np.random.seed(int(cfg["noise-seed"]))  # Flower draws the DP noise from numpy's global RNG

    # Load global model
    arrays = ArrayRecord(initial_model(seed).state_dict())
    testloader = load_centralized_dataset(int(cfg["test-examples"]), seed)

    # FedAvg with central DP (client-side fixed clipping) and its accountant
    strategy = AccountedClientSideFixedClipping(
        FedAvg(fraction_evaluate=float(cfg["fraction-evaluate"])),
        noise_multiplier=float(cfg["noise-multiplier"]),
        clipping_norm=float(cfg["clipping-norm"]),
        num_sampled_clients=int(cfg["num-sampled-clients"]), delta=float(cfg["delta"]))

    def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Evaluate the global model on the central test set; report the privacy spent."""
        model = Net()
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = test(model, testloader)
        return MetricRecord({"accuracy": accuracy, "loss": loss,
                             "epsilon": strategy.privacy_accountant.epsilon()})

    # Start strategy, run for `num_rounds`
    result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=num_rounds,
                            train_config=ConfigRecord({"lr": lr}), evaluate_fn=global_evaluate)
    final = result.evaluate_metrics_serverapp.get(num_rounds)
    log(INFO, "final central evaluation: %s", dict(final) if final else None)
