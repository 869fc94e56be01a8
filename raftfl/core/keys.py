"""The etcd key schema. Everything a cluster writes lives under `/raftfl/<cluster>/`.

The cluster's own keys (`Keys`):

    config                     cluster configuration (nodes, ranking weights), created once
    latency/<node>/<seq:012d>  RTT samples, one writer per node, bound to the writer's lease
    members/<node>             liveness and context, bound to the node's lease
    aggregator                 the role; bound to the holder's lease; create revision = term
    suspects/<node>/<term>     a node's evidence that term's holder is gone; on its lease;
                               the writer first, so RBAC can give each node its own prefix
    control/handover           an operator's planned handover of the role (one at a time)
    control/paused             present while automatic failover is paused (maintenance)
    membership/upgrade/<node>  the aggregator asks a node without an etcd member to become a
                               voter (core/replacement.py); on the aggregator's lease
    certs/<name>               the certificate (PEM) of a party that signs what it writes
                               (raftfl/etcd/signers.py); only <name> writes it (RBAC)

and each run's (`RunKeys`, from `keys.run(id)`). What its submitter writes is under
`submissions/<id>/`, apart from what the nodes write, so etcd RBAC (raftfl/etcd/rbac.py) can
give that prefix to operators only: a node's certificate cannot submit code to its peers.

    spec                       the run spec (app, run config, rounds, the operator's
                               signature), created once: its creation allocates the id
    app/<sha256>/meta, /<i>    the app package (pyproject.toml and python files), verified

The rest of a run's keys are under `runs/<id>/`:

    events/<seq:012d>          the run's FL event log; zero-padded so key order is log order
    snapshot                   the run's state folded up to an event (core/snapshot.py), so a
                               node reads only the events after it; rewritten by the
                               aggregator, fenced, every 1,000 events
    checkpoints/<sha256>/meta  checkpoint manifest (round, size; the model services holding
                               it, or the chunk count of a model kept in etcd)
    checkpoints/<sha256>/<i>   chunks (<= 1 MiB each) of a model of at most
                               --inline-model-bytes; bigger ones live on the nodes

A federation outlives its runs, so the role, membership and latency are the cluster's, and
everything a run writes is the run's: a new run starts with an empty log, and an old run's
history stays readable (`raftfl history --run N`).

The cluster name is checked here too, so no code path can build keys (or the data dirs named
after them) from an unsafe name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from raftfl.core.address import check_cluster_name
from raftfl.core.errors import RaftflError

SEQ_WIDTH = 12
MAX_RUN_ID = 10**9


@dataclass(frozen=True)
class Keys:
    cluster: str

    def __post_init__(self) -> None:
        check_cluster_name(self.cluster)

    @property
    def root(self) -> str:
        return f"/raftfl/{self.cluster}/"

    @property
    def config(self) -> str:
        return self.root + "config"

    @property
    def runs(self) -> str:
        return self.root + "runs/"

    @property
    def submissions(self) -> str:
        """Run specs and app packages: written by operators, only read by nodes (RBAC)."""
        return self.root + "submissions/"

    def run(self, run_id: int) -> RunKeys:
        """The keys of run `run_id` (and, through them, the cluster's)."""
        return RunKeys(self.cluster, run_id)

    @property
    def latency(self) -> str:
        return self.root + "latency/"

    def latency_of(self, node: str) -> str:
        return f"{self.latency}{node}/"

    def latency_sample(self, node: str, seq: int) -> str:
        return f"{self.latency_of(node)}{seq:0{SEQ_WIDTH}d}"

    @property
    def members(self) -> str:
        return self.root + "members/"

    def member(self, node: str) -> str:
        return self.members + node

    @property
    def aggregator(self) -> str:
        return self.root + "aggregator"

    @property
    def suspects(self) -> str:
        return self.root + "suspects/"

    def suspicions_of(self, node: str) -> str:
        """Node `node`'s suspicions, one per term (only it writes here: etcd/rbac.py)."""
        return f"{self.suspects}{node}/"

    def suspect(self, term: int, node: str) -> str:
        return f"{self.suspicions_of(node)}{term}"

    def parse_suspect(self, key: str) -> tuple[str, int] | None:
        """(accuser, term) of a suspicion's key, None for a foreign key."""
        node, _, term = key.removeprefix(self.suspects).partition("/")
        return (node, int(term)) if key.startswith(self.suspects) and node and term.isdigit() \
            else None

    @property
    def control(self) -> str:
        """The operator's requests to every node's HA loop (one watch covers them)."""
        return self.root + "control/"

    @property
    def handover(self) -> str:
        return self.control + "handover"

    @property
    def paused(self) -> str:
        return self.control + "paused"

    @property
    def upgrades(self) -> str:
        return self.root + "membership/upgrade/"

    def upgrade(self, node: str) -> str:
        return self.upgrades + node

    @property
    def certs(self) -> str:
        return self.root + "certs/"

    def cert(self, name: str) -> str:
        """Where `name` publishes the certificate its signatures verify against."""
        return self.certs + name


@dataclass(frozen=True)
class RunKeys(Keys):
    """One run's keys; the cluster's keys stay reachable through it (it is a `Keys`).

    `blobs` names the directory the content-addressed blob functions (raftfl/etcd/
    checkpoint.py) work in: "checkpoints" for models, "app" for the run's app package, so
    both are chunked and sha256-verified by the same code."""

    run_id: int
    blobs: str = "checkpoints"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.run_id, bool) or not isinstance(self.run_id, int) \
                or not 1 <= self.run_id <= MAX_RUN_ID:
            raise RaftflError(f"run id {self.run_id!r} not in 1..{MAX_RUN_ID}")
        if self.blobs not in ("checkpoints", "app"):
            raise ValueError(f"unknown blob directory {self.blobs!r}")

    @property
    def run_root(self) -> str:
        return f"{self.runs}{self.run_id}/"

    @property
    def submission_root(self) -> str:
        return f"{self.submissions}{self.run_id}/"

    @property
    def spec(self) -> str:
        return self.submission_root + "spec"

    @property
    def app(self) -> RunKeys:
        """The same run, with the blob functions pointed at its app package."""
        return replace(self, blobs="app")

    @property
    def events(self) -> str:
        return self.run_root + "events/"

    def event(self, seq: int) -> str:
        return f"{self.events}{seq:0{SEQ_WIDTH}d}"

    @property
    def snapshot(self) -> str:
        return self.run_root + "snapshot"

    @property
    def checkpoints(self) -> str:
        return f"{self.submission_root if self.blobs == 'app' else self.run_root}{self.blobs}/"

    def checkpoint_meta(self, sha: str) -> str:
        return f"{self.checkpoints}{sha}/meta"

    def checkpoint_chunk(self, sha: str, index: int) -> str:
        return f"{self.checkpoints}{sha}/{index:06d}"


def seq_of(key: str) -> int | None:
    """The sequence number at the end of a log key, or None for a foreign key."""
    tail = key.rsplit("/", 1)[-1]
    return int(tail) if tail.isdigit() else None
