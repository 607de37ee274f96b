"""Parity: check (a callable on every face; the built-in socket probe and ping on the
psycopg2 face), reset on return, configure, and the check timeout that bounds a ping or a
reset stuck on a backend that stopped answering."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from typing import Any, Dict, List

import pytest

from pgpool_compat.testing import PostgresServer
from tests.helpers import pid_of, scalar
from tests.parity.faces import Face, faces, wait_until

pytestmark = pytest.mark.timeout(60)



@faces()
def test_a_failing_check_discards_the_connection_and_tries_the_next(face: Face) -> None:
    bad: List[Any] = []
    checked: List[Any] = []

    def check(conn: Any) -> bool:
        checked.append(conn)
        if conn is bad_raising[0]:
            raise RuntimeError("check blew up")
        return conn not in bad

    bad_raising: List[Any] = [None]
    pool = face.pool(3, 3, check=check)
    first, second, third = pool.get(), pool.get(), pool.get()
    for conn in (first, second, third):
        pool.put(conn)
    bad.append(third)
    bad_raising[0] = second
    checked.clear()
    got = pool.get()
    assert got is first
    assert checked == [third, second, first], "newest first, each candidate checked once"
    assert third.closed and second.closed and not first.closed
    stats = pool.stats()
    assert stats["connections_lost"] == 2 and stats["pool_size"] == 1
    pool.put(got)
    checked.clear()
    assert pool.get() is first and checked == [first], "a check callable runs on every checkout"


@faces()
def test_reset_runs_on_return_and_a_failure_costs_the_connection_not_the_slot(
    face: Face,
) -> None:
    resets: List[Any] = []
    fail_for: List[Any] = []

    def reset(conn: Any) -> None:
        resets.append(conn)
        if conn in fail_for:
            raise RuntimeError("reset blew up")
        conn.rollback()

    pool = face.pool(1, 1, reset=reset, timeout=1)
    conn = pool.get()
    scalar(conn, "SELECT 1")  # leaves a transaction open: the reset ends it
    pool.put(conn)
    assert resets == [conn]
    again = pool.get()
    assert again is conn and conn.get_transaction_status() == 0  # idle, not in transaction
    fail_for.append(conn)
    pool.put(conn)
    assert conn.closed
    stats = pool.stats()
    assert stats["returns_bad"] == 1 and stats["pool_size"] == 0
    fresh = pool.get()  # max 1: only possible if the slot was freed
    assert fresh is not conn and scalar(fresh, "SELECT 1") == 1


@faces()
def test_a_connection_returned_past_its_lifetime_is_closed_without_a_reset(face: Face) -> None:
    resets: List[Any] = []
    pool = face.pool(1, 1, reset=resets.append, max_lifetime=0.2)
    conn = pool.get()
    scalar(conn, "SELECT 1")  # leaves a transaction open: kept, it would need the reset
    time.sleep(0.3)  # past the lifetime (jitter only ever shortens it)
    pool.put(conn)
    assert resets == [], "a reset of a connection about to be closed is wasted I/O"
    wait_until(lambda: bool(conn.closed), what="the expired connection closed")
    stats = pool.stats()
    assert stats["returns_bad"] == 0 and stats["pool_size"] == 0
    assert scalar(pool.get(), "SELECT 1") == 1


@faces()
def test_configure_runs_once_on_each_new_connection(face: Face) -> None:
    configured: List[Any] = []

    def configure(conn: Any) -> None:
        configured.append(conn)
        conn.autocommit = True

    pool = face.pool(1, 2, configure=configure)
    first, second = pool.get(), pool.get()
    assert configured == [first, second]
    assert first.autocommit and second.autocommit
    pool.put(first)
    pool.put(second)
    pool.put(pool.get())
    assert configured == [first, second], "not again on reuse"


@faces(only=("psycopg2",))
def test_socket_probe_drops_a_terminated_backend_with_no_round_trip(face: Face) -> None:
    from tests.helpers import terminate_backends

    pool = face.pool(2, 2)
    first, second = pool.get(), pool.get()
    pool.put(first)
    pool.put(second)
    terminate_backends(face.dsn, [pid_of(second)])
    assert pool.get() is first
    assert second.closed and pool.stats()["connections_lost"] == 1


# -- the check timeout: a connection that stops answering -----------------------------------
#
# psycopg2 face: its built-in ping and rollback, to a backend stopped with SIGSTOP (process
# alive, socket open: only a bound helps). Async face: the user's async check and reset,
# awaiting an answer that never comes. A sync check callable cannot be interrupted, so the
# sync factory pool has no check timeout.


def _ping(conn: Any) -> bool:
    return bool(scalar(conn, "SELECT 1") == 1)


class Hang:
    """Makes one connection stop answering, the way each face can be hurt."""

    def __init__(self, face: Face, server: PostgresServer) -> None:
        self.face = face
        self.hung: List[Any] = []
        self.never = asyncio.Event()  # the async hooks of a hung connection await it
        if face.name == "psycopg2":
            face.dsn = server.dsn  # SIGSTOP a backend of our own server only

    def ping_options(self) -> Dict[str, Any]:
        if self.face.name == "psycopg2":
            return {"check": "ping", "ping_after": 0}

        async def check(conn: Any) -> bool:
            if conn in self.hung:
                await self.never.wait()
            return _ping(conn)

        return {"check": check}

    def reset_options(self) -> Dict[str, Any]:
        if self.face.name == "psycopg2":
            return {}  # the built-in rollback

        async def reset(conn: Any) -> None:
            if conn in self.hung:
                await self.never.wait()
            conn.rollback()

        return {"reset": reset}

    @contextlib.contextmanager
    def hanging(self, conn: Any) -> Iterator[None]:
        pid = pid_of(conn)
        self.hung.append(conn)
        if self.face.name == "psycopg2":
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            self.hung.remove(conn)
            if self.face.name == "psycopg2":
                with contextlib.suppress(ProcessLookupError):  # the pool's cut may end it
                    os.kill(pid, signal.SIGCONT)


@faces(only=("psycopg2", "async"))
def test_check_timeout_cuts_off_a_ping_that_never_answers(
    face: Face, own_server: PostgresServer
) -> None:
    hang = Hang(face, own_server)
    check_timeout = 0.4
    pool = face.pool(1, 2, check_timeout=check_timeout, **hang.ping_options())
    hung = pool.get()
    pool.put(hung)
    with hang.hanging(hung):
        started = time.monotonic()
        conn = pool.get()
        took = time.monotonic() - started
    assert conn is not hung and hung.closed
    assert check_timeout - 0.05 <= took < check_timeout + 1.5
    assert _ping(conn)
    assert pool.stats()["connections_lost"] == 1
    pool.put(conn)


@faces(only=("psycopg2", "async"))
def test_check_timeout_cuts_off_a_reset_that_never_answers(
    face: Face, own_server: PostgresServer
) -> None:
    hang = Hang(face, own_server)
    check_timeout = 0.4
    pool = face.pool(1, 1, check_timeout=check_timeout, timeout=5, **hang.reset_options())
    conn = pool.get()
    scalar(conn, "SELECT 1")  # in a transaction: the return must roll it back
    with hang.hanging(conn):
        started = time.monotonic()
        pool.put(conn)
        fresh = pool.get()
        took = time.monotonic() - started
    assert fresh is not conn
    assert took < check_timeout + 1.5
    assert _ping(fresh)
    assert pool.stats()["returns_bad"] == 1
