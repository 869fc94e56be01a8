"""raftfl's quick-start task as a Flower app."""
