"""customloop: a Flower ServerApp with its own loop over the grid (no strategy)."""
