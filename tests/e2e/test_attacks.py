"""The attack suite (issue 18): each attack runs against a secured 3-node federation (mutual
TLS, etcd RBAC, every node trusting one operator's signing key) WHILE IT TRAINS, and is
refused with a one-line reason in a log; the federation completes its run with every round
committed once and the nodes in agreement (core/invariants.py `check`).

One federation serves the attacks, in file order: the attacks in the middle of the run, then
the run's outcome, then what can only be judged once the run is over (queued runs refused,
hostile replies counted, forged writes in another node's name, and a second local user of
the quick start). Each attack has a held-out variation of the same kind beside it. The
nodes run with `-v`: the fleet says its 403s at INFO (see the suite's report).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from attackers import (
    SECOND_USER,
    as_second_user,
    can_switch_user,
    etcd_put,
    https,
    idle_connections,
    raftfl_as,
)
from flwr.app import Array, ArrayRecord, Message, Metadata, MetricRecord, RecordDict

from raftfl import signing, tls
from raftfl.core.address import CLIENT_PORT_OFFSET, FLOWER_PORT_OFFSET, MODELS_PORT_OFFSET
from raftfl.core.errors import RaftflError
from raftfl.core.invariants import check
from raftfl.core.replay import replay
from raftfl.etcd.eventlog import EventLog
from raftfl.flower import fleet as fleet_mod
from raftfl.flower.codec import decode_message, encode_message
from raftfl.lab.localcluster import LocalCluster, NodeProc
from raftfl.lab.testhooks import HOLD_ENV, HOSTILE_ENV, EnvFaultHooks
from raftfl.node import runapp
from raftfl.node.runapp import node_id

pytestmark = pytest.mark.slow
ROUNDS = 10
# The aggregator pauses before rounds 4..ROUNDS: the attacks all happen while it trains.
HOLDS = ",".join(f"round_start:{r}:6" for r in range(4, ROUNDS + 1))
WAIT = 150
STRANGER = "127.0.0.1:9"  # a cluster certificate of a node that is not a member
SMALL_RUN = "train-size=300 test-size=100 num-server-rounds=1"


# -- hostile replies: which worker sends what, in which round ------------------------------
@dataclass(frozen=True)
class Hostile:
    """A hostile reply a worker sends (RAFTFL_TEST_HOSTILE `fault`) in `round`, of message
    type `kind`, and a part of the screen's reason for refusing it."""

    fault: str
    node: int
    round: int
    kind: str
    reason: str

    def missing_hook(self) -> str | None:
        """Why the lab cannot send this reply yet (raftfl/lab/testhooks.py), or None."""
        return _hook_missing(self.fault, self.kind)


HOSTILE = (
    Hostile("examples=1000000000000000000", 2, 2, "train",
            "num-examples 1000000000000000000 above"),
    Hostile("f64=1e300", 2, 3, "train", "has dtype float64, not float32"),
    Hostile("eval-examples=0", 2, 4, "evaluate", "num-examples 0 is not a count"),
    # held out: a train reply counting no example at all
    Hostile("examples=0", 1, 5, "train", "num-examples 0 is not a count"),
)


def _sample_reply(kind: str) -> bytes:
    arrays = ArrayRecord({"w": Array(np.ones((2, 2), dtype=np.float32))})
    metrics = MetricRecord({"num-examples": 5, "loss": 0.5})
    content = RecordDict({"arrays": arrays, "metrics": metrics} if kind == "train"
                         else {"metrics": metrics})
    md = Metadata(run_id=1, message_id="r", src_node_id=3, dst_node_id=1,
                  reply_to_message_id="i", group_id="1", created_at=time.time(), ttl=60.0,
                  message_type=kind)
    return encode_message(Message(metadata=md, content=content))


def _hook_missing(fault: str, kind: str) -> str | None:
    """Tamper a sample reply with the lab's own hook: None if it did what `fault` says."""
    name, _, value = fault.partition("=")
    hooks = EnvFaultHooks({HOSTILE_ENV: fault})
    reply, _ = decode_message(hooks.tamper(_sample_reply(kind), 1))
    metrics = next(iter(reply.content.metric_records.values()))
    if name.endswith("examples"):
        done = metrics["num-examples"] == int(value)
    else:
        array = next(iter(reply.content.array_records.values()))["w"].numpy()
        done = array.dtype == np.float64 and float(value) in array
    return None if done else (
        f"raftfl/lab/testhooks.py has no RAFTFL_TEST_HOSTILE fault {fault!r} for a {kind} "
        "reply (wanted: " + ("the first array sent back as float64 holding " + value
                             if name == "f64" else "its num-examples set to " + value) + ")")


# -- the federation ------------------------------------------------------------------------
@dataclass
class Federation:
    c: LocalCluster
    alice: Path  # the trusted operator's signing key
    mallory: Path  # a key nobody trusts
    queued: dict[str, int] = field(default_factory=dict)  # refused runs submitted: why -> id

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.c.nodes]

    def bundle(self, name: str) -> Path:
        assert self.c.workdir is not None
        return self.c.workdir / "certs" / name

    def raftfl(self, bundle: str, *args: str) -> tuple[int, str, str]:
        proc = raftfl_as(self.bundle(bundle), self.c.cluster, self.names, *args)
        return proc.returncode, proc.stdout, proc.stderr

    def aggregator(self) -> NodeProc:
        holder = self.c.holder()
        assert holder is not None, "no aggregator"
        return self.c.by_name(holder[0])

    def fleet(self) -> str:
        agg = self.aggregator()
        return f"{agg.ip}:{agg.port + FLOWER_PORT_OFFSET}"

    def worker(self, not_: NodeProc) -> NodeProc:
        return next(n for n in self.c.nodes if n is not not_)

    def attack_while_training(self) -> None:
        assert self.training(), "the run ended before this attack"

    def training(self) -> bool:
        state = self.c.state()
        return bool(state.committed) and state.completed is None

    def finished(self) -> None:
        self.c.wait_event(lambda e: e.type == "run_completed", WAIT, "run 1 to complete")


def log_of(node: NodeProc, since: int = 0) -> str:
    return node.log_path.read_text(errors="replace")[since:]


def log_size(node: NodeProc) -> int:
    return len(log_of(node))


def one_line(pattern: str, text: str) -> str:
    """The log line matching `pattern` (a regex), asserting there is one."""
    lines = [line for line in text.splitlines() if re.search(pattern, line)]
    assert lines, f"no log line matches {pattern!r}"
    return lines[0]


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    tmp = tmp_path_factory.mktemp("attacks")
    alice = signing.new_key_pair("alice", tmp / "alice")
    mallory = signing.new_key_pair("mallory", tmp / "mallory")[0]
    trusted = tmp / "trusted-entities.yaml"
    trusted.write_text(alice[2] + "\n")
    faults: dict[int, list[str]] = {}
    for h in HOSTILE:
        faults.setdefault(h.node, []).append(f"{h.fault}@{h.round}")
    c = LocalCluster(n=3, rounds=ROUNDS, cluster="t-attacks", secure=True,
                     exit_on_complete=False, train_size=600, test_size=200,
                     extra_args=["--trusted-entities", str(trusted)],
                     node_args={0: ["--sign-key", str(alice[0]),
                                    "--run-config", "fraction-evaluate=1.0"]},
                     node_env={0: {HOLD_ENV: HOLDS},
                               **{i: {HOSTILE_ENV: ",".join(f)} for i, f in faults.items()}})
    certs = c.workdir / "certs"  # type: ignore[operator]
    tls.issue_bundle(certs, "eve", "operator-eve", [])
    tls.issue_bundle(certs, "stranger", STRANGER, ["127.0.0.1"])
    try:
        c.start()
        c.wait_event(lambda e: e.type == "round_committed", WAIT, "round 1 to commit")
        yield Federation(c, alice[0], mallory)
    except Exception as exc:
        raise AssertionError(f"{exc}\n{c.tail_logs(25)}") from exc
    finally:
        c.close()


# -- attacks while it trains ---------------------------------------------------------------
def _submit_refused(fed: Federation, bundle: str, signed: bool) -> None:
    sign = ["--sign-key", str(fed.alice)] if signed else []
    code, _, err = fed.raftfl(bundle, "run", "submit", "--app", str(runapp.bundled_app()), *sign)
    assert code != 0, f"{bundle} submitted a run"
    assert "permission denied" in err, (bundle, err)
    assert len(err.strip().splitlines()) == 1, (bundle, err)


def test_a_node_certificate_cannot_submit_a_run(fed: Federation) -> None:
    fed.attack_while_training()
    _submit_refused(fed, "node1", signed=True)
    _submit_refused(fed, "node2", signed=False)  # held out: unsigned, another node
    assert fed.training()


def test_a_stranger_certificate_cannot_submit_a_run(fed: Federation) -> None:
    _submit_refused(fed, "stranger", signed=True)  # held out: a node outside the federation


def test_runs_signed_by_an_untrusted_key_or_unsigned_are_queued(fed: Federation) -> None:
    """Submitted now, refused when they would become active (after run 1): see
    test_every_node_refuses_the_untrusted_runs."""
    fed.attack_while_training()
    app = str(runapp.bundled_app())
    for why, sign in (("refused: signed by unknown key id", ["--sign-key", str(fed.mallory)]),
                      ("refused: it is not signed", [])):
        code, out, err = fed.raftfl("root", "run", "submit", "--app", app, "--run-config",
                                    SMALL_RUN, *sign, "--json")
        assert code == 0, err
        fed.queued[why] = json.loads(out)["run"]
    assert sorted(fed.queued.values()) == [2, 3]
    assert fed.training()


def test_a_worker_cannot_register_under_another_nodes_id(fed: Federation) -> None:
    fed.attack_while_training()
    agg = fed.aggregator()
    victim = fed.worker(agg)
    attacker = next(n for n in fed.c.nodes if n not in (agg, victim))
    bundle = fed.bundle(f"node{fed.c.nodes.index(attacker)}")
    since = log_size(agg)
    connected = log_of(agg).count(f"node {victim.name} ({node_id(victim.name)}) connected")
    # the victim's id, then (held out) an id nobody holds: a sybil
    for target in (node_id(victim.name), node_id("10.9.9.9:5000")):
        status, body = https(bundle, fed.fleet(), "POST", f"/register?node={target}&name=x")
        assert status == 403 and b"may register as node" in body, (status, body)
        one_line(rf"refused: HTTP 403 certificate '{re.escape(attacker.name)}' may register "
                 rf"as node {node_id(attacker.name)}, not {target}$", log_of(agg, since))
    time.sleep(1.0)
    # the victim keeps its session: it did not have to register again
    assert log_of(agg).count(f"node {victim.name} ({node_id(victim.name)}) connected") \
        == connected
    assert "registered again" not in log_of(agg, since)
    assert fed.training()


def test_operator_and_admin_certificates_get_no_fleet_session(fed: Federation) -> None:
    fed.attack_while_training()
    agg = fed.aggregator()
    since = log_size(agg)
    for bundle, cn in (("eve", "operator-eve"), ("root", "root")):  # root: held out
        status, body = https(fed.bundle(bundle), fed.fleet(), "POST",
                             f"/register?node={node_id(cn)}&name={cn}")
        assert status == 403 and b"gets no fleet session" in body, (status, body)
        one_line(rf"refused: HTTP 403 certificate '{cn}' gets no fleet session$",
                 log_of(agg, since))
        assert f"node {cn} (" not in log_of(agg, since)  # no session was made
    assert fed.training()


def test_a_forged_model_put_is_refused(fed: Federation) -> None:
    fed.attack_while_training()
    agg = fed.aggregator()
    forger = fed.worker(agg)
    bundle = fed.bundle(f"node{fed.c.nodes.index(forger)}")
    junk = b"a forged model"
    committed = fed.c.state().committed
    newest = committed[max(committed)].model_sha256
    target = next(n for n in fed.c.nodes if n is not forger)
    address = f"{target.ip}:{target.port + MODELS_PORT_OFFSET}"
    status, body = https(bundle, address, "GET", f"/models/{newest}")
    assert status == 200 and hashlib.sha256(body).hexdigest() == newest
    since = log_size(target)
    # junk that hashes to its name, then (held out) a committed model's own bytes
    for sha, blob in ((hashlib.sha256(junk).hexdigest(), junk), (newest, body)):
        status, answer = https(bundle, address, "PUT", f"/models/{sha}", blob)
        assert status == 403 and b"is not the aggregator" in answer, (status, answer)
        one_line(rf"model service: PUT /models/{sha} from 127\.0\.0\.1 refused: HTTP 403 "
                 rf"{re.escape(forger.name)} is not the aggregator", log_of(target, since))
    status, _ = https(bundle, address, "GET", f"/models/{hashlib.sha256(junk).hexdigest()}")
    assert status == 404  # nothing stored
    assert fed.training()


def test_a_thousand_idle_tls_connections_drop_no_honest_worker(fed: Federation) -> None:
    fed.attack_while_training()
    agg = fed.aggregator()
    since = log_size(agg)
    before = max(fed.c.state().committed)
    with idle_connections(fed.fleet(), 1000, fed.bundle("stranger")) as opened:
        assert opened >= 900
        time.sleep(fleet_mod.HANDSHAKE_S + 1)  # the half without a handshake times out
        assert fed.training()
    fed.c.wait_for(lambda: max(fed.c.state().committed) > before or not fed.training(), WAIT,
                   "a round to commit after the idle connections")
    text = log_of(agg, since)
    one_line(rf"fleet .*: connection from 127\.0\.0\.1 refused: certificate '{STRANGER}' has "
             rf"{fleet_mod.MAX_PER_PEER} connections open", text)
    assert "silent for" not in text and "registered again" not in text, text[-2000:]
    assert all(n.alive for n in fed.c.nodes)


# -- the run's outcome ---------------------------------------------------------------------
def test_the_federation_completes_every_round_once_and_agrees(fed: Federation) -> None:
    fed.finished()
    c = fed.c
    c.wait_for(lambda: all((n.data_dir / "runs" / "1" / "result.json").is_file()
                           for n in c.nodes), 60, "every node's final model")
    finals = {n.name: json.loads((n.data_dir / "runs" / "1" / "result.json").read_text())
              ["final_model_sha256"] for n in c.nodes}
    state = c.state()
    verdict = check(state, ROUNDS, finals)
    assert verdict.ok, verdict.violations
    assert state.commit_order == list(range(1, ROUNDS + 1))
    assert all(n.alive for n in c.nodes), c.tail_logs()
    # no committed model lost to the forged uploads: the final one is served, and verifies
    final = state.completed.model_sha256  # type: ignore[union-attr]
    served = 0
    for node in c.nodes:
        status, body = https(fed.bundle("eve"), f"{node.ip}:{node.port + MODELS_PORT_OFFSET}",
                             "GET", f"/models/{final}")
        served += status == 200 and hashlib.sha256(body).hexdigest() == final
    assert served >= 1


@pytest.mark.parametrize("hostile", HOSTILE, ids=[h.fault for h in HOSTILE])
def test_a_hostile_reply_is_refused(fed: Federation, hostile: Hostile) -> None:
    missing = hostile.missing_hook()
    if missing:
        pytest.skip(missing)
    fed.finished()
    agg = fed.aggregator()
    sender = fed.c.nodes[hostile.node]
    one_line(rf"grid: round {hostile.round}: {hostile.kind} reply from node "
             rf"{node_id(sender.name)} rejected: .*{re.escape(hostile.reason)}", log_of(agg))
    if hostile.kind == "train":
        fits = [e for e in fed.c.log if e.event.type == "fit_results"
                and e.event.round == hostile.round]
        assert any(hostile.reason in f.event.rejected.get(sender.name, "") for f in fits), fits


def test_every_node_refuses_the_untrusted_runs(fed: Federation) -> None:
    """Run 2 (an untrusted key) becomes active when run 1 completes: every node checks its
    signature and says why it refuses it. Run 3 (held out: unsigned) is stopped by the
    aggregator at once; a node that never made it active need not say anything, but no node
    accepts or unpacks it."""
    if not fed.queued:
        pytest.skip("test_runs_signed_by_an_untrusted_key_or_unsigned_are_queued did not run")
    fed.finished()
    store = fed.c.store()
    for why, run in fed.queued.items():
        events = EventLog(store, fed.c.keys.run(run))
        fed.c.wait_for(lambda ev=events: replay(ev.read().events).stopped is not None, WAIT,
                       f"run {run} to be stopped")
        state = replay(events.read().events)
        assert why in state.stopped.reason, state.stopped  # type: ignore[union-attr]
        assert not state.committed and state.completed is None
        line = rf"run {run}: its app cannot be used \({re.escape(why)}"
        if run == fed.queued["refused: signed by unknown key id"]:
            fed.c.wait_for(lambda p=line: all(re.search(p, log_of(n)) for n in fed.c.nodes), 30,
                           f"every node to refuse run {run}")
        for node in fed.c.nodes:
            assert not re.search(rf"run {run}: app ", log_of(node)), node.name
            assert not (node.data_dir / "apps" / str(run)).exists()


# -- forged writes with another node's certificate (issue 18, item 7) ----------------------
FORGED_CLAIM = re.compile(r"(forged|not signed|signature|signer)", re.IGNORECASE)


def _refused_or_ignored(fed: Federation, written: str, since: dict[str, int],
                        reason: str = "") -> None:
    """The desired outcome of a forged write: etcd refuses it, or every node ignores it and
    says so in one line (that holds `reason`, when given)."""
    if "permission denied" in written:
        return
    if written.strip():
        pytest.fail(f"the forged write failed for another reason: {written.strip()}")

    def said(node: NodeProc) -> bool:
        lines = [ln for ln in log_of(node, since[node.name]).splitlines()
                 if FORGED_CLAIM.search(ln)]
        return any(reason in ln for ln in lines)
    try:
        fed.c.wait_for(lambda: all(said(n) for n in fed.c.nodes), 5, "every node to refuse it")
    except RaftflError as exc:
        raise AssertionError(f"a forged write was accepted and followed: {exc}") from None


def _next_event_key(fed: Federation) -> str:
    events = fed.c.keys.run(1).events
    kvs, _ = fed.c.store().range(events, keys_only=True)
    return f"{events}{max(int(kv.key.rsplit('/', 1)[1]) for kv in kvs) + 1:012d}"


def _signed_by(fed: Federation, node: NodeProc, key: str, value: dict[str, object]) -> str:
    """`value` for `key`, signed with `node`'s own node key (its bundle's tls.key)."""
    from cryptography.hazmat.primitives import serialization

    from raftfl.core import seal

    bundle = fed.bundle(f"node{fed.c.nodes.index(node)}")
    private = serialization.load_pem_private_key((bundle / tls.KEY).read_bytes(), None)
    return json.dumps(seal.signed(key, value, private))  # type: ignore[arg-type]


def _forgery(fed: Federation, target: str, forger: NodeProc, holder: str, term: int
             ) -> tuple[str, str, str]:
    """(key, value, part of the reason every node gives) of a forgery of `target`, in the
    name of `holder`, who holds the run's last term, `term`."""
    keys = fed.c.keys
    if target == "aggregator":  # the role in the holder's name, pointing at the forger
        return keys.aggregator, json.dumps({
            "node": holder,
            "flower_address": f"{forger.ip}:{forger.port + FLOWER_PORT_OFFSET}"}), "not signed"
    if target == "event":  # a complete run_completed, in the holder's name, unsigned
        return _next_event_key(fed), json.dumps({
            "type": "run_completed", "node": holder, "term": term, "rounds": ROUNDS,
            "model_sha256": "0" * 64, "v": 1, "id": "f" * 32, "ts": time.time()}), "not signed"
    if target == "event-own-key":  # held out: signed as itself, claiming the holder's term
        key = _next_event_key(fed)
        return key, _signed_by(fed, forger, key, {
            "type": "round_committed", "node": forger.name, "term": term,
            "round": ROUNDS + 1, "model_sha256": "0" * 64, "base_model": "0" * 64,
            "loss": None, "accuracy": None, "results": 3, "v": 1, "id": "e" * 32,
            "ts": time.time()}), f"signer {forger.name} does not hold term {term}"
    # held out: the holder's own signed claim, put back after the key was deleted (its term
    # is an older create revision) and off its lease
    honest = fed.c.store().get(keys.aggregator)
    assert honest is not None and b'"sig"' in honest.value, "the holder's claim is not signed"
    return keys.aggregator, honest.value.decode(), "forged: its term"


@pytest.mark.parametrize("target", ["aggregator-copied", "aggregator", "event",
                                    "event-own-key"])
def test_a_forged_write_with_another_nodes_certificate_is_refused(fed: Federation,
                                                                  target: str) -> None:
    """Every node ignores it and says why; held out: an event signed with the forger's own
    key for the holder's term, and the holder's own signed claim copied to a new key."""
    fed.finished()  # after the run: a forgery that is accepted cannot break the suite
    last = fed.c.state().elections[-1]  # the run's last term and its holder
    forger = next(n for n in fed.c.nodes if n.name != last.node)
    key, value, reason = _forgery(fed, target, forger, last.node, last.term)
    bundle = fed.bundle(f"node{fed.c.nodes.index(forger)}")
    if target == "aggregator-copied":  # the forger deletes the key first (RBAC lets it)
        code = ("import sys\nfrom raftfl import tls\nfrom raftfl.etcd.store import Store\n"
                "tls.configure(tls.load(__import__('pathlib').Path(sys.argv[1])))\n"
                "Store(sys.argv[2].split(','), retry_for=5).delete(sys.argv[3])\n")
        subprocess.run([sys.executable, "-c", code, str(bundle), ",".join(fed.c.endpoints),
                        key], check=True, capture_output=True, timeout=60)
    since = {n.name: log_size(n) for n in fed.c.nodes}
    proc = etcd_put(bundle, fed.c.endpoints, key, value)
    _refused_or_ignored(fed, proc.stderr if proc.returncode else "", since, reason)


# -- the loopback quick start and a second local user -------------------------------------
def test_a_second_local_user_cannot_reach_the_quick_start() -> None:
    why = can_switch_user()
    if why:
        pytest.skip(why)
    whoami = as_second_user(sys.executable, "-c", "import os, raftfl; print(os.getuid())")
    if whoami.stdout.strip() != str(SECOND_USER):  # it could not, or it cannot run raftfl
        pytest.skip(f"cannot run raftfl as a second local user: {whoami.stderr.strip()[-200:]}")
    secured = tls.current()  # the module's secured federation made this process its root
    tls.configure(None)
    try:
        reached = _reach_quick_start_as_second_user()
    finally:
        tls.configure(secured)
    got = sorted(what for what, proc in reached.items() if proc.returncode == 0)
    assert not got, f"a second local user reached: {got}; " + "; ".join(
        f"{what}: exit {proc.returncode} {proc.stderr.strip()[-200:]}"
        for what, proc in reached.items() if proc.returncode)


def _reach_quick_start_as_second_user() -> dict[str, subprocess.CompletedProcess[str]]:
    """A two-node quick start with no security flag (mutual TLS from the CA it makes in its
    folder), held in round 1's fit (so its fleet serves), and what another local user gets
    from each of its ports and from the CA's folder (the cluster's folder itself is open to
    them, as a project folder in a home directory often is: only the CA's 0700 shuts them
    out)."""
    with LocalCluster(n=2, rounds=1, cluster="t-local-user", train_size=300, test_size=100,
                      exit_on_complete=False, node_env={1: {HOLD_ENV: "fit:1:60"}},
                      quickstart=True) as c:
        node = c.nodes[0]
        c.workdir.chmod(0o755)  # type: ignore[union-attr]
        c.wait_event(lambda e: e.type == "round_started", WAIT, "round 1 to start")
        return {
            "etcd write": as_second_user(
                sys.executable, "-c", "import sys\nfrom raftfl.etcd.store import Store\n"
                "Store([sys.argv[1]], retry_for=3).put('/raftfl/t-local-user/x', 'x')\n",
                f"{node.ip}:{node.port + CLIENT_PORT_OFFSET}"),
            "fleet session": as_second_user(
                "curl", "-sSf", "-m", "5", "-X", "POST",
                f"http://{node.ip}:{node.port + FLOWER_PORT_OFFSET}/register?node=12345"),
            "model upload": as_second_user(
                "curl", "-sSf", "-m", "5", "-X", "PUT", "--data-binary", "x",
                f"http://{node.ip}:{node.port + MODELS_PORT_OFFSET}/models/"
                + hashlib.sha256(b"x").hexdigest()),
            # held out: TLS without a certificate, and the CA's folder itself
            "fleet session over https, no certificate": as_second_user(
                "curl", "-sSfk", "-m", "5", "-X", "POST",
                f"https://{node.ip}:{node.port + FLOWER_PORT_OFFSET}/register?node=12345"),
            "CA key read": as_second_user("cat", str(c.quick_start_ca / tls.CA_KEY)),
            "CA folder listed": as_second_user("ls", str(c.quick_start_ca)),
        }
