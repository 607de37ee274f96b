"""The psycopg2.pool contract, fact by fact.

Most tests run twice, on psycopg2.pool and on pgpool_compat: a fact that fails on stock is
not the contract, so the stock run keeps each test honest.
"""

from __future__ import annotations

import inspect
import time
import uuid
from collections.abc import Iterator
from types import ModuleType
from typing import Any, Callable, List

import psycopg2
import psycopg2.extensions
import psycopg2.pool
import pytest

import pgpool_compat
import pgpool_compat.pool
from tests.helpers import sessions_named

pytestmark = pytest.mark.timeout(60)

IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE
CLASSES = ("SimpleConnectionPool", "ThreadedConnectionPool")


@pytest.fixture(params=[psycopg2.pool, pgpool_compat], ids=["stock", "ours"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """The module under test: psycopg2.pool (the reference) or pgpool_compat."""
    module: ModuleType = request.param
    return module


@pytest.fixture(params=CLASSES)
def make_pool(
    request: pytest.FixtureRequest, impl: ModuleType, pg_dsn: str
) -> Iterator[Callable[..., Any]]:
    """Build pools of one class from ``impl`` on the test server; close them all afterwards."""
    created: List[Any] = []
    cls = getattr(impl, request.param)

    def make(minconn: Any = 1, maxconn: Any = 3, *args: Any, **kwargs: Any) -> Any:
        pool = cls(minconn, maxconn, *(args or (pg_dsn,)), **kwargs)
        created.append(pool)
        return pool

    yield make
    for pool in created:
        if not pool.closed:
            pool.closeall()


def _unique_name() -> str:
    return f"pgpool-contract-{uuid.uuid4().hex[:12]}"


# -- identity: same exception, same class hierarchy, same names --------------------------------


def test_pool_error_is_psycopg2s() -> None:
    assert pgpool_compat.PoolError is psycopg2.pool.PoolError
    assert pgpool_compat.pool.PoolError is psycopg2.pool.PoolError
    assert issubclass(pgpool_compat.PoolTimeout, psycopg2.pool.PoolError)


def test_top_level_names_are_the_pool_modules() -> None:
    from pgpool_compat import (  # the one-line migration imports these
        AbstractConnectionPool,
        PoolError,
        SimpleConnectionPool,
        ThreadedConnectionPool,
    )

    assert AbstractConnectionPool is pgpool_compat.pool.AbstractConnectionPool
    assert SimpleConnectionPool is pgpool_compat.pool.SimpleConnectionPool
    assert ThreadedConnectionPool is pgpool_compat.pool.ThreadedConnectionPool
    assert PoolError is psycopg2.pool.PoolError


@pytest.mark.parametrize("name", ["AbstractConnectionPool", *CLASSES])
def test_classes_subclass_stock(name: str) -> None:
    assert issubclass(getattr(pgpool_compat, name), getattr(psycopg2.pool, name))
    assert issubclass(getattr(pgpool_compat, name), psycopg2.pool.AbstractConnectionPool)


def test_instances_pass_stock_isinstance(make_pool: Callable[..., Any], impl: ModuleType) -> None:
    pool = make_pool(0, 1)
    stock_cls = getattr(psycopg2.pool, type(pool).__name__)
    assert isinstance(pool, stock_cls)
    assert isinstance(pool, psycopg2.pool.AbstractConnectionPool)


@pytest.mark.parametrize("module", [psycopg2.pool, pgpool_compat], ids=["stock", "ours"])
def test_abstract_pool_has_no_public_methods(module: ModuleType) -> None:
    # Subclasses of AbstractConnectionPool in the wild define getconn/putconn themselves.
    for name in ("getconn", "putconn", "closeall"):
        assert not hasattr(module.AbstractConnectionPool, name)
    for name in ("_connect", "_getkey", "_getconn", "_putconn", "_closeall"):
        assert callable(getattr(module.AbstractConnectionPool, name))


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("method", ["getconn", "putconn", "closeall", "_connect", "_getconn"])
def test_method_signatures_match_stock(cls: str, method: str) -> None:
    def shape(func: Any) -> List[Any]:
        params = inspect.signature(func).parameters.values()
        return [(p.name, p.kind, p.default) for p in params]

    ours = getattr(getattr(pgpool_compat, cls), method)
    stock = getattr(getattr(psycopg2.pool, cls), method)
    assert shape(ours) == shape(stock)


def test_attributes(make_pool: Callable[..., Any], pg_dsn: str) -> None:
    pool = make_pool(1, 2, pg_dsn, application_name="contract")
    assert (pool.minconn, pool.maxconn, pool.closed) == (1, 2, False)
    assert pool._args == (pg_dsn,)
    assert pool._kwargs == {"application_name": "contract"}
    assert len(pool._pool) == 1 and pool._used == {} and pool._rused == {}
    assert pool._keys == 0


def test_threaded_pool_has_a_lock(impl: ModuleType, pg_dsn: str) -> None:
    pool = impl.ThreadedConnectionPool(0, 1, pg_dsn)
    try:
        with pool._lock:  # subclasses wrap their own calls in it
            pass
    finally:
        pool.closeall()


# -- construction ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("minconn", "maxconn", "expected"),
    [
        pytest.param("2", "5", (2, 5), marks=pytest.mark.own_session),
        pytest.param(2.9, 3.2, (2, 3), marks=pytest.mark.own_session),
        pytest.param(True, 2, (1, 2), marks=pytest.mark.own_session),
        (0, "1", (0, 1)),
    ],
)
def test_sizes_go_through_int(
    make_pool: Callable[..., Any],
    pg_dsn: str,
    admin_conn: Any,
    minconn: Any,
    maxconn: Any,
    expected: Any,
) -> None:
    name = _unique_name()
    pool = make_pool(minconn, maxconn, pg_dsn, application_name=name)
    assert (pool.minconn, pool.maxconn) == expected
    assert type(pool.minconn) is int and type(pool.maxconn) is int
    assert len(pool._pool) == expected[0]
    assert sessions_named(admin_conn, name) == expected[0]


@pytest.mark.own_session
def test_minconn_opened_at_once_through_connect(
    impl: ModuleType, pg_dsn: str, admin_conn: Any
) -> None:
    calls: List[Any] = []

    class Counting(impl.ThreadedConnectionPool):  # type: ignore[name-defined,misc]
        def _connect(self, key: Any = None) -> Any:
            calls.append(key)
            return super()._connect(key)

    name = _unique_name()
    pool = Counting(3, 5, pg_dsn, application_name=name)
    try:
        assert calls == [None, None, None]
        assert len(pool._pool) == 3
        assert all(conn.info.transaction_status == IDLE for conn in pool._pool)
        assert sessions_named(admin_conn, name) == 3
    finally:
        pool.closeall()


def test_connect_arguments_looked_up_at_call_time(
    make_pool: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, pg_dsn: str
) -> None:
    # Patching psycopg2.connect after building the pool must take effect: users' tests do this.
    pool = make_pool(0, 2, pg_dsn, application_name="patched", connect_timeout=7)
    real_connect = psycopg2.connect
    seen: List[Any] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append((args, kwargs))
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(psycopg2, "connect", spy)
    conn = pool.getconn()
    assert seen == [((pg_dsn,), {"application_name": "patched", "connect_timeout": 7})]
    with conn.cursor() as cursor:
        cursor.execute("SHOW application_name")
        assert cursor.fetchone()[0] == "patched"
    pool.putconn(conn)


def test_pool_keywords_are_not_forwarded_to_connect(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_connect = psycopg2.connect
    seen: List[Any] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs)
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(psycopg2, "connect", spy)
    pool = pgpool_compat.ThreadedConnectionPool(
        1, 2, pg_dsn, pool_timeout=1, pool_name="contract", application_name="x"
    )
    try:
        assert seen == [{"application_name": "x"}]
        assert pool._kwargs == {"application_name": "x"}
    finally:
        pool.closeall()


# -- getconn / putconn ---------------------------------------------------------------------


def test_idle_connections_are_reused_last_in_first_out(make_pool: Callable[..., Any]) -> None:
    pool = make_pool(3, 3)
    first, second, third = pool.getconn(), pool.getconn(), pool.getconn()
    for conn in (first, second, third):
        pool.putconn(conn)
    assert pool._pool == [first, second, third]
    assert [pool.getconn(), pool.getconn(), pool.getconn()] == [third, second, first]


def test_auto_keys_count_up_and_failed_calls_use_keys(make_pool: Callable[..., Any]) -> None:
    pool = make_pool(1, 2)
    first, second = pool.getconn(), pool.getconn()
    assert pool._rused[id(first)] == 1 and pool._rused[id(second)] == 2
    with pytest.raises(psycopg2.pool.PoolError):
        pool.getconn()
    assert pool._keys == 3  # incremented before the exhaustion check
    pool.putconn(second)
    assert pool._rused == {id(first): 1}
    assert pool.getconn() is second and pool._rused[id(second)] == 4


def test_keyed_getconn(make_pool: Callable[..., Any]) -> None:
    pool = make_pool(0, 3)
    admin = pool.getconn("admin")
    assert pool.getconn("admin") is admin  # same key, same connection, no new slot
    other = pool.getconn("report")
    assert other is not admin
    assert pool._used == {"admin": admin, "report": other}
    assert pool._rused == {id(admin): "admin", id(other): "report"}
    assert pool._keys == 0  # explicit keys never touch the counter
    pool.putconn(admin, "admin")
    pool.putconn(other)  # the key is found from the connection
    assert pool._used == {} and pool._rused == {}


def test_int_key_can_collide_with_an_auto_key(make_pool: Callable[..., Any]) -> None:
    # Stock quirk kept on purpose: the auto key 1 finds the connection a caller took as key 1.
    pool = make_pool(0, 3)
    mine = pool.getconn(1)
    assert pool.getconn() is mine
    assert pool._used == {1: mine}


def test_exhausted_at_maxconn(make_pool: Callable[..., Any]) -> None:
    pool = make_pool(1, 2)
    pool.getconn("a"), pool.getconn("b")
    with pytest.raises(psycopg2.pool.PoolError) as info:
        pool.getconn("c")
    assert str(info.value) == "connection pool exhausted"
    assert type(info.value) is psycopg2.pool.PoolError
    assert pool.getconn("a") is pool._used["a"]  # a key already out still works when full


def test_unkeyed_put(make_pool: Callable[..., Any], pg_dsn: str) -> None:
    pool = make_pool(1, 2)
    foreign = psycopg2.connect(pg_dsn)
    try:
        with pytest.raises(psycopg2.pool.PoolError) as info:
            pool.putconn(foreign)
        assert str(info.value) == "trying to put unkeyed connection"
        assert not foreign.closed
    finally:
        foreign.close()
    conn = pool.getconn()
    pool.putconn(conn)
    with pytest.raises(psycopg2.pool.PoolError, match=r"^trying to put unkeyed connection$"):
        pool.putconn(conn)  # a double put
    assert pool._pool == [conn] and not conn.closed


def test_idle_connections_capped_at_minconn(make_pool: Callable[..., Any]) -> None:
    pool = make_pool(1, 3)
    first, second = pool.getconn(), pool.getconn()
    pool.putconn(first)
    pool.putconn(second)  # one idle already: this one is closed
    assert pool._pool == [first]
    assert not first.closed and second.closed


def test_put_rolls_back_a_transaction_or_error(make_pool: Callable[..., Any]) -> None:
    pool = make_pool(2, 2)
    busy, failed = pool.getconn(), pool.getconn()
    with busy.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE contract_rollback (x int)")
    with failed.cursor() as cursor, pytest.raises(psycopg2.errors.DivisionByZero):
        cursor.execute("SELECT 1/0")
    pool.putconn(busy)
    pool.putconn(failed)
    assert pool._pool == [busy, failed]
    for conn in (busy, failed):
        assert not conn.closed and conn.info.transaction_status == IDLE
    with busy.cursor() as cursor:
        cursor.execute("SELECT to_regclass('pg_temp.contract_rollback')")
        assert cursor.fetchone()[0] is None  # the transaction really was rolled back
    busy.rollback()


def test_put_drops_a_connection_the_user_closed(make_pool: Callable[..., Any]) -> None:
    pool = make_pool(1, 2)
    conn = pool.getconn()
    conn.close()
    pool.putconn(conn)
    assert pool._pool == [] and pool._used == {} and pool._rused == {}
    fresh = pool.getconn()
    assert fresh is not conn and not fresh.closed


def test_put_with_close_closes(make_pool: Callable[..., Any]) -> None:
    pool = make_pool(1, 2)
    conn = pool.getconn()
    pool.putconn(conn, close=True)
    assert conn.closed and pool._pool == [] and pool._used == {}


def test_autocommit_survives_the_round_trip(make_pool: Callable[..., Any]) -> None:
    # The default reset is rollback-only, like stock: session settings are the user's.
    pool = make_pool(1, 1)
    conn = pool.getconn()
    conn.autocommit = True
    pool.putconn(conn)
    again = pool.getconn()
    assert again is conn and again.autocommit is True


# -- closeall -----------------------------------------------------------------------------------


def test_closeall(make_pool: Callable[..., Any]) -> None:
    pool = make_pool(2, 3)
    idle = list(pool._pool)
    borrowed = pool.getconn("k")
    used, rused = dict(pool._used), dict(pool._rused)
    pool.closeall()
    assert pool.closed
    assert all(conn.closed for conn in [*idle, borrowed])  # borrowed ones too
    assert pool._used == used and pool._rused == rused  # the books are kept
    for call in (pool.getconn, lambda: pool.putconn(borrowed), pool.closeall):
        with pytest.raises(psycopg2.pool.PoolError) as info:
            call()
        assert str(info.value) == "connection pool is closed"


def test_failed_connect_changes_no_books(
    make_pool: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = make_pool(0, 2)
    kept = pool.getconn("kept")
    real_connect = psycopg2.connect

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise psycopg2.OperationalError("refused by the test")

    monkeypatch.setattr(psycopg2, "connect", refuse)
    for _ in range(3):  # more failures than free slots: none of them may use a slot up
        with pytest.raises(psycopg2.OperationalError, match="refused by the test"):
            pool.getconn()
    with pytest.raises(psycopg2.OperationalError):
        pool.getconn("other")
    assert pool._used == {"kept": kept} and pool._pool == [] and pool._keys == 3
    monkeypatch.setattr(psycopg2, "connect", real_connect)
    fresh = pool.getconn()
    assert fresh is not kept and pool._rused[id(fresh)] == 4


@pytest.mark.own_session
def test_notification_received_while_idle_reaches_the_next_borrower(
    make_pool: Callable[..., Any], admin_conn: Any
) -> None:
    # The liveness probe reads a readable idle socket: what it reads must not be lost.
    pool = make_pool(1, 1)
    conn = pool.getconn()
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute("LISTEN pgpool_contract")
    pool.putconn(conn)
    with admin_conn.cursor() as cursor:
        cursor.execute("NOTIFY pgpool_contract, 'while idle'")
    time.sleep(0.2)  # let it reach the idle connection's socket
    again = pool.getconn()
    assert again is conn
    deadline = time.monotonic() + 5
    while not again.notifies and time.monotonic() < deadline:  # bounded, for a slow machine
        again.poll()
        time.sleep(0.01)
    assert [(n.channel, n.payload) for n in again.notifies] == [("pgpool_contract", "while idle")]
