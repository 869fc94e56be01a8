"""`raftfl node join` against a real 3-member etcd cluster: learner first, promoted once
caught up; a join that fails (locally, or because its member never comes up) leaves the
member list as it was."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

from membership_cluster import HOST, Lab, lab, output, wait_output


def _ids(the_lab: Lab) -> set[tuple[int, bool]]:
    return {(m.id, m.learner) for m in the_lab.members_now()}


def _join_fails(the_lab: Lab, i: int, *extra: str, timeout: float = 60) -> str:
    proc = the_lab.join(i, *extra)
    assert proc.wait(timeout) == 1, output(proc)
    lines = [ln for ln in output(proc).splitlines() if ln.startswith("raftfl: error:")]
    assert len(lines) == 1, output(proc)
    return lines[0]


def test_failed_local_checks_change_nothing(tmp_path: Path) -> None:
    with lab(tmp_path) as the_lab:
        before = _ids(the_lab)
        line = _join_fails(the_lab, 3, "--etcd-bin", str(tmp_path / "no-such-etcd"))
        assert "no-such-etcd" in line and "missing" in line
        with socket.socket() as busy:  # the new node's etcd client port is taken
            busy.bind((HOST, the_lab.base + 3 + 100))
            busy.listen()
            line = _join_fails(the_lab, 3)
        assert "already in use" in line and str(the_lab.base + 103) in line
        assert _ids(the_lab) == before


def test_join_whose_member_never_comes_up_is_rolled_back(tmp_path: Path) -> None:
    fake = tmp_path / "fake-etcd"  # passes the version check, then never serves
    fake.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo 'etcd Version: 3.4.23' && exit 0\n"
                    "exec sleep 600\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    with lab(tmp_path) as the_lab:
        before = _ids(the_lab)
        proc = the_lab.join(3, "--etcd-bin", str(fake), "--join-timeout", "4")
        wait_output(proc, "added learner", 30)
        during = the_lab.members_now()  # a learner: the 3 voters keep their fault tolerance
        assert sum(not m.learner for m in during) == 3 and len(during) == 4
        assert proc.wait(40) == 1, output(proc)
        assert "join rolled back: its etcd member did not come up within 4s" in output(proc)
        assert _ids(the_lab) == before


def test_join_leave_join_of_the_same_address(tmp_path: Path) -> None:
    with lab(tmp_path) as the_lab:
        before = _ids(the_lab)
        first = the_lab.join(3)
        out = wait_output(first, "promoted to voter", 60)
        assert "added learner" in out and "is up after" in out
        members = the_lab.members_now()
        assert len(members) == 4 and not any(m.learner for m in members)

        left = the_lab.leave(3)
        assert left.returncode == 0, left.stderr
        assert f"removed {the_lab.addr(3)} (voter" in left.stdout
        assert first.wait(30) == 0, output(first)  # the removed node stops by itself
        assert "removed from the etcd cluster" in output(first)
        assert _ids(the_lab) == before

        line = _join_fails(the_lab, 3)  # its data dir is of a removed member
        assert "holds etcd data of a removed member" in line and "--fresh" in line
        assert _ids(the_lab) == before

        again = the_lab.join(3, "--fresh", "--max-voters", "3")  # at the target: a learner
        out = wait_output(again, "stays a learner: the cluster has 3 voters", 60)
        assert "cleared the etcd data of a removed member" in out
        members = the_lab.members_now()
        assert sorted(m.learner for m in members) == [False, False, False, True]
        status = the_lab.cli("status", "--endpoints", ",".join(the_lab.endpoints),
                            "--cluster", the_lab.cluster)
        assert status.returncode == 0, status.stderr
        assert ("voters 3/3 healthy, learners 1, clients 0: survives 1 more voter failure"
                in status.stdout), status.stdout
        assert f"{the_lab.addr(3)} " in status.stdout and " learner " in status.stdout
