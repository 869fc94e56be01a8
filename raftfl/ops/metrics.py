"""`GET /metrics`: a Prometheus collector that computes every value at scrape time.

Nothing is counted as it happens but the etcd requests this process sends, by origin (the
part of the node that asked) and kind (raftfl/net/origin.py); the HA loop writes no metric.
Node gauges come from the node's snapshot; the quorum gauges from each etcd member's own
status (raftfl/inspection.py `quorum_status`: no key read, no log replayed); the run-level
counters from the replicated event logs (raftfl/ops/runstats.py, via the ledger, at the
member's applied revision), so every node reports the same `raftfl_failovers_total` for the
same history. Every series carries `cluster` and `node` labels, as Patroni's carry `scope`
and `name`. When etcd does not answer within the scrape, only the node gauges are reported,
with `raftfl_etcd_reachable 0`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from raftfl.core.errors import RaftflError
from raftfl.core.keys import seq_of
from raftfl.core.latency import Sample
from raftfl.core.records import MalformedRecord
from raftfl.core.status import NodeStatus
from raftfl.inspection import quorum_status
from raftfl.net import origin
from raftfl.ops.context import OpsContext
from raftfl.ops.runstats import Totals

log = logging.getLogger(__name__)

RECOVERY_BUCKETS = (0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 60.0, 120.0, math.inf)
LABELS = ["cluster", "node"]
ETCD_REACHABLE = "1 when this scrape read etcd (else only the node's own gauges follow)"


class NodeCollector(Collector):
    def __init__(self, ctx: OpsContext):
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        ctx = self.ctx
        st = ctx.status()
        yield self._single("raftfl_ready", "1 once the node has cycled and its etcd member (if "
                           "any) runs", int(st is not None and st.ready))
        yield self._etcd_requests()
        if st is None:
            return
        yield from self._node(st, ctx.clock())
        try:
            info = quorum_status(ctx.store())
            rtts = self._own_rtts()
            totals = ctx.ledger().totals()
        except RaftflError as exc:
            log.warning("metrics: etcd did not answer (%s); node gauges only", exc)
            yield self._single("raftfl_etcd_reachable", ETCD_REACHABLE, 0)
            return
        yield self._single("raftfl_etcd_reachable", ETCD_REACHABLE, 1)
        yield from self._cluster(info, rtts)
        yield from self._runs(totals)

    # -- families -----------------------------------------------------------------------------
    def _single(self, name: str, doc: str, value: float,
                kind: type[GaugeMetricFamily | CounterMetricFamily] = GaugeMetricFamily,
                ) -> GaugeMetricFamily | CounterMetricFamily:
        """A family of one series, this node's."""
        family = kind(name, doc, labels=LABELS)
        family.add_metric([self.ctx.cluster, self.ctx.name], value)
        return family

    def _labelled(self, family: GaugeMetricFamily | CounterMetricFamily,
                  values: dict[str, float]) -> GaugeMetricFamily | CounterMetricFamily:
        for label, value in sorted(values.items()):
            family.add_metric([self.ctx.cluster, self.ctx.name, label], value)
        return family

    def _etcd_requests(self) -> CounterMetricFamily:
        family = CounterMetricFamily(origin.NAME, origin.HELP, labels=[*LABELS, "origin", "kind"])
        for (who, kind), n in sorted(origin.counts().items()):
            family.add_metric([self.ctx.cluster, self.ctx.name, who, kind], n)
        return family

    def _node(self, st: NodeStatus, now: float) -> Iterator[Metric]:
        g = self._single
        yield g("raftfl_is_aggregator", "1 on the node that holds the aggregator role and serves",
                int(st.is_aggregator(now)))
        yield g("raftfl_term", "The aggregator term this node saw last (0: vacant)", st.term or 0)
        yield g("raftfl_run", "The active run (0: none)", st.run or 0)
        yield g("raftfl_run_round", "The active run's newest committed round", st.last_round)
        yield g("raftfl_paused", "1 while automatic failover is paused (raftfl pause)",
                int(st.paused))
        yield g("raftfl_lease_remaining_seconds", "Seconds left on this node's etcd lease, by "
                "its own clock", st.lease_remaining(now))
        yield g("raftfl_lease_ttl_seconds", "This node's lease TTL", st.lease_ttl)
        yield g("raftfl_aggregator_vacant_seconds", "How long this node has seen the "
                "aggregator role vacant (0 while held or paused)", st.vacant_for(now))
        yield g("raftfl_last_cycle_age_seconds", "Seconds since the HA loop last completed a "
                "cycle", max(0.0, now - st.cycled_at))

    def _cluster(self, info: dict[str, Any], rtts: dict[str, float]) -> Iterator[Metric]:
        g = self._single
        yield g("raftfl_etcd_has_leader", "1 while the etcd cluster has a Raft leader",
                int(info["etcd_leader"] is not None))
        yield g("raftfl_voters", "etcd voting members", info["voters"])
        yield g("raftfl_voters_healthy", "etcd voting members that answer", info["healthy_voters"])
        yield g("raftfl_quorum_tolerates", "More voter failures the etcd quorum survives "
                "(below 0: no quorum)", info["tolerates"])
        yield self._labelled(GaugeMetricFamily(
            "raftfl_peer_rtt_seconds", "This node's newest RTT sample to each reachable peer",
            labels=[*LABELS, "peer"]), rtts)

    def _runs(self, t: Totals) -> Iterator[Metric]:
        yield self._single("raftfl_rounds_committed", "Rounds committed, over every run's log",
                           t.rounds_committed, CounterMetricFamily)
        yield self._labelled(CounterMetricFamily(
            "raftfl_failovers", "Aggregator changes after each run's first election, by how "
            "the previous term ended", labels=[*LABELS, "cause"]), dict(t.failovers))
        yield self._recovery(t.recoveries)
        yield self._single("raftfl_fit_failures", "Failed fits (refused updates included)",
                           t.fit_failures, CounterMetricFamily)
        yield self._labelled(CounterMetricFamily(
            "raftfl_updates_rejected", "Worker updates the aggregator refused, by reason",
            labels=[*LABELS, "reason"]), dict(t.rejected))

    def _recovery(self, samples: tuple[float, ...]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "raftfl_recovery_seconds", "Failover recovery: from the previous term's end (as "
            "the log shows it) to the new aggregator's first round", labels=LABELS)
        buckets = [(floatToGoString(le), float(sum(1 for s in samples if s <= le)))
                   for le in RECOVERY_BUCKETS]
        family.add_metric([self.ctx.cluster, self.ctx.name], buckets, sum_value=sum(samples))
        return family

    def _own_rtts(self) -> dict[str, float]:
        """Peer -> seconds, from this node's newest latency sample (unreachable peers left out)."""
        store, keys = self.ctx.store(), self.ctx.keys
        kvs, _ = store.range(keys.latency_of(self.ctx.name), limit=1, descending=True,
                             serializable=True)
        if not kvs:
            return {}
        try:
            sample = Sample.from_json(kvs[0].value, seq_of(kvs[0].key) or 0)
        except MalformedRecord:
            return {}
        return {peer: ms / 1000.0 for peer, ms in sample.rtt_ms.items() if ms is not None}


def render(ctx: OpsContext) -> tuple[bytes, str]:
    """The exposition text and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(ctx))
    return generate_latest(registry), CONTENT_TYPE_LATEST
