"""PoolManager flows on real psycopg2 connections and a real server: concurrency bounds,
waiting, weak-reference release, TTL expiry, rollback and discard on exit, shutdown with busy
connections, a server restart, and no DSN kept or shown anywhere."""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
import threading
import time
import types
import uuid
from collections import defaultdict
from typing import Any, ClassVar, Dict, Iterator, List, Set
from unittest import mock

import psycopg2
import psycopg2.extensions
import pytest

from pgpool_compat import manager
from pgpool_compat.engine.stats import live_runners
from pgpool_compat.manager import PoolManager
from tests.helpers import backend_count, backend_pids, terminate_backends

pytestmark = pytest.mark.timeout(60)

IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE


@pytest.fixture(autouse=True)
def registry() -> Iterator[Dict[str, Any]]:
    """A private registry per test; whatever the test left open is shut down."""
    with pytest.MonkeyPatch.context() as patch:
        pools: Dict[str, Any] = {}
        patch.setattr(PoolManager, "_pools", pools)
        try:
            yield pools
        finally:
            PoolManager.shutdown(timeout=5)


def with_app(dsn: str, name: str) -> str:
    return f"{dsn} application_name={name}"


def backend_pid(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return int(cur.fetchone()[0])


def wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def test_many_threads_on_two_dsns_never_exceed_max_size(pg_dsn: str, admin_conn: Any) -> None:
    tag = uuid.uuid4().hex[:8]
    limits = {with_app(pg_dsn, f"mgr_a_{tag}"): 3, with_app(pg_dsn, f"mgr_b_{tag}"): 2}
    baseline = backend_count(pg_dsn)
    seen: Dict[str, Set[int]] = defaultdict(set)
    errors: List[BaseException] = []
    peaks: Dict[str, int] = defaultdict(int)
    done = threading.Event()

    def monitor() -> None:
        with admin_conn.cursor() as cur:
            while not done.is_set():
                cur.execute(
                    "SELECT application_name, count(*) FROM pg_stat_activity "
                    "WHERE application_name LIKE %s GROUP BY 1",
                    (f"mgr_%_{tag}",),
                )
                for app, count in cur.fetchall():
                    peaks[app] = max(peaks[app], count)
                time.sleep(0.005)

    def work(dsn: str) -> None:
        try:
            for _ in range(12):
                borrowed = PoolManager.connection(dsn, max_size=limits[dsn], timeout=10)
                with borrowed as conn, conn.cursor() as cur:
                    cur.execute("SELECT pg_backend_pid(), pg_sleep(0.003)")
                    seen[dsn].add(cur.fetchone()[0])
        except BaseException as error:
            errors.append(error)

    watcher = threading.Thread(target=monitor)
    watcher.start()
    workers = [threading.Thread(target=work, args=(dsn,)) for dsn in limits for _ in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    done.set()
    watcher.join(10)
    assert errors == []
    for dsn, limit in limits.items():
        assert 1 <= len(seen[dsn]) <= limit  # distinct backends ever used by the pool
        assert PoolManager.size(manager.pool_id(dsn)) <= limit
    assert max(peaks.values()) >= 1 and all(
        peaks[f"mgr_{k}_{tag}"] <= limit for k, limit in zip("ab", limits.values())
    )
    pooled = sum(PoolManager.size(manager.pool_id(dsn)) for dsn in limits)
    # Server-side too: once earlier tests' exiting backends are gone, only the pooled ones.
    assert wait_for(lambda: backend_count(pg_dsn) - baseline <= pooled <= sum(limits.values()))


def waiting(pid: str) -> int:
    return int(PoolManager.report()["pools"][pid]["waiting"])


def test_full_pool_raises_at_once_or_waits_first_come_first_served(pg_dsn: str) -> None:
    dsn = with_app(pg_dsn, "mgr_wait")
    order: List[int] = []
    with PoolManager.connection(dsn, max_size=1) as held:
        started = time.monotonic()
        with pytest.raises(manager.PoolFullError), PoolManager.connection(dsn):
            pass
        with pytest.raises(manager.PoolFullError), PoolManager.connection(dsn, timeout=0.1):
            pass
        assert 0.1 <= time.monotonic() - started < 1.5

        def wait_in_line(position: int) -> None:
            with PoolManager.connection(dsn, timeout=10) as conn:
                order.append(position)
                assert conn is held  # the one connection, handed on

        waiters = []
        pid = manager.pool_id(dsn)
        for position in range(3):
            waiter = threading.Thread(target=wait_in_line, args=(position,))
            waiter.start()
            waiters.append(waiter)
            # each is queued before the next arrives
            assert wait_for(lambda n=position: waiting(pid) == n + 1)
    for waiter in waiters:
        waiter.join(10)
    assert order == [0, 1, 2]


def test_a_garbage_collected_session_releases_its_connection(pg_dsn: str) -> None:
    dsn = with_app(pg_dsn, "mgr_gc")
    pid = manager.pool_id(dsn)
    with PoolManager.connection(dsn, max_size=1) as conn:
        first = backend_pid(conn)

    class Session:
        """A queries-style session that never frees what it locks."""

    session = Session()
    session.cycle = session  # type: ignore[attr-defined]
    assert PoolManager.get(pid, session) is conn
    got: List[int] = []

    def waiter() -> None:
        with PoolManager.connection(dsn, timeout=10) as again:
            got.append(backend_pid(again))

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.1)
    assert got == []  # still held by the session
    del session
    gc.collect()
    thread.join(10)
    assert got == [first]


def test_idle_ttl_closes_connections_on_access_and_in_the_background(pg_dsn: str) -> None:
    on_access, background = with_app(pg_dsn, "mgr_ttl_a"), with_app(pg_dsn, "mgr_ttl_b")
    with PoolManager.connection(on_access, idle_ttl=0.2) as old:
        old_backend = backend_pid(old)
    with PoolManager.connection(background, idle_ttl=0.2) as lonely:
        lonely_backend = backend_pid(lonely)
    time.sleep(0.3)
    with PoolManager.connection(on_access, idle_ttl=0.2) as new:
        assert backend_pid(new) != old_backend
    assert old.closed
    assert not lonely.closed  # nobody used that pool, no cleaner yet
    PoolManager.start_cleaner(0.05)
    assert wait_for(lambda: bool(lonely.closed), 3)
    assert wait_for(lambda: lonely_backend not in backend_pids(pg_dsn), 3)


def test_exit_rolls_back_and_frees(pg_dsn: str, admin_conn: Any) -> None:
    dsn = with_app(pg_dsn, "mgr_rollback")
    table = f"mgr_probe_{uuid.uuid4().hex[:8]}"
    with PoolManager.connection(dsn) as conn:
        with conn.cursor() as cur:
            cur.execute(f"CREATE TABLE {table} (x int)")
        assert conn.info.transaction_status != IDLE
    assert conn.info.transaction_status == IDLE
    with admin_conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (table,))
        assert cur.fetchone()[0] is None  # never committed
    with pytest.raises(ZeroDivisionError), PoolManager.connection(dsn) as again:
        assert again is conn
        with again.cursor() as cur:
            cur.execute("SELECT 1")
        raise ZeroDivisionError
    with PoolManager.connection(dsn) as third:
        assert third is conn and third.info.transaction_status == IDLE


def test_a_broken_connection_is_removed_not_freed(pg_dsn: str) -> None:
    dsn = with_app(pg_dsn, "mgr_broken")
    pid = manager.pool_id(dsn)
    with pytest.raises(psycopg2.OperationalError), PoolManager.connection(dsn) as conn:
        terminate_backends(pg_dsn, [backend_pid(conn)])
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
    assert conn.closed and PoolManager.size(pid) == 0
    with PoolManager.connection(dsn) as fresh:
        assert fresh is not conn and backend_pid(fresh) > 0


def sleeping_backends(admin_conn: Any, application_name: str) -> int:
    with admin_conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
            "AND state = 'active' AND query LIKE 'SELECT pg_sleep%%'",
            (application_name,),
        )
        return int(cur.fetchone()[0])


def test_shutdown_with_busy_connections_never_hangs(pg_dsn: str, admin_conn: Any) -> None:
    dsn = with_app(pg_dsn, "mgr_shutdown")
    baseline = backend_count(pg_dsn)
    in_query, holding, release = threading.Event(), threading.Event(), threading.Event()
    outcomes: List[str] = []

    def long_query() -> None:
        try:
            with PoolManager.connection(dsn, max_size=2) as conn, conn.cursor() as cur:
                in_query.set()
                cur.execute("SELECT pg_sleep(1.5)")
        except psycopg2.Error as error:
            outcomes.append(type(error).__name__)
        else:
            outcomes.append("finished")

    def hold_idle() -> None:
        with PoolManager.connection(dsn, max_size=2):
            holding.set()
            release.wait(10)

    threads = [threading.Thread(target=long_query), threading.Thread(target=hold_idle)]
    for thread in threads:
        thread.start()
    assert in_query.wait(5) and holding.wait(5)
    assert wait_for(lambda: sleeping_backends(admin_conn, "mgr_shutdown") == 1)
    started = time.monotonic()
    left = PoolManager.shutdown(timeout=0.5)
    assert time.monotonic() - started < 1.5
    assert left == {manager.pool_id(dsn): 1}  # the one mid-query could not close in time
    assert PoolManager.report()["pools"] == {}
    assert PoolManager.shutdown() == {}  # idempotent
    release.set()
    for thread in threads:
        thread.join(10)
    assert outcomes == ["finished"]
    assert wait_for(lambda: backend_count(pg_dsn) <= baseline, 5)


def test_server_restart_drops_stale_connections(own_server: Any) -> None:
    dsn = own_server.dsn
    pid = manager.pool_id(dsn)
    with PoolManager.connection(dsn, max_size=2) as first, \
            PoolManager.connection(dsn, max_size=2) as second:
        stale = {id(first), id(second)}
    own_server.restart()
    with PoolManager.connection(dsn, max_size=2) as conn:
        assert id(conn) not in stale  # both idle ones were probed and dropped
        assert backend_pid(conn) > 0
    assert first.closed and second.closed
    assert PoolManager.size(pid) == 1
    with pytest.raises(psycopg2.Error), PoolManager.connection(dsn, max_size=2) as borrowed:
        own_server.restart()  # the server goes away while the connection is borrowed
        backend_pid(borrowed)
    assert borrowed.closed and PoolManager.size(pid) == 0
    with PoolManager.connection(dsn, max_size=2) as conn:
        assert backend_pid(conn) > 0


def test_the_dsn_is_never_kept_or_shown(pg_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    secret = f"hunter2-{uuid.uuid4().hex}"
    dsn = "".join([pg_dsn, " password=", secret])  # trust auth ignores it; we must too
    caplog.set_level(logging.DEBUG, logger="pgpool_compat")
    with PoolManager.connection(dsn, max_size=1) as conn, \
            pytest.raises(manager.PoolFullError) as full, PoolManager.connection(dsn):
        pass
    gc.collect()
    holders = [r for r in gc.get_referrers(dsn) if not isinstance(r, types.FrameType)]
    assert holders == []  # only this test's own frame refers to the DSN
    shown = [repr(PoolManager.report()), str(full.value), repr(full.value), caplog.text]
    assert all(secret not in text and pg_dsn not in text for text in shown)
    wrapper = PoolManager.get_connection(manager.pool_id(dsn), conn)
    assert secret not in repr(vars(wrapper))  # psycopg2 masks it in the handle's repr


def test_a_forked_child_never_uses_or_closes_the_parents_connections(pg_dsn: str) -> None:
    dsn = with_app(pg_dsn, "mgr_fork")
    with PoolManager.connection(dsn) as conn:
        parent_backend = backend_pid(conn)
    child = os.fork()
    if child == 0:  # the child: report through the exit code only
        code = 1
        try:
            with PoolManager.connection(dsn) as mine:
                code = 0 if mine is not conn and backend_pid(mine) != parent_backend else 2
            PoolManager.shutdown(timeout=1)
        finally:
            os._exit(code)
    deadline = time.monotonic() + 20
    while True:
        done, status = os.waitpid(child, os.WNOHANG)
        if done:
            break
        assert time.monotonic() < deadline, "child did not finish"
        time.sleep(0.02)
    assert os.waitstatus_to_exitcode(status) == 0
    with PoolManager.connection(dsn) as again:  # the parent's session is intact
        assert again is conn and backend_pid(again) == parent_backend


def test_a_waiter_sleeps_until_served_without_polling(pg_dsn: str) -> None:
    """connection(timeout=...) waits on the engine's waiter hand-off: while nothing is freed
    it never takes the manager lock (0.1.0 re-checked every 50 ms), and a free serves it."""
    dsn = with_app(pg_dsn, "mgr_no_poll")
    acquisitions: List[str] = []
    real_acquire = manager._LOCK.acquire

    def counting_acquire(*args: Any, **kwargs: Any) -> bool:
        acquisitions.append(threading.current_thread().name)
        return real_acquire(*args, **kwargs)

    got: List[Any] = []

    def wait_for_it() -> None:
        with PoolManager.connection(dsn, timeout=10) as conn:
            got.append(conn)

    with PoolManager.connection(dsn, max_size=1) as held:
        waiter = threading.Thread(target=wait_for_it, name="mgr-waiter")
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(manager._LOCK, "acquire", counting_acquire)
            waiter.start()
            pid = manager.pool_id(dsn)
            assert wait_for(lambda: waiting(pid) == 1)
            queued = acquisitions.count("mgr-waiter")
            time.sleep(0.5)
            assert acquisitions.count("mgr-waiter") == queued, "the waiter polled the lock"
    waiter.join(5)
    assert got == [held]


class SubManager(PoolManager):
    """A subclass, as applications write to extend the manager: its cleaner is its own."""


@pytest.mark.parametrize("manager", [PoolManager, SubManager], ids=["manager", "subclass"])
def test_a_forked_child_runs_its_own_cleaner(pg_dsn: str, manager: Any) -> None:
    """The parent's cleaner thread does not exist in a child: the child starts its own."""
    from tests.dropin.test_fork import run_in_child

    manager.start_cleaner(0.05)

    def child() -> Dict[str, Any]:
        cleaner = manager._cleaner
        return {"running": cleaner is not None and cleaner.is_alive(),
                "interval": cleaner.interval if cleaner is not None else None}

    try:
        assert run_in_child(child) == {"running": True, "interval": 0.05}
    finally:
        manager.stop_cleaner()


def test_a_forked_child_uses_the_manager_when_a_parent_thread_held_its_lock(
    pg_dsn: str,
) -> None:
    from tests.dropin.test_fork import held_by_another_thread, run_in_child

    dsn = with_app(pg_dsn, "mgr_fork_lock")

    def child() -> Dict[str, Any]:
        with PoolManager.connection(dsn) as conn:
            return {"pid": backend_pid(conn)}

    with held_by_another_thread(PoolManager._lock):
        assert run_in_child(child, timeout=10.0)["pid"] > 0


# -- adversarial trial fixes ------------------------------------------------------------------


class Clock:
    """A settable ``time_method``: TTL tests without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Holder:
    """A queries-style session: weakly referenced by the connection it locks."""


def test_a_connection_added_after_the_pool_idled_past_its_ttl_is_not_expired(
    pg_dsn: str,
) -> None:
    """Pool.add did not restart the idle clock: a get() right after adding a fresh
    connection to a pool idle past its TTL closed it and raised NoIdleConnectionsError."""
    clock, pid = Clock(), "mgr_ttl_add"
    PoolManager.create(pid, idle_ttl=1, max_size=3, time_method=clock)
    first = psycopg2.connect(pg_dsn)
    PoolManager.add(pid, first)
    holder = Holder()
    assert PoolManager.get(pid, holder) is first
    PoolManager.free(pid, first)  # the pool is idle from now
    clock.now += 2  # past the TTL
    fresh = psycopg2.connect(pg_dsn)
    PoolManager.add(pid, fresh)  # pre-warmed: a connection added now has not been idle
    # So not every connection of the pool has idled past the TTL: none is closed (the TTL
    # is the pool's), and get() hands out the oldest idle one.
    assert PoolManager.get(pid, holder) is first
    assert not fresh.closed and not first.closed
    other = Holder()
    assert PoolManager.get(pid, other) is fresh and backend_pid(fresh) > 0
    PoolManager.free(pid, first)
    PoolManager.free(pid, fresh)
    clock.now += 2  # now every connection has idled past the TTL
    with pytest.raises(manager.NoIdleConnectionsError):
        PoolManager.get(pid, holder)
    assert fresh.closed and first.closed


def test_a_cleaner_pass_between_add_and_lock_keeps_the_new_connection(pg_dsn: str) -> None:
    """queries.Session adds its new connection and then locks it; the background cleaner
    could run in between and close it as expired (Session() then failed in lock())."""
    clock, pid = Clock(), "mgr_ttl_race"
    PoolManager.create(pid, idle_ttl=1, max_size=2, time_method=clock)
    old = psycopg2.connect(pg_dsn)
    PoolManager.add(pid, old)
    holder = Holder()
    PoolManager.get(pid, holder)
    PoolManager.free(pid, old)
    clock.now += 2
    fresh = psycopg2.connect(pg_dsn)
    PoolManager.add(pid, fresh)
    PoolManager._sweep()  # what the cleaner thread runs, between Session's add and lock
    PoolManager.lock(pid, fresh, holder)
    assert not fresh.closed and backend_pid(fresh) > 0
    PoolManager.free(pid, fresh)


class OwnRegistry(PoolManager):
    """A subclass with its own registry, as applications write to keep their pools apart."""

    _pools: ClassVar[Dict[str, Any]] = {}


@pytest.fixture
def own_registry() -> Iterator[type]:
    try:
        yield OwnRegistry
    finally:
        OwnRegistry.shutdown(timeout=5)


def test_a_forked_child_forgets_the_connections_of_every_pool(
    pg_dsn: str, own_registry: Any
) -> None:
    """The fork handler cleared PoolManager._pools only: a subclass with its own registry (or a
    Pool made by hand) handed the parent's connection to the child, and the child's
    shutdown() closed it under the parent."""
    from tests.dropin.test_fork import run_in_child

    in_subclass = psycopg2.connect(pg_dsn)
    in_subclass.autocommit = True
    own_registry.create("mine", 60, 2)
    own_registry.add("mine", in_subclass)
    by_hand = manager.Pool("by-hand", max_size=2)
    standalone = psycopg2.connect(pg_dsn)
    standalone.autocommit = True
    by_hand.add(standalone)
    backends = (backend_pid(in_subclass), backend_pid(standalone))

    def child() -> Dict[str, Any]:
        outcome: Dict[str, Any] = {"size": own_registry.size("mine"), "by_hand": len(by_hand)}
        try:
            own_registry.get("mine", Holder())
            outcome["got"] = "a connection"
        except manager.NoIdleConnectionsError:
            outcome["got"] = "none"
        own_registry.shutdown(timeout=2)  # the child's own cleanup
        by_hand.shutdown(timeout=2)
        return outcome

    assert run_in_child(child) == {"size": 0, "by_hand": 0, "got": "none"}
    # The parent's connections were neither used nor closed by the child.
    assert (backend_pid(in_subclass), backend_pid(standalone)) == backends
    by_hand.shutdown(timeout=2)


def test_a_collected_session_serves_the_waiters_of_a_subclass_pool(
    pg_dsn: str, own_registry: Any
) -> None:
    """The wake-up after a session died holding a connection walked PoolManager._pools
    only: a subclass's waiter slept out its whole timeout."""
    dsn = with_app(pg_dsn, "mgr_gc_sub")
    pid = manager.pool_id(dsn)
    with own_registry.connection(dsn, max_size=1) as conn:
        first = backend_pid(conn)
    holder: Any = Holder()
    assert own_registry.get(pid, holder) is conn
    got: List[Any] = []

    def waiter() -> None:
        started = time.monotonic()
        with own_registry.connection(dsn, timeout=5) as again:
            got.append((backend_pid(again), time.monotonic() - started))

    thread = threading.Thread(target=waiter)
    thread.start()
    assert wait_for(lambda: own_registry.report()["pools"][pid]["waiting"] == 1)
    holder = None  # collected at once (no cycle): the weak reference's callback runs
    thread.join(10)
    assert not thread.is_alive()
    assert len(got) == 1 and got[0][0] == first and got[0][1] < 2.5, got


def test_pool_closed_sees_every_managers_registry(pg_dsn: str, own_registry: Any) -> None:
    """Pool.closed read PoolManager._pools only: every subclass pool looked closed (and
    disappeared from the metrics)."""
    dsn = with_app(pg_dsn, "mgr_closed_sub")
    pid = manager.pool_id(dsn)
    with own_registry.connection(dsn) as conn:
        assert backend_pid(conn) > 0
    pool = own_registry._pools[pid]
    assert pool.closed is False
    assert pool in live_runners()  # exported by the metrics
    own_registry.remove(pid)
    assert pool.closed is True and pool not in live_runners()
    assert manager.Pool("never-registered").closed is True


class SlowConnects:
    """Holds every ``connection()`` connect until released (bounded), as a slow network."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.real = manager.connect_without_secrets

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        assert self.release.wait(10), "never released"
        return self.real(*args, **kwargs)


@pytest.mark.parametrize("how", ["clean", "remove"])
def test_clean_or_remove_never_strands_the_waiters_of_a_connect_in_flight(
    pg_dsn: str, how: str
) -> None:
    """clean(pid) / remove(pid) dropped a pool whose only slot was a connect in flight,
    without turning its waiters away: the waiter slept out its timeout (PoolFullError)."""
    dsn = with_app(pg_dsn, f"mgr_inflight_{how}")
    pid = manager.pool_id(dsn)
    slow = SlowConnects()
    results: Dict[str, Any] = {}

    def user(name: str, timeout: Any) -> None:
        started = time.monotonic()
        try:
            with PoolManager.connection(dsn, max_size=1, timeout=timeout) as conn:
                results[name] = (backend_pid(conn), time.monotonic() - started)
        except BaseException as error:  # reported to the test thread
            results[name] = error

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(manager, "connect_without_secrets", slow)
        connecting = threading.Thread(target=user, args=("connecting", None))
        connecting.start()
        assert slow.entered.wait(5)
        waiter = threading.Thread(target=user, args=("waiter", 5))
        waiter.start()
        assert wait_for(lambda: waiting(pid) == 1)
        if how == "clean":
            PoolManager.clean(pid)
        else:
            with pytest.raises(manager.ActivePoolError):
                PoolManager.remove(pid)
        assert pid in PoolManager.instance()  # a reserved slot in flight keeps the pool
        slow.release.set()
        connecting.join(10)
        waiter.join(10)
    assert not connecting.is_alive() and not waiter.is_alive()
    assert isinstance(results["connecting"], tuple), results
    assert isinstance(results["waiter"], tuple), results
    assert results["waiter"][1] < 3, results  # served, not timed out after 5 s


def test_removing_a_pool_turns_its_waiters_away_to_a_new_pool(pg_dsn: str) -> None:
    """A pool removed while callers wait for it: they start over on a new pool at once.
    (remove() used to hand them slots of the pool it was removing: each connected for it,
    found it gone, threw that connection away and connected again.)"""
    dsn = with_app(pg_dsn, "mgr_turn_away")
    pid = manager.pool_id(dsn)
    holder = Holder()
    with PoolManager.connection(dsn, max_size=1) as conn:
        first = backend_pid(conn)
    assert PoolManager.get(pid, holder) is conn
    got: List[Any] = []
    connects: List[float] = []
    real_connect = manager.connect_without_secrets

    def counted(*args: Any, **kwargs: Any) -> Any:
        connects.append(time.monotonic())
        return real_connect(*args, **kwargs)

    def waiter() -> None:
        started = time.monotonic()
        with PoolManager.connection(dsn, max_size=1, timeout=5) as again:
            got.append((again, time.monotonic() - started))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(manager, "connect_without_secrets", counted)
        thread = threading.Thread(target=waiter)
        thread.start()
        assert wait_for(lambda: waiting(pid) == 1)
        old_pool = PoolManager._pools[pid]
        conn.close()  # the held connection is closed: remove() can drop it and the pool
        PoolManager.remove(pid)
        thread.join(10)
    assert not thread.is_alive()
    assert len(got) == 1 and got[0][0] is not conn and got[0][1] < 2.5, got
    assert PoolManager._pools[pid] is not old_pool and backend_pid(got[0][0]) != first
    assert len(connects) == 1  # one connect, for the new pool


def test_an_idle_ttl_of_none_means_no_idle_ttl(pg_dsn: str) -> None:
    """queries.Session(uri, pool_idle_ttl=None) creates a pool with a None TTL; the first
    get() compared the idle time with None (TypeError)."""
    clock, pid = Clock(), "mgr_ttl_none"
    PoolManager.create(pid, idle_ttl=None, max_size=1, time_method=clock)
    conn = psycopg2.connect(pg_dsn)
    PoolManager.add(pid, conn)
    holder = Holder()
    assert PoolManager.get(pid, holder) is conn
    PoolManager.free(pid, conn)
    clock.now += 10**9
    PoolManager.clean(pid)
    assert PoolManager.get(pid, holder) is conn and not conn.closed
    PoolManager.free(pid, conn)
    assert PoolManager.report()["pools"][pid]["idle"]["ttl"] is None
    PoolManager.set_idle_ttl(pid, 1)
    clock.now += 2
    PoolManager.clean(pid)  # a TTL again: it applies
    assert conn.closed and pid not in PoolManager.instance()
    dsn = with_app(pg_dsn, "mgr_ttl_none_conn")
    with PoolManager.connection(dsn, idle_ttl=None) as first:
        pass
    with PoolManager.connection(dsn, idle_ttl=None) as again:
        assert again is first
    PoolManager.set_idle_ttl(manager.pool_id(dsn), None)


def test_a_connection_held_across_fork_is_safe_in_the_child(pg_dsn: str) -> None:
    """A process that forks inside a ``connection()`` block: the child's query on the
    connection it inherited used to run on the parent's server session, and the child
    leaving the block closed it (libpq's goodbye on the parent's socket)."""
    from tests.dropin.test_fork import run_in_child

    dsn = with_app(pg_dsn, "mgr_fork_held")
    block = PoolManager.connection(dsn)
    conn = block.__enter__()
    try:
        conn.autocommit = True
        parent_backend = backend_pid(conn)
        with conn.cursor() as cur:
            cur.execute("SET application_name = 'parent_session'")

        def child() -> Dict[str, Any]:
            outcome: Dict[str, Any] = {}
            try:
                with conn.cursor() as cur:
                    cur.execute("SET application_name = 'child_was_here'")
                outcome["query"] = "ran"
            except psycopg2.Error as error:
                outcome["query"] = type(error).__name__
            block.__exit__(None, None, None)  # the child leaves the block
            outcome["closed"] = bool(conn.closed)
            return outcome

        assert run_in_child(child) == {"query": "DatabaseError", "closed": True}
        with conn.cursor() as cur:  # the parent's session: open, intact and untouched
            cur.execute("SELECT pg_backend_pid(), current_setting('application_name')")
            assert cur.fetchone() == (parent_backend, "parent_session")
    finally:
        block.__exit__(None, None, None)
    with PoolManager.connection(dsn) as again:  # given back to the parent's pool
        assert again is conn and backend_pid(again) == parent_backend


def test_a_timeout_line_goes_through_the_module_logger(pg_dsn: str) -> None:
    """Every line the manager logs goes through ``manager.LOGGER``, the engine's event lines
    (here: checkout timed out) included, so patching it catches them all."""
    dsn = with_app(pg_dsn, "mgr_logger_timeout")
    held, late = PoolManager.connection(dsn, max_size=1), PoolManager.connection(dsn, timeout=0.05)
    patched, full = mock.patch.object(manager, "LOGGER"), pytest.raises(manager.PoolFullError)
    with held, patched as logger, full, late:
        pass  # pragma: no cover - never entered
    assert logger.info.call_args.args[0] == "%s: checkout timed out after %.3f s"


def test_the_managers_event_lines_keep_the_engines_wording(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The manager words the engine's events itself (to log them through ``LOGGER``): the
    same wording, level and logger as ``engine/log.py``, which the docs' table quotes."""
    from pgpool_compat.engine import log

    error = psycopg2.OperationalError("x")
    pairs = [
        (lambda: log.timed_out("p", 1.5), lambda: manager._log_timed_out("p", 1.5)),
        (lambda: log.dead_dropped("p", "socket"),
         lambda: manager._log_dead_dropped("p", "socket")),
        (lambda: log.reset_failed("p", error), lambda: manager._log_reset_failed("p", error)),
    ]
    caplog.set_level(logging.DEBUG, logger="pgpool_compat")
    for engine_line, manager_line in pairs:
        caplog.clear()
        engine_line()
        manager_line()
        (a, b) = caplog.records
        assert (a.name, a.levelno, a.getMessage()) == (b.name, b.levelno, b.getMessage())


def test_no_log_output_unless_logging_is_configured(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """As queries does for its logger, the package's logger has a NullHandler: a program
    that never configures logging gets no WARNING lines on stderr (Python's last resort
    handler printed them); caplog and configured handlers still get every record."""
    assert any(isinstance(h, logging.NullHandler)
               for h in logging.getLogger("pgpool_compat").handlers)
    script = (
        "import os, sys, psycopg2\n"
        "from pgpool_compat.manager import PoolManager, PoolFullError\n"
        "dsn = os.environ['MGR_DSN']\n"
        "PoolManager.create('n', max_size=1)\n"
        "PoolManager.add('n', psycopg2.connect(dsn))\n"
        "try:\n"
        "    PoolManager.add('n', psycopg2.connect(dsn))  # full: a WARNING\n"
        "except PoolFullError:\n"
        "    print('full')\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=root, env={**os.environ, "MGR_DSN": pg_dsn})
    assert (done.returncode, done.stdout, done.stderr) == (0, "full\n", "")
    caplog.set_level(logging.WARNING, logger="pgpool_compat")
    PoolManager.create("mgr_full", max_size=1)
    PoolManager.add("mgr_full", psycopg2.connect(pg_dsn))
    with pytest.raises(manager.PoolFullError):
        PoolManager.add("mgr_full", psycopg2.connect(pg_dsn))
    assert any("pool full" in r.getMessage() for r in caplog.records)
