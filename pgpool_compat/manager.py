"""A queries-compatible ``PoolManager``: a process-wide registry of pools keyed by pool id.

Drop-in for ``queries.pool`` (same names, classmethods, defaults, messages and semantics;
``sys.modules["queries.pool"]`` may point here), with its defects fixed:

- one reentrant lock for the manager, every pool and every connection, so a session's
  ``__del__`` that runs in a garbage-collection pass inside the lock cannot deadlock, and
  no two locks can ever be taken in opposite orders;
- ``create``, ``shutdown``, ``clean`` and every read of ``_pools`` happen under that lock;
- the idle TTL is enforced whenever a pool is used (plus an optional background cleaner),
  closed and dead connections are pruned instead of holding slots for ever;
- ``shutdown`` is idempotent, bounded in time and reports what it could not close.

``PoolManager.connection(dsn)`` does the whole get-or-create flow in one ``with`` statement.
Pools are keyed by :func:`pgpool_compat.dsn.pool_id`, so the registry never holds a DSN.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import math
import os
import threading
import time
import weakref
from collections import deque
from contextlib import contextmanager
from typing import Any, Callable, ClassVar, Deque, Dict, Iterator, List, Mapping, Optional, Tuple

import psycopg2
from psycopg2 import extensions
from psycopg2.pool import PoolError

from .dsn import libpq_dsn, pool_id, target_name
from .engine import log
from .engine.stats import Figures, Observer, register
from .health import Psycopg2Driver
from .options import PoolOptions

__all__ = [
    "DEFAULT_IDLE_TTL",
    "DEFAULT_MAX_SIZE",
    "ActivePoolError",
    "Connection",
    "ConnectionBusyError",
    "ConnectionException",
    "ConnectionNotFoundError",
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

logger = logging.getLogger("pgpool_compat")

DEFAULT_IDLE_TTL = 60

#: Seconds ``shutdown`` waits, in all, for connections that a live session holds to close.
SHUTDOWN_TIMEOUT = 5.0

#: Seconds between background cleaner passes unless ``start_cleaner`` is told otherwise.
DEFAULT_CLEAN_INTERVAL = 5.0

# A waiter in ``connection(timeout=...)`` re-checks at least this often: a session that dies
# without freeing its connection sends no signal the waiter could otherwise rely on.
_RECHECK_INTERVAL = 0.05

_SIZE_VARIABLES = ("PGPOOL_MAX_POOL_SIZE", "QUERIES_MAX_POOL_SIZE")


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

# One lock for everything here: see the module docstring.
_LOCK = threading.RLock()
# Signalled whenever a connection or a slot may have become available.
_CHANGED = threading.Condition(_LOCK)

# Probes and closes psycopg2 connections; it never connects, so it needs no arguments.
_DRIVER = Psycopg2Driver((), {}, PoolOptions())


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
    """Raised for a pool id that was never created or has been removed (a ``KeyError``,
    as in queries)."""

    def __str__(self) -> str:
        return f"Pool {self.pid} has not been created"


# -- helpers -------------------------------------------------------------------------------


def _session_gone(_ref: Any) -> None:
    """Wake waiters when a session dies holding a connection.

    Runs inside the garbage collector, possibly in a thread holding unrelated locks, so it
    never blocks: when the lock is busy the waiters' periodic re-check covers it.
    """
    if _LOCK.acquire(blocking=False):
        try:
            _CHANGED.notify_all()
        finally:
            _LOCK.release()


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


def _settle(name: str, handle: Any) -> bool:
    """Make a returned connection idle again; return False when it must be discarded.

    An open transaction is rolled back; a connection that is closed, lost (status unknown),
    still running an asynchronous query, or whose rollback fails is unusable.
    """
    try:
        if handle.closed:
            return False
        status = handle.info.transaction_status
        if status == extensions.TRANSACTION_STATUS_IDLE:
            return True
        if status in (extensions.TRANSACTION_STATUS_INTRANS,
                      extensions.TRANSACTION_STATUS_INERROR):
            handle.rollback()
            return True
    except psycopg2.Error as error:  # the server went away, or shutdown closed it
        log.reset_failed(name, error)
    return False


class _Lease:
    """What a connection taken by ``PoolManager.connection`` is locked to (by weak reference)
    for the duration of the ``with`` block."""

    __slots__ = ("__weakref__", "started")

    def __init__(self) -> None:
        self.started = time.monotonic()  # for the timeout's log line


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
        logger.debug("Connection %s closing", self.id)
        with self._lock:
            if self.busy and not self.closed:
                raise ConnectionBusyError(self.id)
            if not self.handle.closed:
                try:
                    self.handle.close()
                except psycopg2.Error as error:
                    logger.error("Error closing connection %s: %s", self.id,
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
        logger.debug("Connection %s freeing", self.id)
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
        logger.debug("Connection %s locked", self.id)

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
    idle_ttl: float = DEFAULT_IDLE_TTL
    max_size: int = DEFAULT_MAX_SIZE

    def __init__(
        self,
        pool_id: str,
        idle_ttl: float = DEFAULT_IDLE_TTL,
        max_size: int = DEFAULT_MAX_SIZE,
        time_method: Optional[Callable[[], float]] = None,
        *,
        name: Optional[str] = None,
    ) -> None:
        self.connections: Dict[int, Connection] = {}
        self._id = pool_id
        self.idle_ttl = idle_ttl
        self.max_size = max_size
        # Wall clock by default, as queries: its users compare idle_start with time.time().
        self.time_method = time_method or time.time
        self._reserved = 0  # slots held for connects in flight in PoolManager.connection
        self._waiters: Deque[object] = deque()  # PoolManager.connection callers, oldest first
        # For logs and metrics: host:port/dbname when PoolManager.connection(dsn) made it.
        self.name = name or pool_id
        self._timeouts = 0  # connection(timeout=...) calls that gave up
        self.observer: Optional[Observer] = None  # PoolManager.connection() reports to it
        register(self)

    def __contains__(self, connection: Any) -> bool:
        return id(connection) in self.connections

    def __len__(self) -> int:
        return len(self.connections)

    def add(self, connection: Any) -> None:
        """Add a new connection. Raises ``ValueError`` when it is already in the pool and
        ``PoolFullError`` (after closing it) when the pool is full."""
        with self._lock:
            if id(connection) in self.connections:
                raise ValueError("Connection already exists in pool")
            full = len(self.connections) + self._reserved >= self.max_size
            if not full:
                self.connections[id(connection)] = Connection(connection)
        if full:
            logger.warning("%s: pool full: closing the connection that cannot be added",
                           self.name)
            _DRIVER.dispose(connection)
            raise PoolFullError(self.id)
        logger.debug("%s: added connection %s", self.name, id(connection))

    @property
    def busy_connections(self) -> List[Connection]:
        """Open connections that are executing or held by a live session."""
        return [c for c in self._snapshot() if c.busy and not c.closed]

    def clean(self) -> None:
        """Drop closed connections no live session holds; close every connection when the
        pool has been idle for longer than its TTL."""
        with self._lock:
            for connection in self._snapshot():
                if connection.closed and not connection._held():
                    logger.debug("%s: removing closed connection %s", self.name,
                                 connection.id)
                    self.remove(connection.handle)
            if self.idle_duration > self.idle_ttl:
                try:
                    self.close()
                except ConnectionBusyError as error:
                    logger.debug("%s: idle TTL passed but %s", self.name, error)
        logger.debug("%s: cleaned", self.name)

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
        logger.debug("%s: closed", self.name)
        if busy:
            raise ConnectionBusyError(busy[0])

    @property
    def closed_connections(self) -> List[Connection]:
        """Connections whose handle is closed."""
        return [c for c in self._snapshot() if c.closed]

    def connection_handle(self, connection: Any) -> Connection:
        """The :class:`Connection` for a psycopg2 connection (``KeyError`` if absent)."""
        return self.connections[id(connection)]

    @property
    def executing_connections(self) -> List[Connection]:
        """Connections executing an (asynchronous) query."""
        return [c for c in self._snapshot() if c.executing]

    def free(self, connection: Any) -> None:
        """Release a session's hold on ``connection``. Raises ``ConnectionNotFoundError``."""
        logger.debug("%s: freeing connection %s", self.name, id(connection))
        with self._lock:
            try:
                wrapper = self.connection_handle(connection)
            except KeyError:
                raise ConnectionNotFoundError(self.id, id(connection)) from None
            wrapper.free()
            if not self.busy_connections:
                self.idle_start = self.time_method()
            _CHANGED.notify_all()

    def get(self, session: Any) -> Any:
        """An idle connection (oldest first), locked to ``session``.

        Closed connections are pruned first and a psycopg2 connection whose server has hung
        up is dropped rather than handed out. Raises ``NoIdleConnectionsError``.
        """
        with self._lock:
            self._prune_closed()
            for connection in self.idle_connections:
                if not _is_usable(connection):
                    log.dead_dropped(self.name, "socket")
                    self.remove(connection.handle)
                    continue
                connection.lock(session)
                self.idle_start = None
                return connection.handle
        raise NoIdleConnectionsError(self.id)

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
                raise ConnectionNotFoundError(self.id, cid) from None
            wrapper.lock(session)
            self.idle_start = None
        logger.debug("%s: locked connection %s", self.name, cid)

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
                raise ConnectionNotFoundError(self.id, cid)
            self.connection_handle(connection).close()
            del self.connections[cid]
            _CHANGED.notify_all()
        logger.debug("%s: removed connection %s", self.name, cid)

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

    def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Close every connection, those held by sessions included (waiting at most
        ``timeout`` seconds for them). Executing ones, and held ones that would not close in
        time, are left: the first raises ``ConnectionBusyError`` after the rest are closed."""
        left = self._shutdown(time.monotonic() + timeout)
        if left:
            raise ConnectionBusyError(left[0])

    def set_idle_ttl(self, ttl: float) -> None:
        """Set the idle TTL (seconds)."""
        with self._lock:
            self.idle_ttl = ttl

    def set_max_size(self, size: int) -> None:
        """Set the maximum number of connections."""
        with self._lock:
            self.max_size = size
            _CHANGED.notify_all()

    @property
    def closed(self) -> bool:
        """Whether the manager no longer holds this pool (removed or shut down)."""
        return PoolManager._pools.get(self.id) is not self

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

    # -- internals ---------------------------------------------------------------------

    def _snapshot(self) -> List[Connection]:
        # A list copy: a reentrant call (a __del__ during GC) may change the dict meanwhile.
        return list(self.connections.values())

    def _prune_closed(self) -> None:
        for connection in self._snapshot():
            if connection.closed and not connection._held():
                self.remove(connection.handle)

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
            _CHANGED.notify_all()
        for handle in idle:
            _DRIVER.dispose(handle)
        left = executing + _close_within([h for h in held if not h.closed], deadline)
        logger.debug("%s: shut down, %d connection(s) left open", self.name, len(left))
        return left


# -- PoolManager ---------------------------------------------------------------------------


class _Cleaner(threading.Thread):
    """Daemon thread that runs a sweep every ``interval`` seconds until stopped."""

    def __init__(self, interval: float, sweep: Callable[[], None]) -> None:
        super().__init__(name="pgpool_compat-manager-cleaner", daemon=True)
        self.interval = interval
        self.stopping = threading.Event()
        self._sweep = sweep

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            self._sweep()


def _stop(cleaner: _Cleaner, timeout: float) -> None:
    cleaner.stopping.set()
    if cleaner is not threading.current_thread():
        cleaner.join(timeout)


class PoolManager:
    """The process-wide registry of pools. Every method is a classmethod; ``instance()``
    returns the one instance, for code that wants an object (``pid in manager``).

    The registry holds pool ids only, never a DSN.
    """

    _lock = _LOCK
    _pools: ClassVar[Dict[str, Pool]] = {}
    _instance: ClassVar[PoolManager]
    _cleaner: ClassVar[Optional[_Cleaner]] = None
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
                logger.debug("%s: clean invoked, but there is no such pool", pid)
                return
            pool.clean()
            cls._maybe_remove_pool(pid)

    @classmethod
    def create(
        cls,
        pid: str,
        idle_ttl: float = DEFAULT_IDLE_TTL,
        max_size: int = DEFAULT_MAX_SIZE,
        time_method: Optional[Callable[[], float]] = None,
    ) -> None:
        """Create pool ``pid``. Raises ``KeyError`` when it exists (checked under the lock,
        so two racing creators can never silently replace each other's pool)."""
        with cls._lock:
            if pid in cls._pools:
                raise KeyError(f"Pool {pid} already exists")
            logger.debug("%s: creating pool (idle_ttl=%s, max_size=%s)", pid, idle_ttl, max_size)
            cls._pools[pid] = Pool(pid, idle_ttl, max_size, time_method)

    @classmethod
    def free(cls, pid: str, connection: Any) -> None:
        """Free a connection a session held. ``ConnectionNotFoundError`` (a ``KeyError``)
        when the connection or the pool is gone."""
        with cls._lock:
            logger.debug("%s: freeing connection %s", pid, id(connection))
            pool = cls._pools.get(pid)
            if pool is None:
                raise ConnectionNotFoundError(pid, id(connection))
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
        """The :class:`Connection` wrapping ``connection`` in pool ``pid``."""
        with cls._lock:
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
        raises ``ConnectionBusyError`` and keeps the pool (with only its busy ones)."""
        with cls._lock:
            pool = cls._pool(pid)
            pool.close()
            del cls._pools[pid]

    @classmethod
    def remove_connection(cls, pid: str, connection: Any) -> None:
        """Close ``connection`` and remove it from pool ``pid``."""
        with cls._lock:
            pool = cls._pools.get(pid)
            if pool is None:
                raise ConnectionNotFoundError(pid, id(connection))
            pool.remove(connection)

    @classmethod
    def set_idle_ttl(cls, pid: str, ttl: float) -> None:
        """Set the idle TTL of pool ``pid``."""
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
            logger.error("PoolManager.shutdown: lock not available within %.3g s; "
                         "nothing closed", timeout)
            return {pid: len(pool) for pid, pool in list(cls._pools.items())}
        try:
            pools = list(cls._pools.items())
            cls._pools.clear()
            cleaner, cls._cleaner = cls._cleaner, None
        finally:
            cls._lock.release()
        if cleaner is not None:
            _stop(cleaner, max(0.0, deadline - time.monotonic()))
        report: Dict[str, int] = {}
        for pid, pool in pools:
            left = pool._shutdown(deadline)
            if left:
                report[pid] = len(left)
        if report:
            logger.warning("PoolManager.shutdown left %d connection(s) open in pool(s) %s",
                           sum(report.values()), ", ".join(sorted(report)))
        else:
            logger.info("Shutdown complete, all pooled connections closed")
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
        idle_ttl: float = DEFAULT_IDLE_TTL,
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
        if timeout is not None and (math.isnan(timeout) or timeout < 0):
            raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        pid = pool_id(dsn)
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        lease = _Lease()
        pool, handle = cls._checkout(pid, dsn, lease, max_size, idle_ttl, deadline)
        observer = pool.observer
        checked_out_at = time.monotonic()
        if observer is not None:
            observer.waited(pool.name, checked_out_at - started)
        try:
            yield handle
        finally:
            cls._checkin(pid, pool, handle)
            if observer is not None:
                observer.used(pool.name, time.monotonic() - checked_out_at)

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
        cleaner = _Cleaner(float(interval), cls._sweep)
        with cls._lock:
            previous, cls._cleaner = cls._cleaner, cleaner
            cleaner.start()
        if previous is not None:  # stopped with the lock released: its sweep may need it
            _stop(previous, SHUTDOWN_TIMEOUT)

    @classmethod
    def stop_cleaner(cls, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Stop the background cleaner, if any (waits at most ``timeout`` seconds)."""
        with cls._lock:
            cleaner, cls._cleaner = cls._cleaner, None
        if cleaner is not None:
            _stop(cleaner, timeout)

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
        """Remove pool ``pid`` when it has no connection. A ``connection()`` call still
        connecting or waiting for it notices and starts over on a new pool."""
        if not len(cls._pools[pid]):
            del cls._pools[pid]

    @classmethod
    def _sweep(cls) -> None:
        """One background cleaner pass over every pool."""
        with cls._lock:
            for pool in list(cls._pools.values()):
                try:
                    pool.clean()
                except Exception:  # one bad pool must not stop the cleaner
                    logger.exception("%s: cleaning failed", pool.name)

    @classmethod
    def _checkout(
        cls,
        pid: str,
        dsn: str,
        lease: _Lease,
        max_size: int,
        idle_ttl: float,
        deadline: Optional[float],
    ) -> Tuple[Pool, Any]:
        """Take or open a connection of pool ``pid`` for ``lease``; the connect happens
        with the lock released, on a slot reserved beforehand."""
        while True:
            pool, handle = cls._take_turn(pid, dsn, lease, max_size, idle_ttl, deadline)
            if handle is not None:
                return pool, handle
            connect_started = time.monotonic()
            try:
                handle = psycopg2.connect(libpq_dsn(dsn))
            except BaseException:
                with cls._lock:
                    pool._reserved -= 1
                    _CHANGED.notify_all()
                raise
            if pool.observer is not None:
                pool.observer.created(pool.name, time.monotonic() - connect_started)
            with cls._lock:
                pool._reserved -= 1
                if cls._pools.get(pid) is pool:
                    pool.add(handle)
                    pool.lock(handle, lease)
                    return pool, handle
                _CHANGED.notify_all()
            # The pool was removed (remove / shutdown) while we connected: start over.
            _DRIVER.dispose(handle)

    @classmethod
    def _take_turn(
        cls,
        pid: str,
        dsn: str,
        lease: _Lease,
        max_size: int,
        idle_ttl: float,
        deadline: Optional[float],
    ) -> Tuple[Pool, Any]:
        """Under the lock, in arrival order: an idle connection, or a reserved slot
        (``None`` handle), or ``PoolFullError`` once ``deadline`` has passed."""
        ticket = object()
        queued_in: Optional[Pool] = None
        with cls._lock:
            try:
                while True:
                    pool = cls._pools.get(pid)
                    if pool is None:
                        name = target_name((libpq_dsn(dsn),), {})
                        pool = cls._pools[pid] = Pool(pid, idle_ttl, max_size, name=name)
                    if not pool._waiters or pool._waiters[0] is ticket:
                        pool.clean()
                        try:
                            return pool, pool.get(lease)
                        except NoIdleConnectionsError:
                            if not pool.is_full:
                                pool._reserved += 1
                                return pool, None
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is None or remaining <= 0:
                        if remaining is not None:
                            pool._timeouts += 1
                            log.timed_out(pool.name, time.monotonic() - lease.started)
                        raise PoolFullError(pid)
                    if queued_in is not pool:
                        pool._waiters.append(ticket)
                        queued_in = pool
                    _CHANGED.wait(min(remaining, _RECHECK_INTERVAL))
            finally:
                if queued_in is not None and ticket in queued_in._waiters:
                    queued_in._waiters.remove(ticket)
                    _CHANGED.notify_all()  # the next in line may go now

    @classmethod
    def _checkin(cls, pid: str, pool: Pool, handle: Any) -> None:
        """Roll back and free a connection taken by ``connection()``; close and remove it
        when it is broken or its pool has gone."""
        usable = _settle(pool.name, handle)  # I/O: with no lock held; the connection is still ours
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


def _after_fork_in_child() -> None:
    """Forget every connection the parent owns and take fresh locks.

    Closing an inherited connection would end the parent's session; dropping the reference
    is safe (psycopg2 does not close a connection it collects in another process). A thread
    holding the lock at the fork does not exist in the child, so the lock is replaced; so is
    the cleaner thread, which the child lacks but its pools' idle TTLs still need.
    """
    global _LOCK, _CHANGED
    _LOCK = threading.RLock()
    _CHANGED = threading.Condition(_LOCK)
    Connection._lock = Pool._lock = PoolManager._lock = _LOCK
    cleaner, PoolManager._cleaner = PoolManager._cleaner, None
    for pool in list(PoolManager._pools.values()):
        if isinstance(pool, Pool):
            pool.connections.clear()
            pool._reserved = 0
            pool._waiters.clear()
            pool.idle_start = None
    if cleaner is not None and not cleaner.stopping.is_set():
        PoolManager.start_cleaner(cleaner.interval)


if hasattr(os, "register_at_fork"):  # not on Windows, where nothing forks
    os.register_at_fork(after_in_child=_after_fork_in_child)
