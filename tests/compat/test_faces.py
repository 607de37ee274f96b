"""Where the faces differ from the originals on purpose (docs/migrating-seeds.md), and the
resources no original-specific trick may touch: each test names what the original does."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional

import pytest

from pgpool_compat import PoolError, PoolTimeout
from pgpool_compat.compat import escudeiro, nextorm
from pgpool_compat.compat.generic_connection_pool import exceptions as gcp_exceptions
from pgpool_compat.compat.generic_connection_pool import threading as gcp_threading
from pgpool_compat.compat.generic_connection_pool.common import InvalidPoolSettings


class Thing:
    """A resource with ``close()``; numbered."""

    made = 0

    def __init__(self) -> None:
        Thing.made += 1
        self.number = Thing.made
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Unhashable(list):  # type: ignore[type-arg]
    __hash__ = None  # type: ignore[assignment]


class Slotted:
    __slots__ = ("closed",)

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def flaky_factory() -> Any:
    """An async factory whose first call fails, the later ones make a ``Thing``."""
    calls = {"n": 0}

    async def make() -> Thing:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionRefusedError("down")
        return Thing()

    return make


# -- nextorm -------------------------------------------------------------------------------


def test_nextorm_release_of_a_stranger_is_refused() -> None:
    # nextorm queues any object given to release(); here it is refused and nothing changes.
    pool = nextorm.ConnectionPool(Thing, min_size=1, max_size=2)
    with pytest.raises(PoolError):
        pool.release(Thing())
    assert (pool.pool_size, pool.idle_count) == (1, 1)


def test_nextorm_negative_timeout_refused_at_construction() -> None:
    # nextorm accepts it and fails at the first wait, inside queue.get().
    with pytest.raises(ValueError, match="timeout"):
        nextorm.ConnectionPool(Thing, timeout=-1)


def test_nextorm_timeout_error_is_ours_too() -> None:
    assert issubclass(nextorm.PoolTimeoutError, PoolTimeout)
    pool = nextorm.ConnectionPool(Thing, min_size=0, max_size=1, timeout=0)
    pool.acquire()
    with pytest.raises(nextorm.PoolTimeoutError, match="timeout=0, max_size=1"):
        pool.acquire()


def test_nextorm_async_failed_factory_keeps_its_slot() -> None:
    # nextorm's async pool keeps the semaphore slot of a failed factory call: with
    # max_size=1 the next acquire() times out for ever after.
    async def body() -> Thing:
        pool = nextorm.AsyncConnectionPool(flaky_factory(), min_size=0, max_size=1, timeout=0.5)
        with pytest.raises(ConnectionRefusedError):
            await pool.acquire()
        return await pool.acquire()

    assert isinstance(asyncio.run(body()), Thing)


def test_nextorm_async_second_start_opens_no_more() -> None:
    # nextorm opens min_size more on every start(), past max_size.
    async def make() -> Thing:
        return Thing()

    async def body() -> int:
        pool = nextorm.AsyncConnectionPool(make, min_size=2, max_size=3)
        await pool.start()
        await pool.start()
        return pool.pool_size

    assert asyncio.run(body()) == 2


def test_nextorm_sqlite_connection_used_only_by_its_thread() -> None:
    # sqlite3 refuses calls from another thread: the pool must call nothing on it there.
    pool = nextorm.ConnectionPool(lambda: sqlite3.connect(":memory:"), min_size=1, max_size=1)
    conn = pool.acquire()
    assert isinstance(conn, sqlite3.Connection)
    pool.release(conn)
    pool.close_all()


# -- escudeiro -----------------------------------------------------------------------------


def _escudeiro(pool_size: int, factory: Any = None, releaser: Any = None) -> Any:
    async def make() -> Thing:
        return Thing()

    async def close(resource: Any) -> None:
        resource.close()

    return escudeiro.AsyncPool(factory or make, releaser or close, pool_size=pool_size)


def test_escudeiro_dispose_leaves_the_pool_usable() -> None:
    # escudeiro's dispose() uses up its availability count: the next acquire() hangs.
    async def body() -> Any:
        pool = _escudeiro(2)
        await pool.prefill()
        await pool.dispose()
        return await asyncio.wait_for(pool.acquire(), 5)

    assert isinstance(asyncio.run(body()), Thing)


def test_escudeiro_never_exceeds_pool_size() -> None:
    # escudeiro hands a released resource to a waiter and then also lets the next caller
    # create one: three resources with pool_size=2.
    async def body() -> List[Any]:
        pool = _escudeiro(2)
        a, b = await pool.acquire(), await pool.acquire()
        waiter = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0.05)
        await pool.release(a)
        got = await asyncio.wait_for(waiter, 5)
        third = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0.1)
        still_waiting = not third.done()
        await pool.release(b)
        return [got is a, still_waiting, (await asyncio.wait_for(third, 5)) is b]

    assert asyncio.run(body()) == [True, True, True]


def test_escudeiro_failed_factory_keeps_its_slot() -> None:
    # escudeiro loses the slot of a failed factory call: pool_size=1 then hangs for ever.
    async def body() -> Any:
        pool = _escudeiro(1, factory=flaky_factory())
        with pytest.raises(ConnectionRefusedError):
            await pool.acquire()
        return await asyncio.wait_for(pool.acquire(), 5)

    assert isinstance(asyncio.run(body()), Thing)


def test_escudeiro_hands_out_the_resource_itself() -> None:
    # escudeiro wraps each resource in a proxy (isinstance fails, attributes are forwarded).
    async def body() -> List[Any]:
        async def make_slotted() -> Slotted:
            return Slotted()

        async def make_db() -> sqlite3.Connection:
            return sqlite3.connect(":memory:")

        async def close(resource: Any) -> None:
            resource.close()

        got = []
        for factory in (make_slotted, make_db):
            pool = escudeiro.AsyncPool(factory, close, pool_size=1)
            resource = await pool.acquire()
            got.append(type(resource))
            await pool.release(resource)
            await pool.dispose()
        return got

    assert asyncio.run(body()) == [Slotted, sqlite3.Connection]


@pytest.mark.parametrize("size", [0, -1, True, 2.5])
def test_escudeiro_bad_pool_size_refused(size: Any) -> None:
    # escudeiro accepts 0 and -1 and then hangs at the first acquire().
    with pytest.raises(ValueError, match="pool_size"):
        _escudeiro(size)


def test_escudeiro_releaser_error_at_dispose_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    # escudeiro 0.4.0 tries to raise an error group and fails building it (a TypeError).
    async def broken(resource: Any) -> None:
        raise OSError("cannot close")

    async def body() -> Any:
        pool = _escudeiro(2, releaser=broken)
        await pool.prefill()
        await pool.dispose()
        return await asyncio.wait_for(pool.acquire(), 5)

    with caplog.at_level(logging.DEBUG, logger="pgpool_compat"):
        assert isinstance(asyncio.run(body()), Thing)
    assert "OSError" in caplog.text


# -- generic-connection-pool ---------------------------------------------------------------


class Manager(gcp_threading.BaseConnectionManager[str, Any]):
    def __init__(self, make: Any = Thing) -> None:
        self.make = make
        self.log: List[Any] = []

    def create(self, endpoint: str, timeout: Optional[float] = None) -> Any:
        conn = self.make()
        self.log.append(("create", endpoint))
        return conn

    def dispose(self, endpoint: str, conn: Any, timeout: Optional[float] = None) -> None:
        self.log.append(("dispose", endpoint))


def test_gcp_unhashable_connections() -> None:
    # The original keys its books on the connection: an unhashable one fails an assert.
    manager = Manager(make=Unhashable)
    pool: gcp_threading.ConnectionPool[str, Any] = gcp_threading.ConnectionPool(
        manager, min_idle=1, max_size=2
    )
    first = pool.acquire("a")
    pool.release(first, "a")
    assert pool.acquire("a") is first
    pool.release(first, "a")
    pool.close()
    assert manager.log == [("create", "a"), ("dispose", "a")]


def test_gcp_close_with_a_borrowed_connection_returns_at_once() -> None:
    # The original's close() spins until every borrowed connection is back, timeout or not,
    # and release() then raises ConnectionPoolClosedError.
    manager = Manager()
    pool: gcp_threading.ConnectionPool[str, Any] = gcp_threading.ConnectionPool(
        manager, min_idle=1, max_size=2
    )
    held = pool.acquire("a")
    started = time.monotonic()
    pool.close(timeout=0.1)
    assert time.monotonic() - started < 1
    with pytest.raises(gcp_exceptions.ConnectionPoolClosedError):
        pool.acquire("a")
    pool.release(held, "a")  # closed on its way back
    assert manager.log == [("create", "a"), ("dispose", "a")]


def test_gcp_expired_connection_never_handed_out() -> None:
    # The original hands out an idle connection past max_lifetime until a release sweeps it.
    manager = Manager()
    pool: gcp_threading.ConnectionPool[str, Any] = gcp_threading.ConnectionPool(
        manager, min_idle=1, max_size=2, idle_timeout=0.1, max_lifetime=0.2
    )
    first = pool.acquire("a")
    pool.release(first, "a")
    time.sleep(0.3)
    second = pool.acquire("a")
    assert second is not first
    assert manager.log == [("create", "a"), ("dispose", "a"), ("create", "a")]
    pool.release(second, "a")
    pool.close()


def test_gcp_release_of_a_stranger() -> None:
    # The original: AssertionError from its assert, before the RuntimeError it means to
    # raise (ConnectionPoolNotFound for an endpoint holding nothing: the same here).
    pool: gcp_threading.ConnectionPool[str, Any] = gcp_threading.ConnectionPool(Manager())
    held = pool.acquire("a")
    with pytest.raises(RuntimeError, match="not acquired"):
        pool.release(Thing(), "a")
    with pytest.raises(gcp_exceptions.ConnectionPoolNotFound):
        pool.release(Thing(), "b")
    pool.release(held, "a")
    pool.close()


def test_gcp_release_of_an_equal_unhashable_connection() -> None:
    # The original finds an equal connection only through its hash, so not an unhashable one.
    class Numbered(Unhashable):
        made = 0

        def __init__(self) -> None:
            super().__init__([Numbered.made])
            Numbered.made += 1

    pool: gcp_threading.ConnectionPool[str, Any] = gcp_threading.ConnectionPool(
        Manager(make=Numbered), min_idle=2, max_size=2, acquire_timeout=0.2
    )
    first, second = pool.acquire("a"), pool.acquire("a")
    pool.release(Unhashable(second), "a")  # a copy: equal, not the same object
    assert pool.get_endpoint_pool_size("a", acquired=True) == 1
    assert pool.acquire("a") is second
    with pytest.raises(RuntimeError, match="not acquired"):
        pool.release(Unhashable([99]), "a")  # equal to nothing borrowed
    pool.release(second, "a")
    pool.release(first, "a")
    pool.close()


def test_gcp_release_gives_back_the_very_object_before_an_equal_one() -> None:
    # Two borrowed connections equal to each other (empty lists): the one named goes back.
    pool: gcp_threading.ConnectionPool[str, Any] = gcp_threading.ConnectionPool(
        Manager(make=Unhashable), min_idle=2, max_size=2
    )
    first, second = pool.acquire("a"), pool.acquire("a")
    assert first == second and first is not second
    pool.release(second, "a")
    assert pool.acquire("a") is second
    pool.release(first, "a")
    pool.release(second, "a")
    pool.close()


def test_gcp_release_ignores_an_equality_that_raises() -> None:
    class Touchy(Thing):
        def __eq__(self, other: object) -> bool:
            raise TypeError("no comparing")

        __hash__ = Thing.__hash__

    pool: gcp_threading.ConnectionPool[str, Any] = gcp_threading.ConnectionPool(
        Manager(make=Touchy), min_idle=1, max_size=2
    )
    held = pool.acquire("a")
    with pytest.raises(RuntimeError, match="not acquired"):
        pool.release(Thing(), "a")
    pool.release(held, "a")  # the very object: no comparison needed
    pool.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is POSIX only")
@pytest.mark.timeout(60)
def test_gcp_release_in_a_forked_child_of_a_connection_borrowed_before() -> None:
    # The child's books are empty (the connections are the parent's): giving back one it
    # inherited is quietly ignored, not an unknown endpoint.
    pool: gcp_threading.ConnectionPool[str, Any] = gcp_threading.ConnectionPool(Manager())
    held = pool.acquire("a")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            pool.release(held, "a")
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 20
    status = None
    while status is None and time.monotonic() < deadline:
        done, code = os.waitpid(pid, os.WNOHANG)
        status = code if done else None
        time.sleep(0.01)
    if status is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert status == 0
    pool.release(held, "a")
    pool.close()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_size": 0, "min_idle": 0},  # accepted by the original: a pool that never lends
        {"min_idle": 2.0, "max_size": 4},  # the original takes any number as a size
        {"min_idle": "1"},
        {"total_max_size": 0},
        {"idle_timeout": float("nan")},
        {"max_lifetime": "forever"},
        {"idle_timeout": True},
        {"acquire_timeout": float("nan")},
        {"acquire_timeout": "1"},
        {"dispose_batch_size": -1},
    ],
)
def test_gcp_every_refused_setting_is_invalid_pool_settings(kwargs: Dict[str, Any]) -> None:
    with pytest.raises(InvalidPoolSettings):
        gcp_threading.ConnectionPool(Manager(), **kwargs)


@pytest.mark.timeout(30)
def test_gcp_infinite_acquire_timeout_waits() -> None:
    # The original's timer overflows (OverflowError) on an infinite wait.
    timeouts: List[Any] = []

    class Checked(Manager):
        def check_aliveness(self, endpoint: str, conn: Any, timeout: Any = None) -> bool:
            timeouts.append(timeout)
            return True

    pool: gcp_threading.ConnectionPool[str, Any] = gcp_threading.ConnectionPool(
        Checked(), min_idle=1, max_size=1, acquire_timeout=math.inf
    )
    held = pool.acquire("a")
    timer = threading.Timer(0.2, pool.release, (held, "a"))
    timer.start()
    assert pool.acquire("a") is held  # waited for the release
    timer.join(5)
    pool.release(held, "a")
    assert pool.acquire("a", timeout=math.inf) is held  # a call's own timeout too
    pool.release(held, "a")
    pool.close()
    assert timeouts == [None, None]  # no time limit, as the original says it


def test_gcp_bad_settings_raise_even_under_python_O() -> None:
    # The original validates with assert: nothing is checked under python -O.
    assert issubclass(InvalidPoolSettings, ValueError)
    assert issubclass(InvalidPoolSettings, AssertionError)
    script = (
        "from pgpool_compat.compat.generic_connection_pool.threading import ConnectionPool\n"
        "from pgpool_compat.compat.generic_connection_pool.contrib.socket import "
        "TcpSocketConnectionManager\n"
        "try:\n"
        "    ConnectionPool(TcpSocketConnectionManager(), min_idle=3, max_size=2)\n"
        "except ValueError as error:\n"
        "    print('refused:', error)\n"
    )
    done = subprocess.run(
        [sys.executable, "-O", "-c", script], capture_output=True, text=True, timeout=60
    )
    assert "refused: min_idle (3)" in done.stdout, done.stderr


def test_gcp_threads_on_two_endpoints_all_finish_within_caps() -> None:
    # The original's total cap wait misses wake-ups: a thread times out after 10 s here.
    pool: gcp_threading.ConnectionPool[str, Any] = gcp_threading.ConnectionPool(
        Manager(), min_idle=1, max_size=2, total_max_size=3, acquire_timeout=10
    )
    lock = threading.Lock()
    out: Dict[str, int] = {"a": 0, "b": 0}
    peaks: Dict[str, int] = {"a": 0, "b": 0, "total": 0}
    finished: List[str] = []

    def work(endpoint: str) -> None:
        for _ in range(20):
            with pool.connection(endpoint):
                with lock:
                    out[endpoint] += 1
                    peaks[endpoint] = max(peaks[endpoint], out[endpoint])
                    peaks["total"] = max(peaks["total"], out["a"] + out["b"])
                time.sleep(0.001)
                with lock:
                    out[endpoint] -= 1
        finished.append(endpoint)

    threads = [threading.Thread(target=work, args=(ep,)) for ep in "aaabb"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    pool.close()
    assert len(finished) == 5
    assert peaks["a"] <= 2 and peaks["b"] <= 2 and peaks["total"] <= 3
