"""Signed values (raftfl/core/seal.py) and what readers make of them: role claims
(core/role.py) and the holder-of-term rule of replay (core/replay.py). Pure: no etcd."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from raftfl.core import seal
from raftfl.core.events import AggregatorElected, RoundCommitted, RunStarted, decode
from raftfl.core.replay import Logged, replay
from raftfl.core.role import MalformedRole, RoleHolder, parse_role, role_record

ALICE, BOB = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
KEY = "/raftfl/c/runs/1/events/000000000007"
VALUE = {"type": "node_joined", "node": "a:1", "term": 0, "ts": 1.5, "id": "x", "v": 1}
SIGNED = seal.signed(KEY, VALUE, ALICE)


def stable(cases: list[tuple[Any, ...]]) -> list[Any]:
    """Cases with ids by position: ECDSA signatures are random, and xdist's workers must
    collect the same test ids."""
    return [pytest.param(*case, id=str(i)) for i, case in enumerate(cases)]


def _flip(sig: str) -> str:
    return ("B" if sig[0] == "A" else "A") + sig[1:]


@pytest.mark.parametrize("key,value,sig,public,ok", stable([
    (KEY, VALUE, SIGNED["sig"], ALICE.public_key(), True),
    (KEY, {**VALUE, "sig": "ignored"}, SIGNED["sig"], ALICE.public_key(), True),  # sig excluded
    (KEY, dict(reversed(VALUE.items())), SIGNED["sig"], ALICE.public_key(), True),  # key order
    (KEY, VALUE, SIGNED["sig"], BOB.public_key(), False),  # another signer's key
    (KEY[:-1] + "8", VALUE, SIGNED["sig"], ALICE.public_key(), False),  # copied to another key
    (KEY, {**VALUE, "term": 9}, SIGNED["sig"], ALICE.public_key(), False),  # changed value
    (KEY, VALUE, _flip(SIGNED["sig"]), ALICE.public_key(), False),
    (KEY, VALUE, SIGNED["sig"][:-1], ALICE.public_key(), False),  # truncated
    (KEY, VALUE, "", ALICE.public_key(), False),
    (KEY, VALUE, None, ALICE.public_key(), False),
    (KEY, VALUE, 12, ALICE.public_key(), False),
    (KEY, VALUE, "!" * seal.SIG_CHARS, ALICE.public_key(), False),  # not base64url
    (KEY, VALUE, "A" * seal.SIG_CHARS, ALICE.public_key(), False),  # r = s = 0
]))
def test_verify(key: str, value: dict[str, Any], sig: object, public: ec.EllipticCurvePublicKey,
                ok: bool) -> None:
    assert seal.verify(seal.message(key, value), sig, public) is ok


def test_a_signature_is_fixed_size_and_survives_a_json_round_trip() -> None:
    assert len(SIGNED["sig"]) == seal.SIG_CHARS
    stored = json.loads(json.dumps(SIGNED, sort_keys=True))
    assert seal.verify(seal.message(KEY, stored), stored["sig"], ALICE.public_key())


def test_an_event_stores_sig_only_when_signed() -> None:
    plain = RunStarted(node="a:1", rounds=2, initial_model="m")
    assert "sig" not in json.loads(plain.to_json())  # unsigned: the stored form is unchanged
    signed = replace(plain, sig=seal.signed(KEY, plain.to_dict(), ALICE)["sig"])
    back = decode(signed.to_json())
    assert back == signed
    assert seal.verify(seal.message(KEY, json.loads(signed.to_json())), back.sig,
                       ALICE.public_key())
    with pytest.raises(ValueError, match="signature"):
        replace(plain, sig="x" * 200)


# -- role claims: a check that knows alice's key only ---------------------------------------
ROLE_KEY = "/raftfl/c/aggregator"
KEYS = {"alice": ALICE.public_key()}


def check(node: str, obj: dict[str, Any]) -> str | None:
    public = KEYS.get(node)
    if public is None:
        return f"signer {node} has no certificate"
    return None if seal.verify(seal.message(ROLE_KEY, obj), obj.get("sig"), public) \
        else f"the signature is not {node}'s"


def claim(term: int, lease: int | None = 5, key: ec.EllipticCurvePrivateKey | None = ALICE,
          node: str = "alice") -> bytes:
    record = role_record(node, "h:1", term, lease)
    return json.dumps(seal.signed(ROLE_KEY, record, key) if key else record).encode()


@pytest.mark.parametrize("raw,lease,reason", stable([
    (claim(42), 5, None),  # proclaimed: term = the key's create revision
    (claim(0), 5, None),  # the campaign's first value, before the term is known
    (claim(42), 0, "forged: its lease 5 is not the key's 0"),  # put again without a lease
    (claim(0), 6, "forged: its lease 5 is not the key's 6"),  # a claim copied to another lease
    (claim(41), 5, "forged: its term 41 is not the key's create revision 42"),  # an old claim
    (claim(42, key=None), 5, "forged: the signature is not alice's"),  # unsigned
    (claim(42, key=BOB), 5, "forged: the signature is not alice's"),  # bob signs as alice
    (claim(42, key=BOB, node="bob"), 5, "forged: signer bob has no certificate"),
    (claim(42, lease=None), 5, "forged: its lease None"),  # signed, but names no lease
    (claim(42, key=None, lease=None), 0, "forged:"),  # the forgery comes before the lease check
]))
def test_parse_role_with_a_signature_check(raw: bytes, lease: int, reason: str | None) -> None:
    role = parse_role(raw, create_revision=42, lease=lease, mod_revision=43, check=check)
    if reason is None:
        assert role == RoleHolder("alice", "h:1", term=42, lease=lease, mod_revision=43)
    else:
        assert isinstance(role, MalformedRole) and role.reason.startswith(reason), role


def test_parse_role_without_a_check_is_unchanged() -> None:
    assert isinstance(parse_role(claim(42, key=None, lease=None), 42, 5, 43), RoleHolder)
    assert parse_role(claim(42, key=None, lease=None), 42, 0, 43) == \
        MalformedRole("not bound to a lease", 42, 0, 43)


# -- replay: a signed event counts only from the holder of its term -------------------------
def _elected(node: str, term: int, sig: str = "s" * 86) -> AggregatorElected:
    return AggregatorElected(node=node, term=term, flower_address="h:1", rank=0, score=1.0,
                             revision=term, ranking=[], sig=sig)


def _commit(node: str, term: int, rnd: int, base: str, sig: str = "s" * 86) -> RoundCommitted:
    return RoundCommitted(node=node, term=term, round=rnd, model_sha256=f"m{rnd}", base_model=base,
                          loss=None, accuracy=None, results=2, sig=sig)


START = RunStarted(node="a", rounds=3, initial_model="m0")


@pytest.mark.parametrize("events,committed,rejected", [
    ([_elected("a", 5), _commit("a", 5, 1, "m0")], [1], []),
    ([_elected("a", 5), _commit("b", 5, 1, "m0")], [],
     ["round_committed: signer b does not hold term 5 (a does)"]),
    # a second election record of the same term by another node: not the holder either
    ([_elected("a", 5), _elected("b", 5), _commit("b", 5, 1, "m0")], [],
     ["aggregator_elected: signer b does not hold term 5 (a does)",
      "round_committed: signer b does not hold term 5 (a does)"]),
    # unsigned (a plain-text cluster): the rule does not apply, as before
    ([_elected("a", 5, ""), _commit("b", 5, 1, "m0", "")], [1], []),
    # the holder of each term, across a failover
    ([_elected("a", 5), _commit("a", 5, 1, "m0"), _elected("b", 9), _commit("b", 9, 2, "m1"),
      _commit("a", 9, 3, "m2")], [1, 2], ["round_committed: signer a does not hold term 9 (b does)"]),
])
def test_replay_refuses_a_signed_event_from_a_node_that_does_not_hold_its_term(
        events: list[Any], committed: list[int], rejected: list[str]) -> None:
    log = [Logged(i + 1, 100 + i, ev) for i, ev in enumerate([START, *events])]
    state = replay(log)
    assert state.commit_order == committed
    assert [why for _, why in state.rejected] == rejected
