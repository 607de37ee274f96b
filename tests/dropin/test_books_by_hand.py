"""Code that writes psycopg2.pool's attributes and books by hand, or patches its hooks.

Each test runs on psycopg2.pool and on pgpool_compat: the stock run shows what such code
expects. Found by an adversarial porting trial; each failed on pgpool_compat before its fix.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any, ClassVar, List, Optional
from unittest import mock

import psycopg2
import psycopg2.extensions
import psycopg2.pool
import pytest

import pgpool_compat
from tests.helpers import select_one, sessions_named

pytestmark = pytest.mark.timeout(60)

IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE


@pytest.fixture(params=[psycopg2.pool, pgpool_compat], ids=["stock", "ours"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    module: ModuleType = request.param
    return module


@pytest.fixture
def pools() -> Iterator[List[Any]]:
    made: List[Any] = []
    yield made
    for pool in made:
        if not pool.closed:
            pool.closeall()


def threaded(
    impl: ModuleType, pools: List[Any], *args: Any, cls: Any = None, **options: Any
) -> Any:
    pool = (cls or impl.ThreadedConnectionPool)(*args, **options)
    pools.append(pool)
    return pool


def closed_check_pool(impl: ModuleType) -> Any:
    """A subclass seen in the wild: psycopg2.pool's own ``_getconn``, skipping closed
    connections (it pops ``_pool`` and books ``_used`` / ``_rused`` itself)."""

    class SkipClosed(impl.ThreadedConnectionPool):  # type: ignore[name-defined,misc]
        def _getconn(self, key: Optional[Any] = None) -> Any:
            if self.closed:
                raise psycopg2.pool.PoolError("connection pool is closed")
            if key is None:
                key = self._getkey()
            if key in self._used:
                return self._used[key]
            while self._pool:
                conn = self._pool.pop()
                if conn.closed:
                    continue
                self._used[key] = conn
                self._rused[id(conn)] = key
                return conn
            if len(self._used) == self.maxconn:
                raise psycopg2.pool.PoolError("connection pool exhausted")
            return self._connect(key)

    return SkipClosed


def test_getconn_override_doing_its_own_books(
    impl: ModuleType, pools: List[Any], pg_dsn: str
) -> None:
    name = f"books-override-{impl.__name__}"
    pool = threaded(impl, pools, 1, 1, pg_dsn + f" application_name={name}",
                    cls=closed_check_pool(impl))  # fmt: skip
    for _ in range(4):
        conn = pool.getconn()
        assert select_one(conn) == 1
        pool.putconn(conn)
    assert (len(pool._pool), len(pool._used)) == (1, 0)
    with psycopg2.connect(pg_dsn) as admin:
        assert sessions_named(admin, name) == 1  # never more than maxconn
    admin.close()
    pool._pool[0].close()  # the override drops it: the slot must come back
    conn = pool.getconn()
    assert not conn.closed and select_one(conn) == 1
    pool.putconn(conn)


def test_dead_connection_removed_from_pool_by_hand(
    impl: ModuleType, pools: List[Any], pg_dsn: str
) -> None:
    pool = threaded(impl, pools, 1, 1, pg_dsn)
    dead = pool._pool[0]
    dead.close()
    pool._pool.remove(dead)  # a health task pruning the idle list
    conn = pool.getconn()
    assert conn is not dead and select_one(conn) == 1
    pool.putconn(conn)


def test_leaked_connection_unbooked_by_hand(
    impl: ModuleType, pools: List[Any], pg_dsn: str
) -> None:
    pool = threaded(impl, pools, 0, 1, pg_dsn)
    leaked = pool.getconn()
    del pool._used[pool._rused.pop(id(leaked))]  # a leak handler taking the slot back
    leaked.close()
    conn = pool.getconn()
    assert conn is not leaked and select_one(conn) == 1
    pool.putconn(conn)


def test_putconn_override_closing_by_itself(
    impl: ModuleType, pools: List[Any], pg_dsn: str
) -> None:
    class OwnReturns(impl.ThreadedConnectionPool):  # type: ignore[name-defined,misc]
        def _putconn(self, conn: Any, key: Any = None, close: bool = False) -> None:
            key = self._rused.get(id(conn)) if key is None else key
            if close or conn.closed:
                conn.close()
            else:
                if conn.info.transaction_status != IDLE:
                    conn.rollback()
                self._pool.append(conn)
            del self._used[key]
            del self._rused[id(conn)]

    pool = threaded(impl, pools, 0, 1, pg_dsn, cls=OwnReturns)
    pool.putconn(pool.getconn(), close=True)
    kept = pool.getconn()
    pool.putconn(kept)
    assert pool.getconn() is kept


def test_rebinding_the_books(impl: ModuleType, pools: List[Any], pg_dsn: str) -> None:
    pool = threaded(impl, pools, 2, 2, pg_dsn)
    pool._pool = [conn for conn in pool._pool if not conn.closed]
    first, second = pool.getconn(), pool.getconn()
    assert pool._pool == []
    pool.putconn(first)
    pool.putconn(second)
    assert len(pool._pool) == 2 and pool._used == {} and pool._rused == {}


def test_appended_connection_is_handed_out_and_kept(
    impl: ModuleType, pools: List[Any], pg_dsn: str
) -> None:
    pool = threaded(impl, pools, 2, 3, pg_dsn)
    held = [pool.getconn(), pool.getconn()]
    raw = psycopg2.connect(pg_dsn)
    try:
        pool._pool.append(raw)  # a connection made elsewhere, adopted
        assert pool.getconn() is raw
        raw.cursor().execute("SELECT 1")  # left in a transaction: rolled back on return
        pool.putconn(held.pop())
        pool.putconn(raw)  # kept: fewer than minconn idle
        assert pool.getconn() is raw
        assert raw.info.transaction_status == IDLE
        pool.putconn(raw)
        pool.putconn(held.pop())
    finally:
        pool.closeall()
        raw.close()


def test_closeall_override_setting_closed(impl: ModuleType, pools: List[Any], pg_dsn: str) -> None:
    class Audited(impl.ThreadedConnectionPool):  # type: ignore[name-defined,misc]
        def _closeall(self) -> None:  # psycopg2.pool's own body
            if self.closed:
                raise psycopg2.pool.PoolError("connection pool is closed")
            for conn in self._pool + list(self._used.values()):
                conn.close()
            self.closed = True

    pool = threaded(impl, pools, 1, 2, pg_dsn, cls=Audited)
    borrowed = pool.getconn()
    pool.closeall()
    assert pool.closed and borrowed.closed
    with pytest.raises(psycopg2.pool.PoolError, match="connection pool is closed"):
        pool.getconn()


def test_reopening_a_closed_pool_is_refused() -> None:
    pool = pgpool_compat.ThreadedConnectionPool(0, 1, "dbname=unused")
    pool.closeall()
    with pytest.raises(psycopg2.pool.PoolError, match="cannot be reopened"):
        pool.closed = False
    pool.closed = True  # already closed: nothing to do
    assert pool.closed


def test_rebinding_connect_arguments(impl: ModuleType, pools: List[Any], pg_dsn: str) -> None:
    pool = threaded(impl, pools, 0, 2, pg_dsn + " application_name=before")
    pool._args = (pg_dsn + " application_name=rotated",)  # rotated credentials
    conn = pool.getconn()
    assert conn.info.dsn_parameters.get("application_name") == "rotated"
    pool.putconn(conn)  # closed: above minconn
    pool._kwargs = {"application_name": "keywords"}
    conn = pool.getconn()
    assert conn.info.dsn_parameters.get("application_name") == "keywords"
    pool.putconn(conn)


@pytest.mark.parametrize("where", ["instance", "class"])
def test_connect_patched_after_the_pool_was_made(
    impl: ModuleType, pools: List[Any], pg_dsn: str, where: str
) -> None:
    pool = threaded(impl, pools, 0, 2, pg_dsn)
    target = pool if where == "instance" else type(pool)
    failure = psycopg2.OperationalError("server down")
    with (
        mock.patch.object(target, "_connect", side_effect=failure),
        pytest.raises(psycopg2.OperationalError, match="server down"),
    ):
        pool.getconn()
    conn = pool.getconn()  # the patch is gone: connects again
    pool.putconn(conn)


def test_mocked_connect(impl: ModuleType) -> None:
    with mock.patch("psycopg2.connect") as connect:
        pool = impl.ThreadedConnectionPool(1, 5, "dbname=test")
        conn = pool.getconn()
        assert conn is connect.return_value
        pool.putconn(conn)
        pool.closeall()
    assert connect.call_count == 1


class StockShapedFake:
    """A unit test's double of a connection: only what psycopg2.pool itself reads."""

    made: ClassVar[List[StockShapedFake]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.closed = 0
        self.rollbacks = 0
        self.info = mock.Mock(transaction_status=IDLE)
        StockShapedFake.made.append(self)

    def rollback(self) -> None:
        self.rollbacks += 1
        self.info.transaction_status = IDLE

    def close(self) -> None:
        self.closed = 1


def test_fake_connection_class(impl: ModuleType) -> None:
    StockShapedFake.made = []
    with mock.patch("psycopg2.connect", StockShapedFake):
        pool = impl.ThreadedConnectionPool(1, 3, "dbname=fake")
        conn = pool.getconn()
        conn.info.transaction_status = psycopg2.extensions.TRANSACTION_STATUS_INTRANS
        pool.putconn(conn)  # rolled back and kept, as stock does
        assert conn.rollbacks == 1 and pool.getconn() is conn
        pool.putconn(conn)
        pool.closeall()
    assert len(StockShapedFake.made) == 1


@pytest.mark.parametrize("size", ["3", 3.0])
def test_sizes_assigned_later_go_through_int(
    impl: ModuleType, pools: List[Any], pg_dsn: str, size: Any
) -> None:
    pool = threaded(impl, pools, 0, 1, pg_dsn)
    held = [pool.getconn()]
    pool.maxconn = size
    if impl is pgpool_compat:  # stock keeps the string and compares it with an int
        held += [pool.getconn(), pool.getconn()]
        assert pool.maxconn == 3
    for conn in held:
        pool.putconn(conn)


def test_bad_size_assigned_later_is_refused_clearly(pools: List[Any], pg_dsn: str) -> None:
    pool = threaded(pgpool_compat, pools, 0, 2, pg_dsn)
    with pytest.raises(ValueError, match="maxconn must be an integer"):
        pool.maxconn = "lots"
    with pytest.raises(ValueError, match="minconn"):
        pool.minconn = 5  # above maxconn
    assert (pool.minconn, pool.maxconn) == (0, 2)


def test_subclass_setting_attributes_before_init(
    impl: ModuleType, pools: List[Any], pg_dsn: str
) -> None:
    class Prepared(impl.ThreadedConnectionPool):  # type: ignore[name-defined,misc]
        def __init__(self, minconn: int, maxconn: int, *args: Any) -> None:
            self.closed = False  # as stock's own __init__ starts
            self.minconn, self.maxconn = minconn, maxconn
            super().__init__(minconn, maxconn, *args)

    pool = threaded(impl, pools, 1, 2, pg_dsn, cls=Prepared)
    assert (pool.closed, pool.minconn, pool.maxconn) == (False, 1, 2)
    pool.putconn(pool.getconn())


class SlowConnect(psycopg2.extensions.connection):  # type: ignore[misc]
    """A connect that takes ``delay`` seconds (TLS, a remote server): widens races."""

    delay = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        time.sleep(self.delay)
        super().__init__(*args, **kwargs)


def test_getconn_override_is_called_under_the_lock(
    impl: ModuleType, pools: List[Any], pg_dsn: str
) -> None:
    # psycopg2.pool holds self._lock around _getconn: the override's check-then-connect is
    # atomic, so three threads racing for maxconn=1 get one connection, never three.
    class Slow(SlowConnect):
        delay = 0.3

    pool = threaded(impl, pools, 0, 1, pg_dsn, cls=closed_check_pool(impl))
    pool._kwargs = {"connection_factory": Slow}
    got: List[Any] = []
    errors: List[str] = []

    def take() -> None:
        try:
            got.append(pool.getconn())
        except psycopg2.pool.PoolError as error:
            errors.append(str(error))

    threads = [threading.Thread(target=take) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(got) == 1 and errors == ["connection pool exhausted"] * 2
    pool.putconn(got[0])


def test_connections_an_override_skips_are_not_counted_for_ever(
    pools: List[Any], pg_dsn: str
) -> None:
    pool = threaded(pgpool_compat, pools, 1, 2, pg_dsn, cls=closed_check_pool(pgpool_compat))
    for _ in range(20):
        pool.putconn(pool.getconn())
        pool._pool[-1].close()  # the server ended it while idle: the override skips it
    assert pool.get_stats()["pool_size"] <= 2
    assert len(pool._core.entries) <= 2


def test_slot_freed_by_hand_reaches_a_waiting_caller(pools: List[Any], pg_dsn: str) -> None:
    pool = pgpool_compat.ThreadedConnectionPool(0, 1, pg_dsn, pool_timeout=5)
    pools.append(pool)
    leaked = pool.getconn()
    served: List[float] = []

    def wait_for_one() -> None:
        started = time.monotonic()
        conn = pool.getconn()
        served.append(time.monotonic() - started)
        pool.putconn(conn)

    waiter = threading.Thread(target=wait_for_one)
    waiter.start()
    time.sleep(0.3)  # the waiter is queued
    leaked.close()
    with pool._lock:  # a leak handler takes the slot back...
        del pool._used[pool._rused.pop(id(leaked))]
    pool.putconn(pool.getconn())  # ...and the next caller's reconciliation frees it
    waiter.join(10)
    assert served and served[0] < 4


def test_slot_freed_by_hand_while_another_thread_connects(
    impl: ModuleType, pools: List[Any], pg_dsn: str
) -> None:
    class Slow(SlowConnect):
        delay = 0.0

    pool = threaded(impl, pools, 0, 2, pg_dsn)
    pool._kwargs = {"connection_factory": Slow}
    leaked = pool.getconn()
    leaked.close()
    with pool._lock:
        del pool._used[pool._rused.pop(id(leaked))]
    Slow.delay = 1.0
    other: List[Any] = []
    connecting = threading.Thread(target=lambda: other.append(pool.getconn()))
    connecting.start()
    time.sleep(0.3)  # that thread is connecting
    conn = pool.getconn()  # stock serves it: one of two slots is in use
    connecting.join(10)
    pool.putconn(conn)
    pool.putconn(other[0])


def test_an_override_calling_ours_can_still_wait(pools: List[Any], pg_dsn: str) -> None:
    # Called under the lock (as on stock), an override that calls ours and waits
    # (pool_timeout) must let the lock go while asleep, or nobody could return one.
    class Logged(pgpool_compat.ThreadedConnectionPool):  # type: ignore[misc]
        def _getconn(self, key: Optional[Any] = None) -> Any:
            return super()._getconn(key)

    pool = threaded(pgpool_compat, pools, 0, 1, pg_dsn, pool_timeout=5, cls=Logged)
    held = pool.getconn()
    served: List[float] = []

    def wait_for_one() -> None:
        started = time.monotonic()
        pool.putconn(pool.getconn())
        served.append(time.monotonic() - started)

    waiter = threading.Thread(target=wait_for_one)
    waiter.start()
    time.sleep(0.3)
    pool.putconn(held)
    waiter.join(10)
    assert served and served[0] < 2


def test_a_keyed_race_loser_is_never_taken_for_a_hand_edit(
    pools: List[Any], pg_dsn: str
) -> None:
    # Two callers of one key: the loser gives back what the runner lent it, outside the
    # lock. A reconciliation in that window must still see it as that call's, in flight.
    pool = threaded(pgpool_compat, pools, 2, 2, pg_dsn)
    winner = pool.getconn("k")
    call = object()
    pool._in_flight[call] = time.monotonic()  # as _getconn's first lock round does
    loser = pool._runner.acquire(None)
    release = pool._runner.release

    def release_after_a_reconciliation(conn: Any, discard: bool = False) -> None:
        with pool._lock:  # another thread, finding the pool full, in that window
            pool._reconcile_books()
        release(conn, discard)

    pool._runner.release = release_after_a_reconciliation
    assert pool._book(loser, "k", False, call) is winner
    assert pool._in_flight == {} and pool.get_stats()["pool_size"] == 2
    assert pool.getconn() is loser  # kept idle, counted
