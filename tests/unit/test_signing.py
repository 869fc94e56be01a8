"""Signed runs (raftfl/signing.py): what an operator's signature covers and every way a node
refuses a run, one line each; Flower's trusted-entities file and OpenSSH keys as they are."""

from __future__ import annotations

import hashlib
import shutil
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from raftfl import signing
from raftfl.core.keys import Keys
from raftfl.core.specs import RunSpec
from raftfl.etcd import rbac

PACKAGE = b"a package's bytes"
CLUSTER = "prod"


def spec_for(package: bytes = PACKAGE) -> RunSpec:
    return RunSpec(app="quickstart", app_sha256=hashlib.sha256(package).hexdigest(),
                   run_config={"num-server-rounds": 3, "lr": 0.1, "name": "x", "fast": True},
                   rounds=3, by="alice@host", submitted=1700000000.25)


def trust_of(*named: tuple[str, ed25519.Ed25519PrivateKey]) -> signing.Trust:
    return signing.parse_trusted_entities("\n".join(
        f'{name}: "{signing.public_line(key.public_key(), name)}"' for name, key in named))


ALICE, MALLORY = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
TRUST = trust_of(("alice", ALICE))
SIGNED = signing.sign_run(spec_for(), PACKAGE, ALICE, CLUSTER)


def test_a_run_signed_by_a_trusted_key_is_accepted_and_survives_storage() -> None:
    assert SIGNED.signed_by == signing.key_id(ALICE.public_key())
    stored = RunSpec.from_json(SIGNED.to_json())  # what a node reads back from etcd
    assert signing.verify_run(stored, PACKAGE, TRUST, CLUSTER) == f"alice ({SIGNED.signed_by})"


def test_without_trusted_keys_any_run_is_accepted() -> None:
    assert signing.verify_run(spec_for(), PACKAGE, signing.Trust(), CLUSTER) is None
    assert signing.verify_run(SIGNED, b"other", signing.Trust(), CLUSTER) is None


def _forged_by_mallory() -> RunSpec:  # mallory signs, claiming alice's key id
    forged = signing.sign_run(spec_for(), PACKAGE, MALLORY, CLUSTER)
    return replace(forged, signed_by=SIGNED.signed_by)


OTHER_PACKAGE = b"evil package"


@pytest.mark.parametrize("spec, package, cluster, reason", [
    (spec_for(), PACKAGE, CLUSTER, "refused: it is not signed"),
    (signing.sign_run(spec_for(), PACKAGE, MALLORY, CLUSTER), PACKAGE, CLUSTER,
     "refused: signed by unknown key id 'SHA256:"),
    (_forged_by_mallory(), PACKAGE, CLUSTER, "refused: bad signature by alice"),
    (SIGNED, b"a package's bytes, changed", CLUSTER, "refused: bad signature by alice"),
    # a valid package under a changed spec: what the node acts on is all signed
    (replace(SIGNED, run_config={**SIGNED.run_config, "lr": 100.0}), PACKAGE, CLUSTER,
     "refused: bad signature"),
    (replace(SIGNED, rounds=4), PACKAGE, CLUSTER, "refused: bad signature"),
    (replace(SIGNED, app="other"), PACKAGE, CLUSTER, "refused: bad signature"),
    (replace(SIGNED, submitted=1.0), PACKAGE, CLUSTER, "refused: bad signature"),
    # the whole run swapped: another package and a spec that names it, old signature kept
    (replace(SIGNED, app_sha256=hashlib.sha256(OTHER_PACKAGE).hexdigest()), OTHER_PACKAGE,
     CLUSTER, "refused: bad signature"),
    (SIGNED, PACKAGE, "staging", "refused: bad signature"),  # signed for another cluster
    (replace(SIGNED, signature="!!not base64!!"), PACKAGE, CLUSTER, "refused: malformed signature"),
    (replace(SIGNED, signature=SIGNED.signature[:40]), PACKAGE, CLUSTER,
     "refused: malformed signature"),
    (replace(SIGNED, signature=""), PACKAGE, CLUSTER, "refused: malformed signature"),
    (replace(SIGNED, signed_by=""), PACKAGE, CLUSTER, "refused: signed by unknown key id ''"),
])
def test_refusals_are_one_line_each(spec: RunSpec, package: bytes, cluster: str,
                                    reason: str) -> None:
    with pytest.raises(signing.RunRefused) as refused:
        signing.verify_run(spec, package, TRUST, cluster)
    assert str(refused.value).startswith(reason), str(refused.value)
    assert "\n" not in str(refused.value)


def test_the_signed_message_covers_everything_but_the_signature() -> None:
    base = SIGNED.signed_message(CLUSTER, SIGNED.app_sha256)
    assert replace(SIGNED, signature="x").signed_message(CLUSTER, SIGNED.app_sha256) == base
    for changed in (replace(SIGNED, by="eve@host"), replace(SIGNED, signed_by="SHA256:x"),
                    replace(SIGNED, run_config={}), replace(SIGNED, rounds=None)):
        assert changed.signed_message(CLUSTER, SIGNED.app_sha256) != base
    assert SIGNED.signed_message(CLUSTER, "0" * 64) != base
    assert base.startswith(RunSpec.SIGNED + b"\0")  # never a Flower FAB message (8-byte time)


# -- Flower's trusted-entities file and keys -------------------------------------------------
def test_flowers_trusted_entities_file_is_read_as_it_is() -> None:
    line = signing.public_line(ALICE.public_key(), "alice@laptop")
    trust = signing.parse_trusted_entities(
        f"# flower-supernode --trusted-entities\nfpk_0c7a-11: '{line}'\n"
        f"fpk_other: {signing.public_line(MALLORY.public_key(), '')}\n")
    assert set(trust.keys) == {signing.key_id(ALICE.public_key()),
                               signing.key_id(MALLORY.public_key())}
    assert trust.label(signing.key_id(ALICE.public_key())).startswith("fpk_0c7a-11 (SHA256:")


@pytest.mark.parametrize("text, reason", [
    ("", "expected a mapping"),
    ("- a\n- b\n", "expected a mapping"),
    ("a: [\n", "not YAML"),
    ("a: 3\n", "is not an 'ssh-ed25519 ...' line"),
    ("a: 'ssh-ed25519 AAAAnot-a-key'\n", "is unreadable"),
    ("a: 'ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7'\n", "is unreadable"),
])
def test_a_bad_trusted_entities_file_is_one_line(text: str, reason: str) -> None:
    with pytest.raises(signing.SigningError, match=reason) as err:
        signing.parse_trusted_entities(text, "t.yaml")
    assert "\n" not in str(err.value) and str(err.value).startswith("t.yaml: ")


def test_a_non_ed25519_key_is_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    ecdsa = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    with pytest.raises(signing.SigningError, match="is not Ed25519"):
        signing.parse_trusted_entities(f"a: '{ecdsa}'")


def test_key_pair_files_are_flowers_formats_and_the_private_key_is_0600(tmp_path: Path) -> None:
    private, public, line = signing.new_key_pair("alice", tmp_path / "keys")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    key = signing.load_private_key(private)
    trust = signing.parse_trusted_entities(line)  # the printed line is a trusted-entities file
    assert list(trust.keys) == [signing.key_id(key.public_key())]
    assert public.read_text().split()[:2] == line.split('"')[1].split()[:2]
    with pytest.raises(signing.SigningError, match="exists; pass --force"):
        signing.new_key_pair("alice", tmp_path / "keys")
    assert signing.new_key_pair("alice", tmp_path / "keys", force=True)[0] == private
    assert signing.load_private_key(private) != key


def test_unusable_private_keys_are_one_line(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    (tmp_path / "junk").write_text("junk")
    (tmp_path / "ec").write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    for name, reason in (("junk", "is not an unencrypted private key"),
                         ("ec", "is not an Ed25519 key"), ("missing", "cannot read")):
        with pytest.raises(signing.SigningError, match=reason):
            signing.load_private_key(tmp_path / name)


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen not installed")
def test_ssh_keygen_keys_sign_and_the_key_id_is_its_fingerprint(tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bob", "-f", str(key)],
                   check=True, timeout=30)
    private = signing.load_private_key(key)
    printed = subprocess.run(["ssh-keygen", "-lf", str(key) + ".pub"], capture_output=True,
                             text=True, check=True, timeout=30).stdout.split()[1]
    assert signing.key_id(private.public_key()) == printed
    trust = signing.parse_trusted_entities(f"bob: '{(tmp_path / 'id_ed25519.pub').read_text().strip()}'")
    signed = signing.sign_run(spec_for(), PACKAGE, private, CLUSTER)
    assert signing.verify_run(signed, PACKAGE, trust, CLUSTER) == f"bob ({printed})"


def test_cli_signing_key_writes_the_pair(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "raftfl", "certs", "signing-key", "ops",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE((tmp_path / "ops.key").stat().st_mode) == 0o600
    line = proc.stdout.splitlines()[-1].split(": ", 1)[1]
    assert signing.parse_trusted_entities(line).keys
    again = subprocess.run([sys.executable, "-m", "raftfl", "certs", "signing-key", "ops",
                            "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and len(again.stderr.strip().splitlines()) == 1, again.stderr


# -- where specs live, and who may write them ------------------------------------------------
def test_submissions_have_their_own_prefix() -> None:
    rk = Keys("c").run(12)
    assert rk.spec == "/raftfl/c/submissions/12/spec"
    assert rk.app.checkpoint_chunk("a" * 64, 0) == f"/raftfl/c/submissions/12/app/{'a' * 64}/000000"
    assert rk.checkpoint_meta("a" * 64) == f"/raftfl/c/runs/12/checkpoints/{'a' * 64}/meta"
    assert rk.event(1).startswith("/raftfl/c/runs/12/")
    assert not Keys("c").run(1).spec.startswith(Keys("c").run(12).submission_root)


def _covered(ranges: list[tuple[int, bytes, bytes]], kind: set[int], key: bytes) -> bool:
    return any(k in kind and start <= key < end for k, start, end in ranges)


@pytest.mark.parametrize("key, node_writes, operator_writes", [
    ("runs/1/spec", True, False),  # no longer read by anyone: harmless
    ("submissions/1/spec", False, True),
    (f"submissions/12/app/{'a' * 64}/000000", False, True),
    ("submissions0", True, False),
    ("runs/1/events/000000000001", True, False),
    ("aggregator", True, False),
    ("config", True, False),
    ("members/n1", False, False),  # the node's own role writes it (test_rbac_per_node_ranges.py)
])
def test_rbac_ranges(key: str, node_writes: bool, operator_writes: bool) -> None:
    from etcd3.etcdrpc import auth_pb2

    perms = rbac.permissions("c")
    full = (Keys("c").root + key).encode()
    write = {auth_pb2.Permission.READWRITE}
    anything = {auth_pb2.Permission.READ, auth_pb2.Permission.READWRITE}
    assert _covered(perms[rbac.node_role("c")], write, full) is node_writes
    assert _covered(perms[rbac.operator_role("c")], write, full) is operator_writes
    for role in perms.values():
        assert _covered(role, anything, full)
        assert not _covered(role, anything, b"/raftfl/c0") and not _covered(role, anything, b"/x")
