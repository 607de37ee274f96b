"""The asyncio runner's own rules, beyond the parity scenarios: ``close_all()`` bounded and
cancellable, loops bound at use, claims that late tasks cannot break.

Fake connections drive the rules deterministically; every test runs its own
``asyncio.run`` under a wall-clock bound.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, List

import pytest

from pgpool_compat.aio import AsyncConnectionPool
from pgpool_compat.errors import PoolError
from tests.test_aio import Factory, FakeConn, run, settle

pytestmark = pytest.mark.timeout(30)


def test_close_all_returns_at_once_when_a_reset_never_finishes() -> None:
    """Issue 10 item 6: a reset awaiting an event never set; the release is cancelled;
    close_all() cancels the reset and closes the connection instead of waiting for it."""
    factory = Factory()
    never = asyncio.Event()

    async def reset(conn: FakeConn) -> None:
        await never.wait()

    async def body() -> None:
        pool = AsyncConnectionPool(factory, min_size=1, max_size=1, reset=reset)
        await pool.start()
        conn = await pool.acquire()
        releasing = asyncio.ensure_future(pool.release(conn))
        await settle()
        releasing.cancel()
        await asyncio.gather(releasing, return_exceptions=True)
        started = time.monotonic()
        await asyncio.wait_for(pool.close_all(), 2)
        assert time.monotonic() - started < 1.0
        await settle()
        assert conn.closed, "the connection whose reset was abandoned is closed"
        assert pool.closed and pool.pool_size == 0

    run(body)


def test_close_all_can_be_cancelled_and_still_closes_what_it_abandons() -> None:
    factory = Factory()
    never = asyncio.Event()

    async def reset(conn: FakeConn) -> None:
        try:
            await never.wait()
        except asyncio.CancelledError:
            await never.wait()  # a badly behaved hook that ignores the first cancel

    async def body() -> None:
        pool = AsyncConnectionPool(
            factory, min_size=1, max_size=1, reset=reset, check_timeout=0.5
        )
        await pool.start()
        conn = await pool.acquire()
        releasing = asyncio.ensure_future(pool.release(conn))
        await settle()
        closing = asyncio.ensure_future(pool.close_all())
        await settle()
        closing.cancel()  # one cancel gets the caller out at once
        with pytest.raises(asyncio.CancelledError):
            await closing
        await settle()
        assert pool.closed and conn.closed, "what close_all() abandoned is closed"
        releasing.cancel()
        await asyncio.gather(releasing, return_exceptions=True)

    run(body)


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
