"""flwr-new-pytorch: A Flower / PyTorch app."""
