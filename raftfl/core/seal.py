"""Signed values: a member speaks only as itself (issue 18, item 7).

Why: etcd RBAC lets every node write the run logs and the role key (the aggregator must), so
without signatures one node's certificate could write an event or a role claim in another
node's name. In a secured cluster each value a node writes there carries `sig`: its node key
(the bundle's tls.key, ECDSA P-256) over `message(key, value)`, the etcd key and the value's
canonical JSON without `sig`. The key is part of the message, so a signed value cannot be
copied to another key (another run, another sequence number, the role key).

The signature is the raw `r || s` form (64 bytes, 86 base64url characters without padding):
fixed in size and about 10 characters shorter than DER in base64, since every event carries
one (issue 21 counts Raft bytes). No I/O here: raftfl/etcd/signers.py finds who signed and
with which key.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

SIG = "sig"  # the field a signed value carries its signature in
SIG_CHARS = 86  # base64url of 64 bytes, unpadded
_HALF = 32  # bytes of r and of s (P-256)


def message(key: str, value: dict[str, Any]) -> bytes:
    """What is signed: the etcd key and the value's canonical JSON, without its `sig`."""
    body = {k: v for k, v in value.items() if k != SIG}
    return key.encode() + b"\n" + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign(data: bytes, private_key: ec.EllipticCurvePrivateKey) -> str:
    """`data` signed with ECDSA-SHA256, as base64url of r || s (no padding)."""
    r, s = decode_dss_signature(private_key.sign(data, ec.ECDSA(hashes.SHA256())))
    raw = r.to_bytes(_HALF, "big") + s.to_bytes(_HALF, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def verify(data: bytes, sig: object, public_key: ec.EllipticCurvePublicKey) -> bool:
    """Whether `sig` (as `sign` makes it) is `public_key`'s over `data`; never raises."""
    if not isinstance(sig, str) or len(sig) != SIG_CHARS:
        return False
    try:
        raw = base64.urlsafe_b64decode(sig + "==")
    except (binascii.Error, ValueError):
        return False
    r, s = int.from_bytes(raw[:_HALF], "big"), int.from_bytes(raw[_HALF:], "big")
    if not r or not s:
        return False
    try:
        public_key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def signed(key: str, value: dict[str, Any], private_key: ec.EllipticCurvePrivateKey
           ) -> dict[str, Any]:
    """`value` with its `sig` for `key`."""
    return {**value, SIG: sign(message(key, value), private_key)}
