"""`raftfl bench durable` measures what it says: a snapshot holds FedAdam's three arrays
whatever the workers, durable execution a reply per worker per round."""

from __future__ import annotations

from raftfl.lab.bench_durable import measure


def test_the_two_designs_store_what_they_keep() -> None:
    params = 5000
    for workers in (2, 6):
        snapshot, journal = measure(params, workers, rounds=2)
        assert snapshot["design"].startswith("(b)") and journal["design"].startswith("(a)")
        # FedAdam keeps the model, m_t and v_t (float64 from round 2): 3 x 8 bytes a parameter
        assert 3 * 8 * params <= snapshot["bytes_per_round"] < 3 * 8 * params + 64_000
        # every reply's arrays (float32 in round 1, float64 in round 2): 4..8 bytes a parameter
        assert workers * 4 * params <= journal["bytes_per_round"] <= workers * 9 * params
        assert snapshot["failover_ms"] > 0 and journal["failover_ms"] > 0
