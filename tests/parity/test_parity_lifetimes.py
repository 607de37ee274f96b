"""Parity: ``max_idle`` (never below the minimum) and ``max_lifetime`` with jitter, applied
on the pool's own calls (the keeper's part is in test_parity_keeper.py)."""

from __future__ import annotations

import time
from typing import Dict

import pytest

from tests.parity.faces import Face, faces

pytestmark = pytest.mark.timeout(60)

#: Lazy upkeep on the hot path runs at most once a second: wait past it.
UPKEEP_PASS = 1.2


@faces()
def test_max_idle_closes_idle_connections_but_keeps_the_minimum(face: Face) -> None:
    pool = face.pool(1, 3, max_idle=0.3)
    borrowed = [pool.get() for _ in range(3)]
    for conn in borrowed:
        pool.put(conn)
    assert pool.stats()["pool_size"] == 3, "returned connections stay up to the maximum"
    time.sleep(UPKEEP_PASS)
    pool.put(pool.get())
    assert pool.stats()["pool_size"] == 1
    assert len(pool.log.closed()) == 2
    assert len(pool.log.made) == 3, "the minimum was kept, not closed and reopened"


@faces()
def test_max_lifetime_retires_connections_never_late_and_jittered(face: Face) -> None:
    lifetime, count = 1.5, 8
    # min = max: the psycopg2 face keeps only minconn idle (its stock cap).
    born = time.monotonic()  # no connection is older than this
    pool = face.pool(count, count, max_lifetime=lifetime)
    originals = [pool.get() for _ in range(count)]
    for conn in originals:
        pool.put(conn)
    retired_at: Dict[int, float] = {}
    while len(retired_at) < count and time.monotonic() - born < lifetime * 2:
        borrowed = [pool.get() for _ in range(count)]
        now = time.monotonic() - born
        for conn in borrowed:
            pool.put(conn)
        for index, conn in enumerate(originals):
            if index not in retired_at and conn not in borrowed:
                retired_at[index] = now
        time.sleep(0.02)
    assert len(retired_at) == count, "every connection is retired after max_lifetime"
    times = sorted(retired_at.values())
    assert times[0] >= lifetime * 0.9, "none is retired before 90% of its lifetime"
    assert times[-1] <= lifetime + 0.5, "none is handed out long past its lifetime"
    assert times[-1] - times[0] >= 0.02, f"jitter spreads the retirements: {times}"
    assert all(conn.closed for conn in originals)
