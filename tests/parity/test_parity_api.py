"""Parity: name in repr and logs, connection(), the pool as a context manager, check(),
get_stats()/pop_stats() with psycopg_pool's keys."""

from __future__ import annotations

import logging

import pytest

from pgpool_compat.engine.stats import COUNTER_KEYS, GAUGE_KEYS
from pgpool_compat.errors import PoolTimeout
from tests.helpers import pid_of, terminate_backends
from tests.parity.faces import Face, faces

pytestmark = pytest.mark.timeout(60)



def ping(conn: object) -> bool:
    with conn.cursor() as cursor:  # type: ignore[attr-defined]
        cursor.execute("SELECT 1")
        return bool(cursor.fetchone()[0] == 1)


@faces()
def test_repr_names_the_pool(face: Face) -> None:
    pool = face.pool(1, 2, name="orders")
    assert pool.name == "orders"
    assert "orders" in repr(pool.raw)
    pool.close()
    assert "orders" in repr(pool.raw), "a closed pool keeps its name"


@faces()
def test_every_log_line_of_a_timeout_names_the_pool(
    face: Face, caplog: pytest.LogCaptureFixture
) -> None:
    pool = face.pool(1, 1, name="billing", timeout=0.05)
    held = pool.get()
    with caplog.at_level(logging.DEBUG, logger="pgpool_compat"), pytest.raises(PoolTimeout):
        pool.get()
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("pgpool_compat")]
    assert lines, "a checkout timeout is logged"
    assert all("billing" in line for line in lines), lines
    pool.put(held)


@faces()
def test_connection_block_gives_the_connection_back(face: Face) -> None:
    pool = face.pool(1, 1, timeout=1)
    with pool.connection() as conn:
        assert pool.stats()["pool_available"] == 0
        first = conn
    assert pool.stats()["pool_available"] == 1
    with pool.connection() as conn:
        assert conn is first, "the same connection comes back: it was returned, not closed"
    with pytest.raises(ZeroDivisionError), pool.connection():
        1 / 0  # noqa: B018
    assert pool.stats()["pool_available"] == 1, "an error in the block still returns it"


@faces()
def test_pool_as_context_manager_closes_everything(face: Face) -> None:
    pool = face.pool(1, 2)
    with pool.as_context() as entered:
        assert entered is pool.raw
        borrowed = pool.get()
    assert pool.closed
    assert borrowed.closed, "a connection still borrowed is closed with the pool"
    assert not pool.log.open()


@faces()
def test_stats_have_psycopg_pools_keys_and_pop_zeroes_the_counters(face: Face) -> None:
    pool = face.pool(1, 3)
    conn = pool.get()
    pool.put(conn)
    stats = pool.stats()
    assert set(stats) == set(GAUGE_KEYS) | set(COUNTER_KEYS)
    assert all(isinstance(value, int) for value in stats.values())
    assert stats["pool_min"] == 1 and stats["pool_max"] == 3
    assert stats["pool_size"] == 1 and stats["pool_available"] == 1
    assert stats["requests_num"] == 1
    assert stats["connections_num"] == 1
    popped = pool.pop_stats()
    assert popped["requests_num"] == 1
    after = pool.stats()
    assert all(after[key] == 0 for key in COUNTER_KEYS), after
    assert after["pool_size"] == 1 and after["pool_max"] == 3, "gauges survive pop_stats()"


@faces()
def test_check_drops_dead_idle_connections_and_counts_them(face: Face) -> None:
    pool = face.pool(2, 2, check=ping)
    first, second = pool.get(), pool.get()
    pool.put(first)
    pool.put(second)
    terminate_backends(face.dsn, [pid_of(first)])
    assert pool.check() == 1
    assert first.closed
    stats = pool.stats()
    assert stats["pool_available"] == 1 and stats["connections_lost"] == 1
    assert pool.get() is second
