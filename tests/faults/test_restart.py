"""Server restarts: an idle pool across a restart, a restart under load from several threads,
and the background thread refilling ``minconn`` after the server comes back.

While the server is down ``getconn`` must fail fast with a clear error; once it is back no dead
connection is handed out, no slot has leaked, and the first query succeeds within a second.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import psycopg2
import pytest

from pgpool_compat.testing import PostgresServer
from tests.helpers import backend_count

from .support import bounded_query, make_pool, slots_in_use, wait_until

pytestmark = pytest.mark.timeout(90)


RESTARTS = {
    "fast": ("restart-idle", "Server restart (fast), idle pool"),
    "immediate": ("crash-idle", "Server crash (immediate stop, crash recovery), idle pool"),
}


@pytest.mark.parametrize("mode", sorted(RESTARTS))
def test_restart_idle_pool(impl: str, mode: str, record: Any, own_server: PostgresServer) -> None:
    """Every idle connection dies with the restart; none of them may be handed out."""
    size = 3
    pool = make_pool(impl, size, size, own_server.dsn)
    try:
        for conn in [pool.getconn() for _ in range(size)]:
            pool.putconn(conn)
        own_server.restart(mode)
        up_at = time.monotonic()
        first_ok: Optional[float] = None
        handed = []
        for _ in range(size):
            conn = pool.getconn()
            handed.append(conn)
            if bounded_query(conn).ok and first_ok is None:
                first_ok = time.monotonic() - up_at
        dead = sum(not bounded_query(conn).ok for conn in handed)
        for conn in handed:
            pool.putconn(conn)
        measured: Dict[str, Any] = {
            "dead connections handed out": f"{dead} of {size}",
            "first successful query after restart (s)": first_ok,
        }
        if impl == "pgpool_compat":
            measured["connections_lost (stats)"] = pool.get_stats()["connections_lost"]
        record(*RESTARTS[mode], measured)
        if impl == "stock":
            assert dead == size
        else:
            assert dead == 0
            assert first_ok is not None and first_ok < 1.0
            assert measured["connections_lost (stats)"] >= size
        assert slots_in_use(pool) == 0
    finally:
        pool.closeall()


@dataclass
class LoadBook:
    """What the worker threads saw, classified by when ``getconn`` returned."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    down_at: float = float("inf")
    up_at: float = float("inf")
    served_before_stop: int = 0
    errors_before_stop: Dict[str, int] = field(default_factory=dict)
    errors_while_down: Dict[str, int] = field(default_factory=dict)
    slowest_error_while_down: float = 0.0
    dead_after_up: int = 0
    errors_after_up: Dict[str, int] = field(default_factory=dict)
    putconn_errors: int = 0
    first_ok_after_up: Optional[float] = None
    ok_after_up: int = 0


def worker(pool: Any, book: LoadBook, stop: threading.Event, hold: float) -> None:
    """Borrow, query, hold the transaction open a moment, return; until told to stop."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            conn = pool.getconn()
        except (psycopg2.Error, psycopg2.pool.PoolError) as exc:
            failed = time.monotonic()
            name = type(exc).__name__
            with book.lock:
                if started >= book.up_at:
                    errors = book.errors_after_up
                elif failed >= book.down_at:  # failed because of the stop, or while down
                    errors = book.errors_while_down
                    book.slowest_error_while_down = max(
                        book.slowest_error_while_down, failed - started
                    )
                else:
                    errors = book.errors_before_stop
                errors[name] = errors.get(name, 0) + 1
            time.sleep(0.02)
            continue
        got_at = time.monotonic()
        outcome = bounded_query(conn, timeout=2)
        if outcome.ok:
            time.sleep(hold)  # in a transaction: a restart now makes the return's rollback fail
        try:
            pool.putconn(conn)
        except psycopg2.Error:
            with book.lock:
                book.putconn_errors += 1
        with book.lock:
            if got_at < book.down_at:
                book.served_before_stop += 1
            elif got_at >= book.up_at:
                if outcome.ok:
                    book.ok_after_up += 1
                    if book.first_ok_after_up is None:
                        book.first_ok_after_up = time.monotonic() - book.up_at
                else:
                    book.dead_after_up += 1


def run_restart_under_load(
    pool: Any, server: PostgresServer, threads: int, maxconn: int
) -> Dict[str, Any]:
    book = LoadBook()
    stop = threading.Event()
    workers = [
        threading.Thread(target=worker, args=(pool, book, stop, 0.03), daemon=True)
        for _ in range(threads)
    ]
    for thread in workers:
        thread.start()
    time.sleep(0.4)
    with book.lock:
        book.down_at = time.monotonic()
    server.stop("fast")
    time.sleep(0.6)
    server.start()
    with book.lock:
        book.up_at = time.monotonic()
    time.sleep(1.5)
    stop.set()
    for thread in workers:
        thread.join(10)
    assert not any(thread.is_alive() for thread in workers), "a worker hung"

    leaked = slots_in_use(pool)
    usable, handed = 0, []
    for _ in range(maxconn):
        try:
            handed.append(pool.getconn())
        except psycopg2.pool.PoolError:
            break
        usable += bounded_query(handed[-1]).ok
    for conn in handed:
        pool.putconn(conn)
    assert book.served_before_stop > 0, "no load before the restart: the scenario is void"
    return {
        "getconn errors before the restart": sum(book.errors_before_stop.values()),
        "errors while down": describe_errors(book.errors_while_down),
        "slowest failing getconn while down (s)": book.slowest_error_while_down,
        "putconn raised": book.putconn_errors,
        "dead connections handed out after restart": book.dead_after_up,
        "getconn errors after restart": sum(book.errors_after_up.values()),
        "first successful query after restart (s)": book.first_ok_after_up,
        "slots leaked": leaked,
        "usable slots afterwards": f"{usable} of {maxconn}",
        "_usable": usable,
        "_error_types_while_down": sorted(book.errors_while_down),
        "_ok_after_up": book.ok_after_up,
    }


LOST = "connections_lost + returns_bad (stats)"


def lost_stats(pool: Any) -> Dict[str, Any]:
    """Dead connections the pool counted: found dead while idle, or broken on return."""
    stats = pool.get_stats()
    return {LOST: stats["connections_lost"] + stats["returns_bad"]}


def describe_errors(counts: Dict[str, int]) -> str:
    return ", ".join(f"{n} {name}" for name, n in sorted(counts.items())) or "none"


def check_recovered(measured: Dict[str, Any], maxconn: int, slowest_allowed: float) -> None:
    assert measured["getconn errors before the restart"] == 0
    # While down: the server's own error, or PoolTimeout for a waiter; nothing else.
    assert set(measured["_error_types_while_down"]) <= {"OperationalError", "PoolTimeout"}
    assert measured["dead connections handed out after restart"] == 0
    assert measured["slots leaked"] == 0
    assert measured["putconn raised"] == 0
    assert measured["_usable"] == maxconn
    first_ok = measured["first successful query after restart (s)"]
    assert first_ok is not None and first_ok < 1.0
    assert measured["slowest failing getconn while down (s)"] < slowest_allowed


def publish(measured: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in measured.items() if not k.startswith("_")}


def test_restart_under_load(impl: str, record: Any, own_server: PostgresServer) -> None:
    """Four threads on four connections (defaults) through a fast restart."""
    maxconn = 4
    pool = make_pool(impl, 2, maxconn, own_server.dsn)
    try:
        measured = run_restart_under_load(pool, own_server, threads=maxconn, maxconn=maxconn)
        if impl == "pgpool_compat":
            measured.update(lost_stats(pool))
        record(
            "restart-load",
            "Server restart (fast) under load, 4 threads, defaults",
            publish(measured),
        )
        if impl == "pgpool_compat":
            check_recovered(measured, maxconn, slowest_allowed=1.0)
            assert measured[LOST] >= 1
    finally:
        pool.closeall()


@pytest.mark.parametrize("impl", ["pgpool_compat"], indirect=True)  # stock cannot wait
def test_restart_under_load_waiting(impl: str, record: Any, own_server: PostgresServer) -> None:
    """Six threads on four connections with ``pool_timeout``: waiters too survive a restart."""
    title = "Server restart (fast) under load, 6 threads on 4 connections, pool_timeout=2"
    record("restart-load-waiting", title, {"not applicable": "stock cannot wait"}, pool="stock")
    maxconn, timeout = 4, 2.0
    pool = make_pool(impl, 2, maxconn, own_server.dsn, pool_timeout=timeout)
    try:
        measured = run_restart_under_load(pool, own_server, threads=6, maxconn=maxconn)
        measured.update(lost_stats(pool))
        record("restart-load-waiting", title, publish(measured))
        check_recovered(measured, maxconn, slowest_allowed=timeout + 0.5)
        assert measured[LOST] >= 1
        assert pool.get_stats()["requests_waiting"] == 0
    finally:
        pool.closeall()


def test_background_refill(impl: str, record: Any, own_server: PostgresServer) -> None:
    """With ``pool_background=True`` the pool reopens ``minconn`` connections by itself once
    the server is back, and none it then hands out is dead."""
    minconn = 2
    pool = make_pool(impl, minconn, 4, own_server.dsn, pool_background=True)
    try:
        own_server.stop("fast")
        time.sleep(0.5)
        own_server.start()
        up_at = time.monotonic()
        # Nobody calls getconn here: only a background thread can reconnect.
        refilled = wait_until(lambda: backend_count(own_server.dsn) >= minconn, 5, 0.05)
        refill_s: Any = round(time.monotonic() - up_at, 3) if refilled else "not within 5 s"
        handed: List[Any] = [pool.getconn() for _ in range(minconn)]
        dead = sum(not bounded_query(conn).ok for conn in handed)
        for conn in handed:
            pool.putconn(conn)
        record(
            "background-refill",
            "minconn refill after a restart with nobody calling getconn (pool_background=True)",
            {
                "server backends back (s)": refill_s,
                "dead connections handed out": f"{dead} of {minconn}",
            },
        )
        if impl == "stock":
            assert not refilled
        else:
            assert refilled, "the background thread did not reopen minconn connections"
            assert dead == 0
    finally:
        pool.closeall()
