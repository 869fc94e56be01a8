"""`python -m raftfl` is the `raftfl` command."""

from raftfl.cli import main

main()
