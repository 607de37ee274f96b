"""How long connections live and which idle one is reused: ``pool_max_lifetime`` (with its
jitter), ``pool_max_idle`` and ``pool_lifo``. Each behaviour is shown absent without its option.

Backends are counted by ``application_name``, unique per test, so other tests' connections on
the shared server never disturb the counts.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, List

import pytest

from tests.faults.support import wait_until
from tests.helpers import select_one, sessions_named, threaded

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def app_name() -> str:
    return f"lifecycle-{uuid.uuid4().hex[:12]}"


def settles_at(admin_conn: Any, app_name: str, expected: int) -> bool:
    """Backends exit asynchronously after a close: wait (bounded) for the count."""
    return wait_until(lambda: sessions_named(admin_conn, app_name) == expected, 5)


# -- pool_max_lifetime ------------------------------------------------------------------------


@pytest.mark.parametrize("lifetime", [None, 0.3])
def test_expired_idle_connection_is_never_handed_out(
    lifetime: Any, pg_dsn: str, pools: List[Any], admin_conn: Any, app_name: str
) -> None:
    pool = threaded(pools, 1, 2, pg_dsn, application_name=app_name, pool_max_lifetime=lifetime)
    first = pool.getconn()
    pool.putconn(first)
    time.sleep(0.35)
    again = pool.getconn()
    if lifetime is None:  # the control: without a lifetime the same connection comes back
        assert again is first
        return
    assert again is not first
    assert first.closed
    assert select_one(again) == 1
    assert settles_at(admin_conn, app_name, 1)
    pool.putconn(again)


@pytest.mark.parametrize("lifetime", [None, 0.3])
def test_expired_connection_is_closed_on_return(
    lifetime: Any, pg_dsn: str, pools: List[Any], admin_conn: Any, app_name: str
) -> None:
    pool = threaded(pools, 1, 2, pg_dsn, application_name=app_name, pool_max_lifetime=lifetime)
    conn = pool.getconn()
    time.sleep(0.35)
    pool.putconn(conn)
    if lifetime is None:
        assert not conn.closed and pool.get_stats()["pool_available"] == 1
        return
    assert conn.closed
    stats = pool.get_stats()
    assert stats["pool_size"] == 0 and stats["returns_bad"] == 0  # expiry is not a failure
    assert settles_at(admin_conn, app_name, 0)
    fresh = pool.getconn()  # the slot is free again
    assert fresh is not conn and select_one(fresh) == 1
    pool.putconn(fresh)


def test_lifetimes_are_jittered_by_up_to_ten_percent(pg_dsn: str, pools: List[Any]) -> None:
    lifetime, count = 0.6, 10
    pool = threaded(pools, count, count, pg_dsn, pool_max_lifetime=lifetime)
    originals = {id(conn) for conn in pool._pool}
    records = [pool._records[id(conn)] for conn in pool._pool]
    spans = [record.expires_at - record.created_at for record in records]
    assert all(lifetime * 0.9 - 1e-9 <= span <= lifetime for span in spans), spans
    assert max(spans) - min(spans) > 0.01, spans  # spread, not one deadline for all

    # Behaviour: shortly before 90% of the lifetime every one is still handed out...
    first_expiry = min(record.expires_at for record in records)
    time.sleep(max(0.0, min(r.created_at for r in records) + lifetime * 0.9 - 0.1
                   - time.monotonic()))
    assert time.monotonic() < first_expiry - 0.03, "setup too slow to test the early side"
    early = [pool.getconn() for _ in range(count)]
    assert {id(conn) for conn in early} == originals
    for conn in early:
        pool.putconn(conn)
    # ...and after the full lifetime none is.
    time.sleep(max(0.0, max(r.expires_at for r in records) + 0.05 - time.monotonic()))
    late = [pool.getconn() for _ in range(count)]
    assert not {id(conn) for conn in late} & originals
    assert all(conn.closed for conn in early)
    for conn in late:
        pool.putconn(conn)


# -- pool_max_idle ----------------------------------------------------------------------------


@pytest.mark.own_session
@pytest.mark.parametrize("max_idle", [None, 10])
def test_max_idle_keeps_returned_connections_up_to_maxconn(
    max_idle: Any, pg_dsn: str, pools: List[Any], admin_conn: Any, app_name: str
) -> None:
    pool = threaded(pools, 1, 4, pg_dsn, application_name=app_name, pool_max_idle=max_idle)
    conns = [pool.getconn() for _ in range(4)]
    for conn in conns:
        pool.putconn(conn)
    kept = 1 if max_idle is None else 4  # psycopg2.pool closes those above minconn
    assert sum(not conn.closed for conn in conns) == kept
    assert pool.get_stats()["pool_available"] == kept
    assert settles_at(admin_conn, app_name, kept)
    again = [pool.getconn() for _ in range(4)]
    assert pool.get_stats()["connections_num"] == 4 + (4 - kept)  # reconnects only without
    for conn in again:
        pool.putconn(conn)


@pytest.mark.own_session
def test_max_idle_closes_long_idle_connections_on_checkout_never_below_minconn(
    pg_dsn: str, pools: List[Any], admin_conn: Any, app_name: str
) -> None:
    pool = threaded(pools, 2, 4, pg_dsn, application_name=app_name, pool_max_idle=0.3)
    conns = [pool.getconn() for _ in range(4)]
    for conn in conns:
        pool.putconn(conn)
    time.sleep(0.1)  # idle, but not too long: nothing is closed
    again = pool.getconn()
    assert again is conns[-1] and not any(conn.closed for conn in conns)
    pool.putconn(again)

    time.sleep(0.4)
    survivor = pool.getconn()
    assert select_one(survivor) == 1
    assert sum(not conn.closed for conn in conns) == 2  # minconn stays open
    assert pool.get_stats()["pool_size"] == 2
    assert settles_at(admin_conn, app_name, 2)
    pool.putconn(survivor)


@pytest.mark.own_session
def test_max_idle_expiry_also_runs_on_return(
    pg_dsn: str, pools: List[Any], admin_conn: Any, app_name: str
) -> None:
    pool = threaded(pools, 1, 4, pg_dsn, application_name=app_name, pool_max_idle=0.3)
    conns = [pool.getconn() for _ in range(4)]
    for conn in conns[:3]:
        pool.putconn(conn)
    time.sleep(1.1)  # past max_idle, and past the lazy housekeeping interval (1 s)
    pool.putconn(conns[3])  # nobody checks out: the return itself expires the idle ones
    assert [conn.closed for conn in conns] == [True, True, True, False]
    assert pool.get_stats()["pool_size"] == 1
    assert settles_at(admin_conn, app_name, 1)


def test_max_idle_with_minconn_zero_closes_every_idle_connection(
    pg_dsn: str, pools: List[Any]
) -> None:
    pool = threaded(pools, 0, 3, pg_dsn, pool_max_idle=0.2)
    conns = [pool.getconn() for _ in range(3)]
    for conn in conns:
        pool.putconn(conn)
    time.sleep(0.3)
    fresh = pool.getconn()
    assert fresh not in conns and all(conn.closed for conn in conns)
    assert pool.get_stats()["pool_size"] == 1
    pool.putconn(fresh)


# -- pool_lifo --------------------------------------------------------------------------------


@pytest.mark.parametrize("lifo", [True, False])
def test_lifo_decides_which_idle_connection_is_reused(
    lifo: bool, pg_dsn: str, pools: List[Any]
) -> None:
    pool = threaded(pools, 3, 3, pg_dsn, pool_lifo=lifo)
    conns = [pool.getconn() for _ in range(3)]
    for conn in conns:  # returned in this order: conns[0] has been idle longest
        pool.putconn(conn)
    cycle = []
    for _ in range(3):
        conn = pool.getconn()
        cycle.append(conn)
        pool.putconn(conn)
    if lifo:  # the most recently returned, every time (psycopg2.pool's order)
        assert cycle == [conns[2]] * 3
    else:  # the longest idle, so every connection takes its turn
        assert cycle == conns
