"""PoolManager flows on real psycopg2 connections and a real server: concurrency bounds,
waiting, weak-reference release, TTL expiry, rollback and discard on exit, shutdown with busy
connections, a server restart, and no DSN kept or shown anywhere."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
import types
import uuid
from collections import defaultdict
from typing import Any, Dict, Iterator, List, Set

import psycopg2
import psycopg2.extensions
import pytest

from pgpool_compat import manager
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
