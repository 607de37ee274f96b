"""The engine verbs and settings the seed faces configure: ``close_idle()``, ``key_sizes()``,
``Settings.refill``, the keyed driver hooks, and the keeper's check not counting as a use."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Hashable, List

from pgpool_compat.driver import Driver
from pgpool_compat.driver_async import AsyncDriver
from pgpool_compat.engine.asyncio import AsyncRunner
from pgpool_compat.engine.threaded import ThreadedRunner
from pgpool_compat.settings import Settings


class Thing:
    def __init__(self, key: Hashable = None) -> None:
        self.key = key


class KeyedDriver(Driver[Thing]):
    """Records the keyed hooks; ``is_alive`` makes it a driver with a probe."""

    def __init__(self) -> None:
        self.log: List[Any] = []

    def connect_to(self, key: Hashable) -> Thing:
        self.log.append(("connect", key))
        return Thing(key)

    def prepare_for(self, conn: Thing, key: Hashable) -> Any:
        return {"endpoint": key}

    def is_alive(self, conn: Thing, state: Any) -> bool:
        return True

    def dispose_with(self, conn: Thing, state: Any) -> None:
        self.log.append(("dispose", state["endpoint"]))


def _wait_until(predicate: Any, bound: float = 5.0) -> bool:
    deadline = time.monotonic() + bound
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(predicate())


def test_keyed_hooks_get_the_key_and_the_state() -> None:
    driver = KeyedDriver()
    runner: ThreadedRunner[Thing] = ThreadedRunner(Settings(max_size=2), driver)
    conn = runner.acquire("a")
    assert conn.key == "a"
    runner.release(conn)
    runner.close()
    assert driver.log == [("connect", "a"), ("dispose", "a")]


def test_keeper_check_is_not_a_use() -> None:
    # The keeper probes idle connections every second; that must not restart their idle
    # time, or max_idle never closes anything when the keeper runs.
    driver = KeyedDriver()
    runner: ThreadedRunner[Thing] = ThreadedRunner(
        Settings(max_size=2, max_idle=0.3, background=True), driver
    )
    try:
        runner.release(runner.acquire("a"))
        assert _wait_until(lambda: runner.size == 0), driver.log
    finally:
        runner.close()


def test_refill_false_opens_nothing_for_min_idle() -> None:
    for refill, expected in ((True, 1), (False, 0)):
        driver = KeyedDriver()
        runner: ThreadedRunner[Thing] = ThreadedRunner(
            Settings(max_size=2, min_idle=1, background=True, refill=refill), driver
        )
        try:
            runner.release(runner.acquire("a"), discard=True)  # the key exists, holds none
            _wait_until(lambda r=runner: r.size >= 1, bound=2.5)
            assert runner.key_sizes("a")[0] == expected
        finally:
            runner.close()


def test_close_idle_keeps_the_pool_and_the_borrowed() -> None:
    driver = KeyedDriver()
    runner: ThreadedRunner[Thing] = ThreadedRunner(Settings(max_size=3), driver)
    borrowed = runner.acquire("a")
    spare = runner.acquire("a")
    other = runner.acquire("b")
    runner.release(spare)
    runner.release(other)
    assert runner.key_sizes("a") == (2, 1, 1)
    assert runner.close_idle() == 2
    assert runner.key_sizes("a") == (1, 0, 1) and runner.key_sizes("b") == (0, 0, 0)
    assert driver.log.count(("dispose", "a")) == 1 and ("dispose", "b") in driver.log
    runner.release(borrowed)  # still ours: goes back idle
    assert runner.idle_count == 1 and not runner.closed
    runner.close()
    assert runner.close_idle() == 0


def test_async_close_idle_awaits_the_closes() -> None:
    closed: List[Any] = []

    class Slow(AsyncDriver[Thing]):
        async def connect(self) -> Thing:
            return Thing()

        async def dispose(self, conn: Thing) -> None:
            await asyncio.sleep(0.05)
            closed.append(conn)

    async def body() -> List[int]:
        runner: AsyncRunner[Thing] = AsyncRunner(Settings(max_size=2), Slow())
        a, b = await runner.acquire(), await runner.acquire()
        await runner.release(a)
        counts = [await runner.close_idle(), len(closed), runner.key_sizes()[2]]
        await runner.release(b)
        await runner.close()
        return counts

    assert asyncio.run(body()) == [1, 1, 1]


def test_async_keeper_check_is_not_a_use() -> None:
    class Probed(AsyncDriver[Thing]):
        has_probe = True

        async def connect(self) -> Thing:
            return Thing()

        def is_alive(self, conn: Thing, state: Any) -> bool:
            return True

    async def body() -> int:
        runner: AsyncRunner[Thing] = AsyncRunner(
            Settings(max_size=2, max_idle=0.3, background=True), Probed()
        )
        await runner.release(await runner.acquire())
        deadline = time.monotonic() + 5
        while runner.size and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        size = runner.size
        await runner.close()
        return size

    assert asyncio.run(body()) == 0
