"""A node's options: one frozen value, built once from flags (raftfl/cli/node_options.py).

Every timing a node derives from its lease TTL is a named field of `Timings`, derived in
`Timings.of` and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from raftfl.core.address import NodeAddress
from raftfl.core.quorum import DEFAULT_MAX_VOTERS
from raftfl.core.replacement import DEFAULT_GRACE_S
from raftfl.core.specs import ClusterConfig
from raftfl.net.address import resolve
from raftfl.node.models import DEFAULT_REPLICAS

LINGER_S = 15.0  # --exit-on-complete: how long a finished node stays for unfinished peers


@dataclass(frozen=True)
class Timings:
    """What the lease TTL paces, each under its own name."""

    lease_ttl: float  # the lease etcd grants: presence, the role and its fence expire with it
    evidence_s: float  # the holder's host failing this long is evidence that it is gone
    malformed_grace_s: float  # a malformed role key gets this long before it is deleted
    handover_wait_s: float  # a handover's named node gets this long to campaign
    quorum_grace_s: float  # a leaving node counts an unanswering unfinished peer this long

    @classmethod
    def of(cls, lease_ttl: float) -> Timings:
        return cls(lease_ttl=lease_ttl, evidence_s=lease_ttl / 2, malformed_grace_s=lease_ttl,
                   handover_wait_s=lease_ttl, quorum_grace_s=lease_ttl)


@dataclass(frozen=True)
class NodeOptions:
    address: NodeAddress
    peers: tuple[NodeAddress, ...] = ()
    bootstrap: str = "auto"  # -a: "self", "auto", or the name of the bootstrap aggregator
    cluster: str = "default"
    data_dir: Path | None = None
    etcd_bin: str | None = None
    allow_unsafe_etcd: bool = False
    etcd_endpoints: tuple[str, ...] | None = None  # external cluster: no embedded member
    client_port: int | None = None
    flower_port: int | None = None
    models_port: int | None = None  # our model service (node/models.py) [raft port + 300]
    api_port: int | None = None  # our HTTP API (raftfl/ops) [raft port + 400]; 0: none
    join: bool = False
    lease_ttl: int = 3
    priority: float = 0.0
    nofailover: bool = False
    rank_step: float = 1.0
    probe_interval: float = 1.0
    client_wait: float = 10.0
    round_timeout: float = 120.0
    start_timeout: float = 300.0
    first_run: ClusterConfig | None = None  # proposed cluster config; with it, this node submits run 1
    app: Path | None = None  # run 1's Flower app directory; None: the bundled quick-start app
    run_config: str | None = None  # --run-config "k=v ..." (for run 1)
    node_config: str | None = None  # --node-config "k=v ...": this node's context.node_config
    exit_on_complete: bool = False  # leave once no run is left (the last one's model saved)
    max_examples: int = 0  # --max-examples: the training examples this node declares (0: none)
    max_update_norm: float | None = None  # --max-update-norm: refuse larger updates (aggregator)
    isolation: str = "thread"  # --isolation: the ClientApp in the worker thread or a child process
    isolation_memory_mb: int | None = None  # --isolation-memory-mb: the child's address-space cap
    max_voters: int = DEFAULT_MAX_VOTERS  # the first N initial nodes (by name) run etcd members
    voter_grace: float = DEFAULT_GRACE_S  # a voter unhealthy this long is replaced
    model_replicas: int = DEFAULT_REPLICAS  # a round commits once this many nodes hold it
    inline_model_bytes: int = 0  # models up to this size stay in etcd
    trusted_entities: Path | None = None  # run only apps signed by its keys (raftfl/signing.py)
    sign_key: Path | None = None  # --sign-key: the operator key that signs run 1 (with -r)
    timings: Timings = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "peers", tuple(self.peers))
        if self.etcd_endpoints is not None:
            object.__setattr__(self, "etcd_endpoints", tuple(self.etcd_endpoints))
        object.__setattr__(self, "timings", Timings.of(float(self.lease_ttl)))

    @property
    def name(self) -> str:
        return self.address.name

    @property
    def ip(self) -> str:
        return resolve(self.address.host)

    @property
    def etcd_client_port(self) -> int:
        return self.client_port or self.address.client_port

    @property
    def flower_address(self) -> str:
        return f"{self.ip}:{self.flower_port or self.address.flower_port}"

    @property
    def models_address(self) -> str:
        return f"{self.ip}:{self.models_port or self.address.models_port}"

    @property
    def api_address(self) -> str | None:
        if self.api_port == 0:
            return None
        return f"{self.ip}:{self.api_port or self.address.api_port}"

    @property
    def dir(self) -> Path:
        default = Path(".raftfl") / self.cluster / self.name.replace(":", "_")
        return (self.data_dir or default).expanduser().resolve()
