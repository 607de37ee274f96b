"""Subclasses written against psycopg2.pool keep working on pgpool_compat.

The styles below are the ones found in the wild: a ``_connect`` that calls ``super()`` and
configures the connection, a ``_connect`` that replaces stock's and does its own bookkeeping, a
custom ``_getkey``, ``getconn``/``putconn`` wrapped in ``self._lock``, the popular
semaphore-wrapped "blocking pool", and a pool built on ``AbstractConnectionPool`` directly.
Each is defined once over a base class, so the stock and pgpool_compat versions are twins.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from typing import Any, Callable, List, Optional, Tuple

import psycopg2
import psycopg2.pool
import pytest
from test_differential import run_sequence
from test_threads import Census, Owners, counted_connection

import pgpool_compat

pytestmark = pytest.mark.timeout(120)

SubclassFactory = Callable[[type], type]
SEQUENCES_PER_STYLE = 12


def calls_super(base: type) -> type:
    class ConfiguredPool(base):  # type: ignore[misc,valid-type]
        """Every new connection is switched to autocommit, then pooled by stock's code."""

        def _connect(self, key: Any = None) -> Any:
            conn = super()._connect(key)
            conn.autocommit = True
            self.__dict__.setdefault("connect_keys", []).append(key)
            return conn

    return ConfiguredPool


def full_override(base: type) -> type:
    class OwnBooksPool(base):  # type: ignore[misc,valid-type]
        """Replaces ``_connect`` entirely, bookkeeping included, as older code did."""

        def _connect(self, key: Any = None) -> Any:
            conn = psycopg2.connect(*self._args, **self._kwargs)
            conn.autocommit = True
            if key is not None:
                self._used[key] = conn
                self._rused[id(conn)] = key
            else:
                self._pool.append(conn)
            return conn

    return OwnBooksPool


def custom_keys(base: type) -> type:
    class NamedKeysPool(base):  # type: ignore[misc,valid-type]
        """Automatic keys are strings from the subclass's own counter."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._names = itertools.count(1)
            super().__init__(*args, **kwargs)

        def _getkey(self) -> str:
            return f"auto-{next(self._names)}"

    return NamedKeysPool


def locked_calls(base: type) -> type:
    class LockingPool(base):  # type: ignore[misc,valid-type]
        """Public calls wrapped in the pool's own lock around the underscored methods."""

        def getconn(self, key: Any = None) -> Any:
            with self._lock:
                return self._getconn(key)

        def putconn(self, conn: Any = None, key: Any = None, close: bool = False) -> None:
            with self._lock:
                self._putconn(conn, key, close)

        def status(self) -> Tuple[int, int]:
            with self._lock:
                return len(self._pool), len(self._used)

    return LockingPool


def underscored_overrides(base: type) -> type:
    class CountingPool(base):  # type: ignore[misc,valid-type]
        """Overrides the underscored methods, which stock's threaded public ones call."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.calls: List[str] = []
            super().__init__(*args, **kwargs)

        def _getconn(self, key: Any = None) -> Any:
            self.calls.append("get")
            return super()._getconn(key)

        def _putconn(self, conn: Any, key: Any = None, close: bool = False) -> None:
            self.calls.append("put")
            super()._putconn(conn, key, close)

        def _closeall(self) -> None:
            self.calls.append("closeall")
            super()._closeall()

    return CountingPool


def semaphore_wrapped(base: type) -> type:
    class BlockingPool(base):  # type: ignore[misc,valid-type]
        """The well-known recipe: a semaphore of maxconn makes getconn wait, not fail."""

        def __init__(self, minconn: Any, maxconn: Any, *args: Any, **kwargs: Any) -> None:
            self._semaphore = threading.Semaphore(int(maxconn))
            super().__init__(minconn, maxconn, *args, **kwargs)

        def getconn(self, *args: Any, **kwargs: Any) -> Any:
            if not self._semaphore.acquire(timeout=30):
                raise AssertionError("semaphore never released")
            return super().getconn(*args, **kwargs)

        def putconn(self, *args: Any, **kwargs: Any) -> None:
            super().putconn(*args, **kwargs)
            self._semaphore.release()

    return BlockingPool


def abstract_based(abstract: type) -> type:
    class HomeMadePool(abstract):  # type: ignore[misc,valid-type]
        """Built on AbstractConnectionPool with stock's aliases, like SimpleConnectionPool."""

        getconn = abstract._getconn
        putconn = abstract._putconn
        closeall = abstract._closeall

    return HomeMadePool


def vendored_threaded(abstract: type) -> type:
    class VendoredThreadedPool(abstract):  # type: ignore[misc,valid-type]
        """Stock's ThreadedConnectionPool copied into an application: its own plain Lock."""

        def __init__(self, minconn: Any, maxconn: Any, *args: Any, **kwargs: Any) -> None:
            abstract.__init__(self, minconn, maxconn, *args, **kwargs)
            self._lock = threading.Lock()

        def getconn(self, key: Any = None) -> Any:
            with self._lock:
                return self._getconn(key)

        def putconn(self, conn: Any = None, key: Any = None, close: bool = False) -> None:
            with self._lock:
                self._putconn(conn, key, close)

        def closeall(self) -> None:
            with self._lock:
                self._closeall()

    return VendoredThreadedPool


# Styles whose single-threaded behaviour must match stock call for call.
DIFFERENTIAL_STYLES = {
    "calls_super": calls_super,
    "full_override": full_override,
    "custom_keys": custom_keys,
    "locked_calls": locked_calls,
    "underscored_overrides": underscored_overrides,
}
THREADED_STYLES = {**DIFFERENTIAL_STYLES, "semaphore_wrapped": semaphore_wrapped}


# SimpleConnectionPool has no _lock in psycopg2.pool, so locked_calls needs the threaded one.
DIFFERENTIAL_CASES = [
    (style, pool_name)
    for style in sorted(DIFFERENTIAL_STYLES)
    for pool_name in ("SimpleConnectionPool", "ThreadedConnectionPool")
    if (style, pool_name) != ("locked_calls", "SimpleConnectionPool")
]


@pytest.mark.own_session
@pytest.mark.parametrize("seed", range(SEQUENCES_PER_STYLE))
@pytest.mark.parametrize(("style", "pool_name"), DIFFERENTIAL_CASES)
def test_subclass_matches_stock_subclass(
    style: str, pool_name: str, seed: int, pg_dsn: str, admin_conn: Any
) -> None:
    factory = DIFFERENTIAL_STYLES[style]
    stock_cls = factory(getattr(psycopg2.pool, pool_name))
    ours_cls = factory(getattr(pgpool_compat, pool_name))
    run_sequence(stock_cls, ours_cls, 10_000 + seed, pg_dsn, admin_conn)


@pytest.mark.own_session
@pytest.mark.parametrize("seed", range(SEQUENCES_PER_STYLE))
def test_abstract_based_pool_matches_stock(seed: int, pg_dsn: str, admin_conn: Any) -> None:
    stock_cls = abstract_based(psycopg2.pool.AbstractConnectionPool)
    ours_cls = abstract_based(pgpool_compat.AbstractConnectionPool)
    run_sequence(stock_cls, ours_cls, 20_000 + seed, pg_dsn, admin_conn)


@pytest.mark.parametrize("module", [psycopg2.pool, pgpool_compat], ids=["stock", "ours"])
def test_connect_override_receives_the_key(module: Any, pg_dsn: str) -> None:
    """Stock calls ``_connect(key)`` for a keyed checkout that needs a new connection."""
    pool = calls_super(module.ThreadedConnectionPool)(1, 3, pg_dsn)
    try:
        pool.getconn("admin")  # takes the idle one: no connect
        pool.getconn("report")  # needs a new connection for this key
        pool.getconn()  # and one for automatic key 1
        assert pool.connect_keys == [None, "report", 1]
    finally:
        pool.closeall()


@pytest.mark.parametrize("module", [psycopg2.pool, pgpool_compat], ids=["stock", "ours"])
def test_vendored_threaded_pool_with_its_own_lock(module: Any, pg_dsn: str) -> None:
    """A copy of stock's ThreadedConnectionPool that sets ``self._lock = threading.Lock()``."""
    pool = vendored_threaded(module.AbstractConnectionPool)(1, 2, pg_dsn)
    outcome: List[Any] = []

    def use() -> None:
        conn = pool.getconn()
        pool.putconn(conn)
        outcome.append(pool.getconn() is conn)

    worker = threading.Thread(target=use, daemon=True)
    worker.start()
    worker.join(timeout=5)
    hung = worker.is_alive()
    if hung:  # the worker stays blocked for good (a daemon): close the connections by hand
        for conn in [*pool._pool, *pool._used.values()]:
            conn.close()
    else:
        pool.closeall()
    assert not hung, "getconn deadlocked on the subclass's own non-reentrant _lock"
    assert outcome == [True]


@pytest.mark.parametrize("module", [psycopg2.pool, pgpool_compat], ids=["stock", "ours"])
def test_threaded_public_methods_call_overridden_underscored_ones(module: Any, pg_dsn: str) -> None:
    pool = underscored_overrides(module.ThreadedConnectionPool)(1, 2, pg_dsn)
    conn = pool.getconn()
    pool.putconn(conn)
    pool.closeall()
    assert pool.calls == ["get", "put", "closeall"]


@pytest.mark.parametrize("module", [psycopg2.pool, pgpool_compat], ids=["stock", "ours"])
def test_threaded_public_methods_call_instance_patched_underscored_ones(
    module: Any, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Test suites patch a pool's methods on the instance (mock.patch.object); stock honours it."""
    pool = module.ThreadedConnectionPool(1, 2, pg_dsn)
    calls: List[str] = []
    for name in ("_getconn", "_putconn", "_closeall"):
        real = getattr(pool, name)

        def spy(*args: Any, _name: str = name, _real: Any = real, **kwargs: Any) -> Any:
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(pool, name, spy)
    try:
        pool.putconn(pool.getconn())
    finally:
        pool.closeall()
    assert calls == ["_getconn", "_putconn", "_closeall"]


@pytest.mark.parametrize("module", [psycopg2.pool, pgpool_compat], ids=["stock", "ours"])
@pytest.mark.parametrize("style", [calls_super, full_override], ids=["super", "full"])
def test_every_connection_goes_through_the_override(
    module: Any, style: SubclassFactory, pg_dsn: str
) -> None:
    pool = style(module.ThreadedConnectionPool)(2, 4, pg_dsn)
    try:
        assert len(pool._pool) == 2
        conns = [pool.getconn() for _ in range(4)]
        assert len({id(conn) for conn in conns}) == 4
        assert all(conn.autocommit for conn in conns)
        assert pool._used == {key: conn for key, conn in zip(range(1, 5), conns)}
        for conn in conns:
            pool.putconn(conn)
        assert len(pool._pool) == 2 and pool._used == {} and pool._rused == {}
    finally:
        pool.closeall()


# -- under threads ---------------------------------------------------------------------------

THREADS = 8
OPS_PER_THREAD = 100
MAXCONN = 3


def _worker(
    pool: Any, me: int, owners: Owners, problems: List[str], expect_autocommit: bool
) -> None:
    rng = random.Random(me)
    for _ in range(OPS_PER_THREAD):
        key: Optional[str] = f"worker-{me}" if rng.random() < 0.3 else None
        try:
            conn = pool.getconn(key)
        except pgpool_compat.PoolError as error:
            if "exhausted" not in str(error):
                problems.append(f"thread {me}: {error!r}")
                return
            time.sleep(0.001)
            continue
        owners.take(conn, me)
        try:
            if expect_autocommit and not conn.autocommit:
                problems.append(f"thread {me}: connection skipped the _connect override")
            with conn.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
            if hasattr(pool, "status"):
                idle, used = pool.status()
                if idle + used > MAXCONN:
                    problems.append(f"status() says {idle} idle + {used} used")
        except Exception as error:
            problems.append(f"thread {me}: {error!r}")
        finally:
            owners.give_back(conn, me)
            pool.putconn(conn, key, close=rng.random() < 0.05)


@pytest.mark.parametrize("style", sorted(THREADED_STYLES))
def test_subclass_under_threads(style: str, pg_dsn: str) -> None:
    census, owners, problems = Census(), Owners(), []
    cls = THREADED_STYLES[style](pgpool_compat.ThreadedConnectionPool)
    pool = cls(1, MAXCONN, pg_dsn, connection_factory=counted_connection(census))
    expect_autocommit = style in {"calls_super", "full_override"}
    try:
        threads = [
            threading.Thread(
                target=_worker, args=(pool, n, owners, problems, expect_autocommit), daemon=True
            )
            for n in range(THREADS)
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        for thread in threads:
            thread.join(timeout=max(0.1, deadline - time.monotonic()))
        assert not any(thread.is_alive() for thread in threads), "a thread hung (deadlock?)"
        assert problems == [] and owners.violations == []
        assert census.peak <= MAXCONN
        assert pool._used == {} and pool._rused == {}
        assert len(pool._pool) <= pool.minconn
        assert len({id(conn) for conn in pool._pool}) == len(pool._pool)
        assert census.live == len(pool._pool)
    finally:
        pool.closeall()
    assert census.live == 0
