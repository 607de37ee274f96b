"""Scenarios run on ``nextorm.pool`` and on ``pgpool_compat.compat.nextorm``: same outcomes.

``lib`` is the module under test. Every case returns plain data (JSON); the differential test
compares the two libraries' results case by case. Behaviour where the face differs on purpose
(see docs/migrating-seeds.md) is tested in tests/compat/test_nextorm_face.py instead.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from typing import Any, List

from scenario_kit import (
    AsyncConn,
    Conn,
    Counter,
    Slotted,
    Unhashable,
    elapsed_between,
    in_thread,
    join,
    signature,
    validation,
)


def case_names_and_signatures(lib: Any) -> Any:
    return {
        "all": sorted(getattr(lib, "__all__", [])),
        "sync": signature(lib.ConnectionPool.__init__),
        "async": signature(lib.AsyncConnectionPool.__init__),
        "timeout_error_is_exception": issubclass(lib.PoolTimeoutError, Exception),
        "timeout_error_base_of_name": [c.__name__ for c in lib.PoolTimeoutError.__mro__][-3:],
        "sync_methods": sorted(
            n
            for n in ("acquire", "release", "close_all", "pool_size", "idle_count")
            if hasattr(lib.ConnectionPool, n)
        ),
        "async_methods": sorted(
            n
            for n in ("start", "acquire", "release", "close_all", "pool_size", "idle_count")
            if hasattr(lib.AsyncConnectionPool, n)
        ),
    }


def case_validation(lib: Any) -> Any:
    counter = Counter()
    results = {}
    for cls in (lib.ConnectionPool, lib.AsyncConnectionPool):
        results[cls.__name__] = [
            validation(lambda cls=cls: cls(lambda: Conn(counter), min_size=-1), "min_size"),
            validation(lambda cls=cls: cls(lambda: Conn(counter), max_size=0), "max_size"),
            validation(
                lambda cls=cls: cls(lambda: Conn(counter), min_size=3, max_size=2), "min_size"
            ),
        ]
    results["made"] = counter.made
    return results


def case_keyword_only(lib: Any) -> Any:
    counter = Counter()
    out = []
    for cls in (lib.ConnectionPool, lib.AsyncConnectionPool):
        out.append(validation(lambda cls=cls: cls(lambda: Conn(counter), 1, 2)))
        out.append(validation(lambda cls=cls: cls(factory=lambda: Conn(counter), min_size=0)))
    return out


def case_min_size_opened_at_construction(lib: Any) -> Any:
    out = []
    for min_size in (0, 1, 3):
        counter = Counter()
        pool = lib.ConnectionPool(lambda c=counter: Conn(c), min_size=min_size, max_size=3)
        out.append([counter.made, pool.pool_size, pool.idle_count])
        pool.close_all()
    return out


def case_acquire_release_counts(lib: Any) -> Any:
    counter = Counter()
    pool = lib.ConnectionPool(lambda: Conn(counter), min_size=1, max_size=3, timeout=1)
    trace: List[Any] = [[pool.pool_size, pool.idle_count]]
    a = pool.acquire()
    trace.append([a.i, pool.pool_size, pool.idle_count])
    b = pool.acquire()
    trace.append([b.i, pool.pool_size, pool.idle_count])
    pool.release(a)
    trace.append([pool.pool_size, pool.idle_count])
    c = pool.acquire()
    trace.append([c is a, pool.pool_size, pool.idle_count, counter.made])
    pool.release(b)
    pool.release(c)
    trace.append([pool.pool_size, pool.idle_count])
    pool.close_all()
    return trace


def case_sync_reuses_longest_idle_first(lib: Any) -> Any:
    # nextorm's sync pool hands out the connection returned first (a FIFO queue).
    counter = Counter()
    pool = lib.ConnectionPool(lambda: Conn(counter), min_size=0, max_size=3)
    a, b, c = pool.acquire(), pool.acquire(), pool.acquire()
    for conn in (b, c, a):
        pool.release(conn)
    order = [pool.acquire().i for _ in range(3)]
    return order


def case_timeout(lib: Any) -> Any:
    counter = Counter()
    pool = lib.ConnectionPool(lambda: Conn(counter), min_size=0, max_size=1, timeout=0.2)
    held = pool.acquire()
    waited = elapsed_between(pool.acquire, 0.15, 2.0)
    zero = lib.ConnectionPool(lambda: Conn(counter), min_size=0, max_size=1, timeout=0)
    zero.acquire()
    at_once = elapsed_between(zero.acquire, 0.0, 0.5)
    try:
        pool.acquire()
    except lib.PoolTimeoutError as error:
        caught = [type(error).__name__, isinstance(error, Exception)]
    pool.release(held)
    return [waited, at_once, caught, counter.made, pool.pool_size]


def case_release_wakes_waiter(lib: Any) -> Any:
    counter = Counter()
    for timeout in (5.0, None):
        pool = lib.ConnectionPool(lambda: Conn(counter), min_size=0, max_size=1, timeout=timeout)
        held = pool.acquire()
        box = in_thread(lambda pool=pool: pool.acquire().i)
        time.sleep(0.1)
        pool.release(held)
        result = join(box)
    return [result, held.i, counter.made]


def case_close_all_closes_idle_only(lib: Any) -> Any:
    counter = Counter()
    pool = lib.ConnectionPool(lambda: Conn(counter), min_size=2, max_size=3, timeout=0.5)
    a, b = pool.acquire(), pool.acquire()
    c = pool.acquire()
    pool.release(a)
    pool.close_all()
    trace: List[Any] = [
        [a.closed, b.closed, c.closed],
        [pool.pool_size, pool.idle_count],
        sorted(counter.log),
    ]
    pool.release(b)  # a connection borrowed across close_all() goes back as usual
    trace.append([pool.pool_size, pool.idle_count, b.closed])
    again = pool.acquire()
    trace.append([again is b, pool.pool_size])
    fresh = pool.acquire()  # the pool is still usable: it opens a new one
    trace.append([fresh.i, counter.made, pool.pool_size])
    pool.close_all()
    pool.close_all()  # idempotent
    trace.append([pool.pool_size, pool.idle_count])
    for conn in (again, fresh, c):
        pool.release(conn)
    pool.close_all()
    trace.append([pool.pool_size, pool.idle_count, sorted(i for _, i in counter.log)])
    return trace


def case_factory_error_propagates(lib: Any) -> Any:
    counter = Counter()
    down = {"now": True}

    def flaky() -> Conn:
        if down["now"]:
            raise ConnectionRefusedError("database is down")
        return Conn(counter)

    trace: List[Any] = []
    try:
        lib.ConnectionPool(flaky, min_size=1)
    except ConnectionRefusedError:
        trace.append("init raised")
    pool = lib.ConnectionPool(flaky, min_size=0, max_size=1, timeout=0.2)
    try:
        pool.acquire()
    except ConnectionRefusedError:
        trace.append(["acquire raised", pool.pool_size, pool.idle_count])
    down["now"] = False
    conn = pool.acquire()  # no slot was lost
    trace.append([conn.i, pool.pool_size])
    return trace


def case_odd_resources(lib: Any) -> Any:
    out = []
    for make in (Unhashable, Slotted):
        counter = Counter()
        pool = lib.ConnectionPool(lambda make=make, c=counter: make(c), min_size=1, max_size=2)
        a = pool.acquire()
        b = pool.acquire()
        pool.release(a)
        pool.release(b)
        again = pool.acquire()
        pool.release(again)
        pool.close_all()
        out.append([type(a).__name__, a.closed and b.closed, counter.made])
    # a sqlite3 connection belongs to the thread that made it; the pool must not touch it
    db_pool = lib.ConnectionPool(lambda: sqlite3.connect(":memory:"), min_size=1, max_size=1)
    db = db_pool.acquire()
    value = db.execute("select 41 + 1").fetchone()[0]
    db_pool.release(db)
    db_pool.close_all()
    out.append(value)
    return out


def case_threads_never_exceed_max(lib: Any) -> Any:
    counter = Counter()
    pool = lib.ConnectionPool(lambda: Conn(counter), min_size=0, max_size=2, timeout=5)
    lock = threading.Lock()
    state = {"out": 0, "peak": 0, "done": 0}

    def work() -> None:
        for _ in range(25):
            conn = pool.acquire()
            with lock:
                state["out"] += 1
                state["peak"] = max(state["peak"], state["out"])
            time.sleep(0.001)
            with lock:
                state["out"] -= 1
            pool.release(conn)
        with lock:
            state["done"] += 1

    threads = [threading.Thread(target=work, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    return [state["peak"], state["done"], counter.made, pool.pool_size]


# -- asyncio -------------------------------------------------------------------------------


def case_async_start_and_acquire(lib: Any) -> Any:
    async def main() -> Any:
        counter = Counter()

        async def factory() -> AsyncConn:
            return AsyncConn(counter)

        pool = lib.AsyncConnectionPool(factory=factory, min_size=2, max_size=3, timeout=0.2)
        trace: List[Any] = [[pool.pool_size, pool.idle_count, counter.made]]
        await pool.start()
        trace.append([pool.pool_size, pool.idle_count, counter.made])
        a = await pool.acquire()
        b = await pool.acquire()
        c = await pool.acquire()
        trace.append([pool.pool_size, pool.idle_count, counter.made])
        started = time.monotonic()
        try:
            await pool.acquire()
        except lib.PoolTimeoutError:
            trace.append(["timeout", 0.15 <= time.monotonic() - started < 2])
        await pool.release(a)
        await pool.release(b)
        trace.append([pool.pool_size, pool.idle_count])
        again = await pool.acquire()  # the last returned comes back first (a stack)
        trace.append([again is b])
        await pool.release(again)
        await pool.close_all()
        trace.append([pool.pool_size, pool.idle_count, a.closed, b.closed, c.closed])
        fresh = await pool.acquire()  # still usable after close_all()
        trace.append([fresh.i, pool.pool_size])
        await pool.release(c)
        await pool.release(fresh)
        await pool.close_all()
        trace.append([pool.pool_size, pool.idle_count, sorted(i for _, i in counter.log)])
        return trace

    return asyncio.run(main())


def case_async_acquire_without_start(lib: Any) -> Any:
    async def main() -> Any:
        counter = Counter()

        async def factory() -> AsyncConn:
            return AsyncConn(counter)

        pool = lib.AsyncConnectionPool(factory, min_size=2, max_size=2, timeout=1)
        conn = await pool.acquire()
        trace = [conn.i, pool.pool_size, pool.idle_count]
        await pool.release(conn)
        trace += [pool.pool_size, pool.idle_count]
        await pool.close_all()
        return trace

    return asyncio.run(main())


def case_async_release_wakes_waiter(lib: Any) -> Any:
    async def main() -> Any:
        counter = Counter()

        async def factory() -> AsyncConn:
            return AsyncConn(counter)

        pool = lib.AsyncConnectionPool(factory, min_size=0, max_size=1, timeout=5)
        held = await pool.acquire()
        waiter = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0.05)
        done_early = waiter.done()
        await pool.release(held)
        got = await asyncio.wait_for(waiter, 5)
        await pool.release(got)
        await pool.close_all()
        return [done_early, got is held, counter.made]

    return asyncio.run(main())
