"""Signed runs: an operator's Ed25519 key signs a run, every node verifies it before it
unpacks or imports the run's app.

Why: a run's app is code that every node imports. Without signatures, anyone who can write
the run's keys in etcd (before RBAC, any certificate of the cluster) runs code on every node.

The files are Flower's, so one set of keys serves both (flwr 1.42, `flower-supernode
--trusted-entities`): a trusted-entities file is YAML mapping a public key id to an OpenSSH
public key line (`alice: "ssh-ed25519 AAAA... alice"`), private keys are OpenSSH Ed25519 keys
(`ssh-keygen -t ed25519` makes one too) and signatures are base64url without padding. What
differs: Flower signs the FAB digest and a timestamp; raftfl signs `RunSpec.signed_message`
(the canonical spec, the cluster and the package's sha256), and a signature names its key
by the key's SHA256 fingerprint (what `ssh-keygen -lf` prints), so the ids in a
trusted-entities file are only labels and any Flower file works unchanged.

Why a process-wide trust: a node process is one party, started with one `--trusted-entities`
file; the CLI loads it once (`configure`) and the node's runs read it (`trust`), like the TLS
identity (raftfl/tls.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from raftfl.core.errors import RaftflError
from raftfl.core.specs import RunSpec
from raftfl.files import make_private_dir, write_atomic

MAX_TRUST_BYTES = 256 * 1024
MAX_TRUSTED_KEYS = 1000
SIGNATURE_BYTES = 64


class SigningError(RaftflError):
    """A key or trusted-entities file that cannot be used (one line)."""


class RunRefused(RaftflError):
    """A run this node must not unpack: unsigned, by a key it does not trust, or tampered."""


def key_id(public_key: ed25519.Ed25519PublicKey) -> str:
    """The key's SHA256 fingerprint, as `ssh-keygen -lf` prints it."""
    line = public_key.public_bytes(serialization.Encoding.OpenSSH,
                                   serialization.PublicFormat.OpenSSH)
    digest = hashlib.sha256(base64.b64decode(line.split()[1])).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def public_line(public_key: ed25519.Ed25519PublicKey, comment: str) -> str:
    line = public_key.public_bytes(serialization.Encoding.OpenSSH,
                                   serialization.PublicFormat.OpenSSH).decode()
    return f"{line} {comment}".strip()


@dataclass(frozen=True)
class Trust:
    """The keys a node accepts runs from, by fingerprint (with the file's label for each)."""

    keys: dict[str, tuple[str, ed25519.Ed25519PublicKey]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.keys)

    def label(self, fingerprint: str) -> str:
        return f"{self.keys[fingerprint][0]} ({fingerprint})"


def parse_trusted_entities(text: str, where: str = "trusted entities") -> Trust:
    """Flower's trusted-entities YAML: {id: "ssh-ed25519 <key> [comment]"}; only Ed25519."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SigningError(f"{where}: not YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not data:
        raise SigningError(f"{where}: expected a mapping of key ids to 'ssh-ed25519 ...' "
                           "public keys, with at least one key")
    if len(data) > MAX_TRUSTED_KEYS:
        raise SigningError(f"{where}: {len(data)} keys, more than {MAX_TRUSTED_KEYS}")
    keys: dict[str, tuple[str, ed25519.Ed25519PublicKey]] = {}
    for label, value in data.items():
        if not isinstance(value, str):
            raise SigningError(f"{where}: key {str(label)[:80]!r} is not an 'ssh-ed25519 ...' line")
        try:
            public = serialization.load_ssh_public_key(value.strip().encode())
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise SigningError(f"{where}: key {str(label)[:80]!r} is unreadable: {exc}") from None
        if not isinstance(public, ed25519.Ed25519PublicKey):
            raise SigningError(f"{where}: key {str(label)[:80]!r} is not Ed25519")
        keys[key_id(public)] = (str(label), public)
    return Trust(keys)


def load_trusted_entities(path: Path) -> Trust:
    path = Path(path).expanduser()
    try:
        if path.stat().st_size > MAX_TRUST_BYTES:
            raise SigningError(f"{path}: more than {MAX_TRUST_BYTES} bytes")
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SigningError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_trusted_entities(text, str(path))


def load_private_key(path: Path) -> ed25519.Ed25519PrivateKey:
    """An unencrypted OpenSSH (or PEM) Ed25519 private key."""
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if b"OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise SigningError(f"{path} is not an unencrypted private key (OpenSSH or PEM)") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SigningError(f"{path} is not an Ed25519 key")
    return key


def new_key_pair(name: str, out: Path, force: bool = False) -> tuple[Path, Path, str]:
    """OUT/NAME.key (OpenSSH, 0600), OUT/NAME.pub, and the trusted-entities line for it.
    Returns both paths and that line."""
    make_private_dir(out)
    private, public = out / f"{name}.key", out / f"{name}.pub"
    for path in (private, public):
        if path.exists() and not force:
            raise SigningError(f"{path} exists; pass --force to overwrite it")
    key = ed25519.Ed25519PrivateKey.generate()
    write_atomic(private, key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.OpenSSH,
                                            serialization.NoEncryption()), mode=0o600)
    line = public_line(key.public_key(), name)
    write_atomic(public, line + "\n", mode=0o644)
    return private, public, f'{name}: "{line}"'


def sign_run(spec: RunSpec, package: bytes, key: ed25519.Ed25519PrivateKey,
             cluster: str) -> RunSpec:
    """`spec`, signed by `key` for `cluster` over itself and the package bytes."""
    unsigned = replace(spec, signed_by=key_id(key.public_key()), signature="")
    message = unsigned.signed_message(cluster, hashlib.sha256(package).hexdigest())
    signature = base64.urlsafe_b64encode(key.sign(message)).decode().rstrip("=")
    return replace(unsigned, signature=signature)


def verify_run(spec: RunSpec, package: bytes, trust: Trust, cluster: str) -> str | None:
    """Check a run's signature before anything of it is unpacked. RunRefused (one line, the
    reason) if this node trusts keys and the run is unsigned, by a key it does not trust, or
    its signature does not match the spec and package; returns the signer's label, or None
    when this node trusts no keys (it then runs unsigned apps: see `UNSIGNED_WARNING`)."""
    if not trust:
        return None
    if not spec.signed_by and not spec.signature:
        raise RunRefused(f"refused: it is not signed (this node trusts {len(trust.keys)} "
                         "key(s): submit it with run submit --sign-key)")
    if spec.signed_by not in trust.keys:
        raise RunRefused(f"refused: signed by unknown key id {spec.signed_by[:80]!r}, not one "
                         "this node trusts (--trusted-entities)")
    _, public = trust.keys[spec.signed_by]
    try:
        raw = spec.signature.encode("ascii")
        signature = base64.b64decode(raw + b"=" * (-len(raw) % 4), altchars=b"-_",
                                     validate=True)
        if len(signature) != SIGNATURE_BYTES:
            raise ValueError(f"{len(signature)} bytes")
    except (ValueError, UnicodeEncodeError, binascii.Error) as exc:
        raise RunRefused(f"refused: malformed signature by {trust.label(spec.signed_by)} "
                         f"(not base64url of {SIGNATURE_BYTES} bytes: {exc})") from None
    try:
        public.verify(signature, spec.signed_message(cluster, hashlib.sha256(package).hexdigest()))
    except InvalidSignature:
        raise RunRefused(f"refused: bad signature by {trust.label(spec.signed_by)}: the spec or "
                         "the package changed after signing, or it was signed for another "
                         "cluster") from None
    return trust.label(spec.signed_by)


UNSIGNED_WARNING = ("apps are not signed: anyone who can write to etcd can run code on this "
                    "node; give --trusted-entities")

_trust = Trust()


def configure(trust: Trust) -> None:
    """The keys this process accepts runs from (the node's --trusted-entities)."""
    global _trust
    _trust = trust


def trust() -> Trust:
    return _trust
