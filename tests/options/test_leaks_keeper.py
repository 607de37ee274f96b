"""``pool_leak_timeout`` (a WARNING with the stack where the connection was checked out) and
``pool_background`` (the keeper thread: refill to minconn, drop expired idle connections, stop
with ``closeall``). The refill after a server restart is in tests/faults/test_restart.py.

The keeper wakes once a second and lazy housekeeping runs at most once a second, so these
tests wait a little over that; every wait is bounded.
"""

from __future__ import annotations

import gc
import logging
import re
import threading
import time
import uuid
from typing import Any, List, Optional

import pytest

import pgpool_compat
from tests.faults.support import wait_until
from tests.helpers import sessions_named, threaded

pytestmark = pytest.mark.timeout(60)

KEEPER_PASS = 1.0  # the keeper's interval, and lazy housekeeping's


@pytest.fixture
def app_name() -> str:
    return f"keeper-{uuid.uuid4().hex[:12]}"


def leak_warnings(caplog: pytest.LogCaptureFixture, pool_name: str) -> List[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.WARNING
        and "longer than the leak timeout" in record.getMessage()
        and record.getMessage().startswith(f"{pool_name}: ")
    ]


def innermost_frame(stack_text: str) -> str:
    """The function named by the last ``File ..., line N, in NAME`` line of a stack."""
    names = re.findall(r'File ".*", line \d+, in (\S+)', stack_text)
    assert names, stack_text
    return names[-1]


def keeper_of(pool_name: str) -> Optional[threading.Thread]:
    wanted = f"pgpool_compat-keeper-{pool_name}"
    return next((t for t in threading.enumerate() if t.name == wanted), None)


# -- pool_leak_timeout ------------------------------------------------------------------------


def test_leak_warning_carries_the_checkout_stack(
    pg_dsn: str, pools: List[Any], caplog: pytest.LogCaptureFixture
) -> None:
    leaky = threaded(pools, 1, 2, pg_dsn, pool_leak_timeout=0.2, pool_name="leaky")
    prompt = threaded(pools, 1, 2, pg_dsn, pool_leak_timeout=0.2, pool_name="prompt")
    unwatched = threaded(pools, 1, 2, pg_dsn, pool_name="unwatched")  # the option off
    with caplog.at_level(logging.WARNING, logger="pgpool_compat"):
        held = leaky.getconn()
        held_unwatched = unwatched.getconn()
        prompt.putconn(prompt.getconn())  # returned in time: not a leak
        time.sleep(KEEPER_PASS + 0.1)
        for pool in (leaky, prompt, unwatched):  # any checkout runs the lazy housekeeping
            pool.putconn(pool.getconn())
    warnings = leak_warnings(caplog, "leaky")
    assert len(warnings) == 1, caplog.text
    message = warnings[0]
    assert "test_leak_warning_carries_the_checkout_stack" in message
    assert "held = leaky.getconn()" in message  # the very line that checked it out
    assert leak_warnings(caplog, "prompt") == []
    assert leak_warnings(caplog, "unwatched") == []
    leaky.putconn(held)
    unwatched.putconn(held_unwatched)


@pytest.mark.parametrize("cls", ["ThreadedConnectionPool", "SimpleConnectionPool"])
def test_leak_stack_ends_in_the_callers_code(
    cls: str, pg_dsn: str, pools: List[Any], caplog: pytest.LogCaptureFixture
) -> None:
    # records.capture_stack drops the pool's own frames: the last frame shown is the caller's.
    pool = getattr(pgpool_compat, cls)(1, 2, pg_dsn, pool_leak_timeout=0.1,
                                       pool_name=f"ends-{cls}")
    pools.append(pool)
    with caplog.at_level(logging.WARNING, logger="pgpool_compat"):
        held = _borrow_and_forget(pool)
        time.sleep(KEEPER_PASS + 0.1)
        pool.putconn(pool.getconn())  # runs the lazy housekeeping
    warnings = leak_warnings(caplog, f"ends-{cls}")
    assert len(warnings) == 1, caplog.text
    assert innermost_frame(warnings[0]) == "_borrow_and_forget", warnings[0]
    assert "pgpool_compat/pool.py" not in warnings[0]
    pool.putconn(held)


def _borrow_and_forget(pool: Any) -> Any:
    return pool.getconn()


def test_keeper_reports_a_leak_once_with_nobody_calling_the_pool(
    pg_dsn: str, pools: List[Any], caplog: pytest.LogCaptureFixture
) -> None:
    pool = threaded(pools, 1, 2, pg_dsn, pool_leak_timeout=0.2, pool_background=True,
                    pool_name="leaky-keeper")
    with caplog.at_level(logging.WARNING, logger="pgpool_compat"):
        conn = _borrow_and_forget(pool)
        assert wait_until(lambda: bool(leak_warnings(caplog, "leaky-keeper")), 3, 0.05)
        time.sleep(KEEPER_PASS + 0.2)  # at least one more keeper pass: no second warning
    warnings = leak_warnings(caplog, "leaky-keeper")
    assert len(warnings) == 1, caplog.text
    assert "in _borrow_and_forget" in warnings[0]
    assert "test_keeper_reports_a_leak_once_with_nobody_calling_the_pool" in warnings[0]
    pool.putconn(conn)


def _wait_and_keep(pool: Any, got: List[Any]) -> None:
    got.append(pool.getconn())  # queued: the connection arrives through the hand-off


@pytest.mark.parametrize("close", [False, True], ids=["returned", "slot-freed"])
def test_leak_stack_of_a_connection_handed_to_a_waiter_is_the_waiters(
    close: bool, pg_dsn: str, pools: List[Any], caplog: pytest.LogCaptureFixture
) -> None:
    pool = threaded(pools, 1, 1, pg_dsn, pool_timeout=10, pool_leak_timeout=0.2,
                    pool_background=True, pool_name="handed-leak")  # the keeper reports
    held = pool.getconn()
    got: List[Any] = []
    waiter = threading.Thread(target=_wait_and_keep, args=(pool, got), daemon=True)
    waiter.start()
    assert wait_until(lambda: pool.get_stats()["requests_waiting"] == 1, 5, 0.005)
    # Straight to the waiter (the connection, or its slot to connect in), who then keeps it
    # too long.
    pool.putconn(held, close=close)
    waiter.join(5)
    assert len(got) == 1 and (got[0] is held) is not close
    with caplog.at_level(logging.WARNING, logger="pgpool_compat"):
        assert wait_until(lambda: bool(leak_warnings(caplog, "handed-leak")), 3, 0.05)
    warnings = leak_warnings(caplog, "handed-leak")
    assert len(warnings) == 1, caplog.text
    # Where the borrower asked for it, not where another thread happened to return it.
    assert "in _wait_and_keep" in warnings[0], warnings[0]
    assert "in test_leak_stack_of_a_connection_handed" not in warnings[0]
    pool.putconn(got[0])


# -- pool_background --------------------------------------------------------------------------


@pytest.mark.own_session
def test_keeper_refills_minconn_after_connections_are_closed(
    pg_dsn: str, pools: List[Any], admin_conn: Any
) -> None:
    names = {flag: f"refill-{flag}-{uuid.uuid4().hex[:8]}" for flag in (True, False)}
    kept = {flag: threaded(pools, 2, 4, pg_dsn, application_name=names[flag],
                           pool_background=flag) for flag in (True, False)}
    for pool in kept.values():
        for conn in [pool.getconn(), pool.getconn()]:
            pool.putconn(conn, close=True)
        assert pool.get_stats()["pool_size"] == 0
    started = time.monotonic()
    # Nobody calls getconn: only the keeper can reopen them.
    assert wait_until(lambda: kept[True].get_stats()["pool_available"] == 2, 3, 0.05)
    assert wait_until(lambda: sessions_named(admin_conn, names[True]) == 2, 3)
    time.sleep(max(0.0, KEEPER_PASS + 0.2 - (time.monotonic() - started)))
    assert kept[False].get_stats()["pool_size"] == 0  # without the option: nothing
    assert sessions_named(admin_conn, names[False]) == 0
    conns = [kept[True].getconn() for _ in range(2)]
    assert kept[True].get_stats()["connections_num"] == 4  # handed out, not opened again
    for conn in conns:
        kept[True].putconn(conn)


@pytest.mark.parametrize("background", [True, False])
def test_keeper_replaces_expired_idle_connections(
    background: bool, pg_dsn: str, pools: List[Any]
) -> None:
    pool = threaded(pools, 2, 2, pg_dsn, pool_max_lifetime=0.4, pool_background=background)
    originals = list(pool._pool)

    def replaced() -> bool:
        with pool._lock:
            idle = list(pool._pool)
        return len(idle) == 2 and not set(map(id, idle)) & set(map(id, originals))

    if background:
        assert wait_until(replaced, 3, 0.05)
        assert all(conn.closed for conn in originals)
    else:  # lazy only: with nobody calling, the expired ones sit there
        time.sleep(KEEPER_PASS + 0.2)
        assert pool._pool == originals and not any(conn.closed for conn in originals)


@pytest.mark.own_session
def test_keeper_closes_connections_idle_too_long_down_to_minconn(
    pg_dsn: str, pools: List[Any], admin_conn: Any, app_name: str
) -> None:
    pool = threaded(pools, 1, 3, pg_dsn, application_name=app_name, pool_max_idle=0.3,
                    pool_background=True)
    conns = [pool.getconn() for _ in range(3)]
    for conn in conns:
        pool.putconn(conn)
    assert pool.get_stats()["pool_available"] == 3
    assert wait_until(lambda: pool.get_stats()["pool_size"] == 1, 3, 0.05)
    assert sum(not conn.closed for conn in conns) == 1
    assert wait_until(lambda: sessions_named(admin_conn, app_name) == 1, 3)


def test_keeper_thread_stops_with_closeall(pg_dsn: str) -> None:
    name = f"stops-{uuid.uuid4().hex[:8]}"
    pool = pgpool_compat.ThreadedConnectionPool(1, 2, pg_dsn, pool_background=True,
                                                pool_name=name)
    keeper = keeper_of(name)
    assert keeper is not None and keeper.is_alive() and keeper.daemon
    started = time.monotonic()
    pool.closeall()
    assert time.monotonic() - started < 2.0  # not left to sleep out its interval
    assert not keeper.is_alive()
    assert keeper_of(name) is None


def test_no_keeper_thread_without_the_option(pg_dsn: str, pools: List[Any]) -> None:
    before = {t.ident for t in threading.enumerate()}
    name = f"nokeeper-{uuid.uuid4().hex[:8]}"
    pool = threaded(pools, 2, 2, pg_dsn, pool_name=name, pool_max_lifetime=30,
                    pool_max_idle=30, pool_leak_timeout=30)
    pool.putconn(pool.getconn())
    assert keeper_of(name) is None
    started = {t.ident for t in threading.enumerate()} - before
    assert not [t.name for t in threading.enumerate() if t.ident in started
                and t.name.startswith("pgpool_compat-keeper")]


def test_keeper_does_not_keep_an_abandoned_pool_alive(pg_dsn: str) -> None:
    name = f"abandoned-{uuid.uuid4().hex[:8]}"
    pool = pgpool_compat.ThreadedConnectionPool(1, 1, pg_dsn, pool_background=True,
                                                pool_name=name)
    keeper = keeper_of(name)
    assert keeper is not None
    del pool
    gc.collect()
    keeper.join(KEEPER_PASS + 2)
    assert not keeper.is_alive()
