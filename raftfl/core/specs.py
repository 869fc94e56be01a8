"""The cluster configuration (`config`, written once when the cluster is created) and each
run's spec (`submissions/<id>/spec`, written once when the run is submitted), read by all.

Every node shards the data the same way and ranks with the same weights because they all
read `config`, and trains a run with the same app and settings because they all read its
spec, not their own command lines. `ClusterConfig` also carries the task flags of the node that
creates the cluster: with `-r` they make its first run. Both records are range-checked on
both sides: a node refuses to create a record it could not run, and refuses (one line,
non-zero exit) a stored one that is malformed, instead of failing later inside training.
Pure: the etcd edge stores and reads them (raftfl/etcd/clusterconfig.py, raftfl/etcd/run_store.py).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field, fields
from typing import ClassVar

from raftfl.core.address import check_node_name
from raftfl.core.errors import RaftflError
from raftfl.core.ranking import Weights
from raftfl.core.records import MalformedRecord, Record, require
from raftfl.task.data import KINDS as DATASETS

PARTITIONS = ("iid", "dirichlet")
MAX_ROUNDS = 100_000
MAX_NODES = 1000
MAX_TRAIN = 100_000  # images per node's dataset copy: ~1.2 GB of float32 at the upper bound
MAX_TEST = 20_000
DEFAULT_MAX_EXAMPLES = 10**7  # num-examples a reply may claim: more than any one silo's data
MAX_EXAMPLES_CAP = 10**12  # the cap itself: weights stay exact integers in a float64
DEFAULT_OUTLIER_FACTOR = 10.0  # an update this many times the round's median norm is refused
MAX_OUTLIER_FACTOR = 1e6
WEIGHT_NAMES = tuple(f.name for f in fields(Weights))
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ClusterConfig(Record):
    KIND: ClassVar[str] = "cluster config"

    rounds: int
    nodes: list[str]  # initial node names; a node's shard is its index in this sorted list
    # raftfl's task flags for the bundled app; None = the app's own run config decides.
    dataset: str | None = None
    partition: str | None = None
    alpha: float | None = None
    n_train: int | None = None
    n_test: int | None = None
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    seed: int | None = None
    weights: dict[str, float] = field(default_factory=dict)  # ranking weights (ranking.Weights)
    # The update screen's bounds (raftfl/flower/screen.py), fixed by the creator so that no
    # node can raise them for itself: a reply's num-examples at most `max_examples`; a train
    # update whose norm is above `outlier_factor` x the round's median is refused (0: off).
    max_examples: int = DEFAULT_MAX_EXAMPLES
    outlier_factor: float = DEFAULT_OUTLIER_FACTOR
    created: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        try:
            self.check()
        except ValueError as exc:
            raise RaftflError(f"invalid run configuration: {exc}") from exc

    def check(self) -> None:
        require(1 <= self.rounds <= MAX_ROUNDS, f"rounds {self.rounds} not in 1..{MAX_ROUNDS}")
        require(0 < len(self.nodes) <= MAX_NODES, f"{len(self.nodes)} nodes, expected 1..{MAX_NODES}")
        require(len(set(self.nodes)) == len(self.nodes), "a node is listed twice")
        for node in self.nodes:
            try:
                check_node_name(node)
            except RaftflError as exc:
                raise ValueError(str(exc)) from None
        require(self.dataset is None or self.dataset in DATASETS,
                f"dataset {self.dataset!r} not one of {', '.join(DATASETS)}")
        require(self.partition is None or self.partition in PARTITIONS,
                f"partition {self.partition!r} not one of {', '.join(PARTITIONS)}")
        a, lr = self.alpha, self.lr
        require(a is None or (math.isfinite(a) and 0.01 <= a <= 1000),
                f"alpha {a} not in 0.01..1000")
        require(self.n_train is None or 100 <= self.n_train <= MAX_TRAIN,
                f"n_train {self.n_train} not in 100..{MAX_TRAIN}")
        require(self.n_test is None or 100 <= self.n_test <= MAX_TEST,
                f"n_test {self.n_test} not in 100..{MAX_TEST}")
        require(self.epochs is None or 1 <= self.epochs <= 1000,
                f"epochs {self.epochs} not in 1..1000")
        require(lr is None or (math.isfinite(lr) and 0 < lr <= 100), f"lr {lr} not in (0, 100]")
        require(self.batch_size is None or 1 <= self.batch_size <= 65536,
                f"batch_size {self.batch_size} not in 1..65536")
        require(self.seed is None or 0 <= self.seed < 2**32, f"seed {self.seed} not in 0..2^32-1")
        require(1 <= self.max_examples <= MAX_EXAMPLES_CAP,
                f"max_examples {self.max_examples} not in 1..{MAX_EXAMPLES_CAP}")
        f = self.outlier_factor
        require(f == 0 or (math.isfinite(f) and 1 < f <= MAX_OUTLIER_FACTOR),
                f"outlier_factor {f} neither 0 (off) nor in (1, {MAX_OUTLIER_FACTOR:g}]")
        for name, value in self.weights.items():
            require(name in WEIGHT_NAMES, f"unknown ranking weight {name!r} "
                                          f"(known: {', '.join(WEIGHT_NAMES)})")
            require(math.isfinite(value), f"ranking weight {name}={value} is not finite")

    @property
    def ranking_weights(self) -> Weights:
        """One set of weights for the whole cluster, or the nodes would rank differently."""
        return Weights(**self.weights)

    def shard_index(self, node: str) -> int:
        ordered = sorted(self.nodes)
        if node in ordered:
            return ordered.index(node)
        return sum(node.encode()) % len(ordered)

    @classmethod
    def from_json(cls, raw: bytes | str) -> ClusterConfig:
        """Decode and check the stored configuration; RaftflError (one line) if it is bad."""
        try:
            return super().from_json(raw)
        except (MalformedRecord, RaftflError) as exc:
            raise RaftflError(f"cluster config is unreadable: {exc}") from exc


@dataclass(frozen=True)
class RunSpec(Record):
    """What a run is: its Flower app (by name and package hash) and its run config, and the
    operator's signature over both (raftfl/signing.py signs and verifies it).

    The signature covers `signed_message`: every field but the signature itself (so app,
    run config, rounds, submitter and time), the cluster's name and the package's sha256. A
    node therefore cannot be made to run a validly signed package under a changed spec, or a
    run signed for another cluster."""

    KIND: ClassVar[str] = "run spec"
    SIGNED: ClassVar[bytes] = b"raftfl run spec v1"  # domain: no other signed bytes match

    app: str  # the app's name (its pyproject's project.name)
    app_sha256: str  # its package under submissions/<id>/app/ (raftfl/node/package.py)
    run_config: dict[str, bool | int | float | str]  # the app's, with the overrides applied
    rounds: int | None = None  # num-server-rounds, when the app has it
    by: str = ""  # who submitted it (a node name, or the CLI's user@host)
    submitted: float = field(default_factory=time.time)
    signed_by: str = ""  # the signing key's id (its SHA256 fingerprint); "" = unsigned
    signature: str = ""  # Ed25519 over signed_message, base64url without padding

    def check(self) -> None:
        require(0 < len(self.app) <= 255, f"app name of {len(self.app)} characters")
        require(_SHA256.fullmatch(self.app_sha256) is not None,
                f"app_sha256 {self.app_sha256[:16]!r} is not a sha256")
        require(self.rounds is None or 1 <= self.rounds <= MAX_ROUNDS,
                f"rounds {self.rounds} not in 1..{MAX_ROUNDS}")
        require(len(self.by) <= 255, f"submitter of {len(self.by)} characters")
        # A malformed signature is the verifier's to refuse, with its own reason: only bounded.
        require(len(self.signed_by) <= 255, f"key id of {len(self.signed_by)} characters")
        require(len(self.signature) <= 255, f"signature of {len(self.signature)} characters")

    def signed_message(self, cluster: str, package_sha256: str) -> bytes:
        """The bytes a run's signature covers: the canonical spec (sorted keys, no spaces,
        without the signature), the cluster and the sha256 of the package bytes."""
        body = {k: v for k, v in self.to_dict().items() if k != "signature"}
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return b"\0".join((self.SIGNED, cluster.encode(), package_sha256.encode(),
                           canonical.encode()))


def spec_rounds(run_config: dict[str, bool | int | float | str]) -> int | None:
    """The rounds a run config asks for (Flower's `num-server-rounds`), if it says."""
    rounds = run_config.get("num-server-rounds")
    return rounds if type(rounds) is int else None
