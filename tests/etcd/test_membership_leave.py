"""`raftfl node leave` against a real etcd cluster: a leave that would lose the quorum is
refused and changes nothing; one that keeps it removes the member."""

from __future__ import annotations

from pathlib import Path

from membership_cluster import lab


def test_leave_that_would_lose_quorum_is_refused(tmp_path: Path) -> None:
    with lab(tmp_path) as the_lab:
        the_lab.members[2].proc.kill()  # type: ignore[union-attr] - our own member, by PID
        the_lab.members[2].proc.wait()  # type: ignore[union-attr]
        before = {m.id for m in the_lab.members_now()}

        refused = the_lab.leave(1)  # 1 healthy of 2 voters left: below the quorum of 2
        assert refused.returncode == 1
        assert refused.stderr.strip().splitlines() == [
            f"raftfl: error: leave refused: removing {the_lab.addr(1)} leaves 1 healthy of 2 "
            "voters, below the quorum of 2: repair or restart a voter first"]
        assert {m.id for m in the_lab.members_now()} == before

        dead = the_lab.leave(2)  # the dead voter may go: 2 healthy of 2 remain
        assert dead.returncode == 0, dead.stderr
        assert f"removed {the_lab.addr(2)} (voter" in dead.stdout
        assert "2 voters remain" in dead.stdout
        assert len(the_lab.members_now()) == 2

        last = the_lab.leave(5)
        assert last.returncode == 1
        assert f"{the_lab.addr(5)} is not a member" in last.stderr
