"""pgpool_compat.manager beyond queries: pool ids, settings, the fixed defects, the cleaner,
shutdown and atexit. Handles are mocks here because these contracts are about the books;
the flows on real connections are in test_manager_flows.py."""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import threading
import time
from typing import Any, Dict, Iterator, List
from unittest import mock

import psycopg2
import pytest

from pgpool_compat import dsn as dsn_module
from pgpool_compat import manager
from pgpool_compat.manager import Pool, PoolManager

pytestmark = pytest.mark.timeout(60)


def fake_handle(*, closed: int = 0, executing: bool = False) -> mock.Mock:
    handle = mock.Mock()
    handle.closed = closed
    handle.isexecuting = mock.Mock(return_value=executing)
    return handle


class Clock:
    """A settable ``time_method``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def registry() -> Iterator[Dict[str, Any]]:
    with mock.patch.object(PoolManager, "_pools", {}) as pools:
        yield pools
        PoolManager.stop_cleaner()


# -- pool_id ---------------------------------------------------------------------------------

EQUIVALENT = [
    "host=db.example port=5432 user=app dbname=orders password=s3cret",
    "dbname=orders password=s3cret user=app port=5432 host=db.example",
    "  host=db.example   port=5432 user=app dbname=orders password='s3cret'  ",
    "postgresql://app:s3cret@db.example:5432/orders",
    "postgres://app:s3cret@db.example:5432/orders",
    "pgsql://app:s3cret@db.example:5432/orders",
    "postgresql://app:%73%33cret@db.example:5432/orders",
    "postgresql://db.example:5432/orders?user=app&password=s3cret",
]


def test_pool_id_is_one_id_for_equivalent_spellings() -> None:
    ids = {manager.pool_id(spelling) for spelling in EQUIVALENT}
    assert len(ids) == 1
    (only,) = ids
    assert len(only) == 32 and int(only, 16) >= 0


@pytest.mark.parametrize(
    "different",
    [
        "host=db.example port=5432 user=app dbname=orders password=other",  # credentials
        "host=db.example port=5432 user=app dbname=orders",  # no password
        "host=db.example port=5433 user=app dbname=orders password=s3cret",
        "host=db.example port=5432 user=app dbname=orders password=s3cret sslmode=require",
        "host=db.example port=5432 user=app dbname=orders password=s3cret application_name=x",
    ],
)
def test_pool_id_differs_for_a_different_target(different: str) -> None:
    assert manager.pool_id(different) != manager.pool_id(EQUIVALENT[0])


def test_pool_id_reveals_nothing_and_is_not_md5() -> None:
    import hashlib

    dsn = EQUIVALENT[0]
    pid = manager.pool_id(dsn)
    assert "s3cret" not in pid
    assert pid != hashlib.md5(dsn.encode()).hexdigest()
    assert pid != hashlib.md5(f"Session:{dsn}".encode()).hexdigest()
    assert not hasattr(manager.pool_id, "cache_info")  # nothing memoised


def test_pool_id_invalid_dsn_withholds_the_text() -> None:
    with pytest.raises(psycopg2.ProgrammingError) as caught:
        manager.pool_id("host=a password=hunter2 oops")
    assert "hunter2" not in str(caught.value) and "oops" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_libpq_dsn_translates_only_the_queries_scheme() -> None:
    assert dsn_module.libpq_dsn("pgsql://u@h/d") == "postgresql://u@h/d"
    assert dsn_module.libpq_dsn("host=h") == "host=h"


# -- settings from the environment -------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, 1),
        ({"QUERIES_MAX_POOL_SIZE": "7"}, 7),
        ({"PGPOOL_MAX_POOL_SIZE": "3"}, 3),
        ({"PGPOOL_MAX_POOL_SIZE": "3", "QUERIES_MAX_POOL_SIZE": "7"}, 3),
        ({"PGPOOL_MAX_POOL_SIZE": " ", "QUERIES_MAX_POOL_SIZE": "7"}, 7),
    ],
)
def test_max_pool_size_from_environment(environ: Dict[str, str], expected: int) -> None:
    assert manager.max_pool_size_from(environ) == expected


@pytest.mark.parametrize("value", ["many", "0", "-2", "1.5"])
def test_bad_max_pool_size_fails_naming_the_variable(value: str) -> None:
    with pytest.raises(ValueError, match="QUERIES_MAX_POOL_SIZE"):
        manager.max_pool_size_from({"QUERIES_MAX_POOL_SIZE": value})


def test_max_pool_size_is_read_at_import() -> None:
    code = (
        "import pgpool_compat.manager as m; "
        "print(m.DEFAULT_MAX_SIZE, m.Pool('x').max_size, m.Pool.max_size)"
    )
    env = dict(os.environ, QUERIES_MAX_POOL_SIZE="9")
    env.pop("PGPOOL_MAX_POOL_SIZE", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=30, check=True)
    assert out.stdout.split() == ["9", "9", "9"]


# -- exceptions --------------------------------------------------------------------------------

ERRORS = [
    manager.ActivePoolError("p"),
    manager.ConnectionBusyError("c"),
    manager.ConnectionNotFoundError("p", "c"),
    manager.NoIdleConnectionsError("p"),
    manager.PoolFullError("p"),
    manager.PoolNotFoundError("p"),
    manager.InheritedConnectionError("p", "c"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_errors_share_one_base_that_is_a_pool_error(error: Exception) -> None:
    assert isinstance(error, manager.PoolManagerError)
    assert manager.QueriesException is manager.PoolManagerError
    assert isinstance(error, psycopg2.pool.PoolError)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and str(copy) == str(error)


def test_lookup_errors_are_key_errors() -> None:
    assert isinstance(manager.ConnectionNotFoundError("p", "c"), KeyError)
    missing = manager.PoolNotFoundError("p")
    # queries raised KeyError("Pool p has not been created"): the same args and str().
    theirs = KeyError("Pool p has not been created")
    assert missing.args == theirs.args and str(missing) == str(theirs)
    assert missing.pid == "p"
    copy = pickle.loads(pickle.dumps(missing))
    assert (copy.args, copy.pid, str(copy)) == (missing.args, "p", str(missing))


def test_free_after_the_pool_is_gone_raises_what_session_catches() -> None:
    with pytest.raises(manager.ConnectionNotFoundError):
        PoolManager.free("gone", fake_handle())


# -- the one reentrant lock ----------------------------------------------------------------


def test_one_reentrant_lock_for_everything() -> None:
    assert PoolManager._lock is Pool._lock is manager.Connection._lock
    with PoolManager._lock, PoolManager._lock:  # reentrant: a __del__ inside the lock is fine
        PoolManager.create("p")
        PoolManager.add("p", fake_handle())
        assert PoolManager.size("p") == 1


def test_free_from_a_finalizer_running_inside_the_lock() -> None:
    PoolManager.create("p", max_size=2)
    handle = fake_handle()
    PoolManager.add("p", handle)

    class Session:
        def __del__(self) -> None:
            PoolManager.free("p", handle)

    session = Session()
    PoolManager.lock("p", handle, session)
    done = threading.Event()

    def drop_inside_the_lock() -> None:
        nonlocal session
        with PoolManager._lock:
            del session  # __del__ -> free -> the same lock
        done.set()

    worker = threading.Thread(target=drop_inside_the_lock, daemon=True)
    worker.start()
    assert done.wait(5), "deadlocked"
    assert PoolManager.has_idle_connection("p")


def test_concurrent_create_never_replaces_a_pool(registry: Dict[str, Any]) -> None:
    winners: List[Pool] = []
    losers: List[BaseException] = []
    start = threading.Barrier(8)

    def create() -> None:
        start.wait(5)
        try:
            PoolManager.create("race")
            winners.append(registry["race"])
        except KeyError as error:
            losers.append(error)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(winners) == 1 and len(losers) == 7
    assert registry["race"] is winners[0]


def test_registry_reads_survive_concurrent_removal() -> None:
    errors: List[BaseException] = []
    stop = time.monotonic() + 0.5

    def churn() -> None:
        n = 0
        while time.monotonic() < stop:
            pid = f"churn-{threading.get_ident()}-{n}"
            n += 1
            PoolManager.create(pid)
            PoolManager.add(pid, fake_handle())
            PoolManager.remove(pid)

    def read() -> None:
        try:
            while time.monotonic() < stop:
                PoolManager.report()
                PoolManager._sweep()
        except BaseException as error:  # a RuntimeError here is the defect
            errors.append(error)

    threads = [threading.Thread(target=churn) for _ in range(2)]
    threads += [threading.Thread(target=read) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == []


# -- idle TTL and pruning ---------------------------------------------------------------------


def test_idle_ttl_is_enforced_when_the_pool_is_used() -> None:
    clock = Clock()
    PoolManager.create("p", idle_ttl=10, max_size=2, time_method=clock)
    old = fake_handle()
    PoolManager.add("p", old)
    session = mock.Mock()
    assert PoolManager.get("p", session) is old
    PoolManager.free("p", old)
    clock.now += 5
    assert PoolManager.get("p", session) is old  # within the TTL: reused
    PoolManager.free("p", old)
    clock.now += 11
    with pytest.raises(manager.NoIdleConnectionsError):
        PoolManager.get("p", session)  # past the TTL: closed on access
    old.close.assert_called_once_with()
    assert PoolManager.size("p") == 0


def test_clean_prunes_closed_connections_but_not_held_ones() -> None:
    PoolManager.create("p", max_size=3)
    loose, held = fake_handle(closed=2), fake_handle()
    PoolManager.add("p", loose)
    PoolManager.add("p", held)
    session = mock.Mock()
    PoolManager.lock("p", held, session)
    held.closed = 2  # its server went away while the session holds it
    PoolManager.clean("p")
    assert not PoolManager.has_connection("p", loose)
    assert PoolManager.has_connection("p", held)  # the session still owns it
    PoolManager.free("p", held)
    PoolManager.clean("p")
    assert "p" not in PoolManager.instance()  # empty: removed, as queries' clean does


def test_closed_connections_do_not_hold_slots() -> None:
    PoolManager.create("p", max_size=1)
    PoolManager.add("p", fake_handle(closed=2))
    assert PoolManager.is_full("p")
    with pytest.raises(manager.NoIdleConnectionsError):
        PoolManager.get("p", mock.Mock())
    assert not PoolManager.is_full("p")  # the get pruned it
    PoolManager.add("p", fake_handle())


def test_close_removes_all_it_can_before_raising_for_busy(registry: Dict[str, Any]) -> None:
    pool = Pool("p", max_size=3)
    idle, busy = fake_handle(), fake_handle(executing=True)
    pool.add(busy)
    pool.add(idle)
    with pytest.raises(manager.ConnectionBusyError):
        pool.close()
    idle.close.assert_called_once_with()
    assert list(pool.connections) == [id(busy)]


# -- background cleaner ------------------------------------------------------------------------


def wait_for(predicate: Any, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


def test_background_cleaner_expires_idle_pools_without_access() -> None:
    clock = Clock()
    PoolManager.create("p", idle_ttl=10, max_size=1, time_method=clock)
    handle = fake_handle()
    PoolManager.add("p", handle)
    PoolManager.lock("p", handle, mock.Mock())
    PoolManager.free("p", handle)
    PoolManager.start_cleaner(0.02)
    cleaner = PoolManager._cleaner
    assert cleaner is not None and cleaner.daemon
    time.sleep(0.1)
    handle.close.assert_not_called()
    clock.now += 11
    assert wait_for(lambda: handle.close.called)
    assert "p" in PoolManager.instance()  # the cleaner never removes a pool
    PoolManager.stop_cleaner()
    assert not cleaner.is_alive() and PoolManager._cleaner is None


def test_start_cleaner_replaces_and_validates() -> None:
    PoolManager.start_cleaner(10)
    first = PoolManager._cleaner
    PoolManager.start_cleaner(10)
    assert first is not None and not first.is_alive()
    assert PoolManager._cleaner is not first
    for bad in (0, -1, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError):
            PoolManager.start_cleaner(bad)  # type: ignore[arg-type]


def test_a_failing_pool_does_not_stop_the_cleaner(registry: Dict[str, Any]) -> None:
    broken = mock.Mock()
    broken.clean.side_effect = RuntimeError("boom")
    registry["broken"] = broken
    PoolManager.start_cleaner(0.01)
    assert wait_for(lambda: broken.clean.call_count >= 3)
    assert PoolManager._cleaner is not None and PoolManager._cleaner.is_alive()


def test_a_failing_cleaning_pass_is_logged_whole_and_the_next_keeps_the_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    passes: List[float] = []

    def failing_sweep() -> None:
        passes.append(time.monotonic())
        raise RuntimeError("boom")

    with mock.patch.object(PoolManager, "_sweep", failing_sweep), caplog.at_level(
        logging.DEBUG, logger="pgpool_compat"
    ):
        PoolManager.start_cleaner(60)
        assert wait_for(lambda: len(passes) >= 1)
        time.sleep(0.5)  # a backoff would have retried by now (0.05 s, 0.1 s, ...)
        assert len(passes) == 1, "the next pass waits the interval, failure or not"
        PoolManager.stop_cleaner()
    failures = [r for r in caplog.records if "cleaning pass failed" in r.getMessage()]
    assert [r.getMessage() for r in failures] == ["manager: cleaning pass failed"]
    assert failures[0].exc_info is not None  # the traceback, not just a class name
    assert not any("reconnect" in r.getMessage() for r in caplog.records)


def test_a_subclass_cleaner_runs_the_subclass_sweep() -> None:
    swept = threading.Event()

    class Manager(PoolManager):
        @classmethod
        def _sweep(cls) -> None:
            swept.set()

    Manager.start_cleaner(60)
    try:
        assert swept.wait(5), "the subclass's own _sweep never ran"
    finally:
        Manager.stop_cleaner()


# -- shutdown and atexit -----------------------------------------------------------------------


def test_shutdown_twice_with_locked_and_executing_connections(registry: Dict[str, Any]) -> None:
    PoolManager.create("p", max_size=3)
    idle, locked, executing = fake_handle(), fake_handle(), fake_handle(executing=True)
    for handle in (idle, locked, executing):
        PoolManager.add("p", handle)
    session = mock.Mock()
    PoolManager.lock("p", locked, session)
    PoolManager.start_cleaner(10)
    cleaner = PoolManager._cleaner
    assert PoolManager.shutdown() == {"p": 1}  # the executing one is reported
    idle.close.assert_called_once_with()
    locked.close.assert_called_once_with()
    executing.close.assert_not_called()
    assert registry == {}
    assert cleaner is not None and not cleaner.is_alive()
    assert PoolManager.shutdown() == {}


def test_shutdown_never_hangs_on_a_close_that_blocks() -> None:
    PoolManager.create("p", max_size=2)
    release = threading.Event()
    stuck = fake_handle()
    stuck.close.side_effect = lambda: release.wait(10)  # a query running in another thread
    PoolManager.add("p", stuck)
    session = mock.Mock()
    PoolManager.lock("p", stuck, session)
    started = time.monotonic()
    try:
        assert PoolManager.shutdown(timeout=0.2) == {"p": 1}
        assert time.monotonic() - started < 2
    finally:
        release.set()


def test_shutdown_reports_when_the_lock_is_held_elsewhere() -> None:
    PoolManager.create("p")
    PoolManager.add("p", fake_handle())
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with PoolManager._lock:
            holding.set()
            done.wait(10)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert holding.wait(5)
    try:
        started = time.monotonic()
        assert PoolManager.shutdown(timeout=0.2) == {"p": 1}
        assert time.monotonic() - started < 2
    finally:
        done.set()
        holder.join(5)


def test_shutdown_calls_each_pools_public_shutdown(registry: Dict[str, Any]) -> None:
    """Issue 10 item 5: queries' own test replaces ``pool.shutdown`` with a mock and asserts
    the call; a subclass that overrides it expects the same. The report still counts what a
    pool left open, and the manager's deadline still bounds the real method."""
    PoolManager.create("mocked")
    PoolManager.create("stuck", max_size=2)
    mocked = registry["mocked"]
    mocked.shutdown = mock.Mock()
    calls: List[str] = []

    class Audited(Pool):
        def shutdown(self, timeout: Any = None) -> None:
            calls.append(self.id)
            super().shutdown(timeout)

    registry["audited"] = Audited("audited")
    PoolManager.add("audited", fake_handle())
    release = threading.Event()
    stuck = fake_handle()
    stuck.close.side_effect = lambda: release.wait(10)  # a query running in another thread
    PoolManager.add("stuck", stuck)
    session = mock.Mock()  # alive: the connection is held, so it is closed in a thread
    PoolManager.lock("stuck", stuck, session)
    started = time.monotonic()
    try:
        assert PoolManager.shutdown(timeout=0.3) == {"stuck": 1}
        assert time.monotonic() - started < 2  # bounded by the manager's timeout
    finally:
        release.set()
    mocked.shutdown.assert_called_once_with()
    assert calls == ["audited"]
    assert registry == {}


def test_register_atexit_registers_once() -> None:
    with mock.patch.object(PoolManager, "_atexit_registered", False), \
            mock.patch("atexit.register") as register:
        for _ in range(3):
            PoolManager.register_atexit()
    register.assert_called_once_with(PoolManager.shutdown)


def test_report_holds_ids_and_numbers_only() -> None:
    PoolManager.create("p", max_size=2)
    handle = fake_handle()
    PoolManager.add("p", handle)
    session = mock.Mock()
    PoolManager.lock("p", handle, session)
    report = PoolManager.report()
    pool_report = report["pools"]["p"]
    assert pool_report["connections"] == {"busy": 1, "closed": 0, "executing": 0, "idle": 0,
                                          "locked": 1}
    assert pool_report["max_size"] == 2 and pool_report["waiting"] == 0
    assert report["process"] == os.getpid()


def test_connection_rejects_a_negative_timeout() -> None:
    with pytest.raises(ValueError, match="timeout"), PoolManager.connection("host=x", timeout=-1):
        pass


def test_pool_connection_lists() -> None:
    pool = Pool("p", max_size=4)
    idle, held, executing, closed = (fake_handle(), fake_handle(), fake_handle(executing=True),
                                     fake_handle(closed=1))
    for handle in (idle, held, executing, closed):
        pool.add(handle)
    session = mock.Mock()
    pool.lock(held, session)

    def handles(connections: List[manager.Connection]) -> List[Any]:
        return [c.handle for c in connections]

    assert handles(pool.idle_connections) == [idle]
    assert handles(pool.busy_connections) == [held, executing]
    assert handles(pool.executing_connections) == [executing]
    assert handles(pool.locked_connections) == [held]
    assert handles(pool.closed_connections) == [closed]
    assert pool.is_full and len(pool) == 4
    del session  # a dead session's lock no longer makes the connection busy
    assert handles(pool.idle_connections) == [idle, held]
    assert handles(pool.locked_connections) == [held]  # still marked until freed


def test_ensure_pool_exists() -> None:
    with pytest.raises(manager.PoolNotFoundError):
        PoolManager._ensure_pool_exists("missing")
    PoolManager.create("present")
    PoolManager._ensure_pool_exists("present")


def test_exported_from_the_package() -> None:
    import pgpool_compat

    for name in ("PoolManager", "Pool", "Connection", "PoolManagerError", "QueriesException",
                 "ActivePoolError", "ConnectionBusyError", "ConnectionNotFoundError",
                 "NoIdleConnectionsError", "PoolFullError", "pool_id"):
        assert getattr(pgpool_compat, name) is getattr(manager, name), name


# -- issue 10 item 9: loose arguments of the manager additions --------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "named"),
    [
        ({"max_size": 0}, ValueError, "max_size"),
        ({"max_size": -1}, ValueError, "max_size"),
        ({"max_size": "2"}, TypeError, "max_size"),
        ({"max_size": True}, TypeError, "max_size"),
        ({"idle_ttl": -5}, ValueError, "idle_ttl"),
        ({"idle_ttl": float("nan")}, ValueError, "idle_ttl"),
        ({"idle_ttl": "60"}, TypeError, "idle_ttl"),
        ({"timeout": "1"}, TypeError, "timeout"),
    ],
)
def test_manager_connection_loose_arguments_name_the_argument(
    registry: Dict[str, Any], kwargs: Dict[str, Any], error: type, named: str
) -> None:
    """Each bad argument is refused before anything happens (no pool created, no connect),
    with an error that names it; before, ``max_size=0`` gave ``PoolFullError`` on every
    call, ``"2"`` an anonymous ``TypeError`` and ``idle_ttl=-5`` was silently accepted."""
    dsn = "host=127.0.0.1 port=1 password=s3cret"
    with pytest.raises(error, match=named), PoolManager.connection(dsn, **kwargs):
        pass  # pragma: no cover - never entered
    assert registry == {}


def test_pool_id_of_none_is_a_type_error_naming_the_dsn() -> None:
    with pytest.raises(TypeError, match="dsn"):
        manager.pool_id(None)  # type: ignore[arg-type]


def test_a_waiter_served_as_it_gives_up_hands_its_grant_to_the_next() -> None:
    # The engine's give-up rule on the manager's books: a slot reserved for a caller that
    # timed out (or was interrupted) in the same instant goes to the next caller in line,
    # and an idle connection locked to it is freed for the next one.
    pool = Pool("p", max_size=1)
    first = manager._Turn(manager._Lease(), 0.0)
    second = manager._Turn(manager._Lease(), 0.0)
    pool._waiters.enqueue(first)
    pool._waiters.enqueue(second)
    with manager._LOCK:
        pool._serve()
        assert first.grant is manager.SLOT and first.handle is None and pool._reserved == 1
        assert second.grant is None  # the pool is full now: it waits
        PoolManager._give_up(pool, first)
        assert second.grant is manager.SLOT and second.handle is None
        assert pool._reserved == 1 and not pool._waiters  # one slot, handed on, not leaked
        pool._reserved -= 1  # second connects: its handle is added in place of the slot
        handle = fake_handle()
        pool.add(handle)
        third = manager._Turn(manager._Lease(), 0.0)
        pool._waiters.enqueue(third)
        pool._serve()
        assert third.handle is handle  # the idle connection, locked to third's lease
        fourth = manager._Turn(manager._Lease(), 0.0)
        pool._waiters.enqueue(fourth)
        PoolManager._give_up(pool, third)
        assert fourth.handle is handle and pool.connection_handle(handle).locked
