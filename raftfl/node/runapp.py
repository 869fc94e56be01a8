"""What a node needs to run a Flower app: which app, its run config, its node config, its id.

The app is a Flower app directory (`--app DIR`; the bundled quick-start app by default).
The run config every node uses is stored once in the cluster config by the node that
creates the cluster: the app's own `[tool.flwr.app.config]`, then raftfl's task flags for
the keys the app has (`-r` is `num-server-rounds`), then `--run-config`. So every node
trains with the same settings even if their command lines differ.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

from raftfl.core.certs import OPERATOR_PREFIX, ROOT_CN
from raftfl.core.errors import RaftflError

# raftfl's own task flags, as run-config keys of apps shaped like the quick-start app.
FLAG_KEYS = {"rounds": "num-server-rounds", "dataset": "dataset", "n_train": "train-size",
             "n_test": "test-size", "epochs": "local-epochs", "lr": "learning-rate",
             "batch_size": "batch-size", "seed": "data-seed", "partition": "partitioning",
             "alpha": "dirichlet-alpha"}


def bundled_app() -> Path:
    """The quick-start app: in the source tree, or where `pip install` put its data files."""
    for base in (Path(__file__).resolve().parents[2] / "examples",
                 Path(sys.prefix) / "share" / "raftfl" / "examples"):
        if (base / "quickstart" / "pyproject.toml").is_file():
            return base / "quickstart"
    raise RaftflError("the bundled quick-start app is missing; give --app DIR")


def load(path: Path | None) -> Any:
    from raftfl.flower.app import load_app

    return load_app(path or bundled_app())


def run_config(app: Any, flags: dict[str, Any], overrides: str | None) -> dict[str, Any]:
    """The app's run config with raftfl's task flags (those given, for the keys the app
    has) and then `--run-config` applied."""
    from raftfl.flower.app import fuse_config, parse_config

    mapped = {FLAG_KEYS[k]: v for k, v in flags.items()
              if v is not None and k in FLAG_KEYS and FLAG_KEYS[k] in app.config}
    return fuse_config(app.config, {**mapped, **parse_config(overrides)})


def node_id(name: str) -> int:
    """A stable Flower node id for a node name, in [2, 2^63 - 1] (0 and 1 are Flower's)."""
    return 2 + int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % (2**63 - 3)


def fleet_identity(common_name: str) -> int | None:
    """The Flower node id a certificate may hold a fleet session as: its own node's (a node
    certificate's CN is the node's name); none for an operator's or the admin's."""
    if common_name == ROOT_CN or common_name.startswith(OPERATOR_PREFIX):
        return None
    return node_id(common_name)
