"""Small helpers for tests that look at the server side of pooled connections."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterable
from typing import Any

import psycopg2

import pgpool_compat
from pgpool_compat.testing import HARNESS_APPLICATION_NAME

# Client backends on the DSN's database, excluding the connection asking and the harness's
# earlier ones: a backend exits asynchronously after its client closes, so the previous
# helper call's backend can still be listed for a moment.
_BACKENDS_SQL = """
    SELECT pid FROM pg_stat_activity
    WHERE datname = current_database()
      AND backend_type = 'client backend'
      AND pid <> pg_backend_pid()
      AND application_name IS DISTINCT FROM %s
    ORDER BY pid
"""


def _connect(dsn: str) -> Any:
    """An autocommit connection tagged as the harness's own (see _BACKENDS_SQL)."""
    conn = psycopg2.connect(dsn, application_name=HARNESS_APPLICATION_NAME)
    conn.autocommit = True
    return conn


def backend_pids(dsn: str) -> list[int]:
    """PIDs of the client backends connected to the database of ``dsn`` (not our own)."""
    conn = _connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(_BACKENDS_SQL, (HARNESS_APPLICATION_NAME,))
            return [row[0] for row in cur.fetchall()]
    finally:
        conn.close()


def backend_count(dsn: str) -> int:
    """Number of client backends connected to the database of ``dsn`` (not our own)."""
    return len(backend_pids(dsn))


def wait_backend_count(dsn: str, expected: int, timeout: float = 5.0) -> int:
    """Poll :func:`backend_count` until it equals ``expected`` or ``timeout`` passes; return the
    last count. A backend exits asynchronously after its client closes the socket, so a count
    taken right after ``conn.close()`` can still include it: assert on this instead.
    """
    deadline = time.monotonic() + timeout
    while True:
        count = backend_count(dsn)
        if count == expected or time.monotonic() > deadline:
            return count
        time.sleep(0.02)


def terminate_backends(dsn: str, pids: Iterable[int], timeout: float = 10.0) -> int:
    """``pg_terminate_backend`` each pid and wait (bounded) until they have all exited.

    Returns how many were signalled. On PostgreSQL 14+ the server waits until each process is
    gone (reaped), so its socket is closed and clients can see it; a backend that has merely
    left ``pg_stat_activity`` may still hold its socket open for a moment. Raises
    AssertionError if any is still there after ``timeout`` seconds, so tests never race the
    server's clean-up.
    """
    wanted = sorted(set(pids))
    conn = _connect(dsn)
    try:
        with conn.cursor() as cur:
            # PostgreSQL 14+ can wait for the process itself; older ones only signal it.
            wait = "p, %(ms)s" if conn.server_version >= 140000 else "p"
            cur.execute(
                f"SELECT count(*) FROM unnest(%(pids)s::int[]) AS p"
                f" WHERE pg_terminate_backend({wait})",
                {"pids": wanted, "ms": int(timeout * 1000)},
            )
            signalled: int = cur.fetchone()[0]
            deadline = time.monotonic() + timeout
            while True:
                cur.execute(
                    "SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s::int[])", (wanted,)
                )
                left = [row[0] for row in cur.fetchall()]
                if not left:
                    return signalled
                if time.monotonic() > deadline:
                    raise AssertionError(f"backends {left} still alive after {timeout}s")
                time.sleep(0.02)
    finally:
        conn.close()


def threaded(pools: list[Any], *args: Any, **kwargs: Any) -> Any:
    """A ThreadedConnectionPool added to ``pools`` (the fixture closes it after the test)."""
    pool = pgpool_compat.ThreadedConnectionPool(*args, **kwargs)
    pools.append(pool)
    return pool


def scalar(conn: Any, sql: str, params: Any = None) -> Any:
    """The first column of the first row of ``sql``."""
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()[0]


def select_one(conn: Any) -> int:
    """``SELECT 1`` on ``conn``, its transaction ended: proof the connection works."""
    return int(_answer(conn, "SELECT 1"))


def server_pid(conn: Any) -> int:
    """The backend's own answer, not libpq's cached one (``pid_of``): proves the session
    really works; its transaction ended."""
    return int(_answer(conn, "SELECT pg_backend_pid()"))


def _answer(conn: Any, sql: str) -> Any:
    value = scalar(conn, sql)
    conn.rollback()
    return value


def pid_of(conn: Any) -> int:
    """The server process id behind a psycopg2 connection."""
    pid: int = conn.info.backend_pid
    return pid


def sessions_named(admin_conn: Any, application_name: str) -> int:
    """Server sessions carrying ``application_name``: immune to other tests' connections."""
    with admin_conn.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            (application_name,),
        )
        count: int = cursor.fetchone()[0]
        return count


# -- connections of awkward kinds: the books must key on identity, never hash or tag them ----


class UnhashableConn:
    __hash__ = None  # type: ignore[assignment]

    def __init__(self) -> None:
        self.closes = 0

    def close(self) -> None:
        self.closes += 1


class SlottedConn:
    """No ``__dict__`` and no ``__weakref__``: cannot be tagged nor weakly referenced."""

    __slots__ = ("closes",)

    def __init__(self) -> None:
        self.closes = 0

    def close(self) -> None:
        self.closes += 1


class AllEqualConn:
    """Says every other connection of its kind is equal to it (and hashes alike)."""

    def __init__(self) -> None:
        self.closes = 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AllEqualConn)

    def __hash__(self) -> int:
        return 0

    def close(self) -> None:
        self.closes += 1


AWKWARD_CONNECTION_KINDS = (UnhashableConn, SlottedConn, AllEqualConn)

#: Factory-pool settings that take every path a connection goes through (check, reset,
#: lifetime record) for the awkward kinds above; three slots, no waiting.
AWKWARD_POOL_OPTIONS: dict[str, Any] = {
    "min_size": 1,
    "max_size": 3,
    "timeout": 0.2,
    "check": lambda conn: True,
    "reset": lambda conn: None,
    "max_lifetime": 60,
}


def recording_factory(kind: type, made: list[Any]) -> Any:
    """A factory of ``kind()`` objects that appends each to ``made``."""

    def factory() -> Any:
        made.append(kind())
        return made[-1]

    return factory


# -- children that a test interrupts with SIGINT (Ctrl-C) -------------------------------------


def popen_interruptible(args: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen``, with SIGINT at its default in the child whatever the test run's
    own disposition: a suite started as a background job (``cmd &``) ignores SIGINT, the
    child would inherit that, and a test's simulated Ctrl-C would do nothing.

    A signal the parent *handles* is reset to its default by exec, so the handler is set for
    the moment of the fork (main thread only; no ``preexec_fn``, unsafe with threads).
    """
    if threading.current_thread() is not threading.main_thread():
        return subprocess.Popen(args, **kwargs)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(args, **kwargs)
    finally:
        signal.signal(signal.SIGINT, previous)
