"""A member speaks only as itself (issue 18, item 7), on a real secured etcd member with RBAC.

Two nodes, a and b, of one CA. Each signs what it writes with its node key (raftfl/etcd/
signers.py) and publishes its certificate under `certs/<name>`, which only it may write. b's
forgeries are written where RBAC lets every node write (the run log, the role key, the
snapshot) and each is skipped or refused by a reader, with its reason, while a's honest
writes pass.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from raftfl import tls
from raftfl.core import seal
from raftfl.core.events import AggregatorElected, RoundCommitted, RunCompleted, RunStarted
from raftfl.core.keys import Keys
from raftfl.core.role import MalformedRole, RoleHolder
from raftfl.etcd import signers, snapshots
from raftfl.etcd.eventlog import EventLog
from raftfl.etcd.store import Store
from raftfl.node.election import Election
from tests.conftest import running_cluster

A, B = "127.0.0.1:5000", "127.0.0.1:5001"


def _code(fn) -> grpc.StatusCode | None:  # noqa: ANN001
    """etcd's answer to `fn` (None: it succeeded)."""
    try:
        fn()
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return,attr-defined]
    return None


@dataclass
class Signed:
    keys: Keys
    bundles: dict[str, tls.Identity]
    stores: dict[str, Store]

    def act_as(self, who: str) -> Store:
        """`who`'s store, with the process's identity (what signs and verifies) set to it."""
        tls.configure(self.bundles[who])
        return self.stores[who]

    def elected(self) -> tuple[Store, Election, int]:
        """Node a's store, and its election to the role: campaigned, with the term it won."""
        a = self.act_as("a")
        election = Election(a, self.keys, A, "127.0.0.1:5300")
        term = election.campaign(a.grant(30))
        assert term is not None and election.fence is not None
        return a, election, term


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Signed]:
    import subprocess
    import sys

    base: Path = tmp_path_factory.mktemp("signed")
    tls.init_ca(base / "ca", "ca")
    bundles = {name: tls.load(tls.issue_bundle(base / "ca", name, cn, ["127.0.0.1"]))
               for name, cn in (("member", "member"), ("a", A), ("b", B), ("root", "root"))}
    tls.configure(bundles["member"])
    try:
        with running_cluster(base / "etcd", n=1) as cluster:
            proc = subprocess.run(
                [sys.executable, "-m", "raftfl", "certs", "rbac", "--certs", str(base / "ca" / "root"),
                 "--endpoints", ",".join(cluster.endpoints), "--cluster", cluster.name,
                 "-n", A, B], capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stderr
            stores = {}
            for who in ("a", "b", "root"):
                tls.configure(bundles[who])
                stores[who] = cluster.store(retry_for=2.0)
            yield Signed(Keys(cluster.name), bundles, stores)
    finally:
        tls.configure(None)


def test_only_a_node_publishes_its_certificate(signed: Signed) -> None:
    keys = signed.keys
    for who, name in (("a", A), ("b", B)):
        signers.publish(signed.act_as(who), keys)
        assert signed.stores["root"].get(keys.cert(name)).value == signed.bundles[who].cert.read_bytes()
    b = signed.act_as("b")
    denied = grpc.StatusCode.PERMISSION_DENIED
    assert _code(lambda: b.put(keys.member(A), "{}")) == denied  # as for members/
    assert _code(lambda: b.put(keys.cert(A), signed.bundles["b"].cert.read_bytes())) == denied
    assert _code(lambda: b.delete(keys.cert(A))) == denied
    # a certificate published under another name is not that name's (the CN must match)
    root = signed.act_as("root")
    root.put(keys.cert("127.0.0.1:5009"), signed.bundles["b"].cert.read_bytes())
    assert signers.public_key(root, keys, "127.0.0.1:5009") is None
    assert signers.public_key(root, keys, B) is not None


def test_forged_events_are_skipped_and_honest_ones_pass(signed: Signed,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    keys = signed.keys
    rk = keys.run(1)
    a, election, term = signed.elected()
    events = EventLog(a, rk)
    fence = election.fence
    events.append(RunStarted(node=A, term=term, rounds=3, initial_model="m0"), fence=fence)
    events.append(AggregatorElected(node=A, term=term, flower_address="127.0.0.1:5300", rank=0,
                                    score=1.0, revision=term, ranking=[]), fence=fence)
    honest = events.append(RoundCommitted(node=A, term=term, round=1, model_sha256="m1",
                                          base_model="m0", loss=None, accuracy=None, results=2),
                           fence=fence)
    stored = json.loads(a.get(rk.event(honest)).value)
    assert len(stored["sig"]) == seal.SIG_CHARS

    b = signed.act_as("b")
    forged = {  # seq -> the reason a reader gives
        10: ("not signed", {"type": "run_completed", "node": A, "term": term, "rounds": 3,
                            "model_sha256": "0" * 64, "v": 1, "id": "f1", "ts": 1.0}),
        11: ("the signature is not", seal.signed(rk.event(11), {
            "type": "run_completed", "node": A, "term": term, "rounds": 3,
            "model_sha256": "0" * 64, "v": 1, "id": "f2", "ts": 1.0},
            signers.signer().key)),  # type: ignore[union-attr]  # b's key, a's name
        12: ("the signature is not", stored),  # a's own event, copied to another key
    }
    for seq, (_, value) in forged.items():
        b.put(rk.event(seq), json.dumps(value))
    # b signs as itself, claiming a's term: a valid signature, but b does not hold the term
    EventLog(b, rk).append(RoundCommitted(node=B, term=term, round=2, model_sha256="m2",
                                          base_model="m1", loss=None, accuracy=None, results=2))
    EventLog(b, rk).append(RunCompleted(node=B, term=term, rounds=3, model_sha256="m2"))

    signed.act_as("a")
    with caplog.at_level(logging.WARNING):
        read = EventLog(a, rk).read()
        state, _ = EventLog(a, rk).current()
    reasons = dict(read.skipped)
    for seq, (why, _) in forged.items():
        assert f"forged: {why}" in reasons[rk.event(seq)], reasons
    assert [item.event.node for item in read.events] == [A, A, A, B, B]
    assert state.commit_order == [1] and state.completed is None
    assert [why for _, why in state.rejected] == [
        f"round_committed: signer {B} does not hold term {term} ({A} does)",
        f"run_completed: signer {B} does not hold term {term} ({A} does)"]
    said = [r.getMessage() for r in caplog.records]
    assert sum("does not hold term" in m for m in said) == 2, said  # one line each
    assert sum("forged:" in m for m in said) == 3, said
    election.resign()


def test_a_forged_role_claim_is_refused(signed: Signed) -> None:
    keys = signed.keys
    a, election, term = signed.elected()
    kv = a.get(keys.aggregator)
    assert signers.read_role(a, keys, kv) == RoleHolder(A, "127.0.0.1:5300", term, kv.lease,
                                                        kv.mod_revision)
    honest = kv.value

    b = signed.act_as("b")
    b_lease = b.grant(30)
    cases = [  # (value, lease for the put) -> the reason's start
        (json.dumps({"node": A, "flower_address": "127.0.0.1:5301"}), None,
         "forged: not signed"),  # the attack suite's: no lease, unsigned
        (honest, None, "forged: its lease"),  # a's claim put again, off a's lease
        (json.dumps(signers.signer().seal(keys.aggregator, {  # type: ignore[union-attr]
            "node": A, "flower_address": "127.0.0.1:5301", "term": term, "lease": b_lease})),
         b_lease, "forged: the signature is not"),
    ]
    for value, lease, why in cases:
        b.put(keys.aggregator, value, lease=lease)
        kv = b.get(keys.aggregator)
        role = signers.read_role(b, keys, kv)
        assert isinstance(role, MalformedRole) and role.reason.startswith(why), role
    # a claim copied from an older term onto a new key: its term is not the create revision
    b.delete(keys.aggregator)
    b.create(keys.aggregator, honest, lease=b_lease)
    role = signers.read_role(b, keys, b.get(keys.aggregator))
    assert isinstance(role, MalformedRole) and role.reason.startswith("forged: its term"), role
    b.delete(keys.aggregator)


def test_a_snapshot_counts_only_from_the_holder_of_its_term(signed: Signed,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    keys = signed.keys
    rk = keys.run(2)
    a, election, term = signed.elected()
    events = EventLog(a, rk)
    events.append(AggregatorElected(node=A, term=term, flower_address="127.0.0.1:5300", rank=0,
                                    score=1.0, revision=term, ranking=[]), fence=election.fence)
    state, rev = events.current()
    snapshots.save(a, rk, state, rev, election.fence, A)
    assert snapshots.load(a, rk) is not None  # honest: signed by the holder of its term
    honest = json.loads(a.get(rk.snapshot).value)

    b = signed.act_as("b")
    as_b = {**honest, "node": B}  # b claims it, signed by b: b does not hold the term
    b.put(rk.snapshot, json.dumps(signers.signer().seal(rk.snapshot, as_b)))  # type: ignore[union-attr]
    unsigned = {k: v for k, v in honest.items() if k != "sig"}
    signed.act_as("a")
    with caplog.at_level(logging.WARNING):
        assert snapshots.load(a, rk) is None
        b.put(rk.snapshot, json.dumps(unsigned))
        assert snapshots.load(a, rk) is None
    said = [r.getMessage() for r in caplog.records if "snapshot" in r.getMessage()]
    assert any("does not hold its term" in m for m in said), said
    assert any("forged: not signed" in m for m in said), said
    assert EventLog(a, rk).current()[0].elections  # the reader folds the log instead
    election.resign()


def test_values_written_before_signing_began_are_read_as_before(
        tmp_path: Path, signed: Signed) -> None:
    """Upgrading a secured federation: its unsigned history (written before the first
    certificate was published) still reads; an unsigned value written after does not."""
    from raftfl.core.events import NodeJoined

    a_bundle = signed.bundles["a"]
    tls.configure(signed.bundles["member"])
    with running_cluster(tmp_path / "etcd", n=1) as cluster:
        tls.configure(a_bundle)
        store = cluster.store(retry_for=2.0)
        keys = Keys(cluster.name)
        rk = keys.run(1)
        tls.configure(None)  # an earlier version: writes unsigned
        EventLog(store, rk).append(NodeJoined(node=A))
        old_claim = Election(store, keys, A, "127.0.0.1:5300")
        assert old_claim.campaign(store.grant(30)) is not None
        tls.configure(a_bundle)  # upgraded: publishes its certificate, signs
        assert isinstance(signers.read_role(store, keys, store.get(keys.aggregator)), RoleHolder)
        EventLog(store, rk).append(NodeJoined(node=A))
        store.put(rk.event(9), json.dumps({"type": "node_joined", "node": A, "term": 0,
                                           "v": 1, "id": "late", "ts": 1.0}))
        read = EventLog(store, rk).read()
        assert [item.seq for item in read.events] == [1, 2]
        assert read.skipped and "forged: not signed" in read.skipped[0][1]
        old_claim.proclaim()  # rewritten now, unsigned (this process signs: write it by hand)
        store.put(keys.aggregator, json.dumps({"node": A, "flower_address": "h:1", "term": 0}),
                  lease=store.get(keys.aggregator).lease)
        role = signers.read_role(store, keys, store.get(keys.aggregator))
        assert isinstance(role, MalformedRole) and role.reason.startswith("forged: not signed")
