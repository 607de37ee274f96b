"""The asyncio runner's own rules, beyond the parity scenarios and test_aio.py: loops bound
at use, claims that late tasks cannot break, fork, the observer. (``close_all()`` bounded and
cancellable, issue 10 item 6, is in test_aio.py.)

Fake connections drive the rules deterministically; every test runs its own
``asyncio.run`` under a wall-clock bound.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Dict, List

import pytest

from pgpool_compat.aio import AsyncConnectionPool
from pgpool_compat.errors import PoolError
from tests.test_aio import Factory, FakeConn, run, settle

pytestmark = pytest.mark.timeout(30)


def test_two_loops_at_once_is_a_clear_error_and_changes_nothing() -> None:
    factory = Factory()
    ready = threading.Event()
    done = threading.Event()
    pool: AsyncConnectionPool[FakeConn] = AsyncConnectionPool(factory, min_size=1, max_size=2)
    errors: List[str] = []

    async def first_loop() -> None:
        async with pool.connection():
            ready.set()
            while not done.is_set():
                await asyncio.sleep(0.01)

    thread = threading.Thread(target=lambda: asyncio.run(first_loop()), daemon=True)
    thread.start()
    assert ready.wait(5)

    async def second_loop() -> None:
        for verb in (pool.acquire, pool.check, pool.prefill):
            try:
                await verb()
            except PoolError as error:
                errors.append(str(error))

    try:
        run(second_loop)
    finally:
        done.set()
        thread.join(5)
    assert len(errors) == 3 and all("different event loop" in e for e in errors), errors
    assert pool.pool_size == 1 and len(factory.made) == 1


def test_a_connect_left_behind_by_an_ended_loop_holds_no_slot_in_the_next() -> None:
    factory = Factory()
    factory.gate = asyncio.Event()
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(factory, min_size=0, max_size=1)

    left_behind: List[Any] = []

    async def first_loop() -> None:
        left_behind.append(asyncio.ensure_future(pool.acquire()))
        await settle()
        assert pool.pool_size == 1  # the slot being opened

    # A loop closed with the connect still pending (asyncio.run would cancel it first).
    loop = asyncio.new_event_loop()
    loop.run_until_complete(first_loop())
    loop.close()

    async def second_loop() -> None:
        factory.gate = None
        async with pool.connection() as conn:  # max_size=1: the old slot is not counted
            assert conn is factory.made[-1]
        assert pool.pool_size == 1
        await pool.close_all()

    run(second_loop)


def test_waiters_and_resets_left_behind_by_an_ended_loop_are_dropped_cleanly() -> None:
    """A loop closed while a waiter queued and a reset was in flight: the next loop neither
    offers the slot to the dead waiter nor counts the connection being reset."""
    factory = Factory()
    gate = asyncio.Event()

    async def reset(conn: FakeConn) -> None:
        if conn is factory.made[0]:
            await gate.wait()  # only in the first loop

    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        factory, min_size=0, max_size=1, reset=reset
    )
    left_behind: List[Any] = []

    async def first_loop() -> None:
        conn = await pool.acquire()
        left_behind.append(asyncio.ensure_future(pool.acquire()))  # queued: the pool is full
        await settle()
        left_behind.append(asyncio.ensure_future(pool.release(conn)))  # reset at the gate
        await settle()
        assert pool.get_stats()["requests_waiting"] == 1

    loop = asyncio.new_event_loop()
    loop.run_until_complete(first_loop())
    loop.close()

    async def second_loop() -> None:
        async with pool.connection() as conn:
            assert conn is factory.made[-1] and len(factory.made) == 2
        await settle()
        assert factory.made[0].closed, "the connection whose reset was left behind is closed"
        assert (pool.pool_size, pool.get_stats()["requests_waiting"]) == (1, 0)
        await pool.close_all()

    run(second_loop)


def test_a_forked_child_never_uses_or_closes_the_parents_connections(pg_dsn: str) -> None:
    """Forked while the parent's loop runs: the child binds its own loop and opens its own
    connection; the parent's idle connection is neither handed out there nor closed."""
    import psycopg2

    from tests.helpers import pid_of, scalar
    from tests.test_fork import run_in_child

    async def connect() -> Any:
        return psycopg2.connect(pg_dsn)

    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(connect, min_size=1, max_size=2)

    def child() -> Dict[str, Any]:
        async def use() -> int:
            async with pool.connection() as conn:
                return pid_of(conn)

        return {"backend": asyncio.run(use())}

    async def body() -> None:
        async with pool:
            async with pool.connection() as conn:
                parent_backend = pid_of(conn)
            result = run_in_child(child)  # forks while this loop runs
            assert result["backend"] != parent_backend
            async with pool.connection() as again:
                assert again is conn and scalar(again, "SELECT 1") == 1

    run(body, bound=20)


def test_the_observer_hears_every_connect_checkout_and_borrow() -> None:
    """Metrics' hook: created per connect, waited per served checkout (queued or not, never
    for a timeout), used per return."""
    heard: List[str] = []

    class Observer:
        def created(self, pool_name: str, seconds: float) -> None:
            heard.append("created")

        def waited(self, pool_name: str, seconds: float) -> None:
            heard.append("waited")

        def used(self, pool_name: str, seconds: float) -> None:
            heard.append("used")

    async def body() -> None:
        pool = AsyncConnectionPool(Factory(), min_size=0, max_size=1, timeout=0.05)
        pool._runner.observer = Observer()
        conn = await pool.acquire()  # connects: created, then waited
        with pytest.raises(PoolError):
            await pool.acquire()  # times out: no waited
        await pool.release(conn)
        await pool.release(await pool.acquire())  # the hot path
        await pool.close_all()

    run(body)
    assert heard == ["created", "waited", "used", "waited", "used"]
