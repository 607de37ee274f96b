"""The three faces of the engine behind one set of sync verbs, so each scenario is written once.

- ``psycopg2``: ``ThreadedConnectionPool(min, max, dsn, pool_*=...)``.
- ``sync``: ``ConnectionPool(factory, min_size=..., max_size=..., ...)``.
- ``async``: ``AsyncConnectionPool`` driven from a helper thread that runs its event loop, so
  the same threads that wait on a sync pool wait on the async one (each call is a coroutine
  run on that loop with ``run_coroutine_threadsafe``, bounded).

Every face pools real psycopg2 connections to the test server: the psycopg2 face opens them
itself, the factory faces through a factory. All three open them through ``Tracked``, a
connection class that records each connection made and can be told to refuse new ones, so a
scenario sees the same objects and injects the same connect failures on every face.

A scenario names its options in one vocabulary (``timeout``, ``max_idle``, ``keeper`` ...);
``Face.keywords`` spells them as the face does.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from typing import Any, Callable, Dict, List, Optional, TypeVar

import psycopg2
import psycopg2.extensions
import pytest

import pgpool_compat

__all__ = [
    "FACES",
    "Face",
    "Handle",
    "Tracked",
    "faces",
    "wait_until",
]

T = TypeVar("T")

FACES = ("psycopg2", "sync", "async")

#: Bound on any one call into a pool from a test (a hang fails the test, not the session).
CALL_BOUND = 20.0


def faces(*, only: tuple[str, ...] = FACES, xfail: Optional[Dict[str, str]] = None) -> Any:
    """Parametrize a scenario over the faces (``only`` those), marking the ones that do not
    have the behaviour yet as strict xfails with the reason: building it flips them."""
    xfail = xfail or {}
    params = [
        pytest.param(name, marks=[pytest.mark.xfail(strict=True, reason=xfail[name])])
        if name in xfail
        else name
        for name in only
    ]
    return pytest.mark.parametrize("face", params, indirect=True)


def wait_until(condition: Callable[[], bool], bound: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, f"never happened within {bound} s: {what}"
        time.sleep(0.01)


class Tracked(psycopg2.extensions.connection):  # type: ignore[misc]
    """A psycopg2 connection that registers itself with the factory that made it."""

    registry: Optional[ConnectionLog] = None

    def __init__(self, dsn: str, *args: Any, **kwargs: Any) -> None:
        log = type(self).registry
        assert log is not None
        log.attempts += 1
        if log.refuse:
            raise psycopg2.OperationalError("test: connections refused")
        super().__init__(dsn, *args, **kwargs)
        log.made.append(self)


class ConnectionLog:
    """What one pool's connects did: attempts, the connections made, and a refuse switch."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.attempts = 0
        self.made: List[Any] = []
        self.refuse = False
        self.connection_class = type("TrackedConnection", (Tracked,), {"registry": self})

    def connect(self) -> Any:
        return psycopg2.connect(self.dsn, connection_factory=self.connection_class)

    def closed(self) -> List[Any]:
        return [conn for conn in self.made if conn.closed]

    def open(self) -> List[Any]:
        return [conn for conn in self.made if not conn.closed]


class Handle:
    """One pool of one face, behind sync verbs."""

    def __init__(self, face: Face, raw: Any, log: ConnectionLog) -> None:
        self.face = face
        self.raw = raw
        self.log = log

    # Each face overrides these.
    def get(self) -> Any:
        raise NotImplementedError

    def put(self, conn: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def check(self) -> int:
        return int(self.raw.check())

    def stats(self) -> Dict[str, int]:
        return dict(self.raw.get_stats())

    def pop_stats(self) -> Dict[str, int]:
        return dict(self.raw.pop_stats())

    @contextmanager
    def connection(self) -> Iterator[Any]:
        with self.raw.connection() as conn:
            yield conn

    @contextmanager
    def as_context(self) -> Iterator[Any]:
        """``with pool:`` (``async with pool:`` on the async face)."""
        with self.raw as entered:
            yield entered

    @property
    def closed(self) -> bool:
        return bool(self.raw.closed)

    @property
    def name(self) -> str:
        return str(self.raw.name)

    def keeper_running(self) -> bool:
        """Whether this pool's keeper runs (a thread named after the pool)."""
        wanted = f"pgpool_compat-keeper-{self.name}"
        return any(t.name == wanted and t.is_alive() for t in threading.enumerate())


class Psycopg2Handle(Handle):
    def get(self) -> Any:
        return self.raw.getconn()

    def put(self, conn: Any) -> None:
        self.raw.putconn(conn)

    def close(self) -> None:
        if not self.raw.closed:
            self.raw.closeall()


class SyncHandle(Handle):
    def get(self) -> Any:
        return self.raw.acquire()

    def put(self, conn: Any) -> None:
        self.raw.release(conn)

    def close(self) -> None:
        self.raw.close_all()


class LoopThread:
    """An event loop running forever in a daemon thread, for the async face."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="parity-loop", daemon=True
        )
        self._thread.start()

    def run(self, coro: Awaitable[T], bound: float = CALL_BOUND) -> T:
        future = asyncio.run_coroutine_threadsafe(_as_coroutine(coro), self.loop)
        return future.result(bound)

    def stop(self) -> None:
        async def cancel_leftovers() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=5) if tasks else None

        try:
            self.run(cancel_leftovers(), bound=10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():
                self.loop.close()


async def _as_coroutine(awaitable: Awaitable[T]) -> T:
    return await awaitable


class AsyncHandle(Handle):
    def __init__(self, face: Face, raw: Any, log: ConnectionLog, loop: LoopThread) -> None:
        super().__init__(face, raw, log)
        self.loop = loop

    def get(self) -> Any:
        return self.loop.run(self.raw.acquire())

    def put(self, conn: Any) -> None:
        self.loop.run(self.raw.release(conn))

    def close(self) -> None:
        self.loop.run(self.raw.close_all())

    def check(self) -> int:
        return int(self.loop.run(self.raw.check()))

    @contextmanager
    def connection(self) -> Iterator[Any]:
        manager = self.raw.connection()
        conn = self.loop.run(manager.__aenter__())
        try:
            yield conn
        except BaseException as error:
            if not self.loop.run(manager.__aexit__(type(error), error, error.__traceback__)):
                raise
        else:
            self.loop.run(manager.__aexit__(None, None, None))

    @contextmanager
    def as_context(self) -> Iterator[Any]:
        entered = self.loop.run(self.raw.__aenter__())
        try:
            yield entered
        finally:
            self.loop.run(self.raw.__aexit__(None, None, None))

    def keeper_running(self) -> bool:
        """Whether this pool's keeper runs (a task on its loop, named after the pool)."""
        wanted = f"pgpool_compat-keeper-{self.name}"

        async def names() -> List[str]:
            return [task.get_name() for task in asyncio.all_tasks() if not task.done()]

        return wanted in self.loop.run(names())


class Face:
    """Builds pools of one face and closes them when the test ends."""

    def __init__(self, name: str, dsn: str) -> None:
        self.name = name
        self.dsn = dsn
        self.handles: List[Handle] = []
        self._loop: Optional[LoopThread] = None

    def __repr__(self) -> str:
        return f"<face {self.name}>"

    @property
    def loop(self) -> LoopThread:
        if self._loop is None:
            self._loop = LoopThread()
        return self._loop

    def keywords(self, options: Dict[str, Any]) -> Dict[str, Any]:
        """The scenario's options spelled as this face spells them."""
        if self.name == "psycopg2":
            spelled = {f"pool_{key}": value for key, value in options.items()}
            if "pool_keeper" in spelled:
                spelled["pool_background"] = spelled.pop("pool_keeper")
            return spelled
        spelled = dict(options)
        if "keeper" in spelled:
            spelled["background"] = spelled.pop("keeper")
        return spelled

    def pool(self, minconn: int, maxconn: int, **options: Any) -> Handle:
        """A pool of this face holding psycopg2 connections to the test server."""
        log = ConnectionLog(self.dsn)
        keywords = self.keywords(options)
        handle: Handle
        if self.name == "psycopg2":
            raw = pgpool_compat.ThreadedConnectionPool(
                minconn, maxconn, self.dsn, connection_factory=log.connection_class, **keywords
            )
            handle = Psycopg2Handle(self, raw, log)
        elif self.name == "sync":
            raw = pgpool_compat.ConnectionPool(
                log.connect, min_size=minconn, max_size=maxconn, **keywords
            )
            handle = SyncHandle(self, raw, log)
        else:

            async def factory() -> Any:
                return log.connect()

            # Made outside the loop, as a module-level pool would be; started on it.
            raw = pgpool_compat.AsyncConnectionPool(
                factory, min_size=minconn, max_size=maxconn, **keywords
            )
            handle = AsyncHandle(self, raw, log, self.loop)
            self.handles.append(handle)
            self.loop.run(raw.start())
            return handle
        self.handles.append(handle)
        return handle

    def teardown(self) -> None:
        try:
            for handle in self.handles:
                try:
                    if not handle.closed:
                        handle.close()
                finally:
                    for conn in handle.log.open():
                        conn.close()
        finally:
            if self._loop is not None:
                self._loop.stop()
