"""`python -m raftfl.lab.node ARGS...`: the `raftfl` command with the lab's fault hooks.

The lab starts its nodes this way (`python -m raftfl.lab.node node start ...`): the hooks
come from the RAFTFL_TEST_* variables (raftfl/lab/testhooks.py) and are injected into the
node; without any of them it runs exactly as `raftfl`.
"""

from __future__ import annotations

from raftfl import cli
from raftfl.lab.testhooks import hooks_from_env


def main() -> None:
    cli.main(fault_hooks=hooks_from_env())


if __name__ == "__main__":
    main()
