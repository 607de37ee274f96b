"""The asyncio runner's own rules, beyond the parity scenarios and test_aio.py: loops bound
at use, claims that late tasks cannot break, fork, the observer. (``close_all()`` bounded and
cancellable, issue 10 item 6, is in test_aio.py.)

Fake connections drive the rules deterministically; every test runs its own
``asyncio.run`` under a wall-clock bound.
"""

from __future__ import annotations

import asyncio
import gc
import random
import threading
from typing import Any, Dict, List

import pytest

from pgpool_compat.aio import AsyncConnectionPool
from pgpool_compat.errors import PoolError
from tests.factory.test_aio import Factory, FakeConn, run, settle

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

    from tests.dropin.test_fork import run_in_child
    from tests.helpers import pid_of, scalar

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


def test_a_forked_child_lets_go_of_a_connection_borrowed_before_the_fork(pg_dsn: str) -> None:
    """The child's release of the parent's borrowed connection is a quiet no-op, as in the
    threaded runner (it raised NotBorrowed), and never closes it."""
    import psycopg2

    from tests.dropin.test_fork import run_in_child
    from tests.helpers import scalar

    async def connect() -> Any:
        return psycopg2.connect(pg_dsn)

    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(connect, min_size=1, max_size=1)

    async def body() -> None:
        async with pool:
            borrowed = await pool.acquire()

            def child() -> Dict[str, Any]:
                async def give_back() -> str:
                    await pool.release(borrowed)
                    return "released"

                return {"outcome": asyncio.run(give_back()), "closed": borrowed.closed}

            assert run_in_child(child) == {"outcome": "released", "closed": 0}
            assert scalar(borrowed, "SELECT 1") == 1  # still the parent's, still open
            await pool.release(borrowed)

    run(body, bound=20)


def test_a_forked_child_never_finalizes_the_parents_asyncpg_connections(pg_dsn: str) -> None:
    """The child's at-fork hook dropped the last references to the parent's connections:
    collected there, asyncpg's ``__del__`` aborted the transport, unregistering the socket
    from the epoll the child shares with the parent, whose next query then never ended."""
    import asyncpg

    from tests.dropin.test_fork import run_in_child
    from tests.factory.test_aio import asyncpg_kwargs

    kwargs = asyncpg_kwargs(pg_dsn)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        lambda: asyncpg.connect(**kwargs), min_size=2, max_size=2, timeout=5
    )

    def child() -> Dict[str, Any]:
        gc.collect()
        return {}

    async def body() -> None:
        async with pool:
            async with pool.connection() as borrowed:  # borrowed at the fork, one idle
                run_in_child(child)
                assert await asyncio.wait_for(borrowed.fetchval("SELECT 1"), 5) == 1
            async with pool.connection() as first, pool.connection() as second:
                for conn in (first, second):
                    assert await asyncio.wait_for(conn.fetchval("SELECT 1"), 5) == 1

    run(body, bound=25)


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


def test_keyed_stress_with_cancellations_keeps_caps_and_books() -> None:
    """The asyncio runner with per-key sub-pools (generic-connection-pool's endpoints): 24
    tasks x 60 checkouts over 3 keys, max 2 per key and 4 in all, connects and resets that
    take a loop turn, random cancellations, discards and short timeouts. Nobody holds what
    another holds, the caps hold at every step, and the books add up at the end."""
    from pgpool_compat.driver_async import AsyncFactoryDriver
    from pgpool_compat.engine.asyncio import AsyncRunner
    from pgpool_compat.errors import PoolTimeout
    from pgpool_compat.settings import Settings

    made: List[FakeConn] = []

    async def connect() -> FakeConn:
        await asyncio.sleep(0)
        made.append(FakeConn(len(made)))
        return made[-1]

    async def reset(conn: FakeConn) -> None:
        await asyncio.sleep(0)

    settings = Settings(max_size=2, total_max_size=4, timeout=0.02, check_timeout=1.0)
    runner: AsyncRunner[FakeConn] = AsyncRunner(settings, AsyncFactoryDriver(connect, reset=reset))
    holders: Dict[int, int] = {}
    problems: List[str] = []

    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        for n in range(60):
            key = ("a", "b", "c")[(seed + n) % 3]
            try:
                conn = await runner.acquire(key)
            except PoolTimeout:
                continue
            if id(conn) in holders:
                problems.append("one object lent twice")
            holders[id(conn)] = seed
            if runner.core.size > 4 or runner.core.subpools[key].size > 2:
                problems.append("a cap was exceeded")
            await asyncio.sleep(0)
            del holders[id(conn)]
            await runner.release(conn, discard=rng.random() < 0.1)

    async def body() -> None:
        rng = random.Random(7)
        tasks = [asyncio.ensure_future(worker(seed)) for seed in range(24)]
        for _ in range(40):  # cancel some workers at random points
            await asyncio.sleep(rng.random() * 0.01)
            victim = rng.choice(tasks)
            victim.cancel()
        await asyncio.wait(tasks, timeout=20)
        assert all(task.done() for task in tasks), "a worker is stuck"
        await settle(50)  # connects and resets orphaned by cancellations land
        assert problems == []
        assert runner.stats()["requests_queued"] > 0, "the caps made callers wait"
        figures = runner.figures()
        assert figures.used == len(holders)  # borrowers cancelled mid-use still hold theirs
        for conn in [e.conn for e in list(runner.core.out.values())]:
            await runner.release(conn)
        await settle(50)
        figures = runner.figures()
        assert figures.used == 0 and figures.pending == 0
        assert figures.size == figures.idle <= 4
        assert figures.size == len([conn for conn in made if not conn.closed])
        await runner.close()
        await settle(50)
        assert all(conn.closed for conn in made)

    run(body, bound=25)
