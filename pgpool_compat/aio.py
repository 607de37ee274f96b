"""``AsyncConnectionPool``: the engine's rules for any connection an async factory makes.

asyncio runs one task at a time, so the pool's books need no lock: every change between two
``await`` points is atomic. What needs care instead is cancellation, which may strike at any
``await``. The rules:

- A slot is reserved before a connection is opened and freed on any failure, so the pool
  never counts a connection that does not exist nor exceeds ``max_size``.
- Connects run in their own task. A caller cancelled while its connection is being made
  walks away; the connection, when it arrives, goes to the oldest waiter or the idle set.
- A connection or slot handed to a waiter that was cancelled in the same instant is passed
  on, never dropped.
- ``release()`` does its bookkeeping before its first ``await`` and runs an async ``reset``
  in a shielded task, so a cancelled borrower still returns its connection.
- Waiters are served first come, first served: a returned connection, or a freed slot, goes
  straight to the oldest waiter, and a new request queues behind existing waiters.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import deque
from types import TracebackType
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Deque,
    Dict,
    Generic,
    Optional,
    Set,
    Type,
    TypeVar,
    Union,
)

from .engine import log
from .engine.stats import Figures, Observer, register
from .errors import PoolError, PoolTimeoutError
from .lifecycle import (
    CLOSED_MESSAGE,
    callable_setting,
    default_releaser,
    exhausted_message,
    flag_setting,
    idle_too_long,
    pool_stats,
    prefill_count,
    seconds_setting,
    size_settings,
)
from .records import ConnRecord
from .stats import PoolStats
from .timing import plain_method, time_methods

__all__ = ["AsyncConnectionPool"]

logger = logging.getLogger("pgpool_compat")

ConnT = TypeVar("ConnT")

#: A hook that may be a plain function or a coroutine function.
Hook = Callable[[Any], Any]


class _SlotGrant:
    """Handed to a waiter instead of a connection: a slot is reserved for it to connect."""

    __slots__ = ()


_GRANT = _SlotGrant()


async def _call(hook: Hook, conn: Any) -> Any:
    """Call a sync or async hook."""
    result = hook(conn)
    if inspect.isawaitable(result):
        result = await result
    return result


def _describe(error: BaseException) -> str:
    """An error for the log: its type only, as the engine does, since a factory's message
    may quote a DSN with its password."""
    return type(error).__name__


class AsyncConnectionPool(Generic[ConnT]):
    """A pool of whatever ``async_factory`` makes (asyncpg connections, clients, sockets).

    ``async_factory()`` returns a connection or an awaitable of one; ``releaser(conn)``
    disposes of one (default: ``conn.close()``, awaited if it is a coroutine);
    ``check(conn)`` says whether an idle connection may be handed out (a falsy result or an
    exception discards it and the next is tried); ``reset(conn)`` runs on return (an
    exception discards the connection, never the slot). Each hook may be sync or async.

    ``timeout`` bounds the wait for a free connection or slot (``None``: no bound; ``0``:
    fail at once); opening a connection is the factory's own business, bound it there.
    ``max_idle`` closes connections idle longer than that, never going below ``min_size``;
    ``max_lifetime`` retires connections older than that, less up to 10% random jitter.
    ``lifo=False`` reuses idle connections oldest-returned first.

    The pool serves the event loop that ran ``start()`` (or ``async with pool:``); any
    other loop gets a ``PoolError`` at once.
    """

    def __init__(
        self,
        async_factory: Callable[[], Union[Awaitable[ConnT], ConnT]],
        *,
        min_size: int = 1,
        max_size: int = 5,
        timeout: Optional[float] = 30.0,
        releaser: Optional[Hook] = None,
        check: Optional[Hook] = None,
        reset: Optional[Hook] = None,
        max_idle: Optional[float] = None,
        max_lifetime: Optional[float] = None,
        lifo: bool = True,
    ) -> None:
        self._factory = callable_setting("async_factory", async_factory, required=True)
        self._min_size, self._max_size = size_settings(min_size, max_size)
        self._timeout = seconds_setting("timeout", timeout, allow_zero=True)
        self._releaser: Hook = callable_setting("releaser", releaser) or default_releaser
        self._check: Optional[Hook] = callable_setting("check", check)
        self._reset: Optional[Hook] = callable_setting("reset", reset)
        self._max_idle = seconds_setting("max_idle", max_idle, allow_zero=False)
        self._max_lifetime = seconds_setting("max_lifetime", max_lifetime, allow_zero=False)
        self._lifo = flag_setting("lifo", lifo)

        self._idle: Deque[ConnRecord] = deque()  # longest idle on the left
        self._out: Dict[int, ConnRecord] = {}  # id(conn) -> record
        self._waiters: Deque[asyncio.Future[Any]] = deque()  # oldest on the left
        # Slots in use: idle + borrowed + being opened, checked or reset. Never > max_size.
        self._size = 0
        self._connecting: Set[asyncio.Task[ConnRecord]] = set()
        self._background: Set[asyncio.Task[Any]] = set()  # resets and async releasers
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._closed = False
        self._stats = PoolStats()
        self._timeouts = 0
        self._connect_failures = 0  # in a row, for the "reconnected" log line
        self._observer: Optional[Observer] = None
        register(self)

    def __repr__(self) -> str:
        # The factory is left out on purpose: it may close over a DSN with a password.
        state = "closed" if self._closed else f"size={self._size}, idle={len(self._idle)}"
        return f"<{type(self).__name__} {state}, max_size={self._max_size}>"

    # -- public API -----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pool_size(self) -> int:
        """Connections the pool holds: idle, borrowed, and being opened."""
        return self._size

    @property
    def idle_count(self) -> int:
        """Connections ready to be handed out at once."""
        return len(self._idle)

    async def start(self) -> None:
        """Bind the pool to the running event loop and open ``min_size`` connections."""
        if self._closed:
            raise PoolError(CLOSED_MESSAGE)
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        await self.prefill()

    async def prefill(self, n: Optional[int] = None) -> None:
        """Open connections concurrently until the pool holds ``n`` (default ``min_size``).

        Capped at ``max_size``. The first connect error is raised once every connect has
        finished; the connections that did open stay in the pool.
        """
        self._check_usable()
        target = min(prefill_count(n, self._min_size), self._max_size)
        tasks = []
        while self._size < target:
            self._size += 1
            task = self._spawn_connect()
            task.add_done_callback(self._adopt)
            tasks.append(task)
        if not tasks:
            return
        # If we are cancelled here the connects carry on and land in the pool on their own.
        await asyncio.wait(tasks)
        for task in tasks:
            if task.cancelled():
                raise PoolError(CLOSED_MESSAGE)
            error = task.exception()
            if error is not None:
                raise error

    async def acquire(self) -> ConnT:
        """Borrow a connection, waiting up to ``timeout`` for one (``PoolTimeoutError``)."""
        self._check_usable()
        self._stats.requests_num += 1
        try:
            record = await self._get_record()
        except Exception:
            self._stats.requests_errors += 1
            raise
        # No await between here and the return: the record cannot get lost in between.
        record.checked_out_at = time.monotonic()
        self._out[id(record.conn)] = record
        conn: ConnT = record.conn
        return conn

    async def release(self, conn: ConnT) -> None:
        """Give a borrowed connection back; safe to call from a task being cancelled."""
        self._check_loop()
        record = self._out.pop(id(conn), None)
        if record is None:
            if self._closed:
                raise PoolError(CLOSED_MESSAGE)
            raise PoolError("trying to release a connection this pool did not hand out")
        now = time.monotonic()
        self._stats.usage_ms += (now - record.checked_out_at) * 1000.0
        if record.expired(now):
            logger.debug("%s: connection past its lifetime closed on return", self.name)
            self._discard(record)
        elif self._reset is None:
            self._hand_over(record)
        else:
            task = self._spawn(self._reset_and_return(record, self._reset))
            # Shielded: a cancelled caller still gets its connection reset and returned.
            await asyncio.shield(task)
        self._close_idle_expired(now)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[ConnT]:
        """``async with pool.connection() as conn:`` borrows and always gives back.

        As in the sync pools, leaving the block after ``close_all()`` is quiet: the
        connection was closed with the pool.
        """
        conn = await self.acquire()
        try:
            yield conn
        finally:
            try:
                await self.release(conn)
            except PoolError:
                if not self._closed:
                    raise  # a closed pool already closed the connection: nothing to return

    async def close_all(self) -> None:
        """Close every connection, idle or borrowed, and fail the waiters; idempotent.

        Waiters get ``PoolError("connection pool is closed")``; connects in progress are
        cancelled; async releasers are awaited before returning.
        """
        if self._closed:
            return
        if self._loop is not None:
            self._check_loop()
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(PoolError(CLOSED_MESSAGE))
        records = list(self._idle) + list(self._out.values())
        self._idle.clear()
        self._out.clear()
        for record in records:
            self._discard(record)
        for task in list(self._connecting):
            task.cancel()
        # Repeat: a caller that wakes up to a closed pool may start one more async releaser.
        while self._connecting or self._background:
            pending = list(self._connecting) + list(self._background)
            await asyncio.gather(*pending, return_exceptions=True)
        log.closed(self.name)

    def get_stats(self) -> Dict[str, int]:
        """Gauges and counters with the sync pools' (psycopg_pool's) key names."""
        return self._stats_dict(pop=False)

    def pop_stats(self) -> Dict[str, int]:
        """Like ``get_stats()``, then zero the counters."""
        return self._stats_dict(pop=True)

    async def __aenter__(self) -> AsyncConnectionPool[ConnT]:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        await self.close_all()

    # -- getting a connection -------------------------------------------------------------

    async def _get_record(self) -> ConnRecord:
        self._close_idle_expired(time.monotonic())
        # Behind existing waiters, never past them: a new request may not barge.
        got = None if self._waiters else self._take_now()
        while isinstance(got, ConnRecord):  # an idle connection: check it before use
            if await self._passes_check(got):
                return got
            # The dead connection is gone but its slot is still ours: reuse it at once.
            self._size -= 1
            got = self._take_now()
        if got is None:
            # Served with a connection just returned or opened (no check needed, as in
            # the sync engine) or with a slot to open one in.
            got = await self._wait_turn()
            if isinstance(got, ConnRecord):
                return got
        return await self._open_for_caller()

    def _take_now(self) -> Union[ConnRecord, _SlotGrant, None]:
        """An idle connection, else a reserved slot, else ``None`` (the pool is full)."""
        now = time.monotonic()
        while self._idle:
            record = self._idle.pop() if self._lifo else self._idle.popleft()
            if not record.expired(now):
                return record
            logger.debug("%s: idle connection past its lifetime closed", self.name)
            self._discard(record)
        if self._size < self._max_size:
            self._size += 1
            return _GRANT
        return None

    async def _wait_turn(self) -> Union[ConnRecord, _SlotGrant]:
        """Queue for the next returned connection or freed slot, up to ``timeout``."""
        waiter: asyncio.Future[Any] = self._running_loop().create_future()
        self._waiters.append(waiter)
        self._stats.requests_queued += 1
        started = time.monotonic()
        try:
            await asyncio.wait({waiter}, timeout=self._timeout)
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise
        finally:
            self._stats.requests_wait_ms += (time.monotonic() - started) * 1000.0
        if not waiter.done():
            self._abandon(waiter)
            self._timeouts += 1
            waited = time.monotonic() - started
            log.timed_out(self.name, waited)
            limits = f"timeout={self._timeout:g}, max_size={self._max_size}"
            raise PoolTimeoutError(exhausted_message(waited, limits, len(self._waiters)))
        result: Union[ConnRecord, _SlotGrant] = waiter.result()
        return result

    def _abandon(self, waiter: asyncio.Future[Any]) -> None:
        """Leave the queue; pass on whatever was handed to us in the same instant."""
        if not waiter.done():
            waiter.cancel()
            self._waiters.remove(waiter)
        elif waiter.exception() is None:
            got = waiter.result()
            if isinstance(got, _SlotGrant):
                self._free_slot()
            else:
                self._hand_over(got)

    async def _open_for_caller(self) -> ConnRecord:
        """Open a connection in the slot reserved for the caller."""
        task = self._spawn_connect()
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            # The caller is gone; the connection, when it arrives, serves someone else.
            task.add_done_callback(self._adopt)
            raise
        if task.cancelled():  # only close_all() cancels a connect
            raise PoolError(CLOSED_MESSAGE)
        record = task.result()  # a connect error propagates; its slot is already freed
        if self._closed:
            self._discard(record)
            raise PoolError(CLOSED_MESSAGE)
        return record

    async def _passes_check(self, record: ConnRecord) -> bool:
        """Run ``check``; on failure dispose of the connection but keep its slot."""
        if self._check is None:
            return True
        try:
            healthy = bool(await _call(self._check, record.conn))
        except asyncio.CancelledError:
            # An interrupted check leaves the connection in an unknown state: close it.
            self._discard(record)
            raise
        except Exception as error:
            log.check_raised(self.name, error)
            healthy = False
        if self._closed:
            self._discard(record)
            raise PoolError(CLOSED_MESSAGE)
        if not healthy:
            log.dead_dropped(self.name, "check")
            self._stats.connections_lost += 1
            self._dispose(record.conn)
        return healthy

    # -- opening, returning, disposing ----------------------------------------------------

    def _spawn_connect(self) -> asyncio.Task[ConnRecord]:
        """Open a connection in a slot already reserved, in a task of its own."""
        task = self._running_loop().create_task(self._connect())
        self._connecting.add(task)
        # Registered first, so it runs before anyone waiting on the task wakes up.
        task.add_done_callback(self._connect_done)
        return task

    async def _connect(self) -> ConnRecord:
        started = time.monotonic()
        conn = self._factory()
        if inspect.isawaitable(conn):
            conn = await conn
        now = time.monotonic()
        self._stats.connections_num += 1
        self._stats.connections_ms += (now - started) * 1000.0
        if self._observer is not None:
            self._observer.created(self.name, now - started)
        failures, self._connect_failures = self._connect_failures, 0
        if failures:
            log.reconnected(self.name, failures)
        return ConnRecord(conn, None, now, self._max_lifetime)

    def _connect_done(self, task: asyncio.Task[ConnRecord]) -> None:
        """Free the slot of a connect that failed or was cancelled (even before it ran)."""
        self._connecting.discard(task)
        if task.cancelled():
            self._free_slot()
            return
        error = task.exception()
        if error is not None:
            self._stats.connections_errors += 1
            self._connect_failures += 1
            log.connect_failed(self.name, error)
            self._free_slot()

    def _adopt(self, task: asyncio.Task[ConnRecord]) -> None:
        """Done callback of a connect nobody waits for: pool its connection."""
        if task.cancelled() or task.exception() is not None:
            return  # _connect_done freed the slot and logged the error
        self._hand_over(task.result())

    async def _reset_and_return(self, record: ConnRecord, reset: Hook) -> None:
        try:
            await _call(reset, record.conn)
        except Exception as error:
            log.reset_failed(self.name, error)
            self._stats.returns_bad += 1
            self._discard(record)
            return
        except asyncio.CancelledError:
            self._discard(record)
            raise
        self._hand_over(record)

    def _hand_over(self, record: ConnRecord) -> None:
        """A connection is free: give it to the oldest waiter, else make it idle."""
        if self._closed:
            self._discard(record)
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(record)
                return
        record.idle_since = time.monotonic()
        self._idle.append(record)

    def _free_slot(self) -> None:
        """A slot is free: reserve it for the oldest waiter, who will connect with it."""
        self._size -= 1
        if self._closed:
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._size += 1
                waiter.set_result(_GRANT)
                return

    def _discard(self, record: ConnRecord) -> None:
        """Drop a connection we hold a slot for: free the slot, close the connection."""
        self._free_slot()
        self._dispose(record.conn)

    def _dispose(self, conn: ConnT) -> None:
        """Close a connection without raising; an async releaser runs in the background."""
        try:
            closing = self._releaser(conn)
        except Exception as error:
            self._log_close_error(error)
            return
        if inspect.isawaitable(closing):
            task = self._spawn(closing)
            task.add_done_callback(self._close_done)

    def _close_idle_expired(self, now: float) -> None:
        """Close connections idle longer than ``max_idle``, keeping ``min_size``."""
        while self._idle and idle_too_long(
            self._idle[0], now, self._max_idle, self._size, self._min_size
        ):
            logger.debug("%s: connection idle longer than max_idle closed", self.name)
            self._discard(self._idle.popleft())

    def _close_done(self, task: asyncio.Task[Any]) -> None:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            self._log_close_error(error)

    def _log_close_error(self, error: BaseException) -> None:
        logger.debug("%s: error closing a connection: %s", self.name, _describe(error))

    def _spawn(self, awaitable: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(awaitable, loop=self._running_loop())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- guards -----------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise PoolError(CLOSED_MESSAGE)
        self._check_loop()

    def _check_loop(self) -> None:
        if self._loop is None:
            raise PoolError(
                f"{type(self).__name__} is not started: await pool.start() or use "
                "'async with pool:' first"
            )
        if asyncio.get_running_loop() is not self._loop:
            raise PoolError(
                f"{type(self).__name__} used from a different event loop than the one that "
                "started it; a pool serves one loop only (make one pool per loop)"
            )

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "guarded by _check_loop()"
        return self._loop

    # -- metrics (the engine's registry and observer hook, pgpool_compat.engine.stats) -----

    @property
    def name(self) -> str:
        """A name made from the pool's id; used in logs and metrics."""
        return f"pool-{id(self):x}"

    def figures(self) -> Figures:
        """The gauges metrics export."""
        idle = 0 if self._closed else len(self._idle)
        used = len(self._out)
        size = 0 if self._closed else self._size
        return Figures(
            name=self.name,
            kind=type(self).__name__,
            idle=idle,
            used=used,
            opening=max(0, size - idle - used),
            size=size,
            max=self._max_size,
            idle_max=self._max_size,
            idle_min=self._min_size,
            pending=len(self._waiters),
            timeouts=self._timeouts,
        )

    @property
    def observer(self) -> Optional[Observer]:
        """Hears create, wait and use durations while metrics are on (None: off)."""
        return self._observer

    @observer.setter
    def observer(self, observer: Optional[Observer]) -> None:
        # Wraps this instance's acquire/release, so that a pool without an observer runs
        # exactly the code it ran before.
        self._observer = observer
        time_methods(self, None)
        if observer is None:
            return
        clock = time.monotonic
        plain_acquire = plain_method(self, "acquire")
        plain_release = plain_method(self, "release")
        name, out = self.name, self._out  # not self: no reference cycle

        async def acquire() -> ConnT:
            started = clock()
            conn: ConnT = await plain_acquire()
            observer.waited(name, clock() - started)
            return conn

        async def release(conn: ConnT) -> None:
            record = out.get(id(conn))
            checked_out_at = None if record is None else record.checked_out_at
            await plain_release(conn)
            if checked_out_at is not None:
                observer.used(name, clock() - checked_out_at)

        time_methods(self, {"acquire": acquire, "release": release})

    def _stats_dict(self, *, pop: bool) -> Dict[str, int]:
        return pool_stats(
            self._stats,
            pool_min=self._min_size,
            pool_max=self._max_size,
            pool_size=self._size,
            pool_available=len(self._idle),
            requests_waiting=len(self._waiters),
            pop=pop,
        )

