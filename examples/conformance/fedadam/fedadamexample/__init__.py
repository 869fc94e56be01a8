"""fedadamexample: Flower's quickstart-pytorch with FedAdam, offline and deterministic."""
