"""One test per psycopg2.pool bug that pgpool_compat fixes by default.

Every test runs on psycopg2.pool too and asserts that stock really shows the bug: a fix that
stock would pass is not proved by its test. ``impl`` is the module under test and ``stock``
says which one it is.
"""

from __future__ import annotations

import logging
import threading
import time
from types import ModuleType
from typing import Any, Dict, List, Tuple

import psycopg2
import psycopg2.extensions
import psycopg2.pool
import pytest
from faults.proxy import Proxy
from helpers import select_one, terminate_backends

import pgpool_compat

pytestmark = pytest.mark.timeout(60)

CLASSES = ("SimpleConnectionPool", "ThreadedConnectionPool")


@pytest.fixture(params=[psycopg2.pool, pgpool_compat], ids=["stock", "ours"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    module: ModuleType = request.param
    return module


@pytest.fixture
def stock(impl: ModuleType) -> bool:
    """True when the module under test is psycopg2.pool, which must show the bug."""
    return impl is psycopg2.pool


def _books(pool: Any) -> Tuple[Any, ...]:
    return (list(pool._pool), dict(pool._used), dict(pool._rused), pool._keys, pool.closed)


def _backend_pid(conn: Any) -> int:
    pid: int = conn.info.backend_pid
    return pid


# -- a failing rollback on putconn leaks the slot ---------------------------------------------


@pytest.mark.own_session
@pytest.mark.parametrize("cls", CLASSES)
def test_failed_rollback_on_put_never_leaks_the_slot(
    impl: ModuleType,
    stock: bool,
    cls: str,
    pg_dsn: str,
    pools: List[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = getattr(impl, cls)(1, 1, pg_dsn)
    pools.append(pool)
    conn = pool.getconn()
    with conn.cursor() as cursor:
        cursor.execute("SELECT 1")  # leaves a transaction open: putconn must roll it back
    terminate_backends(pg_dsn, [_backend_pid(conn)])

    caplog.set_level(logging.WARNING, logger="pgpool_compat")
    raised = None
    try:
        pool.putconn(conn)
    except psycopg2.Error as error:
        raised = error

    if stock:
        assert isinstance(raised, psycopg2.Error)  # the rollback's error escapes...
        assert pool._used and pool._rused  # ...with the slot still booked...
        with pytest.raises(psycopg2.pool.PoolError, match="exhausted"):
            pool.getconn()  # ...for ever: maxconn is 1 and nothing holds it
        return
    # Ours: the error is logged (or raised), the dead connection is discarded, the slot freed.
    logged = [
        r for r in caplog.records if r.name == "pgpool_compat" and r.levelno >= logging.WARNING
    ]
    assert raised is not None or logged
    assert pool._used == {} and pool._rused == {}
    assert conn not in pool._pool
    fresh = pool.getconn()
    assert fresh is not conn and select_one(fresh) == 1
    pool.putconn(fresh)


# -- a wrong explicit key mutates the books, then raises a bare KeyError ----------------------


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("wrong", ["unknown key", "another connection's key"])
def test_wrong_explicit_key_raises_and_changes_nothing(
    impl: ModuleType, stock: bool, cls: str, wrong: str, pg_dsn: str, pools: List[Any]
) -> None:
    pool = getattr(impl, cls)(2, 3, pg_dsn)
    pools.append(pool)
    mine, theirs = pool.getconn("mine"), pool.getconn("theirs")
    key = "nope" if wrong == "unknown key" else "theirs"
    before = _books(pool)

    error = None
    try:
        pool.putconn(mine, key=key)
    except Exception as raised:
        error = raised

    if stock:
        # A bare KeyError (unknown key) or nothing at all (another's key): never a PoolError,
        # and the books were changed either way.
        assert type(error) is (KeyError if wrong == "unknown key" else type(None))
        assert _books(pool) != before
        return
    assert isinstance(error, psycopg2.pool.PoolError)
    assert repr(key) in str(error)  # the message names the key that did not match
    assert _books(pool) == before
    assert not mine.closed and not theirs.closed
    pool.putconn(mine, key="mine")  # the right key still works afterwards
    pool.putconn(theirs)
    assert pool._used == {} and pool._pool == [mine, theirs]


# -- sizes are never validated ----------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize(
    ("minconn", "maxconn", "named"),
    [
        (3, 2, "minconn"),  # stock builds an unbounded pool with 3 connections
        (-1, 2, "minconn"),
        (0, -1, "maxconn"),
        (0, 0, "maxconn"),  # stock builds a pool that can never hand anything out
        ("abc", 2, "minconn"),  # stock: int()'s message, which names no parameter
        (1, None, "maxconn"),  # stock: a TypeError from int()
    ],
)
def test_bad_sizes_raise_a_clear_value_error_before_connecting(
    impl: ModuleType,
    stock: bool,
    cls: str,
    minconn: Any,
    maxconn: Any,
    named: str,
    pg_dsn: str,
    pools: List[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_connect = psycopg2.connect
    connects: List[int] = []

    def counting_connect(*args: Any, **kwargs: Any) -> Any:
        connects.append(1)
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(psycopg2, "connect", counting_connect)
    try:
        pools.append(getattr(impl, cls)(minconn, maxconn, pg_dsn))
    except (TypeError, ValueError) as error:
        outcome: Any = error
    else:
        outcome = None

    if stock:
        # Either no error at all, or int()'s own, which does not say which size is wrong.
        assert outcome is None or named not in str(outcome)
        return
    assert type(outcome) is ValueError
    assert named in str(outcome)
    assert connects == []  # rejected before opening anything


# -- a dead connection is handed out as is ----------------------------------------------------


@pytest.mark.own_session
@pytest.mark.parametrize("cls", CLASSES)
def test_terminated_backend_is_never_handed_out(
    impl: ModuleType, stock: bool, cls: str, pg_dsn: str, pools: List[Any]
) -> None:
    pool = getattr(impl, cls)(2, 3, pg_dsn)
    pools.append(pool)
    idle = list(pool._pool)
    dead_pids = [_backend_pid(conn) for conn in idle]
    terminate_backends(pg_dsn, dead_pids)  # e.g. idle_session_timeout, a DBA, a failover

    conn = pool.getconn()
    if stock:
        assert conn is idle[-1]  # the dead one...
        with pytest.raises(psycopg2.OperationalError):
            select_one(conn)  # ...fails on first use
        return
    assert conn not in idle
    assert _backend_pid(conn) not in dead_pids
    assert select_one(conn) == 1
    assert pool._pool == []  # both dead idle connections were dropped, not kept
    assert all(dead.closed for dead in idle)  # and closed, not leaked
    pool.putconn(conn)


# -- ThreadedConnectionPool.putconn(conn=None) ------------------------------------------------


def test_threaded_putconn_by_key_alone(
    impl: ModuleType, stock: bool, pg_dsn: str, pools: List[Any]
) -> None:
    pool = impl.ThreadedConnectionPool(1, 2, pg_dsn)
    pools.append(pool)
    conn = pool.getconn("report")
    if stock:
        with pytest.raises(AttributeError):  # the default conn=None is dereferenced
            pool.putconn(key="report")
        return
    pool.putconn(key="report")  # the connection out under that key goes back
    assert pool._used == {} and pool._rused == {} and pool._pool == [conn]
    assert not conn.closed


def test_threaded_putconn_none_with_unknown_key_is_a_clear_error(
    impl: ModuleType, stock: bool, pg_dsn: str, pools: List[Any]
) -> None:
    pool = impl.ThreadedConnectionPool(1, 2, pg_dsn)
    pools.append(pool)
    pool.getconn("report")
    before = _books(pool)
    with pytest.raises(Exception) as info:
        pool.putconn(key="nobody")
    if stock:
        assert type(info.value) is AttributeError
        return
    assert isinstance(info.value, psycopg2.pool.PoolError)
    assert "'nobody'" in str(info.value)
    assert _books(pool) == before


def test_threaded_putconn_without_anything(
    impl: ModuleType, stock: bool, pg_dsn: str, pools: List[Any]
) -> None:
    # Not a bug, a valid call with a defined result: both say "unkeyed".
    pool = impl.ThreadedConnectionPool(1, 2, pg_dsn)
    pools.append(pool)
    with pytest.raises(psycopg2.pool.PoolError, match=r"^trying to put unkeyed connection$"):
        pool.putconn()


# -- pool_* keywords --------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("keyword", ["pool_timout", "pool_size", "pool_"])
def test_unknown_pool_keyword_is_a_type_error(
    impl: ModuleType, stock: bool, cls: str, keyword: str, pg_dsn: str, pools: List[Any]
) -> None:
    kwargs: Dict[str, Any] = {keyword: 5}
    if stock:
        # Stock forwards it to libpq: nothing is said until the first connect fails.
        pool = getattr(impl, cls)(0, 1, pg_dsn, **kwargs)
        pools.append(pool)
        with pytest.raises(psycopg2.ProgrammingError, match="invalid connection option"):
            pool.getconn()
        return
    with pytest.raises(TypeError) as info:
        getattr(impl, cls)(0, 1, pg_dsn, **kwargs)
    assert repr(keyword) in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"pool_timeout": -1}, ValueError),
        ({"pool_timeout": "soon"}, TypeError),
        ({"pool_check": "sometimes"}, ValueError),
        ({"pool_lifo": "yes"}, TypeError),
    ],
)
def test_bad_pool_option_value_names_the_keyword(
    kwargs: Dict[str, Any], error: type, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    connects: List[int] = []
    monkeypatch.setattr(psycopg2, "connect", lambda *a, **k: connects.append(1))
    with pytest.raises(error) as info:
        pgpool_compat.ThreadedConnectionPool(1, 2, pg_dsn, **kwargs)
    assert next(iter(kwargs)) in str(info.value)
    assert connects == []


def test_simple_pool_rejects_pool_timeout(pg_dsn: str) -> None:
    # Nobody could return a connection while a single-threaded pool waits.
    with pytest.raises(TypeError, match="pool_timeout"):
        pgpool_compat.SimpleConnectionPool(0, 1, pg_dsn, pool_timeout=1)


# -- the lock is held while connecting --------------------------------------------------------


class SlowConnect:
    """A psycopg2.connect stand-in that blocks until released, then really connects."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self._real = psycopg2.connect

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        self.release.wait(timeout=20)
        return self._real(*args, **kwargs)


def test_no_lock_held_while_connecting(
    impl: ModuleType, stock: bool, pg_dsn: str, pools: List[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = impl.ThreadedConnectionPool(1, 3, pg_dsn)
    pools.append(pool)
    idle = pool.getconn("main")  # the only connection, borrowed: the next caller must connect
    slow = SlowConnect()
    monkeypatch.setattr(psycopg2, "connect", slow)

    results: Dict[str, Any] = {}

    def connect_slowly() -> None:
        results["slow"] = pool.getconn("slow")

    def return_and_take_idle() -> None:
        pool.putconn(idle)
        results["fast"] = pool.getconn("fast")

    slow_thread = threading.Thread(target=connect_slowly, daemon=True)
    fast_thread = threading.Thread(target=return_and_take_idle, daemon=True)
    try:
        slow_thread.start()
        assert slow.entered.wait(timeout=10), "the slow connect never started"
        started = time.monotonic()
        fast_thread.start()
        fast_thread.join(timeout=2.0)
        blocked = fast_thread.is_alive()
        elapsed = time.monotonic() - started
    finally:
        slow.release.set()
        slow_thread.join(timeout=20)
        fast_thread.join(timeout=20)
    assert not slow_thread.is_alive() and not fast_thread.is_alive()

    if stock:
        assert blocked  # putconn waited for another thread's connect to finish
        return
    assert not blocked, f"putconn/getconn of an idle connection waited {elapsed:.2f} s"
    assert results["fast"] is idle
    assert results["slow"] is not idle and select_one(results["slow"]) == 1


def test_no_lock_held_while_rolling_back(
    impl: ModuleType, stock: bool, pg_dsn: str, pools: List[Any]
) -> None:
    """A return whose rollback hangs on the network must not stall other threads."""
    params = psycopg2.extensions.parse_dsn(pg_dsn)
    with Proxy(params.get("host", "127.0.0.1"), int(params.get("port", 5432))) as proxy:
        pool = impl.ThreadedConnectionPool(2, 3, proxy.dsn(pg_dsn))
        pools.append(pool)
        idle = pool._pool[0]
        busy = pool.getconn()
        with busy.cursor() as cursor:
            cursor.execute("SELECT 1")  # a transaction putconn will have to roll back
        proxy.stall()  # established connections hang; the rollback waits on the network

        results: Dict[str, Any] = {}
        returner = threading.Thread(target=lambda: pool.putconn(busy), daemon=True)
        taker = threading.Thread(
            target=lambda: results.setdefault("taken", pool.getconn()), daemon=True
        )
        try:
            returner.start()
            returner.join(timeout=0.3)
            assert returner.is_alive(), "the rollback did not hang: the test proves nothing"
            taker.start()
            taker.join(timeout=2.0)
            blocked = taker.is_alive()
        finally:
            proxy.pass_through()  # the rollback completes, the lock (if held) is released
            returner.join(timeout=20)
            taker.join(timeout=20)
        assert not returner.is_alive() and not taker.is_alive()
        if stock:
            assert blocked  # getconn of an idle connection waited for another's rollback
        else:
            assert not blocked, "getconn waited while another thread rolled back"
            assert results["taken"] is idle
        pool.closeall()


@pytest.mark.parametrize("cls", CLASSES)
def test_failed_construction_closes_what_it_opened(
    impl: ModuleType, stock: bool, cls: str, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_connect = psycopg2.connect
    opened: List[Any] = []

    def third_call_fails(*args: Any, **kwargs: Any) -> Any:
        if len(opened) == 2:
            raise psycopg2.OperationalError("refused by the test")
        opened.append(real_connect(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(psycopg2, "connect", third_call_fails)
    try:
        with pytest.raises(psycopg2.OperationalError, match="refused by the test"):
            getattr(impl, cls)(3, 5, pg_dsn)
        # Stock leaves both open for the garbage collector (the traceback still holds them).
        assert [bool(conn.closed) for conn in opened] == [not stock, not stock]
    finally:
        for conn in opened:
            conn.close()


# -- issue 10 item 4: minconn / maxconn assigned after construction ---------------------------


@pytest.mark.parametrize("cls", CLASSES)
def test_minconn_and_maxconn_assigned_after_construction_are_read_live(
    impl: ModuleType, cls: str, pg_dsn: str, pools: List[Any]
) -> None:
    """Real consumers build ``ThreadedConnectionPool(0, n)`` and then set ``pool.minconn``:
    stock reads both attributes on every call, so the pool must too (both libraries pass)."""
    pool = getattr(impl, cls)(0, 4, pg_dsn)
    pools.append(pool)

    pool.minconn = 2  # raised: up to two returned connections stay open
    first, second = pool.getconn(), pool.getconn()
    pids = {_backend_pid(first), _backend_pid(second)}
    pool.putconn(first)
    pool.putconn(second)
    assert not first.closed and not second.closed
    again = [pool.getconn(), pool.getconn()]
    assert {_backend_pid(conn) for conn in again} == pids  # reused, no new backends
    for conn in again:
        pool.putconn(conn)

    pool.minconn = 0  # lowered: a returned connection is closed
    conn = pool.getconn()
    pool.putconn(conn)
    assert conn.closed

    pool.maxconn = 1  # lowered: the second checkout finds the pool exhausted
    held = pool.getconn()
    with pytest.raises(psycopg2.pool.PoolError, match="exhausted"):
        pool.getconn()
    pool.maxconn = 2  # raised again: room for one more
    extra = pool.getconn()
    pool.putconn(extra)
    pool.putconn(held)


# -- issue 10 item 10: the wrong-key error is still a KeyError --------------------------------


@pytest.mark.parametrize("cls", CLASSES)
def test_wrong_key_error_is_both_a_pool_error_and_a_key_error(
    cls: str, pg_dsn: str, pools: List[Any]
) -> None:
    """Stock raised ``KeyError`` for an unknown key, and code written against it catches
    that; ours must be caught by ``except KeyError`` and ``except PoolError`` alike, with the
    clear message (not KeyError's quoted repr) and the books unchanged."""
    pool = getattr(pgpool_compat, cls)(1, 2, pg_dsn)
    pools.append(pool)
    conn = pool.getconn("mine")
    for catch in (KeyError, psycopg2.pool.PoolError, pgpool_compat.WrongKeyError):
        with pytest.raises(catch) as raised:
            pool.putconn(conn, key="nope")
        assert str(raised.value).startswith("trying to put a connection under key 'nope'")
    assert pool.getconn("mine") is conn  # still booked under its own key
    pool.putconn(conn, key="mine")


# -- issue 10 item 9: maxconn=inf ---------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize(
    ("minconn", "maxconn", "named"),
    [(0, float("inf"), "maxconn"), (float("-inf"), 2, "minconn"), (0, float("nan"), "maxconn")],
)
def test_infinite_sizes_are_a_value_error_naming_the_size(
    cls: str, minconn: Any, maxconn: Any, named: str, pg_dsn: str
) -> None:
    """``int(inf)`` raises ``OverflowError``; the promise is a ``ValueError`` naming it."""
    with pytest.raises(ValueError, match=named):
        getattr(pgpool_compat, cls)(minconn, maxconn, pg_dsn)
