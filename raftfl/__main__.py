"""`python -m raftfl` is the `raftfl` command."""

from .cli import main

main()
