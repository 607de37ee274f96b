"""A pool used in a parent, then in ``os.fork()`` children.

A connection opened in the parent shares its socket with every child. If a child uses it, two
processes talk on one session; if a child closes it, libpq says goodbye on the parent's behalf
and the parent's session ends. So a child must get fresh connections, must never close an
inherited one (dropping the reference is safe: psycopg2 skips the goodbye in another process),
and the parent must find its connections alive, on the same backends, afterwards.
Stock psycopg2.pool runs the same scenario to show the bug the test guards against.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from types import ModuleType
from typing import Any, Callable, Dict, List

import psycopg2
import psycopg2.pool
import pytest

import pgpool_compat
from tests.helpers import server_pid

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is POSIX only"),
]

CHILD_TIMEOUT = 20.0


class ChildHung(Exception):
    """The child neither finished nor reported within its time; it was killed."""


def run_in_child(body: Callable[[], Dict[str, Any]], timeout: float = CHILD_TIMEOUT) -> Any:
    """Fork, run ``body`` in the child, return what it returned (JSON) or raise what it raised.

    The child always leaves through ``os._exit`` so no pytest or atexit machinery runs twice;
    a child still running at the deadline is killed and ChildHung raised.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(read_fd)
            report: Dict[str, Any] = {"result": body()}
        except BaseException:
            report = {"error": traceback.format_exc()}
            code = 1
        try:
            with os.fdopen(write_fd, "w") as pipe:
                json.dump(report, pipe)
        finally:
            os._exit(code)
    os.close(write_fd)
    deadline = time.monotonic() + timeout
    data = b""
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([read_fd], [], [], remaining)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise ChildHung(f"child {pid} gave no answer within {timeout} s")
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(read_fd)
    _reap(pid, deadline)
    report = json.loads(data.decode())
    if "error" in report:
        raise AssertionError(f"child failed:\n{report['error']}")
    return report["result"]


def _reap(pid: int, deadline: float) -> None:
    while time.monotonic() < deadline + 5:
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise ChildHung(f"child {pid} reported but did not exit")


@contextlib.contextmanager
def held_by_another_thread(lock: Any) -> Iterator[None]:
    """Run the block (a fork, typically) while a helper thread holds ``lock``."""
    inside, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            inside.set()
            leave.wait(timeout=30)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        assert inside.wait(timeout=10)
        yield
    finally:
        leave.set()
        holder.join(timeout=10)


def _gone(admin_conn: Any, pids: List[int], timeout: float = 10.0) -> bool:
    """Whether all these backends have exited (they do so shortly after their client leaves)."""
    deadline = time.monotonic() + timeout
    with admin_conn.cursor() as cursor:
        while True:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,))
            if cursor.fetchone()[0] == 0:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)


@pytest.fixture(params=[psycopg2.pool, pgpool_compat], ids=["stock", "ours"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    module: ModuleType = request.param
    return module


@pytest.fixture(params=["SimpleConnectionPool", "ThreadedConnectionPool"])
def parent_pool(request: pytest.FixtureRequest, impl: ModuleType, pg_dsn: str) -> Iterator[Any]:
    """A pool with three idle connections, of either class."""
    pool = getattr(impl, request.param)(3, 5, pg_dsn)
    try:
        yield pool
    finally:
        if not pool.closed:
            pool.closeall()


def test_child_gets_fresh_connections_and_parent_keeps_its_own(
    impl: ModuleType, parent_pool: Any, admin_conn: Any
) -> None:
    pool = parent_pool
    held = pool.getconn("held")
    parent_conns = [*pool._pool, held]
    parent_pids = {id(conn): server_pid(conn) for conn in parent_conns}

    def child() -> Dict[str, Any]:
        fresh = pool.getconn()
        keyed = pool.getconn("held")  # the parent's key: the parent's connection is not ours
        pids = [server_pid(fresh), server_pid(keyed)]
        pool.putconn(fresh)
        pool.putconn(keyed)
        try:
            pool.putconn(held)  # returning a connection borrowed before the fork: dropped quietly
            put_held = "ok"
        except psycopg2.Error as error:
            put_held = repr(error)
        inherited_closed_before = [conn.closed for conn in parent_conns]
        pool.closeall()  # closes the child's own connections only
        return {
            "pids": pids,
            "put_held": put_held,
            "own_closed": [fresh.closed, keyed.closed],
            "inherited_closed": inherited_closed_before + [c.closed for c in parent_conns],
        }

    if impl is psycopg2.pool:
        # Stock hands the parent's connections to the child and closes them in closeall.
        report = run_in_child(child)
        assert set(report["pids"]) <= set(parent_pids.values())
        assert not _parent_sessions_alive(parent_conns, parent_pids)
        return

    report = run_in_child(child)
    assert len(set(report["pids"])) == 2
    assert report["put_held"] == "ok"
    assert not set(report["pids"]) & set(parent_pids.values())  # fresh backends
    assert report["own_closed"] == [1, 1]
    assert report["inherited_closed"] == [0] * (2 * len(parent_conns))  # never closed there
    assert _gone(admin_conn, report["pids"])  # the child closed what it opened
    assert _parent_sessions_alive(parent_conns, parent_pids)

    # The parent's pool carries on with the very same connections.
    pool.putconn(held)
    assert sorted(map(id, pool._pool)) == sorted(map(id, parent_conns))
    again = [pool.getconn() for _ in parent_conns]
    assert {id(conn) for conn in again} == {id(conn) for conn in parent_conns}
    assert {server_pid(conn) for conn in again} == set(parent_pids.values())


def _parent_sessions_alive(conns: List[Any], pids: Dict[int, int]) -> bool:
    for conn in conns:
        try:
            if conn.closed or server_pid(conn) != pids[id(conn)]:
                return False
        except psycopg2.Error:
            return False
    return True


def test_several_children_each_get_their_own_backends(pg_dsn: str, admin_conn: Any) -> None:
    with pgpool_compat.ThreadedConnectionPool(2, 4, pg_dsn) as pool:
        _fork_three_children(pool, admin_conn)


def _fork_three_children(pool: Any, admin_conn: Any) -> None:
    parent_pids = {server_pid(conn) for conn in pool._pool}
    children = []
    for _ in range(3):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: two connections at once, then report and leave
            code = 0
            try:
                os.close(read_fd)
                conns = [pool.getconn(), pool.getconn()]
                pids = [server_pid(conn) for conn in conns]
                for conn in conns:
                    pool.putconn(conn)
                pool.closeall()
                os.write(write_fd, json.dumps(pids).encode())
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(write_fd)
        children.append((pid, read_fd))
    seen: List[int] = []
    for pid, read_fd in children:
        ready = select.select([read_fd], [], [], CHILD_TIMEOUT)[0]
        data = os.read(read_fd, 4096) if ready else b""
        os.close(read_fd)
        _reap(pid, time.monotonic())
        assert data, f"child {pid} reported nothing"
        seen += json.loads(data)
    assert len(seen) == len(set(seen)) == 6
    assert not set(seen) & parent_pids
    assert _gone(admin_conn, seen)
    assert {server_pid(conn) for conn in pool._pool} == parent_pids


def test_child_works_when_a_parent_thread_held_the_lock_at_fork(
    impl: ModuleType, pg_dsn: str
) -> None:
    """A thread inside the pool at fork time does not exist in the child: its lock is stale."""
    pool = impl.ThreadedConnectionPool(3, 5, pg_dsn)

    def child() -> Dict[str, Any]:
        conn = pool.getconn()
        return {"pid": server_pid(conn)}

    with held_by_another_thread(pool._lock):
        if impl is psycopg2.pool:
            with pytest.raises(ChildHung):
                run_in_child(child, timeout=2.0)  # stock's child waits for ever
            return
        report = run_in_child(child, timeout=CHILD_TIMEOUT)
        assert report["pid"] not in {conn.info.backend_pid for conn in pool._pool}
        pool.closeall()


@pytest.mark.parametrize("explicit_key", [False, True], ids=["auto-key", "explicit-key"])
def test_child_returning_an_inherited_connection_drops_it(pg_dsn: str, explicit_key: bool) -> None:
    """``conn = getconn(k); fork(); putconn(conn, k)``: both processes run the put."""
    with pgpool_compat.ThreadedConnectionPool(1, 3, pg_dsn) as pool:
        held = pool.getconn("held")
        held_pid = server_pid(held)

        def child() -> Dict[str, Any]:
            try:
                pool.putconn(held, key="held" if explicit_key else None)
                outcome = "ok"
            except psycopg2.Error as error:
                outcome = repr(error)
            return {"put": outcome, "closed": held.closed, "idle": len(pool._pool)}

        assert run_in_child(child) == {"put": "ok", "closed": 0, "idle": 0}
        assert server_pid(held) == held_pid  # the parent's session is untouched
        pool.putconn(held, key="held")
        assert held in pool._pool


class SlowRollback(psycopg2.extensions.connection):
    """A connection whose rollback takes a second: a reset is in flight long enough to fork."""

    def rollback(self) -> None:
        time.sleep(1.0)
        super().rollback()


def test_fork_during_reset_keeps_parent_connections(pg_dsn: str) -> None:
    """A child forked while a parent thread resets a connection inherits that reset's alarm;
    the child's own first reset must not start a watchdog that fires it on the shared socket."""
    check_timeout = 2.0
    pool = pgpool_compat.ThreadedConnectionPool(
        1, 3, pg_dsn, connection_factory=SlowRollback, pool_check_timeout=check_timeout
    )
    try:
        conn = pool.getconn()
        backend = server_pid(conn)
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")  # returned in a transaction: putconn resets it
        returning = threading.Thread(target=pool.putconn, args=(conn,), daemon=True)
        armed_at = time.monotonic()
        returning.start()
        time.sleep(0.3)  # inside the rollback, its alarm armed

        def child() -> Dict[str, Any]:
            mine = pool.getconn()
            with mine.cursor() as cursor:
                cursor.execute("SELECT 1")
            pool.putconn(mine)  # the child's first reset
            # Live on past the inherited alarm's deadline, as a worker process would.
            time.sleep(max(0.0, armed_at + check_timeout + 0.5 - time.monotonic()))
            return {"pid": server_pid(pool.getconn())}

        outcome: Dict[str, Any] = {}
        forker = threading.Thread(
            target=lambda: outcome.update(child=run_in_child(child)), daemon=True
        )
        forker.start()
        returning.join(timeout=10)
        again = pool.getconn()
        assert again is conn
        with again.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(%s)", (check_timeout + 1.0,))  # spans the alarm
        assert server_pid(again) == backend
        forker.join(timeout=CHILD_TIMEOUT + 5)
        assert outcome["child"]["pid"] != backend
    finally:
        pool.closeall()


def test_child_arms_a_reset_when_a_parent_thread_held_the_watchdog_lock(pg_dsn: str) -> None:
    """A lock held at fork by a thread that does not exist in the child must not hang it."""
    from pgpool_compat import driver as health

    def child() -> Dict[str, Any]:
        conn = pool.getconn()
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")
        pool.putconn(conn)  # in a transaction: the reset arms the watchdog
        return {"idle": len(pool._pool)}

    pool = pgpool_compat.ThreadedConnectionPool(1, 2, pg_dsn)
    with pool, held_by_another_thread(health._watchdog._cond):
        assert run_in_child(child, timeout=5.0) == {"idle": 1}


def test_child_runs_its_own_keeper(pg_dsn: str) -> None:
    """The parent's keeper thread does not exist in a child: the child starts its own, which
    refills the child's (emptied) pool to minconn."""
    with pgpool_compat.ThreadedConnectionPool(2, 4, pg_dsn, pool_background=True) as pool:

        def child() -> Dict[str, Any]:
            deadline = time.monotonic() + 10
            while len(pool._pool) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            keeper = pool._keeper
            return {"running": keeper is not None and keeper.is_alive(), "idle": len(pool._pool)}

        assert run_in_child(child) == {"running": True, "idle": 2}
