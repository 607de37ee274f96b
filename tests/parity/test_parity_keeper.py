"""Parity: ``leak_timeout`` with the checkout stack, and the background keeper (keeps the
minimum open with capped, jittered backoff; trims idle connections past ``max_idle`` and
expired ones with no call made; reports leaks; stops on close and at exit).

The keeper passes once a second: each wait here is a few passes, and bounded.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import textwrap
import time
from typing import Any, List

import pytest

from tests.parity.faces import Face, faces, wait_until

pytestmark = pytest.mark.timeout(60)



def leak_warnings(caplog: pytest.LogCaptureFixture, pool_name: str) -> List[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.WARNING
        and "checked out" in record.getMessage()
        and pool_name in record.getMessage()
    ]


def borrow_and_forget(face_pool: Any) -> Any:
    """A named frame for the checkout stack to show."""
    return face_pool.get()


def shows_the_borrower(warning: str, face: Face) -> bool:
    """Whether the stack in a leak warning ends in the borrower's code, not the package's.

    The async face borrows in a coroutine on the helper loop (faces.py's ``_as_coroutine``):
    a task's stack is its coroutine chain, so the sync caller in the test thread is not
    in it; the thread faces show ``borrow_and_forget`` itself."""
    frames = re.findall(r'File "(.*)", line \d+, in (\S+)', warning)
    if not frames or not frames[-1][0].endswith("faces.py"):
        return False
    return face.name == "async" or any(name == "borrow_and_forget" for _, name in frames)


@faces()
def test_a_leak_is_reported_with_its_checkout_stack_on_the_next_call(
    face: Face, caplog: pytest.LogCaptureFixture
) -> None:
    pool = face.pool(1, 2, name="leaky", leak_timeout=0.2)
    caplog.set_level(logging.WARNING, logger="pgpool_compat")
    borrow_and_forget(pool)
    time.sleep(1.2)  # past the leak timeout and the lazy upkeep interval
    pool.put(pool.get())
    warnings = leak_warnings(caplog, "leaky")
    assert len(warnings) == 1, warnings
    assert shows_the_borrower(warnings[0], face), warnings[0]


@faces()
def test_keeper_reports_a_leak_once_with_no_call_made(
    face: Face, caplog: pytest.LogCaptureFixture
) -> None:
    pool = face.pool(1, 2, name="leaky-kept", leak_timeout=0.2, keeper=True)
    caplog.set_level(logging.WARNING, logger="pgpool_compat")
    borrow_and_forget(pool)
    wait_until(lambda: bool(leak_warnings(caplog, "leaky-kept")), what="leak reported")
    time.sleep(2.2)  # two more keeper passes: still one warning
    warnings = leak_warnings(caplog, "leaky-kept")
    assert len(warnings) == 1 and shows_the_borrower(warnings[0], face), warnings


@faces()
def test_keeper_replaces_expired_connections_with_no_call_made(face: Face) -> None:
    pool = face.pool(2, 2, max_lifetime=0.5, keeper=True)
    wait_until(lambda: len(pool.log.made) == 2, what="minimum opened")
    originals = list(pool.log.made)
    wait_until(lambda: all(conn.closed for conn in originals), what="expired ones closed")
    wait_until(lambda: len(pool.log.open()) == 2, what="minimum reopened")
    assert pool.stats()["pool_size"] == 2


@faces()
def test_keeper_trims_idle_past_max_idle_down_to_the_minimum(face: Face) -> None:
    pool = face.pool(1, 3, max_idle=0.3, keeper=True)
    borrowed = [pool.get() for _ in range(3)]
    for conn in borrowed:
        pool.put(conn)
    wait_until(lambda: len(pool.log.closed()) == 2, what="two idle ones closed")
    assert pool.stats()["pool_size"] == 1
    assert len(pool.log.made) == 3, "the minimum was kept, not closed and reopened"


@faces()
def test_keeper_backs_off_while_connects_fail_then_refills(face: Face) -> None:
    pool = face.pool(2, 2, max_lifetime=0.4, keeper=True)
    pool.log.refuse = True
    attempts_before = pool.log.attempts
    time.sleep(3.0)
    failed = pool.log.attempts - attempts_before
    # Passes every second, and backing off: a few attempts, not a busy loop.
    assert 2 <= failed <= 15, failed
    assert pool.stats()["pool_size"] < 2
    pool.log.refuse = False
    wait_until(lambda: len(pool.log.open()) == 2, bound=10, what="refilled after the outage")


@faces()
def test_keeper_stops_when_the_pool_closes(face: Face) -> None:
    pool = face.pool(1, 2, name="kept", keeper=True)
    assert pool.keeper_running()
    pool.close()
    wait_until(lambda: not pool.keeper_running(), bound=3, what="keeper stopped")


@faces()
def test_no_keeper_without_the_option(face: Face) -> None:
    pool = face.pool(1, 2, name="unkept")
    assert not pool.keeper_running()


#: A program that leaves a pool with a keeper open at exit, per face.
EXIT_SCRIPTS = {
    "psycopg2": """
        import sys, pgpool_compat
        pool = pgpool_compat.ThreadedConnectionPool(
            1, 2, sys.argv[1], pool_background=True, pool_name="at-exit")
        pool.putconn(pool.getconn())
    """,
    "sync": """
        import sys, psycopg2, pgpool_compat
        pool = pgpool_compat.ConnectionPool(
            lambda: psycopg2.connect(sys.argv[1]), min_size=1, max_size=2, background=True,
            name="at-exit")
        pool.release(pool.acquire())
    """,
    "async": """
        import asyncio, sys, psycopg2, pgpool_compat
        async def connect():
            return psycopg2.connect(sys.argv[1])
        pool = pgpool_compat.AsyncConnectionPool(
            connect, min_size=1, max_size=2, background=True, name="at-exit")
        async def main():
            await pool.start()
            await pool.release(await pool.acquire())
        asyncio.run(main())
    """,
}


@faces()
def test_keeper_stops_at_exit_with_the_pool_left_open(face: Face) -> None:
    script = textwrap.dedent(EXIT_SCRIPTS[face.name])
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script, face.dsn], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", "no traceback nor 'task was destroyed' at exit"
    assert time.monotonic() - started < 10
