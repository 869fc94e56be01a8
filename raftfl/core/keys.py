"""The etcd key schema. Everything a cluster writes lives under `/raftfl/<cluster>/`.

    config                     run configuration, created once
    events/<seq:012d>          the FL event log; zero-padded so key order is log order
    latency/<node>/<seq:012d>  RTT samples, one writer per node, bound to the writer's lease
    members/<node>             liveness and context, bound to the node's lease
    aggregator                 the role; bound to the holder's lease; create revision = term
    suspects/<term>/<node>     a node's evidence that term's holder is gone; on its lease
    checkpoints/<sha256>/meta  checkpoint manifest (round, size, chunk count)
    checkpoints/<sha256>/<i>   checkpoint chunks (<= 1 MiB each)

The cluster name is checked here too, so no code path can build keys (or the data dirs named
after them) from an unsafe name.
"""

from __future__ import annotations

from dataclasses import dataclass

from raftfl.core.address import check_cluster_name

SEQ_WIDTH = 12


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
    def events(self) -> str:
        return self.root + "events/"

    def event(self, seq: int) -> str:
        return f"{self.events}{seq:0{SEQ_WIDTH}d}"

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

    def suspects(self, term: int) -> str:
        return f"{self.root}suspects/{term}/"

    def suspect(self, term: int, node: str) -> str:
        return self.suspects(term) + node

    @property
    def checkpoints(self) -> str:
        return self.root + "checkpoints/"

    def checkpoint_meta(self, sha: str) -> str:
        return f"{self.checkpoints}{sha}/meta"

    def checkpoint_chunk(self, sha: str, index: int) -> str:
        return f"{self.checkpoints}{sha}/{index:06d}"


def seq_of(key: str) -> int | None:
    """The sequence number at the end of a log key, or None for a foreign key."""
    tail = key.rsplit("/", 1)[-1]
    return int(tail) if tail.isdigit() else None
