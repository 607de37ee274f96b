"""A queries-compatible ``PoolManager``: a process-wide registry of pools keyed by pool id.

Drop-in for ``queries.pool`` (same names, classmethods, defaults, messages and semantics;
``sys.modules["queries.pool"]`` may point here), with its defects fixed:

- one reentrant lock for the manager, every pool and every connection, so a session's
  ``__del__`` that runs in a garbage-collection pass inside the lock cannot deadlock, and
  no two locks can ever be taken in opposite orders;
- ``connection()`` callers wait on the engine's rules: a first-come-first-served queue of
  waiters, each handed a connection or a slot the moment one is free (a free, a removal, a
  session collected) and able to refuse it if it gave up in the same instant; no polling.
  A returned connection is judged by the psycopg2 driver's return rules (rolled back if in a
  transaction, discarded if broken).
- ``create``, ``shutdown``, ``clean`` and every read of ``_pools`` happen under that lock;
- the idle TTL is enforced whenever a pool is used (plus an optional background cleaner),
  closed and dead connections are pruned instead of holding slots for ever;
- ``shutdown`` is idempotent, bounded in time and reports what it could not close;
- every live pool is known (a subclass's own ``_pools`` registry included): a forked child
  forgets all their connections, and its copies of their sockets are pointed at
  ``/dev/null``, so nothing the child does reaches the parent's server sessions.

``PoolManager.connection(dsn)`` does the whole get-or-create flow in one ``with`` statement.
Pools are keyed by :func:`pgpool_compat.dsn.pool_id`, so the registry never holds a DSN.
"""

from __future__ import annotations

import atexit
import contextvars
import datetime
import logging
import math
import os
import threading
import time
import weakref
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from types import TracebackType
from typing import (
    Any,
    Callable,
    ClassVar,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Tuple,
    Type,
)

import psycopg2
from psycopg2 import extensions
from psycopg2.pool import PoolError

from .driver import Psycopg2Driver
from .dsn import connect as connect_without_secrets
from .dsn import libpq_dsn, pool_id, target_name
from .engine.stats import Figures, Observer, register
from .engine.threaded import _Keeper, _ThreadWaiter
from .engine.waiting import SLOT, Grant, WaitQueue
from .settings import PoolOptions, check_seconds, check_size

__all__ = [
    "DEFAULT_IDLE_TTL",
    "DEFAULT_MAX_SIZE",
    "LOGGER",
    "ActivePoolError",
    "Connection",
    "ConnectionBusyError",
    "ConnectionException",
    "ConnectionNotFoundError",
    "InheritedConnectionError",
    "NoIdleConnectionsError",
    "Pool",
    "PoolConnectionException",
    "PoolException",
    "PoolFullError",
    "PoolManager",
    "PoolManagerError",
    "PoolNotFoundError",
    "QueriesException",
    "pool_id",
]

#: The manager's logger, as ``queries.pool.LOGGER`` is queries': every line this module logs
#: goes through this name, so ``mock.patch("pgpool_compat.manager.LOGGER")`` catches them
#: all. It is the package's ``pgpool_compat`` logger: one logging setup covers every pool kind.
LOGGER = logging.getLogger("pgpool_compat")

DEFAULT_IDLE_TTL = 60

#: Seconds ``shutdown`` waits, in all, for connections that a live session holds to close.
SHUTDOWN_TIMEOUT = 5.0

#: Seconds between background cleaner passes unless ``start_cleaner`` is told otherwise.
DEFAULT_CLEAN_INTERVAL = 5.0

_SIZE_VARIABLES = ("PGPOOL_MAX_POOL_SIZE", "QUERIES_MAX_POOL_SIZE")

# ``PoolManager.shutdown`` calls each pool's ``shutdown()`` with no argument, as queries does
# (its tests mock the method and assert that call); its overall deadline reaches
# ``Pool.shutdown`` through here instead.
_SHUTDOWN_DEADLINE: contextvars.ContextVar[Optional[float]] = contextvars.ContextVar(
    "pgpool_compat_shutdown_deadline", default=None
)


def max_pool_size_from(environ: Mapping[str, str]) -> int:
    """The default pool size: ``PGPOOL_MAX_POOL_SIZE``, else ``QUERIES_MAX_POOL_SIZE``, else 1.

    Ours wins because it can only have been set for this library, while the queries variable
    may be shared with code still running queries itself. A bad value fails loudly, as it
    does in queries, rather than silently becoming a different size.
    """
    for name in _SIZE_VARIABLES:
        raw = environ.get(name, "").strip()
        if not raw:
            continue
        try:
            size = int(raw)
        except ValueError:
            raise ValueError(f"{name} must be a whole number, got {raw!r}") from None
        if size < 1:
            raise ValueError(f"{name} must be at least 1, got {size}")
        return size
    return 1


DEFAULT_MAX_SIZE = max_pool_size_from(os.environ)


class _ManagerLock:
    """The one reentrant lock, which also serves the waiters of connections freed by a
    garbage-collected session while another thread held it: a collection may run in any
    thread, so the release is noted and served when the lock is next let go."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._depth = 0  # changed by the owner only
        self.releases_pending = False

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not self._lock.acquire(blocking, timeout):
            return False
        self._depth += 1
        return True

    def release(self) -> None:
        outermost = self._depth == 1
        if outermost and self.releases_pending:
            _serve_released()
        self._depth -= 1
        self._lock.release()
        # A session collected in another thread between that check and the release.
        if outermost and self.releases_pending and self._lock.acquire(blocking=False):
            self._depth += 1
            self.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.release()

    def owned(self) -> bool:
        return self._depth > 0 and self._lock._is_owned()  # type: ignore[attr-defined]

    def reinit_after_fork(self) -> None:
        """In a forked child: a thread that held the lock at the fork does not exist."""
        self._lock._at_fork_reinit()  # type: ignore[attr-defined]
        self._depth = 0
        self.releases_pending = False


# One lock for everything here: see the module docstring.
_LOCK = _ManagerLock()

#: Every live ``Pool``: a ``PoolManager``'s, a subclass's with its own ``_pools`` registry, or
#: one made by hand. The fork handler and the wake-up of waiters after a session is collected
#: must reach them all, not only ``PoolManager._pools``.
_LIVE_POOLS: weakref.WeakSet[Pool] = weakref.WeakSet()


class _AdoptedConnections(Psycopg2Driver):
    """The psycopg2 driver's probe, return rules and close, for connections the manager
    adopts: queries sessions open their own, and ``connection(dsn)`` opens with the DSN of
    the call (the registry never keeps a DSN), so this driver never connects."""

    #: One driver for every manager pool: its few lines (closing errors) name the manager.
    log_name = "manager"

    def __init__(self) -> None:
        super().__init__((), {}, PoolOptions())

    def connect(self) -> Any:
        raise PoolManagerError("the manager adopts connections; it never opens one itself")


_DRIVER = _AdoptedConnections()


class _PoolGone(BaseException):
    """Offered to the waiters of a pool that was removed: they start over on a new pool."""


class _Turn(_ThreadWaiter):
    """A ``connection()`` caller in a pool's queue: offered ``SLOT`` when served, with
    ``handle`` set if an idle connection (already locked to ``lease``) was handed to it,
    ``None`` if a slot was reserved for it to connect in."""

    __slots__ = ("handle", "lease")

    def __init__(self, lease: _Lease, now: float) -> None:
        super().__init__(None, now)
        self.lease = lease
        self.handle: Any = None


# -- exceptions ----------------------------------------------------------------------------


class PoolManagerError(PoolError):  # type: ignore[misc]
    """Base of every manager error, ``queries.pool.QueriesException`` under its other name.

    It is a ``psycopg2.pool.PoolError`` too, so one ``except pgpool_compat.PoolError``
    catches the pool errors of every pool kind in this package.
    """


QueriesException = PoolManagerError


class ConnectionException(PoolManagerError):
    """An error about one connection, identified by ``cid``."""

    def __init__(self, cid: Any) -> None:
        self.cid = cid


class PoolException(PoolManagerError):
    """An error about one pool, identified by ``pid``."""

    def __init__(self, pid: Any) -> None:
        self.pid = pid


class PoolConnectionException(PoolException):
    """An error about connection ``cid`` in pool ``pid``."""

    def __init__(self, pid: Any, cid: Any) -> None:
        self.pid = pid
        self.cid = cid


class ActivePoolError(PoolException):
    """Raised when removing a pool that has active connections."""

    def __str__(self) -> str:
        return f"Pool {self.pid} has at least one active connection"


class ConnectionBusyError(ConnectionException):
    """Raised when locking, freeing or closing a connection that is busy."""

    #: Set by ``Pool.shutdown``: how many connections it had to leave open.
    connections_left = 1

    def __str__(self) -> str:
        return f"Connection {self.cid} is busy"


class ConnectionNotFoundError(PoolConnectionException, KeyError):
    """Raised when a connection is not in the pool, or the pool itself is gone.

    A ``KeyError`` too: queries raised ``KeyError`` for a missing pool, and a session that
    frees its connection after ``shutdown`` removed the pool must get the error it catches.
    """

    def __str__(self) -> str:
        return f"Connection {self.cid} not found in pool {self.pid}"


class NoIdleConnectionsError(PoolException):
    """Raised when a pool has no idle, open connection."""

    def __str__(self) -> str:
        return f"Pool {self.pid} has no idle connections"


class PoolFullError(PoolException):
    """Raised when a pool already holds ``max_size`` connections."""

    def __str__(self) -> str:
        return f"Pool {self.pid} is at its maximum capacity"


class PoolNotFoundError(PoolException, KeyError):
    """Raised for a pool id that was never created or has been removed: a ``KeyError`` with
    queries' ``args`` and ``str()`` (``'Pool <pid> has not been created'``, quoted as a
    ``KeyError`` quotes it), plus ``pid``."""

    def __init__(self, pid: Any) -> None:
        KeyError.__init__(self, f"Pool {pid} has not been created")
        self.pid = pid

    def __str__(self) -> str:
        return KeyError.__str__(self)

    def __reduce__(self) -> Any:
        # args hold the message, not the pid: rebuild from the pid (pickle, copy).
        return (type(self), (self.pid,), dict(vars(self)))


class InheritedConnectionError(ConnectionNotFoundError):
    """Raised in a forked child for a connection its parent opened before ``fork()``.

    The child forgot every connection it inherited, and its copies of their sockets were
    pointed at ``/dev/null``, so no query from the child can reach the parent's server
    session. A ``ConnectionNotFoundError`` (a ``KeyError``), so a queries ``Session`` that
    frees such a connection on exit still passes.
    """

    def __init__(self, pid: Any, cid: Any) -> None:
        super().__init__(pid, cid)
        self.process = os.getpid()  # the child that tried to use it

    def __str__(self) -> str:
        return (f"Connection {self.cid} of pool {self.pid} was opened by the parent process "
                f"before fork(): process {self.process} cannot use it; open a new session "
                f"in the child")


# -- helpers -------------------------------------------------------------------------------


def _session_gone(_ref: Any) -> None:
    """Serve waiters when a session dies holding a connection.

    Runs inside the garbage collector, possibly in a thread holding unrelated locks or in
    the middle of a manager call, so it never blocks and never serves from inside one: it
    notes the release, which the lock's holder serves as it lets go (see ``_ManagerLock``).
    """
    _LOCK.releases_pending = True
    if not _LOCK.owned() and _LOCK.acquire(blocking=False):
        _LOCK.release()


def _serve_released() -> None:
    """Serve the waiters of every pool (lock held): sessions died holding connections.
    Every live pool, those of a ``PoolManager`` subclass with its own registry included."""
    _LOCK.releases_pending = False
    for pool in list(_LIVE_POOLS):
        if pool._waiters:
            pool._serve()


# The engine's event lines (``engine/log.py``), in the same words, through ``LOGGER``.


def _log_timed_out(name: str, waited: float) -> None:
    LOGGER.info("%s: checkout timed out after %.3f s", name, waited)


def _log_dead_dropped(name: str, how: str) -> None:
    LOGGER.info("%s: dropped a dead connection (%s)", name, how)


def _log_reset_failed(name: str, error: BaseException) -> None:
    LOGGER.warning("%s: reset of a returned connection failed (%s); connection discarded",
                   name, type(error).__name__)


#: Connections this process inherited across ``fork()`` (by id, held weakly): using one
#: raises ``InheritedConnectionError``, which names the fork.
_INHERITED: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()


def _inherited(connection: Any) -> bool:
    return _INHERITED.get(id(connection)) is connection


def _not_found(pid: Any, connection: Any) -> ConnectionNotFoundError:
    """The error for a connection missing from pool ``pid``: ``InheritedConnectionError``
    when this process inherited it across ``fork()``."""
    if _inherited(connection):
        return InheritedConnectionError(pid, id(connection))
    return ConnectionNotFoundError(pid, id(connection))


def _detach(handle: Any) -> None:
    """In a forked child: point the child's copy of an inherited connection's socket at
    ``/dev/null`` (close-on-exec, as libpq's socket is), so nothing the child does with it (a
    query, ``close()``, a collection) can reach the parent's server session. The parent's
    socket is untouched; the child's query fails at once with libpq's "could not send/receive
    data" error."""
    if not isinstance(handle, extensions.connection) or handle.closed:
        return
    try:
        fd = handle.fileno()
        null = os.open(os.devnull, os.O_RDWR)
    except (psycopg2.Error, OSError):
        return
    try:
        os.dup2(null, fd, inheritable=False)
    except OSError:
        pass
    finally:
        os.close(null)


def _is_usable(connection: Connection) -> bool:
    """Whether an idle connection may be handed out: a zero-round-trip probe for psycopg2
    connections (so a server restart costs no failed query); other handles are trusted."""
    handle = connection.handle
    if not isinstance(handle, extensions.connection):
        return True
    if handle.closed:
        return False
    if connection._probe_state is None:
        connection._probe_state = _DRIVER.prepare(handle)
    return bool(_DRIVER.is_alive(handle, connection._probe_state))


def _close_within(handles: List[Any], deadline: float) -> List[int]:
    """Close connections that live sessions hold; return the ids still open at ``deadline``.

    psycopg2 makes ``close()`` wait for a query running in another thread, so each close runs
    in its own daemon thread and is waited for only until the deadline.
    """
    closers: List[Tuple[int, threading.Thread]] = []
    for handle in handles:
        closer = threading.Thread(
            target=_DRIVER.dispose, args=(handle,), name="pgpool_compat-closer", daemon=True
        )
        closer.start()
        closers.append((id(handle), closer))
    left: List[int] = []
    for cid, closer in closers:
        closer.join(max(0.0, deadline - time.monotonic()))
        if closer.is_alive():
            left.append(cid)
    return left


class _Lease:
    """What a connection taken by ``PoolManager.connection`` is locked to (by weak reference)
    for the duration of the ``with`` block."""

    __slots__ = ("__weakref__", "started")

    def __init__(self) -> None:
        self.started = time.monotonic()  # for the wait time and the timeout's log line


@dataclass(frozen=True)
class _Request:
    """One ``PoolManager.connection()`` call: which pool, for which lease, until when. Never
    the DSN, which may hold a password: it is passed along, never kept."""

    pid: str
    lease: _Lease
    max_size: int
    idle_ttl: Optional[float]
    deadline: Optional[float]


# -- Connection ----------------------------------------------------------------------------


class Connection:
    """A pooled connection handle, and which session (if any) holds it."""

    _lock = _LOCK

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.used_by: Optional[Callable[[], Any]] = None  # weak reference to the session
        self.executions = 0
        self.exceptions = 0
        self._probe_state: Any = None  # the driver's per-connection memory for is_alive

    def close(self) -> None:
        """Close the handle. Raises ``ConnectionBusyError`` when it is busy and open."""
        LOGGER.debug("Connection %s closing", self.id)
        with self._lock:
            if self.busy and not self.closed:
                raise ConnectionBusyError(self.id)
            if not self.handle.closed:
                try:
                    self.handle.close()
                except psycopg2.Error as error:
                    LOGGER.error("Error closing connection %s: %s", self.id,
                                 type(error).__name__)

    @property
    def closed(self) -> bool:
        """Whether the psycopg2 connection is closed."""
        return bool(self.handle.closed != 0)

    @property
    def busy(self) -> bool:
        """Whether the handle is executing, or a session that still exists holds it."""
        if self.handle.isexecuting():
            return True
        return self._held()

    @property
    def executing(self) -> bool:
        """Whether the handle is executing an (asynchronous) query."""
        return bool(self.handle.isexecuting())

    def free(self) -> None:
        """Release the session's hold. Raises ``ConnectionBusyError`` while executing."""
        LOGGER.debug("Connection %s freeing", self.id)
        if self.handle.isexecuting():
            raise ConnectionBusyError(self.id)
        with self._lock:
            self.used_by = None

    @property
    def id(self) -> int:
        """``id()`` of the psycopg2 connection."""
        return id(self.handle)

    def lock(self, session: Any) -> None:
        """Hold the connection for ``session`` (by weak reference: when the session is
        garbage-collected the connection becomes idle). Raises ``ConnectionBusyError``."""
        with self._lock:
            if self.busy:
                raise ConnectionBusyError(self.id)
            self.used_by = weakref.ref(session, _session_gone)
        LOGGER.debug("Connection %s locked", self.id)

    @property
    def locked(self) -> bool:
        """Whether a session holds (or held and did not free) the connection."""
        return self.used_by is not None

    def _held(self) -> bool:
        return self.used_by is not None and self.used_by() is not None


# -- Pool ----------------------------------------------------------------------------------


class Pool:
    """The connections opened for one pool id, at most ``max_size`` of them."""

    _lock = _LOCK

    idle_start: Optional[float] = None
    idle_ttl: Optional[float] = DEFAULT_IDLE_TTL  # None: no idle TTL, as queries accepts
    max_size: int = DEFAULT_MAX_SIZE

    def __init__(
        self,
        pool_id: str,
        idle_ttl: Optional[float] = DEFAULT_IDLE_TTL,
        max_size: int = DEFAULT_MAX_SIZE,
        time_method: Optional[Callable[[], float]] = None,
        *,
        name: Optional[str] = None,
    ) -> None:
        self.connections: Dict[int, Connection] = {}
        self._id = pool_id
        # For logs and metrics: host:port/dbname when PoolManager.connection(dsn) made it.
        self.name = name or pool_id
        self._timeouts = 0  # connection(timeout=...) calls that gave up
        self.observer: Optional[Observer] = None  # PoolManager.connection() reports to it
        self.idle_ttl = idle_ttl
        self.max_size = max_size
        # Wall clock by default, as queries: its users compare idle_start with time.time().
        self.time_method = time_method or time.time
        self._reserved = 0  # slots held for connects in flight in PoolManager.connection
        self._waiters: WaitQueue[_Turn] = WaitQueue()  # connection() callers, oldest first
        self._serving = False
        register(self)
        _LIVE_POOLS.add(self)

    def __contains__(self, connection: Any) -> bool:
        return id(connection) in self.connections

    def __len__(self) -> int:
        return len(self.connections)

    def add(self, connection: Any) -> None:
        """Add a new connection. Raises ``ValueError`` when it is already in the pool and
        ``PoolFullError`` (after closing it) when the pool is full.

        A connection added now has not been idle: the pool's idle clock stops until the
        next free (or until ``clean`` finds every connection idle), so the idle TTL cannot
        close it before its session locks it, as ``queries.Session`` does right after."""
        with self._lock:
            if id(connection) in self.connections:
                raise ValueError("Connection already exists in pool")
            if _inherited(connection):
                raise InheritedConnectionError(self.id, id(connection))
            full = len(self.connections) + self._reserved >= self.max_size
            if not full:
                self.connections[id(connection)] = Connection(connection)
                self.idle_start = None
        if full:
            LOGGER.warning("%s: pool full: closing the connection that cannot be added",
                           self.name)
            _DRIVER.dispose(connection)
            raise PoolFullError(self.id)
        LOGGER.debug("%s: added connection %s", self.name, id(connection))

    @property
    def busy_connections(self) -> List[Connection]:
        """Open connections that are executing or held by a live session."""
        return [c for c in self._snapshot() if c.busy and not c.closed]

    def clean(self) -> None:
        """Drop closed connections no live session holds; close every connection when the
        pool has been idle for longer than its TTL (never, when the TTL is ``None``).

        A pool whose connections are all idle without a free having started its idle clock
        (they were added and never locked, or their session was collected) starts it now."""
        with self._lock:
            for connection in self._snapshot():
                if connection.closed and not connection._held():
                    LOGGER.debug("%s: removing closed connection %s", self.name,
                                 connection.id)
                    self.remove(connection.handle)
            if self.idle_start is None:
                if self.connections and not self.busy_connections:
                    self.idle_start = self.time_method()  # idle from now, not before
            elif self.idle_ttl is not None and self.idle_duration > self.idle_ttl:
                try:
                    self.close()
                except ConnectionBusyError as error:
                    LOGGER.debug("%s: idle TTL passed but %s", self.name, error)
        LOGGER.debug("%s: cleaned", self.name)

    def close(self) -> None:
        """Close and remove every connection. Busy ones stay; the first raises
        ``ConnectionBusyError`` once all the others are gone."""
        busy: List[int] = []
        with self._lock:
            for cid, connection in list(self.connections.items()):
                try:
                    self.remove(connection.handle)
                except ConnectionBusyError:
                    busy.append(cid)
        LOGGER.debug("%s: closed", self.name)
        if busy:
            raise ConnectionBusyError(busy[0])

    @property
    def closed_connections(self) -> List[Connection]:
        """Connections whose handle is closed."""
        return [c for c in self._snapshot() if c.closed]

    def connection_handle(self, connection: Any) -> Connection:
        """The :class:`Connection` for a psycopg2 connection (``KeyError`` if absent; in a
        forked child, ``InheritedConnectionError`` for one its parent opened)."""
        try:
            return self.connections[id(connection)]
        except KeyError:
            if _inherited(connection):
                raise InheritedConnectionError(self.id, id(connection)) from None
            raise

    @property
    def executing_connections(self) -> List[Connection]:
        """Connections executing an (asynchronous) query."""
        return [c for c in self._snapshot() if c.executing]

    def free(self, connection: Any) -> None:
        """Release a session's hold on ``connection``. Raises ``ConnectionNotFoundError``."""
        LOGGER.debug("%s: freeing connection %s", self.name, id(connection))
        with self._lock:
            try:
                wrapper = self.connection_handle(connection)
            except KeyError:
                raise _not_found(self.id, connection) from None
            wrapper.free()
            if not self.busy_connections:
                self.idle_start = self.time_method()
            self._serve()

    def get(self, session: Any) -> Any:
        """An idle connection (oldest first), locked to ``session``.

        Closed connections are pruned first and a psycopg2 connection whose server has hung
        up is dropped rather than handed out. Raises ``NoIdleConnectionsError``.
        """
        with self._lock:
            self._prune_closed()
            handle = self._take_idle(session)
        if handle is None:
            raise NoIdleConnectionsError(self.id)
        return handle

    @property
    def id(self) -> str:
        """The pool id."""
        return self._id

    @property
    def idle_connections(self) -> List[Connection]:
        """Open connections that are neither executing nor held by a live session."""
        return [c for c in self._snapshot() if not c.busy and not c.closed]

    @property
    def idle_duration(self) -> float:
        """Seconds since the pool last had a busy connection (0 while in use)."""
        if self.idle_start is None:
            return 0
        return self.time_method() - self.idle_start

    @property
    def is_full(self) -> bool:
        """Whether no slot is left for another connection."""
        return len(self.connections) + self._reserved >= self.max_size

    def lock(self, connection: Any, session: Any) -> None:
        """Hold ``connection`` for ``session``. Raises ``ConnectionNotFoundError``."""
        cid = id(connection)
        with self._lock:
            try:
                wrapper = self.connection_handle(connection)
            except KeyError:
                raise _not_found(self.id, connection) from None
            wrapper.lock(session)
            self.idle_start = None
        LOGGER.debug("%s: locked connection %s", self.name, cid)

    @property
    def locked_connections(self) -> List[Connection]:
        """Connections a session holds or held without freeing."""
        return [c for c in self._snapshot() if c.locked]

    def remove(self, connection: Any) -> None:
        """Close ``connection`` and remove it. Raises ``ConnectionNotFoundError`` and
        ``ConnectionBusyError``."""
        cid = id(connection)
        with self._lock:
            if cid not in self.connections:
                raise _not_found(self.id, connection)
            self.connection_handle(connection).close()
            del self.connections[cid]
            self._serve()
        LOGGER.debug("%s: removed connection %s", self.name, cid)

    def report(self) -> Dict[str, Any]:
        """The pool's state and configuration (queries' keys, plus ``waiting``)."""
        with self._lock:
            connections = self._snapshot()
            return {
                "connections": {
                    "busy": len(self.busy_connections),
                    "closed": len(self.closed_connections),
                    "executing": len(self.executing_connections),
                    "idle": len(self.idle_connections),
                    "locked": len(self.locked_connections),
                },
                "exceptions": sum(c.exceptions for c in connections),
                "executions": sum(c.executions for c in connections),
                "full": self.is_full,
                "idle": {"duration": self.idle_duration, "ttl": self.idle_ttl},
                "max_size": self.max_size,
                "waiting": len(self._waiters),
            }

    def shutdown(self, timeout: Optional[float] = None) -> None:
        """Close every connection, those held by sessions included (waiting at most
        ``timeout`` seconds for them; default ``SHUTDOWN_TIMEOUT``, or what is left of
        ``PoolManager.shutdown``'s). Executing ones, and held ones that would not close in
        time, are left: the first raises ``ConnectionBusyError`` after the rest are closed;
        its ``connections_left`` says how many were left."""
        deadline = _SHUTDOWN_DEADLINE.get()
        if timeout is not None or deadline is None:
            deadline = time.monotonic() + (SHUTDOWN_TIMEOUT if timeout is None else timeout)
        left = self._shutdown(deadline)
        if left:
            error = ConnectionBusyError(left[0])
            error.connections_left = len(left)
            raise error

    @property
    def closed(self) -> bool:
        """Whether no manager holds this pool (removed or shut down, or never registered):
        ``PoolManager`` or any subclass, with its own ``_pools`` registry or not. Lock-free
        (single dict reads): the engine's own fork handler asks it before the lock is reset."""
        return not any(registry.get(self.id) is self for registry in _registries())

    def figures(self) -> Figures:
        """The gauges metrics export."""
        with self._lock:
            idle = len(self.idle_connections)
            used = len(self.busy_connections)
            return Figures(
                name=self.name,
                kind=type(self).__name__,
                idle=idle,
                used=used,
                opening=self._reserved,
                size=idle + used + self._reserved,
                max=self.max_size,
                idle_max=self.max_size,
                idle_min=0,
                pending=len(self._waiters),
                timeouts=self._timeouts,
            )

    def set_idle_ttl(self, ttl: Optional[float]) -> None:
        """Set the idle TTL (seconds; ``None``: no idle TTL)."""
        with self._lock:
            self.idle_ttl = ttl

    def set_max_size(self, size: int) -> None:
        """Set the maximum number of connections."""
        with self._lock:
            self.max_size = size
            self._serve()

    # -- internals ---------------------------------------------------------------------

    def _snapshot(self) -> List[Connection]:
        # A list copy: a reentrant call (a __del__ during GC) may change the dict meanwhile.
        return list(self.connections.values())

    def _prune_closed(self) -> None:
        for connection in self._snapshot():
            if connection.closed and not connection._held():
                self.remove(connection.handle)

    def _take_idle(self, session: Any) -> Any:
        """The oldest idle connection that passes the probe, locked to ``session``, or
        None (lock held). Those whose server hung up are dropped, not handed out."""
        for connection in self.idle_connections:
            if not _is_usable(connection):
                _log_dead_dropped(self.name, "socket")
                self.remove(connection.handle)
                continue
            connection.lock(session)
            self.idle_start = None
            return connection.handle
        return None

    def _serve(self) -> None:
        """Hand what is free to the waiters, oldest first (lock held): an idle connection,
        else a slot to connect in. A waiter that gave up in the same instant refuses it, and
        it goes to the next."""
        if self._serving:
            return  # a removal inside the loop below: the loop sees the freed slot
        self._serving = True
        try:
            self._serve_in_order()
        finally:
            self._serving = False

    def _serve_in_order(self) -> None:
        while self._waiters.serve(self._grant, self._refused, all_alike=True):
            pass

    def _grant(self, turn: _Turn) -> Optional[Grant]:
        """What the oldest waiter is offered (lock held): an idle connection locked to its
        lease (``turn.handle``), else a slot reserved to connect in, else nothing."""
        handle = self._take_idle(turn.lease) if self.idle_connections else None
        if handle is None:
            if self.is_full:
                return None
            self._reserved += 1
        turn.handle = handle
        return SLOT

    def _refused(self, turn: _Turn, _grant: Grant) -> None:
        """A waiter that gave up in the same instant refused its grant: undo it."""
        if turn.handle is None:
            self._reserved -= 1
        else:
            self.connection_handle(turn.handle).used_by = None

    def _hand_on(self, turn: _Turn) -> None:
        """``turn`` was served just as it gave up: its slot or connection goes to the next
        in line (lock held)."""
        if turn.grant is not SLOT:
            return  # the pool went away (_PoolGone): nothing was granted
        if turn.handle is None:
            self._reserved -= 1
            self._serve()
        elif turn.handle in self:
            self.free(turn.handle)

    def _turn_away(self) -> None:
        """The pool is being removed: its waiters start over on a new one (lock held)."""
        self._waiters.fail_all(_PoolGone())

    def _shutdown(self, deadline: float) -> List[int]:
        """Take every non-executing connection off the books and close it; return the ids
        of those left open (executing, or still closing at ``deadline``)."""
        idle: List[Any] = []
        held: List[Any] = []
        executing: List[int] = []
        with self._lock:
            for cid, connection in list(self.connections.items()):
                if connection.executing:
                    executing.append(cid)
                    continue
                (held if connection._held() else idle).append(connection.handle)
                connection.used_by = None
                del self.connections[cid]
            self._turn_away()
        for handle in idle:
            _DRIVER.dispose(handle)
        left = executing + _close_within([h for h in held if not h.closed], deadline)
        LOGGER.debug("%s: shut down, %d connection(s) left open", self.name, len(left))
        return left


# -- PoolManager ---------------------------------------------------------------------------


def _seconds(name: str, value: Any, *, allow_none: bool = False) -> None:
    """Validate a duration of ``PoolManager.connection``: a number >= 0 with no upper bound
    (``inf`` is allowed, as queries allows any TTL), naming it in the error."""
    check_seconds(name, value, allow_zero=True, allow_none=allow_none, maximum=math.inf)


def _registries() -> List[Dict[str, Pool]]:
    """The ``_pools`` registry of ``PoolManager`` and of every subclass that has its own."""
    found: Dict[int, Dict[str, Pool]] = {}
    classes: List[type] = [PoolManager]
    while classes:
        manager = classes.pop()
        registry = vars(manager).get("_pools")
        if isinstance(registry, dict):
            found.setdefault(id(registry), registry)
        classes.extend(manager.__subclasses__())
    return list(found.values())


def _shut_down(pid: str, pool: Pool) -> int:
    """Call the pool's own ``shutdown()`` (a subclass's override or a test's mock gets the
    call, as in queries); return how many connections it left open."""
    try:
        pool.shutdown()
    except ConnectionBusyError as error:
        return error.connections_left
    except Exception as error:  # one failing pool must not stop the others' shutdown
        LOGGER.error("%s: shutdown failed: %s", pool.name, type(error).__name__)
    return len(pool)


class _Sweeper:
    """What the manager's cleaner, an engine keeper thread, drives: one cleaning pass over
    every pool of ``manager`` (the class that started it: a subclass's ``_sweep`` counts).
    The pools stay until removed: it is never closed."""

    name = "manager"
    closed = False

    def __init__(self, manager: Type[PoolManager]) -> None:
        self.manager = manager

    def _maintain(self) -> None:
        # Failures are logged here, whole, and the next pass comes at the set interval: the
        # keeper's own handling (backoff, "could not reconnect") is a pool's, not a sweep's.
        try:
            self.manager._sweep()
        except Exception:
            LOGGER.exception("manager: cleaning pass failed")


#: One sweeper per manager class, held here for good: a keeper holds its target weakly.
_SWEEPERS: Dict[Type[PoolManager], _Sweeper] = {}


def _sweeper_for(manager: Type[PoolManager]) -> _Sweeper:
    sweeper = _SWEEPERS.get(manager)
    if sweeper is None:
        sweeper = _SWEEPERS[manager] = _Sweeper(manager)
    return sweeper


class PoolManager:
    """The process-wide registry of pools. Every method is a classmethod; ``instance()``
    returns the one instance, for code that wants an object (``pid in manager``).

    The registry holds pool ids only, never a DSN.
    """

    _lock = _LOCK
    _pools: ClassVar[Dict[str, Pool]] = {}
    _instance: ClassVar[PoolManager]
    _cleaner: ClassVar[Optional[_Keeper]] = None
    _atexit_registered: ClassVar[bool] = False

    def __contains__(self, pid: object) -> bool:
        with self._lock:
            return pid in self.__class__._pools

    @classmethod
    def instance(cls) -> PoolManager:
        """The single PoolManager instance."""
        with cls._lock:
            if not hasattr(cls, "_instance"):
                cls._instance = cls()
            return cls._instance

    @classmethod
    def add(cls, pid: str, connection: Any) -> None:
        """Add a new connection to pool ``pid``."""
        with cls._lock:
            cls._pool(pid).add(connection)

    @classmethod
    def clean(cls, pid: str) -> None:
        """Clean pool ``pid`` (see ``Pool.clean``) and remove it when it is left empty.

        A missing pool is logged and ignored, as in queries.
        """
        with cls._lock:
            pool = cls._pools.get(pid)
            if pool is None:
                LOGGER.debug("%s: clean invoked, but there is no such pool", pid)
                return
            pool.clean()
            cls._maybe_remove_pool(pid)

    @classmethod
    def create(
        cls,
        pid: str,
        idle_ttl: Optional[float] = DEFAULT_IDLE_TTL,
        max_size: int = DEFAULT_MAX_SIZE,
        time_method: Optional[Callable[[], float]] = None,
    ) -> None:
        """Create pool ``pid``. Raises ``KeyError`` when it exists (checked under the lock,
        so two racing creators can never silently replace each other's pool). An
        ``idle_ttl`` of ``None`` means no idle TTL, as ``queries.Session`` accepts."""
        with cls._lock:
            if pid in cls._pools:
                raise KeyError(f"Pool {pid} already exists")
            LOGGER.debug("%s: creating pool (idle_ttl=%s, max_size=%s)", pid, idle_ttl, max_size)
            cls._pools[pid] = Pool(pid, idle_ttl, max_size, time_method)

    @classmethod
    def free(cls, pid: str, connection: Any) -> None:
        """Free a connection a session held. ``ConnectionNotFoundError`` (a ``KeyError``)
        when the connection or the pool is gone."""
        with cls._lock:
            LOGGER.debug("%s: freeing connection %s", pid, id(connection))
            pool = cls._pools.get(pid)
            if pool is None:
                raise _not_found(pid, connection)
            pool.free(connection)

    @classmethod
    def get(cls, pid: str, session: Any) -> Any:
        """An idle connection of pool ``pid``, locked to ``session``.

        The pool is cleaned first, which is where an expired idle TTL takes effect.
        Raises ``NoIdleConnectionsError``.
        """
        with cls._lock:
            pool = cls._pool(pid)
            pool.clean()
            return pool.get(session)

    @classmethod
    def get_connection(cls, pid: str, connection: Any) -> Connection:
        """The :class:`Connection` wrapping ``connection`` in pool ``pid`` (``KeyError`` if
        absent; in a forked child, ``InheritedConnectionError`` for one its parent opened,
        so a queries ``Session`` inherited across ``fork()`` fails naming the fork)."""
        with cls._lock:
            if _inherited(connection):
                raise InheritedConnectionError(pid, id(connection))
            return cls._pool(pid).connection_handle(connection)

    @classmethod
    def has_connection(cls, pid: str, connection: Any) -> bool:
        """Whether pool ``pid`` has ``connection``."""
        with cls._lock:
            return connection in cls._pool(pid)

    @classmethod
    def has_idle_connection(cls, pid: str) -> bool:
        """Whether pool ``pid`` has an idle connection."""
        with cls._lock:
            return bool(cls._pool(pid).idle_connections)

    @classmethod
    def is_full(cls, pid: str) -> bool:
        """Whether pool ``pid`` is full."""
        with cls._lock:
            return cls._pool(pid).is_full

    @classmethod
    def lock(cls, pid: str, connection: Any, session: Any) -> None:
        """Hold ``connection`` of pool ``pid`` for ``session``."""
        with cls._lock:
            cls._pool(pid).lock(connection, session)

    @classmethod
    def remove(cls, pid: str) -> None:
        """Close every connection of pool ``pid`` and remove the pool. A busy connection
        raises ``ConnectionBusyError`` and keeps the pool (with only its busy ones); so does
        a ``connection()`` call connecting for it, with ``ActivePoolError``. The callers of
        ``connection()`` waiting for a removed pool start over on a new one."""
        with cls._lock:
            pool = cls._pool(pid)
            if pool not in _LIVE_POOLS:  # a stand-in patched into _pools, as queries' tests do
                pool.close()
                del cls._pools[pid]
                return
            serving, pool._serving = pool._serving, True  # no slot to a waiter meanwhile
            try:
                pool.close()
                if pool._reserved:  # a connect in flight will add its connection here
                    raise ActivePoolError(pid)
                cls._drop(pid, pool)
            finally:
                pool._serving = serving
                if not serving and cls._pools.get(pid) is pool:
                    pool._serve()  # kept: the closed connections' slots go to the waiters

    @classmethod
    def remove_connection(cls, pid: str, connection: Any) -> None:
        """Close ``connection`` and remove it from pool ``pid``."""
        with cls._lock:
            pool = cls._pools.get(pid)
            if pool is None:
                raise _not_found(pid, connection)
            pool.remove(connection)

    @classmethod
    def set_idle_ttl(cls, pid: str, ttl: Optional[float]) -> None:
        """Set the idle TTL of pool ``pid`` (``None``: no idle TTL)."""
        with cls._lock:
            cls._pool(pid).set_idle_ttl(ttl)

    @classmethod
    def set_max_size(cls, pid: str, size: int) -> None:
        """Set the maximum size of pool ``pid``."""
        with cls._lock:
            cls._pool(pid).set_max_size(size)

    @classmethod
    def shutdown(cls, timeout: float = SHUTDOWN_TIMEOUT) -> Dict[str, int]:
        """Remove every pool and close its connections; safe to call again, and at exit.

        Connections that sessions still hold are closed too, waiting at most ``timeout``
        seconds in all. Returns (and logs) how many connections each pool had to leave open:
        executing ones and ones that would not close in time. An empty dict: all closed.
        """
        deadline = time.monotonic() + timeout
        if not cls._lock.acquire(timeout=timeout):
            if cls._cleaner is not None:
                cls._cleaner.stopping.set()
            LOGGER.error("PoolManager.shutdown: lock not available within %.3g s; "
                         "nothing closed", timeout)
            return {pid: len(pool) for pid, pool in list(cls._pools.items())}
        try:
            pools = list(cls._pools.items())
            cls._pools.clear()
            cleaner, cls._cleaner = cls._cleaner, None
        finally:
            cls._lock.release()
        if cleaner is not None:
            cleaner.stop(max(0.0, deadline - time.monotonic()))
        report: Dict[str, int] = {}
        token = _SHUTDOWN_DEADLINE.set(deadline)
        try:
            for pid, pool in pools:
                left = _shut_down(pid, pool)
                if left:
                    report[pid] = left
        finally:
            _SHUTDOWN_DEADLINE.reset(token)
        if report:
            LOGGER.warning("PoolManager.shutdown left %d connection(s) open in pool(s) %s",
                           sum(report.values()), ", ".join(sorted(report)))
        else:
            LOGGER.info("Shutdown complete, all pooled connections closed")
        return report

    @classmethod
    def size(cls, pid: str) -> int:
        """Number of connections in pool ``pid``."""
        with cls._lock:
            return len(cls._pool(pid))

    @classmethod
    def report(cls) -> Dict[str, Any]:
        """The state of every pool, by pool id. Never contains a DSN."""
        with cls._lock:
            pools = {pid: pool.report() for pid, pool in list(cls._pools.items())}
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        return {"timestamp": now.isoformat(), "process": os.getpid(), "pools": pools}

    # -- additions to the queries API --------------------------------------------------

    @classmethod
    @contextmanager
    def connection(
        cls,
        dsn: str,
        *,
        max_size: int = DEFAULT_MAX_SIZE,
        idle_ttl: Optional[float] = DEFAULT_IDLE_TTL,
        timeout: Optional[float] = None,
    ) -> Iterator[Any]:
        """Borrow a connection to ``dsn`` for the ``with`` block.

        Creates the pool (keyed by ``pool_id(dsn)``; ``max_size`` and ``idle_ttl`` apply
        when it is created), takes an idle connection or opens one while below ``max_size``,
        and holds it for the block. On exit an open transaction is rolled back and the
        connection is freed; a broken one is closed and removed instead. A full pool raises
        ``PoolFullError`` at once, or after waiting up to ``timeout`` seconds, first come
        first served among ``connection()`` callers.
        """
        check_size("max_size", max_size, minimum=1)
        _seconds("idle_ttl", idle_ttl, allow_none=True)
        if timeout is not None:
            _seconds("timeout", timeout)
        pid = pool_id(dsn)
        lease = _Lease()
        deadline = None if timeout is None else lease.started + timeout
        pool, handle = cls._checkout(dsn, _Request(pid, lease, max_size, idle_ttl, deadline))
        observer = pool.observer
        checked_out_at = time.monotonic()
        if observer is not None:
            observer.waited(pool.name, checked_out_at - lease.started)
        try:
            yield handle
        finally:
            if observer is not None:
                observer.used(pool.name, time.monotonic() - checked_out_at)
            cls._checkin(pid, pool, handle)

    @classmethod
    def start_cleaner(cls, interval: float = DEFAULT_CLEAN_INTERVAL) -> None:
        """Run a daemon thread that cleans every pool each ``interval`` seconds, so idle
        TTLs expire even for pools nobody uses. Replaces a cleaner already running.

        It never removes a pool: a queries ``Session`` checks that its pool exists and uses
        it later without holding the lock, and must not find it gone in between.
        """
        valid = isinstance(interval, (int, float)) and not isinstance(interval, bool)
        if not valid or not 0 < interval < math.inf:
            raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")
        with cls._lock:
            cleaner = _Keeper(_sweeper_for(cls), float(interval))
            previous, cls._cleaner = cls._cleaner, cleaner
            cleaner.start()
        if previous is not None:  # stopped with the lock released: its sweep may need it
            previous.stop(SHUTDOWN_TIMEOUT)

    @classmethod
    def stop_cleaner(cls, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Stop the background cleaner, if any (waits at most ``timeout`` seconds)."""
        with cls._lock:
            cleaner, cls._cleaner = cls._cleaner, None
        if cleaner is not None:
            cleaner.stop(timeout)

    @classmethod
    def register_atexit(cls) -> None:
        """Call ``shutdown`` at interpreter exit; registers once however often called."""
        with cls._lock:
            if not cls._atexit_registered:
                atexit.register(cls.shutdown)
                cls._atexit_registered = True

    # -- internals ---------------------------------------------------------------------

    @classmethod
    def _ensure_pool_exists(cls, pid: str) -> None:
        """Raise ``PoolNotFoundError`` (a ``KeyError``) when pool ``pid`` does not exist."""
        cls._pool(pid)

    @classmethod
    def _pool(cls, pid: str) -> Pool:
        pool = cls._pools.get(pid)
        if pool is None:
            raise PoolNotFoundError(pid)
        return pool

    @classmethod
    def _maybe_remove_pool(cls, pid: str) -> None:
        """Remove pool ``pid`` when it has no connection and no ``connection()`` call is
        connecting for it (its reserved slot will be a connection). The callers waiting
        for it are turned away: they start over on a new pool."""
        pool = cls._pools[pid]
        if len(pool):
            return
        if pool in _LIVE_POOLS and pool._reserved:  # (not a stand-in patched into _pools)
            return
        cls._drop(pid, pool)

    @classmethod
    def _drop(cls, pid: str, pool: Pool) -> None:
        """Take pool ``pid`` out of the registry and turn its waiters away (lock held)."""
        del cls._pools[pid]
        if pool in _LIVE_POOLS:
            pool._turn_away()

    @classmethod
    def _sweep(cls) -> None:
        """One background cleaner pass over every pool."""
        with cls._lock:
            for pool in list(cls._pools.values()):
                try:
                    pool.clean()
                except Exception:  # one bad pool must not stop the cleaner
                    LOGGER.exception("%s: cleaning failed", pool.name)

    @classmethod
    def _checkout(cls, dsn: str, request: _Request) -> Tuple[Pool, Any]:
        """Take or open a connection of pool ``request.pid`` for its lease; the connect
        happens with the lock released, on a slot reserved beforehand."""
        pid, lease = request.pid, request.lease
        while True:
            pool, handle = cls._take_turn(dsn, request)
            if handle is not None:
                return pool, handle
            connect_started = time.monotonic()
            try:
                handle = connect_without_secrets(libpq_dsn(dsn))
            except BaseException:
                with cls._lock:
                    pool._reserved -= 1
                    pool._serve()  # the slot goes to the next in line
                raise
            if pool.observer is not None:
                pool.observer.created(pool.name, time.monotonic() - connect_started)
            with cls._lock:
                pool._reserved -= 1
                if cls._pools.get(pid) is pool:
                    pool.add(handle)
                    pool.lock(handle, lease)
                    return pool, handle
            # The pool was removed (remove / shutdown) while we connected: start over.
            _DRIVER.dispose(handle)

    @classmethod
    def _take_turn(cls, dsn: str, request: _Request) -> Tuple[Pool, Any]:
        """In arrival order: an idle connection locked to the request's lease, or a reserved
        slot (``None`` handle), or ``PoolFullError`` once its deadline has passed. A caller
        that must wait queues and sleeps until a free or a removal serves it."""
        pid, lease, deadline = request.pid, request.lease, request.deadline
        while True:
            with cls._lock:
                pool = cls._pools.get(pid)
                if pool is None:
                    name = target_name((libpq_dsn(dsn),), {})
                    pool = Pool(pid, request.idle_ttl, request.max_size, name=name)
                    cls._pools[pid] = pool
                if not pool._waiters:  # never past those already waiting
                    pool.clean()
                    handle = pool._take_idle(lease)
                    if handle is not None:
                        return pool, handle
                    if not pool.is_full:
                        pool._reserved += 1
                        return pool, None
                now = time.monotonic()
                if deadline is None:
                    raise PoolFullError(pid)
                if now >= deadline:
                    raise cls._timed_out(pool, lease)
                turn = _Turn(lease, now)
                pool._waiters.enqueue(turn)
            try:
                turn.sleep(deadline)
            except BaseException:  # KeyboardInterrupt while asleep: hand on what we got
                with cls._lock:
                    cls._give_up(pool, turn)
                raise
            with cls._lock:
                if turn.grant is None:
                    cls._give_up(pool, turn)
                    raise cls._timed_out(pool, lease)
            if not isinstance(turn.grant, _PoolGone):
                return pool, turn.handle
            # The pool was removed while we waited: start over on a new one.

    @staticmethod
    def _timed_out(pool: Pool, lease: _Lease) -> PoolFullError:
        """Count and log a ``connection(timeout=...)`` call that gave up (lock held)."""
        pool._timeouts += 1
        _log_timed_out(pool.name, time.monotonic() - lease.started)
        return PoolFullError(pool.id)

    @staticmethod
    def _give_up(pool: Pool, turn: _Turn) -> None:
        """Leave the queue (lock held), handing on whatever was granted in the same instant."""
        turn.gave_up = True
        pool._waiters.give_up(turn, turn.grant, lambda _grant: pool._hand_on(turn))

    @classmethod
    def _checkin(cls, pid: str, pool: Pool, handle: Any) -> None:
        """Give back a connection taken by ``connection()``, by the psycopg2 driver's return
        rules: rolled back if a transaction is open, closed and removed if it is broken or
        its pool has gone. The reset is I/O: no lock held (the connection is still ours)."""
        usable = cls._reset(pool.name, handle)
        if not usable:
            _DRIVER.dispose(handle)
        with cls._lock:
            pooled = cls._pools.get(pid) is pool and handle in pool
            if pooled:
                pool.free(handle)
                if not usable:
                    pool.remove(handle)
                return
            if handle in pool:  # pool removed: forget the connection there as well
                pool.connection_handle(handle).used_by = None
                del pool.connections[id(handle)]
        _DRIVER.dispose(handle)

    @staticmethod
    def _reset(name: str, handle: Any) -> bool:
        """Whether a returned connection may be reused, after the driver's reset if needed."""
        try:
            state = _DRIVER.return_state(handle)
            if state:
                _DRIVER.reset(handle, None)  # a rollback: no per-connection state needed
        except psycopg2.Error as error:  # the server went away, or shutdown closed it
            _log_reset_failed(name, error)
            return False
        return state is not None


def _after_fork_in_child() -> None:
    """Forget every connection the parent owns, in every live pool, and reset the lock.

    Every pool: ``PoolManager``'s, a subclass's with its own registry, one made by hand.
    Closing an inherited connection would end the parent's session; dropping the reference
    is safe (psycopg2 does not close a connection it collects in another process). A session
    the child inherited still holds its connection, though: the child's copy of its socket
    is pointed at ``/dev/null`` (see ``_detach``), so a query fails at once without reaching
    the parent's server session, and the manager then raises ``InheritedConnectionError``,
    which names the fork. A thread holding the lock at the fork does not exist in the child:
    the lock is reinitialised, not replaced, so every reference to it (manager, pools,
    connections) stays right. The cleaner threads, which the child lacks but its pools' idle
    TTLs still need, are started anew: the manager's, and that of each subclass that started
    its own.
    """
    _LOCK.reinit_after_fork()
    cleaners = []
    for manager in list(_SWEEPERS):  # every manager class that ever started a cleaner
        cleaner = vars(manager).get("_cleaner")  # its own, not one it inherits
        if cleaner is not None:
            manager._cleaner = None
            cleaners.append((manager, cleaner))
    for pool in list(_LIVE_POOLS):
        for connection in pool._snapshot():
            handle = getattr(connection, "handle", None)
            with suppress(TypeError):  # a stand-in handle that cannot be weakly referenced
                _INHERITED[id(handle)] = handle
            _detach(handle)
        pool.connections.clear()
        pool._reserved = 0
        pool._waiters.clear()
        pool.idle_start = None
    for manager, cleaner in cleaners:
        if not cleaner.stopping.is_set():
            manager.start_cleaner(cleaner.interval)


if hasattr(os, "register_at_fork"):  # not on Windows, where nothing forks
    os.register_at_fork(after_in_child=_after_fork_in_child)
