"""The asyncio runner: the core on an event loop, every I/O in a task the rules can survive.

asyncio runs one task at a time, so the core needs no lock: its books change between two
``await`` points only. What needs care is cancellation, which may strike at any ``await``:

- A connect runs in a task of its own. A caller cancelled while it connects walks away; the
  connection, when it arrives, goes to the oldest waiter or the idle set.
- A waiter served in the same instant it gave up (timeout, cancel) hands its grant back.
- ``release()`` books the return before its first ``await``; a reset runs in a shielded
  task, so a cancelled borrower still returns its connection.
- Every connect and reset task is registered with what it holds (a slot, an entry): that
  registration is its claim on the books. ``close()`` and a move to another loop take the
  claims away, so a task that finishes late never touches the books again.
- Pings, checks and resets are bounded by ``check_timeout``; ``close()`` is bounded by it too
  and can be cancelled, closing the connections whose reset it abandons.

The loop is bound at use, not at creation: a pool made at module level, or in a loop that
has ended, works in the loop where it is used next (its idle connections, opened for the
old loop, are closed and replaced). Use from a second loop while the first still runs in
another thread is refused with ``PoolError``.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
import weakref
from typing import Any, Dict, Hashable, List, Optional, Set, Tuple

from ..driver import ConnT
from ..driver_async import AsyncDriver, call_hook
from ..errors import PoolClosed, PoolError, PoolTimeout
from ..settings import Settings, check_seconds
from . import log
from .base import RunnerBase
from .checks import CheckPolicy
from .entry import Entry
from .stats import Figures, live_runners, register, unregister
from .threaded import DEFAULT, KEPT_AFTER_FORK, _Keeper
from .waiting import SLOT, Grant, Waiter

__all__ = ["AsyncRunner"]

monotonic = time.monotonic


class _TaskWaiter(Waiter):
    """A task queued in ``acquire``, woken by resolving its future."""

    __slots__ = ("future",)

    def __init__(self, key: Hashable, now: float, future: asyncio.Future[Grant]) -> None:
        super().__init__(key, now)
        self.future = future

    def offer(self, grant: Grant) -> bool:
        if self.future.done():  # it gave up (timeout, cancel): the core offers on
            return False
        self.future.set_result(grant)
        return True


class _AsyncChecks(CheckPolicy):
    """The check policy with the I/O awaited: pings and async callables bounded by
    ``check_timeout``; the decisions (when to ping, whom to suspect) are the sync policy's."""

    def __init__(self, settings: Settings, driver: AsyncDriver[Any], name: str) -> None:
        super().__init__(settings, driver, name)  # type: ignore[arg-type]
        self.probe = driver.is_alive if settings.check is not None and driver.has_probe else None
        self._async_driver = driver

    async def passes_async(
        self, entry: Entry, now: float, deadline: Optional[float]
    ) -> Tuple[bool, str]:
        probe = self.probe
        try:
            if probe is not None and not probe(entry.conn, entry.state):
                return False, "socket"
            if self._callable is not None:
                return await self._bounded(call_hook(self._callable, entry.conn)), "check"
            if self._ping and self._needs_ping(entry, now):
                return await self._ping_async(entry, deadline), "ping"
            return True, ""
        except Exception as error:
            log.check_raised(self._name, error)
            return False, "check"

    async def full_check_async(self, entry: Entry) -> bool:
        try:
            if self._callable is not None:
                return await self._bounded(call_hook(self._callable, entry.conn))
            if self._ping:
                return await self._ping_async(entry, None)
            return self._async_driver.is_alive(entry.conn, entry.state)
        except Exception as error:
            log.check_raised(self._name, error)
            return False

    async def _ping_async(self, entry: Entry, deadline: Optional[float]) -> bool:
        limit = self._check_timeout
        if deadline is not None:
            limit = max(0.001, min(limit, deadline - monotonic()))
        alive = await self._bounded(self._async_driver.ping(entry.conn, entry.state), limit)
        if alive:
            entry.last_good = monotonic()
        return alive

    async def _bounded(self, check: Any, limit: Optional[float] = None) -> bool:
        """A check's verdict; one still running after the limit fails (TimeoutError)."""
        return bool(await asyncio.wait_for(check, limit or self._check_timeout))


class AsyncRunner(RunnerBase[AsyncDriver[ConnT]]):
    """One pool's engine for asyncio: ``ThreadedRunner``'s verbs as coroutines."""

    def __init__(
        self, settings: Settings, driver: AsyncDriver[ConnT], *, kind: str = "pool"
    ) -> None:
        super().__init__(settings, driver, kind)
        self._checks = _AsyncChecks(settings, driver, self.name)
        self._capture_stacks = settings.leak_timeout is not None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        # Claims on the books, see the module docstring: connects hold a slot of a key,
        # resets hold an entry; disposals hold nothing but are awaited by close().
        self._opening: Dict[asyncio.Task[Any], Hashable] = {}
        self._settling: Dict[asyncio.Task[Any], Entry] = {}
        self._disposing: Set[asyncio.Task[Any]] = set()
        self._keeper: Optional[asyncio.Task[None]] = None
        self._connect_failures = 0  # in a row, for the "reconnected" log line
        register(self)

    # -- the loop --------------------------------------------------------------------------

    def bind(self) -> asyncio.AbstractEventLoop:
        """The running loop, which the pool now serves; see the module docstring."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._move_to(loop)
        return loop

    def _move_to(self, loop: asyncio.AbstractEventLoop) -> None:
        old = self._loop
        if old is not None and old.is_running() and not old.is_closed():
            raise PoolError(
                f"{self.name}: used from a different event loop while the loop it serves "
                "still runs (in another thread); a pool serves one loop at a time: make one "
                "pool per loop"
            )
        self._loop = loop
        if old is not None:
            self._forget_loop(loop)
        if self.settings.background and not self.core.closed:
            self._keeper = loop.create_task(
                _keep(weakref.ref(self)), name=f"pgpool_compat-keeper-{self.name}"
            )

    def _forget_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Moving on from a loop that ended: its tasks and waiters are gone with it, and
        connections opened for it may be bound to it (asyncpg's are): close the idle ones
        now, and the borrowed ones when they are returned."""
        core = self.core
        now = monotonic()
        core.waiters.clear()  # first: their futures belong to the old loop, never offer to them
        for key in self._opening.values():
            core.abandon_quietly(key)
        for entry in self._settling.values():
            core.settled(entry, False, now)
        self._opening.clear()
        self._settling.clear()
        self._disposing.clear()
        self._keeper = None
        for entry in core.take_all_idle():
            core.settled(entry, False, now)
        # Borrowed in the old loop: its session state is unknown and it may be bound to that
        # loop too, so its lifetime ends now and its return closes it (no reset, never lent
        # again); the release path stays as it is.
        for entry in core.out.values():
            entry.expires_at = -math.inf
        if core.doomed:
            self._dispose_doomed()

    # -- borrowing -------------------------------------------------------------------------

    async def acquire(self, key: Hashable = None, timeout: Optional[float] = DEFAULT) -> ConnT:
        """Borrow a connection of ``key``, waiting up to ``timeout`` (the pool's setting by
        default; None: for ever; 0: not at all), then ``PoolTimeout``."""
        if timeout is not DEFAULT:  # a caller's own: validated as the setting is
            timeout = check_seconds("timeout", timeout, allow_zero=True)
        if asyncio.get_running_loop() is not self._loop:
            self.bind()
        core = self.core
        if core.closed:
            core.counters.requests_errors += 1
            raise PoolClosed()
        core.counters.requests_num += 1
        started = monotonic()
        if started >= core.upkeep_due:
            self._upkeep(started)
        # Hot path: nobody queued, an idle connection, no check that does I/O (no await).
        entry = None if core.waiters else core.take_idle(key, started)
        if core.doomed:
            self._dispose_doomed()
        if entry is not None and not self._checks.slow:
            probe = self._checks.probe
            if probe is None or probe(entry.conn, entry.state):
                if self._capture_stacks:
                    entry.capture_stack()
                if self.observer is not None:
                    self.observer.waited(self.name, monotonic() - started)
                return entry.conn  # type: ignore[no-any-return]
            self._lost(entry, started, "socket")
            self._drop_lent(entry)
            entry = None
        if timeout is DEFAULT:
            timeout = self.settings.timeout
        conn = await self._checkout(key, timeout, started, entry)
        if self.observer is not None:  # every checkout served, queued or not
            self.observer.waited(self.name, monotonic() - started)
        return conn

    async def _checkout(
        self, key: Hashable, timeout: Optional[float], started: float, entry: Optional[Entry]
    ) -> ConnT:
        """The rest of ``acquire``: check ``entry`` (lent already) if given, else queue or
        connect, until a connection passes its checks."""
        core = self.core
        now = started
        deadline = None if timeout is None else started + timeout
        # First come, first served: a newcomer queues behind waiters of its key; after its
        # first try it is ahead of those who came since.
        queued_ahead = entry is None and any(waiter.key == key for waiter in core.waiters)
        while True:
            if entry is None and not queued_ahead:
                entry = core.take_idle(key, now)
                if core.doomed:
                    self._dispose_doomed()
            if entry is None:
                if not queued_ahead and core.reserve(key):
                    return await self._open_lent(key)
                queued_ahead = False
                grant = await self._wait(key, started, deadline, timeout)
                if grant is SLOT:
                    return await self._open_lent(key)
                assert isinstance(grant, Entry)
                entry = grant
            if await self._validate(entry, now, deadline):
                return entry.conn  # type: ignore[no-any-return]
            entry = None
            now = monotonic()

    async def release(self, conn: ConnT, discard: bool = False) -> None:
        """Give ``conn`` back; safe from a task being cancelled. It is reset (bounded by
        ``check_timeout``) if it needs it, closed if it cannot be kept or ``discard``."""
        if asyncio.get_running_loop() is not self._loop:
            self.bind()
        core = self.core
        # No await until the books are right: a cancelled caller still returns it.
        entry = core.out.pop(id(conn), None)
        if entry is None:
            if core.closed:
                raise PoolClosed()
            entry = core.take_back(conn)  # raises NotBorrowed
            if entry is None:
                return  # borrowed before a fork: the parent's, never closed here
        now = monotonic()
        used = now - entry.checked_out_at
        state = core.checkin(
            entry, None if discard else self.driver.return_state(conn), now, discard
        )
        if core.upkeep_wanted:
            self._upkeep(now)
        if core.doomed:
            self._dispose_doomed()
        if self.observer is not None:
            self.observer.used(self.name, used)
        if state:
            task = asyncio.get_running_loop().create_task(self._reset(entry))
            self._settling[task] = entry
            # asyncio.wait, not await: a cancelled caller leaves the reset running (its
            # connection is returned all the same), and a reset that close() cancels does
            # not cancel the caller.
            await asyncio.wait((task,))

    # -- other verbs -----------------------------------------------------------------------

    async def prefill(self, n: Optional[int] = None, key: Hashable = None) -> int:
        """Open connections of ``key`` concurrently until it holds ``n`` (default
        ``min_size``, at most ``max_size``); return how many were opened. The first connect
        error is raised once every connect has finished; those that opened stay."""
        self.bind()
        core = self.core
        if core.closed:
            raise PoolClosed()
        sub = core.subpools.get(key)
        wanted = core.min_size if n is None else n
        missing = max(0, min(wanted, core.max_size) - (sub.size if sub is not None else 0))
        reserved = 0
        while reserved < missing and core.reserve(key, evict=False):
            reserved += 1
        results = await asyncio.gather(
            *(self._open_idle(key) for _ in range(reserved)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, asyncio.CancelledError):  # close() ended the connect
                raise PoolClosed()
            if isinstance(result, BaseException):
                raise result
        return reserved

    async def check(self, key: Hashable = None, every_key: bool = True) -> int:
        """Check every idle connection now (the configured check; the driver's probe if
        none) and close the dead ones; return how many."""
        self.bind()
        if self.core.closed:
            raise PoolClosed()
        batch = self.core.take_all_idle(key, every_key)
        verdicts: List[bool] = []
        try:
            for entry in batch:
                verdicts.append(await self._checks.full_check_async(entry))
        finally:  # cancelled midway: the unchecked ones are in an unknown state, closed
            now = monotonic()
            for index, entry in enumerate(batch):
                alive = index < len(verdicts) and verdicts[index]
                if index < len(verdicts) and not alive:
                    self._lost(entry, now, "check")
                self.core.settled(entry, alive, now)
            self._dispose_doomed()
        return verdicts.count(False)

    async def close(self, close_borrowed: bool = True, timeout: Optional[float] = None) -> None:
        """Close the idle connections (and the borrowed ones unless told not to), fail the
        waiters, stop the keeper. Waits ``timeout`` seconds at most (default
        ``check_timeout``) for the connects, resets and closes it cancels or starts; can be
        cancelled (what is left is closed in the background). Idempotent."""
        core = self.core
        if core.closed:
            return
        if self._loop is not None:
            self.bind()
        core.close(close_borrowed)
        unregister(self)
        for task in [*self._opening, *self._settling]:
            task.cancel()
        if self._keeper is not None:
            self._keeper.cancel()
            self._keeper = None
        if self._loop is None:  # never used: nothing was opened
            return
        self._dispose_doomed()
        pending = [*self._opening, *self._settling, *self._disposing]
        try:
            if pending:
                bound = self.settings.check_timeout if timeout is None else timeout
                await asyncio.wait(pending, timeout=bound)
        finally:  # out of time, or the caller cancelled: abandon what is still running
            self._abandon_claims()
            log.closed(self.name)

    def _abandon_claims(self) -> None:
        """Take the claims of tasks that ignored their cancel: the connections whose reset
        is abandoned are closed now, the slots of stuck connects no longer counted."""
        core = self.core
        for task, entry in list(self._settling.items()):
            if not task.done():
                del self._settling[task]
                core.settled(entry, False, monotonic())
        for task, key in list(self._opening.items()):
            if not task.done():
                del self._opening[task]
                core.abandon_quietly(key)
        self._dispose_doomed()

    async def close_idle(self) -> int:
        """Close every idle connection now (awaiting the closes, bounded by
        ``check_timeout``) and return how many; the pool stays open and borrowed connections
        are untouched (nextorm's ``close_all()``, escudeiro's ``dispose()``)."""
        if self.core.closed or self._loop is None:
            return 0
        self.bind()
        now = monotonic()
        batch = self.core.take_all_idle()
        for entry in batch:
            self.core.settled(entry, False, now)
        self._dispose_doomed()
        if self._disposing:
            await asyncio.wait(list(self._disposing), timeout=self.settings.check_timeout)
        return len(batch)

    def key_sizes(self, key: Hashable = None) -> Tuple[int, int, int]:
        """``(held, idle, borrowed)`` for sub-pool ``key`` (all 0 once closed)."""
        return self.core.key_sizes(key)

    def figures(self) -> Figures:
        return self.core.figures(self.name, self.kind)

    def stats(self, pop: bool = False) -> Dict[str, int]:
        """Gauges and counters with psycopg_pool's key names; ``pop`` zeroes the counters."""
        return self.core.stats(pop)

    @property
    def idle_count(self) -> int:
        return 0 if self.core.closed else self.core.idle_count

    @property
    def size(self) -> int:
        return 0 if self.core.closed else self.core.size

    # -- checkout internals ----------------------------------------------------------------

    async def _wait(
        self, key: Hashable, started: float, deadline: Optional[float], timeout: Optional[float]
    ) -> Grant:
        """Queue for a returned connection or a freed slot of ``key``."""
        core = self.core
        now = monotonic()
        if deadline is not None and now >= deadline:
            raise self._timed_out(started, timeout)
        future: asyncio.Future[Grant] = asyncio.get_running_loop().create_future()
        waiter = _TaskWaiter(key, now, future)
        core.enqueue(waiter)
        core.counters.requests_queued += 1
        try:
            await asyncio.wait((future,), timeout=None if deadline is None else deadline - now)
        except asyncio.CancelledError:
            self._give_up(waiter)
            raise
        finally:
            core.counters.requests_wait_ms += (monotonic() - now) * 1000.0
        if not future.done():
            self._give_up(waiter)
            raise self._timed_out(started, timeout)
        grant = future.result()
        if isinstance(grant, BaseException):
            core.counters.requests_errors += 1
            raise grant
        return grant

    def _give_up(self, waiter: _TaskWaiter) -> None:
        """A waiter gave up: leave the queue, handing on whatever it was just granted."""
        future = waiter.future
        served = future.done()
        if not served:
            future.cancel()  # refuses whatever is offered from now on
        self.core.give_up(waiter, future.result() if served else None, monotonic())
        if served and self.core.doomed:  # handing on what it was granted may doom one
            self._dispose_doomed()

    def _timed_out(self, started: float, timeout: Optional[float]) -> PoolTimeout:
        waited = monotonic() - started
        log.timed_out(self.name, waited)
        limits = self.settings.describe_limits(timeout, self.core.max_size)
        return self.core.timed_out(waited, limits)

    async def _validate(self, entry: Entry, now: float, deadline: Optional[float]) -> bool:
        """Run the checkout checks on a lent entry; drop it if it fails."""
        checks = self._checks
        if checks.slow:
            try:
                alive, how = await checks.passes_async(entry, now, deadline)
            except BaseException:  # cancelled mid-check: state unknown, close it
                self._drop_lent(entry)
                raise
        else:
            probe = checks.probe
            alive, how = probe is None or probe(entry.conn, entry.state), "socket"
        if self.core.closed:  # closed while we checked: close() took the entry
            raise PoolClosed()
        if alive:
            if self._capture_stacks:
                entry.capture_stack()
            return True
        self._lost(entry, now, how)
        self._drop_lent(entry)
        return False

    def _lost(self, entry: Entry, now: float, how: str) -> None:
        self._checks.lost(entry, now)
        self.core.counters.connections_lost += 1
        log.dead_dropped(self.name, how)

    def _drop_lent(self, entry: Entry) -> None:
        if self.core.out.pop(id(entry.conn), None) is not None:
            self.core.drop(entry)
        self._dispose_doomed()

    # -- opening ---------------------------------------------------------------------------

    async def _open_lent(self, key: Hashable) -> ConnT:
        """Open a connection in a reserved slot, in a task of its own, and lend it."""
        task = asyncio.get_running_loop().create_task(self._connect(key))
        try:
            entry = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():  # close() or a move to another loop ended the connect
                self.core.counters.requests_errors += 1
                raise PoolClosed() from None
            # The caller is gone; the connection, when it arrives, serves someone else.
            task.add_done_callback(self._shelve_orphan)
            raise
        except BaseException:
            self.core.counters.requests_errors += 1
            raise
        self.core.lend(entry, monotonic())
        if self._capture_stacks:
            entry.capture_stack()
        return entry.conn  # type: ignore[no-any-return]

    async def _open_idle(self, key: Hashable) -> None:
        """Open a connection in a reserved slot and shelve it (prefill, keeper)."""
        entry = await self._connect(key)
        self.core.shelve(entry, monotonic())
        if self.core.doomed:
            self._dispose_doomed()

    def _shelve_orphan(self, task: asyncio.Task[Entry]) -> None:
        if not task.cancelled() and task.exception() is None:
            self.core.shelve(task.result(), monotonic())
            self._dispose_doomed()

    async def _connect(self, key: Hashable) -> Entry:
        """Connect and prepare in the reserved slot of ``key``: its entry, counted but
        neither idle nor lent. The slot is given back if it fails or is cancelled."""
        core = self.core
        task = asyncio.current_task()
        assert task is not None
        self._opening[task] = key
        started = monotonic()
        conn: Any = None
        try:
            conn = await self.driver.connect_to(key)
            state = self.driver.prepare_for(conn, key)
        except GeneratorExit:  # collected with a loop that ended: the books moved on
            raise
        except BaseException as error:
            if conn is not None:
                await self.driver.dispose(conn)  # a failed prepare must not leak it
            if self._claimed(task):
                core.abandon(key)
            if not isinstance(error, asyncio.CancelledError):
                core.counters.connections_errors += 1
                self._connect_failures += 1
                log.connect_failed(self.name, error)
            raise
        now = monotonic()
        if not self._claimed(task) or core.closed:
            # close() or a move to another loop took the slot back meanwhile.
            await self.driver.dispose_with(conn, state)
            raise PoolClosed()
        entry = core.adopt(conn, state, key, now)  # DuplicateConnection: slot freed
        core.counters.connections_num += 1
        core.counters.connections_ms += (now - started) * 1000.0
        failures, self._connect_failures = self._connect_failures, 0
        if failures:
            log.reconnected(self.name, failures)
        if self.observer is not None:
            self.observer.created(self.name, now - started)
        return entry

    def _claimed(self, task: asyncio.Task[Any]) -> bool:
        """Whether a connect task still holds its slot (it lets go of it now); keys may be
        None, so membership is what counts."""
        if task not in self._opening:
            return False
        del self._opening[task]
        return True

    # -- returning -------------------------------------------------------------------------

    async def _reset(self, entry: Entry) -> None:
        """Reset a returned connection (bounded), then shelve it or drop it."""
        failure: Optional[BaseException] = None
        try:
            await asyncio.wait_for(
                self.driver.reset(entry.conn, entry.state), self.settings.check_timeout
            )
        except GeneratorExit:  # collected with a loop that ended: the books moved on
            raise
        except BaseException as error:  # cancelled too: books first, re-raised below
            failure = error
        task = asyncio.current_task()
        if self._settling.pop(task, None) is None:  # type: ignore[arg-type]
            return  # close() or a move to another loop settled it already
        if failure is not None and not isinstance(failure, asyncio.CancelledError):
            self.core.counters.returns_bad += 1
            log.reset_failed(self.name, failure)
        self.core.settled(entry, failure is None, monotonic())
        self._dispose_doomed()
        if isinstance(failure, asyncio.CancelledError):
            raise failure

    def _dispose_doomed(self) -> None:
        """Close what the core doomed, in background tasks that ``close()`` awaits."""
        doomed, self.core.doomed = self.core.doomed, []
        loop = self._loop
        for entry in doomed:
            if loop is None or loop.is_closed():
                continue
            task = loop.create_task(self._dispose(entry.conn, entry.state))
            self._disposing.add(task)
            task.add_done_callback(self._disposing.discard)

    async def _dispose(self, conn: Any, state: Any) -> None:
        try:
            await asyncio.wait_for(
                self.driver.dispose_with(conn, state), self.settings.check_timeout
            )
        except Exception as error:  # closing never fails anyone; a stuck close is cut off
            log.logger.debug("%s: closing a connection failed: %s", self.name, type(error).__name__)

    # -- upkeep ----------------------------------------------------------------------------

    def _upkeep(self, now: float) -> None:
        """Expire stale idle connections, report leaks (hot paths, at most once a second)."""
        limit = self.settings.leak_timeout
        for entry in self.core.upkeep(now, self.settings.sweep_batch, limit):
            log.leak(self.name, now - entry.checked_out_at, limit or 0.0, entry.checkout_stack)
        if self.core.doomed:
            self._dispose_doomed()

    async def maintain(self) -> None:
        """One keeper pass: drop dead idle connections, upkeep, refill to the minimum."""
        core = self.core
        if core.closed:
            return
        now = monotonic()
        if self._checks.probe is not None:
            for entry in core.take_all_idle():
                alive = self._checks.probe_alive(entry)
                if not alive:
                    self._lost(entry, now, "socket")
                idle_since = entry.idle_since
                core.settled(entry, alive, now)
                entry.idle_since = idle_since  # a check is not a use: max_idle still applies
        self._upkeep(now)
        keys = [key for key in core.deficit() if core.reserve(key, evict=False)]
        for position, key in enumerate(keys):
            try:
                await self._open_idle(key)
            except BaseException:
                for other in keys[position + 1 :]:
                    core.abandon(other)
                raise

    def _after_fork_in_child(self) -> None:
        """Forget what the parent owns, without closing it (closing would end its sessions),
        and the parent's loop: the child's first use binds its own. The parent's
        connections stay referenced (``KEPT_AFTER_FORK``): asyncpg's ``__del__`` would abort
        their transports, unregistering the sockets from the epoll the parent shares."""
        KEPT_AFTER_FORK.extend(self.core.forget_all())
        self._loop = None
        self._opening.clear()
        self._settling.clear()
        self._disposing.clear()
        self._keeper = None


def _after_fork_in_child() -> None:
    for runner in live_runners():
        if isinstance(runner, AsyncRunner):
            runner._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # not on Windows, where nothing forks
    os.register_at_fork(after_in_child=_after_fork_in_child)


async def _keep(runner_ref: weakref.ref[AsyncRunner[Any]]) -> None:
    """The keeper task: a pass a second, backing off while connects fail. Holds the runner
    weakly between passes, so an abandoned pool can be collected."""
    failures = 0
    me = asyncio.current_task()
    while True:
        runner = runner_ref()
        if runner is None or runner.closed or runner._keeper is not me:
            return
        pause = _Keeper.INTERVAL
        try:
            await runner.maintain()
            failures = 0
        except Exception as error:
            failures += 1
            pause = _Keeper.backoff(failures)
            log.keeper_failed(runner.name, error, pause)
        del runner
        await asyncio.sleep(pause)
