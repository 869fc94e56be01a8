"""`scripts/setup.sh` puts back whatever policy-rc.d it replaced, also when apt fails or the
script is interrupted (issue 7, defect 13).

The script runs against fakes: a copy in a scratch tree, `id` saying root, an `apt-get` that
records what policy-rc.d held during the install and then fails or succeeds, and the
policy-rc.d path moved into the scratch dir with RAFTFL_POLICY_RC. The real system is not
touched: nothing here runs apt or writes /usr/sbin.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
POLICY = "#!/bin/sh\nexit 101\n"


def _fake(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup.sh", repo / "scripts" / "setup.sh")
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    _fake(fakebin / "id", 'echo 0\n')
    _fake(fakebin / "systemctl", 'echo "$@" >> "$SANDBOX/systemctl.log"\n')
    _fake(fakebin / "python-fake", "exit 1\n")  # the venv step after apt: stop there
    _fake(fakebin / "apt-get", """\
case "$1" in
  update) exit 0 ;;
  install)
    case "$*" in *etcd-server*) ;; *) exit 0 ;; esac  # other packages: not under test
    cat "$RAFTFL_POLICY_RC" > "$SANDBOX/policy-during-install" 2>/dev/null
    [ -n "$FAKE_APT_SLEEP" ] && sleep "$FAKE_APT_SLEEP"
    exit "$FAKE_APT_RC" ;;
esac
exit 2
""")
    (tmp_path / "sbin").mkdir()
    return tmp_path


def _run(sandbox: Path, apt_rc: int, sleep: str = "") -> subprocess.Popen[str]:
    env = {"PATH": f"{sandbox / 'bin'}:/usr/bin:/bin", "HOME": str(sandbox), "SANDBOX": str(sandbox),
           "RAFTFL_POLICY_RC": str(sandbox / "sbin" / "policy-rc.d"),
           "RAFTFL_ETCD_BIN": str(sandbox / "no-such-etcd"),  # so the install branch runs
           "PYTHON": str(sandbox / "bin" / "python-fake"),
           "FAKE_APT_RC": str(apt_rc), "FAKE_APT_SLEEP": sleep}
    return subprocess.Popen(["bash", str(sandbox / "repo" / "scripts" / "setup.sh")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out


def _setup_original(sandbox: Path, kind: str) -> Path:
    policy = sandbox / "sbin" / "policy-rc.d"
    if kind == "file":
        policy.write_text("#!/bin/sh\n# the admin's own policy\nexit 0\n")
        policy.chmod(0o750)
    elif kind == "symlink":
        target = sandbox / "admin-policy"
        target.write_text("#!/bin/sh\nexit 0\n")
        policy.symlink_to(target)
    return policy


def _snapshot(policy: Path) -> tuple[str, str | None, int | None]:
    if policy.is_symlink():
        return ("symlink", os.readlink(policy), None)
    if policy.exists():
        return ("file", policy.read_text(), policy.stat().st_mode)
    return ("absent", None, None)


@pytest.mark.parametrize("original", ["file", "symlink", "absent"])
@pytest.mark.parametrize("apt_rc", [100, 0])
def test_policy_rc_is_restored_whatever_apt_does(sandbox: Path, original: str, apt_rc: int) -> None:
    policy = _setup_original(sandbox, original)
    before = _snapshot(policy)
    target_before = (sandbox / "admin-policy").read_text() if original == "symlink" else None

    code, out = _finish(_run(sandbox, apt_rc))

    assert code != 0, out  # apt failed, or (apt ok) the fake python stopped the venv step
    assert (sandbox / "policy-during-install").read_text() == POLICY, out  # ours was in place
    assert _snapshot(policy) == before, out
    if target_before is not None:  # the symlink's target was never written through
        assert (sandbox / "admin-policy").read_text() == target_before
    leftovers = sorted(p.name for p in (sandbox / "sbin").iterdir())
    assert leftovers == ([] if original == "absent" else ["policy-rc.d"]), leftovers


def test_policy_rc_is_restored_when_interrupted(sandbox: Path) -> None:
    policy = _setup_original(sandbox, "file")
    before = _snapshot(policy)
    proc = _run(sandbox, apt_rc=0, sleep="30")
    deadline = time.monotonic() + 20
    while not (sandbox / "policy-during-install").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert policy.read_text() == POLICY  # apt is running with our policy in place
    os.killpg(proc.pid, signal.SIGTERM)  # as a terminal's Ctrl-C reaches the whole group
    code, out = _finish(proc)
    assert code == 143, out
    assert _snapshot(policy) == before, out
