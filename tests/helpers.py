"""Small helpers for tests that look at the server side of pooled connections."""

from __future__ import annotations

import time
from collections.abc import Iterable

import psycopg2

# Client backends on the DSN's database, excluding the connection asking.
_BACKENDS_SQL = """
    SELECT pid FROM pg_stat_activity
    WHERE datname = current_database()
      AND backend_type = 'client backend'
      AND pid <> pg_backend_pid()
    ORDER BY pid
"""


def backend_pids(dsn: str) -> list[int]:
    """PIDs of the client backends connected to the database of ``dsn`` (not our own)."""
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(_BACKENDS_SQL)
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
    """``pg_terminate_backend`` each pid and wait (bounded) until they have all gone.

    Returns how many were signalled. Raises AssertionError if any is still there after
    ``timeout`` seconds, so tests never race the server's cleanup.
    """
    wanted = sorted(set(pids))
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM unnest(%s::int[]) AS p WHERE pg_terminate_backend(p)",
                (wanted,),
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
