"""AsyncConnectionPool: the engine's rules under asyncio, cancellation at every await point.

Fake factories drive the rules deterministically (gates decide when a connect, check or
reset finishes); asyncpg against the real test server proves it on a real driver. Every
test runs its own ``asyncio.run`` under a wall-clock bound: no pytest-asyncio.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Set, TypeVar

import asyncpg
import psycopg2.extensions
import pytest

from pgpool_compat.aio import AsyncConnectionPool
from pgpool_compat.engine.stats import COUNTER_KEYS, GAUGE_KEYS
from pgpool_compat.errors import PoolError, PoolTimeout, PoolTimeoutError
from tests.helpers import (
    AWKWARD_CONNECTION_KINDS,
    AWKWARD_POOL_OPTIONS,
    backend_pids,
    recording_factory,
    terminate_backends,
)

pytestmark = pytest.mark.timeout(30)

T = TypeVar("T")


def run(test: Callable[[], Awaitable[T]], bound: float = 10.0) -> T:
    """Run one async test body in a fresh event loop, failing it after ``bound`` seconds."""

    async def bounded() -> T:
        return await asyncio.wait_for(test(), bound)

    return asyncio.run(bounded())


async def settle(rounds: int = 10) -> None:
    """Let every ready task run until it blocks (waiters enqueue, callbacks fire)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class FakeConn:
    def __init__(self, number: int) -> None:
        self.number = number
        self.closed = False

    async def close(self) -> None:  # async, like asyncpg's: the default releaser awaits it
        self.closed = True

    def __repr__(self) -> str:
        return f"FakeConn({self.number})"


class Factory:
    """An async factory whose connects can be held at a gate or made to fail."""

    def __init__(self) -> None:
        self.made: List[FakeConn] = []
        self.gate: Optional[asyncio.Event] = None
        self.failures = 0
        self.started = 0

    async def __call__(self) -> FakeConn:
        self.started += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise ConnectionError("server said no")
        conn = FakeConn(len(self.made))
        self.made.append(conn)
        return conn

    def open_conns(self) -> List[FakeConn]:
        return [conn for conn in self.made if not conn.closed]


def assert_books(pool: AsyncConnectionPool[Any], factory: Factory, borrowed: int = 0) -> None:
    """Every open connection is idle or borrowed; the pool counts exactly those."""
    assert pool.pool_size == pool.idle_count + borrowed
    assert len(factory.open_conns()) == pool.pool_size


# -- basics ---------------------------------------------------------------------------------


def test_start_prefills_and_async_with_closes_everything() -> None:
    factory = Factory()

    async def body() -> None:
        async with AsyncConnectionPool(factory, min_size=2, max_size=4) as pool:
            assert (pool.pool_size, pool.idle_count) == (2, 2)
            async with pool.connection() as conn:
                assert conn in factory.made
                assert pool.idle_count == 1
            assert pool.idle_count == 2
        assert all(conn.closed for conn in factory.made)
        assert pool.pool_size == 0 and pool.closed
        with pytest.raises(PoolError, match="connection pool is closed"):
            await pool.acquire()
        await pool.close_all()  # idempotent

    run(body)


def test_async_with_closes_what_start_opened_when_start_fails() -> None:
    """``__aexit__`` never runs when ``__aenter__`` raises: the connections ``start()`` had
    opened stayed open in a pool nobody held (the sync constructor closes them)."""
    made: List[FakeConn] = []

    async def third_fails() -> FakeConn:
        if len(made) == 2:
            raise ConnectionError("server said no")
        made.append(FakeConn(len(made)))
        return made[-1]

    async def body() -> None:
        pool = AsyncConnectionPool(third_fails, min_size=3, max_size=3)
        with pytest.raises(ConnectionError):
            async with pool:
                pytest.fail("the body ran")
        await settle()
        assert len(made) == 2 and all(conn.closed for conn in made)
        assert pool.closed and pool.pool_size == 0

    run(body)


#: Made at module level, outside any event loop, as applications do.
MODULE_LEVEL_FACTORY = Factory()
MODULE_LEVEL_POOL: AsyncConnectionPool[FakeConn] = AsyncConnectionPool(
    MODULE_LEVEL_FACTORY, min_size=1, max_size=1
)


def test_a_pool_made_outside_a_loop_works_in_the_loop_that_uses_it_without_start() -> None:
    async def body() -> None:
        async with MODULE_LEVEL_POOL.connection() as conn:
            assert conn is MODULE_LEVEL_FACTORY.made[0]
        assert MODULE_LEVEL_POOL.idle_count == 1
        await MODULE_LEVEL_POOL.close_all()

    run(body)


def test_settings_are_validated_with_their_own_names() -> None:
    with pytest.raises(ValueError, match="max_size"):
        AsyncConnectionPool(Factory(), min_size=3, max_size=2)
    with pytest.raises(ValueError, match="timeout"):
        AsyncConnectionPool(Factory(), timeout=-1)
    with pytest.raises(TypeError, match="async_factory"):
        AsyncConnectionPool("not callable")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="check"):
        AsyncConnectionPool(Factory(), check="ping")
    with pytest.raises(ValueError, match="max_lifetime"):
        AsyncConnectionPool(Factory(), max_lifetime=0)
    with pytest.raises(TypeError, match="lifo"):
        AsyncConnectionPool(Factory(), lifo=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prefill"):
        asyncio.run(_prefill_negative())


async def _prefill_negative() -> None:
    async with AsyncConnectionPool(Factory(), min_size=0) as pool:
        await pool.prefill(-1)


def test_stats_keys_match_the_sync_pools() -> None:
    async def body() -> Dict[str, int]:
        async with AsyncConnectionPool(Factory(), min_size=1, max_size=2) as pool:
            async with pool.connection():
                pass
            return pool.get_stats()

    stats = run(body)
    assert list(stats) == list(GAUGE_KEYS) + list(COUNTER_KEYS)
    assert stats["pool_min"] == 1 and stats["pool_max"] == 2
    assert stats["requests_num"] == 1 and stats["connections_num"] == 1


def test_release_of_a_foreign_or_returned_connection_is_refused() -> None:
    async def body() -> None:
        async with AsyncConnectionPool(Factory(), min_size=0, max_size=2) as pool:
            conn = await pool.acquire()
            await pool.release(conn)
            with pytest.raises(PoolError, match="did not hand out"):
                await pool.release(conn)
            with pytest.raises(PoolError, match="did not hand out"):
                await pool.release(FakeConn(99))
            assert pool.idle_count == 1

    run(body)


# -- waiting: timeouts and fairness ---------------------------------------------------------


def test_timeout_raises_pool_timeout_error_after_the_timeout() -> None:
    async def body() -> None:
        async with AsyncConnectionPool(Factory(), min_size=1, max_size=1, timeout=0.2) as pool:
            held = await pool.acquire()
            started = time.monotonic()
            with pytest.raises(PoolTimeoutError) as caught:
                await pool.acquire()
            waited = time.monotonic() - started
            assert 0.19 <= waited < 2.0
            assert PoolTimeoutError is PoolTimeout and isinstance(caught.value, PoolError)
            assert str(caught.value).startswith("connection pool exhausted")
            stats = pool.get_stats()
            assert stats["requests_errors"] == 1 and stats["requests_waiting"] == 0
            assert stats["requests_wait_ms"] >= 190
            await pool.release(held)
            assert await pool.acquire() is held  # the timed-out waiter left no trace

    run(body)


def test_timeout_zero_fails_at_once_and_none_waits() -> None:
    async def body() -> None:
        async with AsyncConnectionPool(Factory(), min_size=1, max_size=1, timeout=0) as pool:
            held = await pool.acquire()
            started = time.monotonic()
            with pytest.raises(PoolTimeoutError):
                await pool.acquire()
            assert time.monotonic() - started < 0.5
            await pool.release(held)
        async with AsyncConnectionPool(Factory(), max_size=1, timeout=None) as pool:
            held = await pool.acquire()
            waiter = asyncio.ensure_future(pool.acquire())
            await asyncio.sleep(0.3)  # longer than any default would be: still waiting
            assert not waiter.done()
            await pool.release(held)
            assert await waiter is held

    run(body)


def test_an_argument_to_acquire_is_a_timeout_as_in_the_sync_pool() -> None:
    async def body() -> None:
        factory = Factory()
        async with AsyncConnectionPool(factory, min_size=0, max_size=1, timeout=10) as pool:
            held = await pool.acquire(5)
            started = time.monotonic()
            with pytest.raises(PoolTimeoutError, match=r"timeout=0\.1\b"):
                await pool.acquire(0.1)
            assert 0.09 <= time.monotonic() - started < 2.0
            with pytest.raises(PoolTimeoutError):
                await pool.acquire(timeout=0)
            assert (pool.pool_size, len(factory.made)) == (1, 1)
            await pool.release(held)

    run(body)


@pytest.mark.parametrize("timeout", [-1, float("nan"), float("inf"), "0.2"])
def test_a_bad_timeout_to_acquire_is_refused_at_once(timeout: Any) -> None:
    async def body() -> None:
        async with AsyncConnectionPool(Factory(), min_size=0, max_size=1, timeout=10) as pool:
            held = await pool.acquire()
            with pytest.raises((TypeError, ValueError), match="timeout must be"):
                await asyncio.wait_for(pool.acquire(timeout), 2)
            await pool.release(held)
            assert pool.get_stats()["requests_waiting"] == 0

    run(body)


def test_waiters_are_served_first_come_first_served() -> None:
    """Each task re-queues right after returning: with barging it would get its own
    connection back at once; with FIFO hand-off the turns go round robin."""
    order: List[int] = []

    async def worker(pool: AsyncConnectionPool[Any], number: int) -> None:
        for _ in range(4):
            async with pool.connection():
                order.append(number)
                await asyncio.sleep(0)

    async def body() -> None:
        async with AsyncConnectionPool(Factory(), min_size=1, max_size=1) as pool:
            held = await pool.acquire()
            tasks = []
            for number in range(5):
                tasks.append(asyncio.ensure_future(worker(pool, number)))
                await settle()  # enqueue in a known order
            assert pool.get_stats()["requests_waiting"] == 5
            await pool.release(held)
            await asyncio.gather(*tasks)

    run(body)
    assert order == [0, 1, 2, 3, 4] * 4


def test_a_freed_slot_goes_to_the_oldest_waiter() -> None:
    factory = Factory()

    async def body() -> None:
        async with AsyncConnectionPool(factory, min_size=1, max_size=1, max_lifetime=0.1) as pool:
            held = await pool.acquire()
            first = asyncio.ensure_future(pool.acquire())
            await settle()
            second = asyncio.ensure_future(pool.acquire())
            await settle()
            await asyncio.sleep(0.12)
            await pool.release(held)  # past its lifetime: closed, its slot handed on
            fresh = await first
            assert held.closed and fresh is not held
            assert not second.done()
            await pool.release(fresh)
            await asyncio.wait_for(second, 2)

    run(body)


# -- cancellation at every await point ------------------------------------------------------


def test_cancelled_while_waiting_loses_no_slot() -> None:
    factory = Factory()

    async def body() -> None:
        async with AsyncConnectionPool(factory, min_size=1, max_size=1, timeout=5) as pool:
            held = await pool.acquire()
            waiter = asyncio.ensure_future(pool.acquire())
            await settle()
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            assert pool.get_stats()["requests_waiting"] == 0
            await pool.release(held)
            assert pool.idle_count == 1 and pool.pool_size == 1
            assert await pool.acquire() is held
            assert len(factory.made) == 1

    run(body)


def test_cancelled_while_connecting_the_connection_goes_to_the_idle_set() -> None:
    factory = Factory()

    async def body() -> None:
        async with AsyncConnectionPool(factory, min_size=0, max_size=1) as pool:
            factory.gate = asyncio.Event()
            caller = asyncio.ensure_future(pool.acquire())
            await settle()
            assert factory.started == 1 and pool.pool_size == 1  # slot reserved first
            caller.cancel()
            with pytest.raises(asyncio.CancelledError):
                await caller
            assert pool.pool_size == 1  # the connect goes on in its slot
            factory.gate.set()
            await settle()
            assert pool.idle_count == 1 and not factory.made[0].closed
            assert await pool.acquire() is factory.made[0]
            assert factory.started == 1
            assert_books(pool, factory, borrowed=1)

    run(body)


def test_cancelled_while_connecting_the_connection_goes_to_the_next_waiter() -> None:
    factory = Factory()

    async def body() -> None:
        async with AsyncConnectionPool(factory, min_size=0, max_size=1) as pool:
            factory.gate = asyncio.Event()
            caller = asyncio.ensure_future(pool.acquire())
            await settle()
            waiter = asyncio.ensure_future(pool.acquire())
            await settle()
            assert pool.get_stats()["requests_waiting"] == 1
            caller.cancel()
            await settle()
            factory.gate.set()
            assert await asyncio.wait_for(waiter, 2) is factory.made[0]
            assert factory.started == 1

    run(body)


def test_connection_handed_to_a_waiter_cancelled_in_the_same_instant_is_passed_on() -> None:
    async def body() -> None:
        async with AsyncConnectionPool(Factory(), min_size=1, max_size=1) as pool:
            held = await pool.acquire()
            waiter = asyncio.ensure_future(pool.acquire())
            await settle()
            await pool.release(held)  # hands it to the waiter's future, synchronously...
            waiter.cancel()  # ...which is cancelled before it could run
            with pytest.raises(asyncio.CancelledError):
                await waiter
            assert pool.idle_count == 1 and pool.pool_size == 1
            assert await pool.acquire() is held

    run(body)


def test_slot_granted_to_a_waiter_cancelled_in_the_same_instant_is_freed() -> None:
    factory = Factory()

    async def body() -> None:
        async with AsyncConnectionPool(factory, min_size=1, max_size=1, max_lifetime=0.1) as pool:
            held = await pool.acquire()
            waiter = asyncio.ensure_future(pool.acquire())
            await settle()
            await asyncio.sleep(0.12)
            await pool.release(held)  # expired: closed, its slot granted to the waiter...
            waiter.cancel()  # ...who is cancelled before it could connect
            with pytest.raises(asyncio.CancelledError):
                await waiter
            await settle()
            assert pool.pool_size == 0 and factory.started == 1
            conn = await pool.acquire()
            assert conn is factory.made[1]

    run(body)


def test_cancelled_during_check_discards_the_connection_and_frees_the_slot() -> None:
    factory = Factory()
    gate: Dict[str, asyncio.Event] = {}

    async def slow_check(conn: FakeConn) -> bool:
        await gate["check"].wait()
        return True

    async def body() -> None:
        gate["check"] = asyncio.Event()
        async with AsyncConnectionPool(factory, min_size=1, max_size=1, check=slow_check) as pool:
            caller = asyncio.ensure_future(pool.acquire())
            await settle()
            assert pool.idle_count == 0 and pool.pool_size == 1
            caller.cancel()
            with pytest.raises(asyncio.CancelledError):
                await caller
            await settle()
            assert factory.made[0].closed and pool.pool_size == 0
            gate["check"].set()
            conn = await pool.acquire()
            assert conn is factory.made[1]

    run(body)


def test_release_from_a_cancelled_task_still_returns_the_connection() -> None:
    factory = Factory()
    gate: Dict[str, asyncio.Event] = {}
    resets: List[FakeConn] = []

    async def slow_reset(conn: FakeConn) -> None:
        await gate["reset"].wait()
        resets.append(conn)

    async def borrower(pool: AsyncConnectionPool[FakeConn]) -> None:
        conn = await pool.acquire()
        await pool.release(conn)

    async def body() -> None:
        gate["reset"] = asyncio.Event()
        async with AsyncConnectionPool(factory, min_size=1, max_size=1, reset=slow_reset) as pool:
            task = asyncio.ensure_future(borrower(pool))
            await settle()  # now inside release(), awaiting the reset
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert pool.pool_size == 1 and pool.idle_count == 0
            gate["reset"].set()
            await settle()
            assert resets == [factory.made[0]]
            assert pool.idle_count == 1 and not factory.made[0].closed
            assert_books(pool, factory)

    run(body)


def test_async_with_connection_returns_it_when_the_body_is_cancelled() -> None:
    factory = Factory()

    async def borrower(pool: AsyncConnectionPool[FakeConn]) -> None:
        async with pool.connection():
            await asyncio.sleep(30)

    async def body() -> None:
        async with AsyncConnectionPool(factory, min_size=1, max_size=1) as pool:
            task = asyncio.ensure_future(borrower(pool))
            await settle()
            assert pool.idle_count == 0
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert pool.idle_count == 1
            assert_books(pool, factory)

    run(body)


def test_random_cancellations_never_leak_slots_or_connections() -> None:
    """Many tasks, short deadlines that cancel at whatever await point they hit."""
    factory = Factory()
    rng = random.Random(7)

    async def slow_factory() -> FakeConn:
        await asyncio.sleep(rng.choice([0, 0, 0.001, 0.003]))
        return await factory()

    async def check(conn: FakeConn) -> bool:
        await asyncio.sleep(rng.choice([0, 0.001]))
        return rng.random() > 0.05

    async def reset(conn: FakeConn) -> None:
        await asyncio.sleep(rng.choice([0, 0.001]))
        if rng.random() < 0.05:
            raise RuntimeError("reset failed")

    borrowed = {"now": 0, "max": 0}

    async def worker(pool: AsyncConnectionPool[FakeConn]) -> None:
        for _ in range(15):
            try:
                async with pool.connection() as conn:
                    borrowed["now"] += 1
                    borrowed["max"] = max(borrowed["max"], borrowed["now"])
                    try:
                        assert not conn.closed
                        await asyncio.sleep(rng.choice([0, 0.001, 0.002]))
                    finally:
                        borrowed["now"] -= 1
            except PoolTimeoutError:
                pass

    async def body() -> None:
        pool = AsyncConnectionPool(
            slow_factory, min_size=1, max_size=4, timeout=0.05, check=check, reset=reset,
            max_lifetime=0.05, max_idle=0.02,
        )
        async with pool:
            tasks = [asyncio.ensure_future(worker(pool)) for _ in range(30)]
            for _ in range(60):  # cancel random tasks at random moments
                await asyncio.sleep(rng.choice([0, 0.001, 0.002]))
                victim = rng.choice(tasks)
                if not victim.done():
                    victim.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.sleep(0.02)  # connects still in flight land in the pool
            assert borrowed["max"] <= 4
            assert pool.pool_size <= 4
            assert pool.get_stats()["requests_waiting"] == 0
            assert_books(pool, factory)
        assert factory.open_conns() == []
        assert pool.pool_size == 0

    run(body, bound=20)


# -- connect failures and close ---------------------------------------------------------------


def test_connect_failure_frees_the_slot_and_reaches_the_caller() -> None:
    factory = Factory()

    async def body() -> None:
        async with AsyncConnectionPool(factory, min_size=0, max_size=1) as pool:
            factory.failures = 1
            with pytest.raises(ConnectionError):
                await pool.acquire()
            assert pool.pool_size == 0
            stats = pool.get_stats()
            assert stats["connections_errors"] == 1 and stats["requests_errors"] == 1
            assert await pool.acquire() is factory.made[0]

    run(body)


def test_connect_failure_passes_the_slot_to_a_waiter_who_connects() -> None:
    factory = Factory()

    async def body() -> None:
        async with AsyncConnectionPool(factory, min_size=0, max_size=1) as pool:
            factory.gate = asyncio.Event()
            factory.failures = 1
            first = asyncio.ensure_future(pool.acquire())
            await settle()
            second = asyncio.ensure_future(pool.acquire())
            await settle()
            factory.gate.set()
            with pytest.raises(ConnectionError):
                await first
            assert await asyncio.wait_for(second, 2) is factory.made[0]

    run(body)


def test_close_all_wakes_waiters_with_a_clear_error() -> None:
    factory = Factory()

    async def body() -> None:
        pool = AsyncConnectionPool(factory, min_size=1, max_size=1)
        await pool.start()
        held = await pool.acquire()
        waiters = [asyncio.ensure_future(pool.acquire()) for _ in range(3)]
        await settle()
        await pool.close_all()
        for waiter in waiters:
            with pytest.raises(PoolError, match=r"^connection pool is closed$"):
                await waiter
        assert held.closed and pool.pool_size == 0
        with pytest.raises(PoolError, match="closed"):
            await pool.release(held)

    run(body)


def test_close_all_during_a_connect_fails_the_caller_and_keeps_the_books() -> None:
    factory = Factory()

    async def body() -> None:
        pool = AsyncConnectionPool(factory, min_size=0, max_size=2)
        await pool.start()
        factory.gate = asyncio.Event()
        caller = asyncio.ensure_future(pool.acquire())
        await settle()
        await pool.close_all()
        with pytest.raises(PoolError, match="closed"):
            await caller
        assert pool.pool_size == 0 and factory.made == []

    run(body)


def test_connection_block_exit_is_quiet_after_close_all() -> None:
    async def body() -> None:
        pool = AsyncConnectionPool(Factory(), min_size=1, max_size=1)
        await pool.start()
        async with pool.connection() as conn:
            await pool.close_all()
        assert conn.closed

    run(body)


# -- event loops ----------------------------------------------------------------------------


def test_a_pool_moves_to_the_next_loop_once_its_loop_has_ended() -> None:
    factory = Factory()
    pool: AsyncConnectionPool[FakeConn] = AsyncConnectionPool(factory, min_size=2, max_size=2)

    async def first_loop() -> FakeConn:
        await pool.start()
        return await pool.acquire()

    held = run(first_loop)  # asyncio.run closes that loop: the pool moves to the next one
    (idle_from_first_loop,) = [conn for conn in factory.made if conn is not held]

    async def second_loop() -> None:
        await pool.release(held)  # borrowed in the first loop, returned in this one
        await settle()
        # Both were opened for the ended loop (asyncpg's would be bound to it): the idle one
        # is closed as the pool moves, the borrowed one (its session state unknown too) on
        # its return, never lent again (it was, and its session leaked to the next borrower).
        assert idle_from_first_loop.closed and held.closed
        assert (pool.pool_size, pool.idle_count) == (0, 0)
        assert pool.get_stats()["returns_bad"] == 0  # retired, not a bad return
        async with pool.connection() as conn:
            assert conn is factory.made[2]
        assert pool.idle_count == 1
        await pool.close_all()

    run(second_loop, bound=2)


def test_a_pool_used_from_a_thread_with_its_own_loop_fails_at_once() -> None:
    async def body() -> None:
        async with AsyncConnectionPool(Factory(), min_size=1, max_size=1) as pool:
            held = await pool.acquire()  # a same-loop caller would now wait

            def other_thread() -> str:
                async def use() -> None:
                    await asyncio.wait_for(pool.acquire(), 2)

                try:
                    asyncio.run(use())
                except PoolError as error:
                    return str(error)
                return "no error"

            with concurrent.futures.ThreadPoolExecutor(1) as executor:
                message = await asyncio.get_running_loop().run_in_executor(
                    executor, other_thread
                )
            assert "different event loop" in message
            await pool.release(held)

    run(body)


# -- lifetimes, idle expiry, checks, reset --------------------------------------------------


def test_lifetime_expires_on_checkout_and_on_return() -> None:
    factory = Factory()

    async def body() -> None:
        async with AsyncConnectionPool(factory, min_size=2, max_size=2, max_lifetime=0.1) as pool:
            young = await pool.acquire()
            await asyncio.sleep(0.12)
            await pool.release(young)  # too old: closed on return
            assert pool.pool_size == 1
            replacement = await pool.acquire()  # the idle one is too old as well
            await settle()  # the async close() runs in the background
            assert young.closed and factory.made[1].closed
            assert replacement is factory.made[2]
            assert_books(pool, factory, borrowed=1)

    run(body)


def test_lifetimes_are_jittered_by_at_most_ten_percent() -> None:
    async def body() -> List[float]:
        async with AsyncConnectionPool(
            Factory(), min_size=40, max_size=40, max_lifetime=100
        ) as pool:
            # White-box: the records' deadlines are what the jitter is about.
            entries = pool._runner.core.entries.values()
            return [entry.expires_at - entry.created_at for entry in entries]

    lifetimes = run(body)
    assert all(90.0 <= lifetime <= 100.0 for lifetime in lifetimes)
    assert len(set(lifetimes)) > 30  # not all expiring at once


def test_max_idle_closes_idle_connections_down_to_min_size() -> None:
    factory = Factory()

    async def body() -> None:
        async with AsyncConnectionPool(factory, min_size=1, max_size=3, max_idle=0.1) as pool:
            conns = [await pool.acquire() for _ in range(3)]
            for conn in conns:
                await pool.release(conn)
            assert pool.idle_count == 3  # kept up to max_size while fresh
            await asyncio.sleep(0.15)
            async with pool.connection():
                assert pool.pool_size == 1
            await settle()  # the async close() runs in the background
            assert sum(conn.closed for conn in conns) == 2
            assert_books(pool, factory)

    run(body)


@pytest.mark.parametrize("asynchronous", [False, True])
def test_failed_checks_discard_and_try_the_next(asynchronous: bool) -> None:
    factory = Factory()
    dead = {0, 1}

    def sync_check(conn: FakeConn) -> bool:
        if conn.number == 1:
            raise OSError("probe blew up")  # an exception counts as a failure
        return conn.number not in dead

    async def async_check(conn: FakeConn) -> bool:
        await asyncio.sleep(0)
        return sync_check(conn)

    async def body() -> None:
        check = async_check if asynchronous else sync_check
        async with AsyncConnectionPool(
            factory, min_size=3, max_size=3, check=check, lifo=False
        ) as pool:
            conn = await pool.acquire()
            assert conn is factory.made[2]
            await settle()  # the async close() runs in the background
            assert factory.made[0].closed and factory.made[1].closed
            assert pool.get_stats()["connections_lost"] == 2
            assert_books(pool, factory, borrowed=1)
            await pool.release(conn)
            dead.add(2)
            fresh = await pool.acquire()  # every idle one fails: a new one is opened
            assert fresh is factory.made[3]
            assert_books(pool, factory, borrowed=1)

    run(body)


@pytest.mark.parametrize("asynchronous", [False, True])
def test_reset_runs_on_return_and_a_failure_discards_the_connection_not_the_slot(
    asynchronous: bool,
) -> None:
    factory = Factory()
    resets: List[int] = []

    def sync_reset(conn: FakeConn) -> None:
        resets.append(conn.number)
        if len(resets) == 2:
            raise RuntimeError("cannot reset")

    async def async_reset(conn: FakeConn) -> None:
        await asyncio.sleep(0)
        sync_reset(conn)

    async def body() -> None:
        reset = async_reset if asynchronous else sync_reset
        async with AsyncConnectionPool(factory, min_size=1, max_size=1, reset=reset) as pool:
            conn = await pool.acquire()
            await pool.release(conn)
            assert resets == [0] and pool.idle_count == 1
            await pool.release(await pool.acquire())  # this reset fails
            assert conn.closed and pool.pool_size == 0
            assert pool.get_stats()["returns_bad"] == 1
            assert await pool.acquire() is factory.made[1]  # the slot is still there

    run(body)


def test_lifo_and_fifo_reuse_order() -> None:
    async def order(lifo: bool) -> List[int]:
        async with AsyncConnectionPool(Factory(), min_size=0, max_size=3, lifo=lifo) as pool:
            conns = [await pool.acquire() for _ in range(3)]
            for conn in conns:
                await pool.release(conn)
            return [(await pool.acquire()).number for _ in range(3)]

    assert run(lambda: order(True)) == [2, 1, 0]
    assert run(lambda: order(False)) == [0, 1, 2]


def test_sync_factory_and_hooks_work_too() -> None:
    closed: List[int] = []
    counter = iter(range(100))

    async def body() -> None:
        pool = AsyncConnectionPool(
            lambda: next(counter),
            min_size=2,
            max_size=2,
            releaser=closed.append,
            check=lambda conn: True,
            reset=lambda conn: None,
        )
        async with pool, pool.connection() as conn:
            assert conn in (0, 1)
        assert sorted(closed) == [0, 1]

    run(body)


def test_prefill_opens_concurrently_up_to_max_size_and_reports_errors() -> None:
    factory = Factory()

    async def body() -> None:
        async with AsyncConnectionPool(factory, min_size=0, max_size=5) as pool:
            started = time.monotonic()

            async def slow() -> FakeConn:
                await asyncio.sleep(0.1)
                return await factory()

            pool._factory = slow  # white-box: time the connects
            await pool.prefill(3)
            assert time.monotonic() - started < 0.29  # in parallel: in series takes 0.3
            assert pool.idle_count == 3
            await pool.prefill(10)
            assert pool.pool_size == 5
            await pool.close_all()
        pool2 = AsyncConnectionPool(factory, min_size=0, max_size=3)
        await pool2.start()
        factory.failures = 1
        with pytest.raises(ConnectionError):
            await pool2.prefill(3)
        assert pool2.pool_size == 2 and pool2.idle_count == 2
        await pool2.close_all()

    run(body)


def test_repr_never_shows_the_factory() -> None:
    secret = "password=hunter2"
    pool = AsyncConnectionPool(lambda: secret, min_size=0)
    assert "hunter2" not in repr(pool)


# -- asyncpg against the real server --------------------------------------------------------


def asyncpg_kwargs(dsn: str) -> Dict[str, Any]:
    """asyncpg.connect() keywords for a libpq key=value DSN."""
    params = psycopg2.extensions.parse_dsn(dsn)
    kwargs: Dict[str, Any] = {
        "host": params.get("host", "127.0.0.1"),
        "port": int(params.get("port", 5432)),
        "user": params.get("user"),
        "database": params.get("dbname"),
        "password": params.get("password"),
        "timeout": 10,
    }
    return {key: value for key, value in kwargs.items() if value is not None}


def test_asyncpg_pool_against_the_real_server(pg_dsn: str) -> None:
    kwargs = asyncpg_kwargs(pg_dsn)
    used: List[int] = []

    async def reset(conn: Any) -> None:
        await conn.reset(timeout=5)  # asyncpg's own: RESET ALL, drop prepared, unlisten...

    async def body() -> None:
        pool = AsyncConnectionPool(
            lambda: asyncpg.connect(**kwargs), min_size=2, max_size=4, timeout=10, reset=reset
        )
        async with pool:
            assert pool.pool_size == 2

            async def query() -> None:
                async with pool.connection() as conn:
                    used.append(await conn.fetchval("SELECT pg_backend_pid()", timeout=5))
                    await conn.execute("SELECT pg_sleep(0.02)", timeout=5)

            await asyncio.gather(*(query() for _ in range(20)))
            assert len(used) == 20 and len(set(used)) <= 4
            assert pool.pool_size == 4
            assert set(used) <= set(backend_pids(pg_dsn))  # real, live server sessions

            # Session state does not reach the next borrower.
            async with pool.connection() as conn:
                await conn.execute("SET search_path TO pg_catalog")
                pid = conn.get_server_pid()
            async with pool.connection() as conn:  # LIFO: the same connection again
                assert conn.get_server_pid() == pid
                assert await conn.fetchval("SHOW search_path") == '"$user", public'
        assert sessions_end(pg_dsn, set(used))

    run(body, bound=20)


def sessions_end(dsn: str, pids: Set[int], bound: float = 5.0) -> bool:
    """Whether the server sessions ``pids`` all end within ``bound`` seconds."""
    deadline = time.monotonic() + bound
    while pids & set(backend_pids(dsn)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_asyncpg_check_drops_a_terminated_backend(pg_dsn: str) -> None:
    kwargs = asyncpg_kwargs(pg_dsn)

    async def check(conn: Any) -> bool:
        return bool(await conn.fetchval("SELECT 1", timeout=2) == 1)

    async def body() -> None:
        pool = AsyncConnectionPool(
            lambda: asyncpg.connect(**kwargs), min_size=1, max_size=2, check=check
        )
        async with pool:
            async with pool.connection() as conn:
                pid = conn.get_server_pid()
            terminate_backends(pg_dsn, [pid])
            async with pool.connection() as conn:
                new_pid = await conn.fetchval("SELECT pg_backend_pid()", timeout=5)
            assert new_pid != pid
            assert pool.get_stats()["connections_lost"] == 1
            assert pool.pool_size == 1

    run(body, bound=20)


# -- issue 10 item 8: a factory returning an object the pool holds; awkward objects ----------


def test_factory_returning_the_same_object_twice_is_refused_and_frees_the_slot() -> None:
    """The second connect of a shared client (or ``None``) is a clear ``PoolError``: the
    object is never handed to two borrowers, and no slot is lost."""
    shared = FakeConn(0)
    results: List[Any] = [shared, shared, None, FakeConn(1)]

    async def factory() -> Any:
        return results.pop(0)

    async def body() -> None:
        async with AsyncConnectionPool(factory, min_size=0, max_size=2, timeout=0.2) as pool:
            first = await pool.acquire()
            with pytest.raises(PoolError, match="returned an object this pool already holds"):
                await pool.acquire()
            with pytest.raises(PoolError, match="returned None"):
                await pool.acquire()
            assert first is shared and not shared.closed
            assert pool.pool_size == 1
            second = await pool.acquire()  # both slots usable
            assert second is not shared
            await pool.release(first)
            await pool.release(second)
            assert pool.idle_count == 2
        assert shared.closed

    run(body)


@pytest.mark.parametrize("kind", AWKWARD_CONNECTION_KINDS, ids=lambda kind: kind.__name__)
def test_connections_of_any_kind_are_pooled_by_identity(kind: type) -> None:
    made: List[Any] = []

    async def body() -> None:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            recording_factory(kind, made), **AWKWARD_POOL_OPTIONS
        )
        async with pool:
            borrowed = [await pool.acquire() for _ in range(3)]
            assert len({id(conn) for conn in borrowed}) == 3
            with pytest.raises(PoolTimeoutError):
                await pool.acquire()
            for conn in borrowed:
                await pool.release(conn)
            again = [await pool.acquire() for _ in range(3)]
            assert {id(conn) for conn in again} == {id(conn) for conn in made}
            with pytest.raises(PoolError):
                await pool.release(kind())  # equal to every borrowed one, yet not one of them
            for conn in again:
                await pool.release(conn)
        assert [conn.closes for conn in made] == [1, 1, 1]

    run(body)


# -- issue 10 item 6: close_all() is bounded and cancellable ----------------------------------


def test_close_all_does_not_wait_for_a_reset_that_never_finishes() -> None:
    """The reset awaits an event nobody sets and the borrower's ``release()`` is cancelled:
    ``close_all()`` cancels the reset, closes its connection and returns at once."""
    factory = Factory()

    async def reset(conn: FakeConn) -> None:
        await asyncio.Event().wait()  # never set

    async def body() -> None:
        pool = AsyncConnectionPool(factory, min_size=0, max_size=2, reset=reset)
        await pool.start()
        conn = await pool.acquire()
        releasing = asyncio.ensure_future(pool.release(conn))
        await settle()
        releasing.cancel()
        await settle()
        started = time.monotonic()
        await asyncio.wait_for(pool.close_all(), 2)
        assert time.monotonic() - started < 1
        await settle()
        assert conn.closed and pool.pool_size == 0

    run(body)


class StubbornReset:
    """A reset that swallows every cancellation and ends only once ``finish`` is set."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.finish = asyncio.Event()

    async def __call__(self, conn: FakeConn) -> None:
        self.started.set()
        while not self.finish.is_set():
            try:
                await self.finish.wait()
            except asyncio.CancelledError:
                continue


def test_close_all_gives_up_on_a_reset_that_ignores_cancellation() -> None:
    """A reset that swallows its cancellation is waited for ``timeout`` seconds, then its
    connection is closed; when the reset finally ends it changes nothing."""
    factory = Factory()

    async def body() -> None:
        reset = StubbornReset()  # its events belong to this loop (Python 3.9)
        pool = AsyncConnectionPool(factory, min_size=0, max_size=2, reset=reset)
        await pool.start()
        conn = await pool.acquire()
        releasing = asyncio.ensure_future(pool.release(conn))
        await settle()
        started = time.monotonic()
        await pool.close_all(timeout=0.2)
        assert 0.15 <= time.monotonic() - started < 1.5
        await settle()
        assert conn.closed and pool.pool_size == 0
        reset.finish.set()
        await asyncio.wait_for(releasing, 2)  # the borrower's release() ends quietly
        assert pool.pool_size == 0 and pool.idle_count == 0

    run(body)


def test_async_with_pool_is_cancelled_out_with_one_cancel() -> None:
    """Leaving ``async with pool`` waits in ``close_all()``; one ``cancel()`` ends the task
    promptly, and the connection of the abandoned reset is closed all the same."""
    factory = Factory()
    releases: List[asyncio.Future[None]] = []

    async def user(reset: StubbornReset) -> FakeConn:
        async with AsyncConnectionPool(factory, min_size=0, max_size=1, reset=reset) as pool:
            conn = await pool.acquire()
            releases.append(asyncio.ensure_future(pool.release(conn)))
            await reset.started.wait()
        return conn  # pragma: no cover - the exit is cancelled

    async def body() -> None:
        reset = StubbornReset()  # its events belong to this loop (Python 3.9)
        task = asyncio.ensure_future(user(reset))
        await reset.started.wait()
        await settle()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2)
        reset.finish.set()
        assert done == {task} and task.cancelled()
        assert all(conn.closed for conn in factory.made)

    run(body)
