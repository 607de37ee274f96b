"""The driver seam: everything that touches a connection, and the drivers we ship.

The engine never calls a connection method itself; it asks a driver to connect, probe,
ping, reset and dispose. A new kind of connection is a new driver, not a new pool.

- ``Driver``: the seam (its methods, and which may do I/O, are documented on the class).
- ``Psycopg2Driver``: psycopg2 connections with psycopg2.pool's return rules.
- ``FactoryDriver``: whatever the user's ``factory()`` makes, closed by ``releaser``.

The async twins live in ``driver_async``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import select
import socket
import threading
import time
import weakref
from contextlib import contextmanager
from typing import (
    Any,
    Callable,
    Dict,
    Generic,
    Hashable,
    Iterator,
    List,
    Optional,
    Tuple,
    TypeVar,
)

import psycopg2
from psycopg2 import extensions

from .dsn import call_without_secrets
from .dsn import connect as connect_without_secrets
from .settings import PoolOptions

__all__ = [
    "ConnT",
    "Driver",
    "FactoryDriver",
    "Psycopg2Driver",
    "SessionDefaults",
    "default_releaser",
    "has_probe",
]

logger = logging.getLogger("pgpool_compat")


ConnT = TypeVar("ConnT")

_READABLE = select.POLLIN | select.POLLERR | select.POLLHUP

# libpq's transaction states, named once for the hot paths below.
_STATUS_IDLE = extensions.TRANSACTION_STATUS_IDLE
#: Linux's TCP_INFO (absent elsewhere) and its state after the peer's FIN.
_TCP_INFO = getattr(socket, "TCP_INFO", None)
_TCP_CLOSE_WAIT = 8
_STATUS_UNKNOWN = extensions.TRANSACTION_STATUS_UNKNOWN


class Driver(Generic[ConnT]):
    """How the engine talks to one kind of connection. Subclass and override what applies.

    Every method but ``connect``, ``ping`` and ``reset`` must be cheap: the engine may call
    them under its lock. ``connect``, ``ping``, ``reset`` and ``dispose`` do I/O and are only
    called with no lock held.
    """

    #: What the driver's own log lines start with: the pool's name, which the runner sets.
    log_name = "pgpool_compat"

    def connect(self) -> ConnT:
        raise NotImplementedError

    def prepare(self, conn: ConnT) -> Any:
        """Set up a new connection before it is first handed out; return the driver's state
        for it, which the pool keeps and passes back to ``is_alive``, ``ping`` and ``reset``."""
        return None

    def adopt_state(self, conn: ConnT) -> Any:
        """The state for a connection the pool did not open, found in its books (code that
        appends to psycopg2.pool's ``_pool``): ``prepare``'s, without the user's hooks.
        Called under the lock: no I/O."""
        return None

    def is_alive(self, conn: ConnT, state: Any) -> bool:
        """Whether the connection may still work, without a round trip."""
        return True

    def ping(self, conn: ConnT, state: Any, timeout: float) -> bool:
        """Whether the server answers within ``timeout`` seconds (one round trip)."""
        return self.is_alive(conn, state)

    def return_state(self, conn: ConnT) -> Optional[bool]:
        """``None``: unusable, discard; ``False``: clean, keep as is; ``True``: needs ``reset``."""
        return False

    def share(self, conn: ConnT, state: Any) -> None:
        """``conn`` went to a second holder (``getconn(key)`` twice). From now on another
        thread may be using it whenever it looks idle: never probe, ping or cut it off."""

    def reset(self, conn: ConnT, state: Any) -> None:
        """Make a returned connection fit for the next borrower; raise if it cannot be."""

    def dispose(self, conn: ConnT) -> None:
        """Close the connection, never raising."""

    # Endpoint-keyed pools (generic-connection-pool) need the key to open a connection and
    # its state to close one; every other driver ignores both through these defaults.

    def connect_to(self, key: Hashable) -> ConnT:
        """Open a connection for sub-pool ``key`` (default: ``connect()``)."""
        return self.connect()

    def prepare_for(self, conn: ConnT, key: Hashable) -> Any:
        """``prepare(conn)`` for a connection of sub-pool ``key``."""
        return self.prepare(conn)

    def dispose_with(self, conn: ConnT, state: Any) -> None:
        """``dispose(conn)``, given the state ``prepare`` returned (never raising)."""
        self.dispose(conn)


class SessionDefaults:
    """A psycopg2 connection's session characteristics as first handed out."""

    __slots__ = ("autocommit", "deferrable", "isolation_level", "readonly")

    def __init__(self, conn: Any) -> None:
        self.autocommit: bool = conn.autocommit
        self.readonly: Optional[bool] = conn.readonly
        self.isolation_level: Optional[int] = conn.isolation_level
        self.deferrable: Optional[bool] = conn.deferrable

    def restore(self, conn: Any) -> None:
        # Each property is client-side in psycopg2 >= 2.7: no round trip unless it changed.
        if conn.autocommit != self.autocommit:
            conn.autocommit = self.autocommit
        if conn.readonly != self.readonly:
            conn.readonly = self.readonly
        if conn.isolation_level != self.isolation_level:
            conn.isolation_level = self.isolation_level
        if conn.deferrable != self.deferrable:
            conn.deferrable = self.deferrable


class _ConnState:
    """The psycopg2 driver's memory of one connection."""

    __slots__ = ("defaults", "poller", "shared")

    def __init__(self, conn: Any, defaults: Optional[SessionDefaults]) -> None:
        # One poll object per connection: registering anew on every probe doubles its cost.
        # None for an object with no socket to watch (a test's mock of psycopg2.connect):
        # never probed, as psycopg2.pool never probes.
        self.poller: Optional[Any] = select.poll()
        try:
            self.poller.register(conn.fileno(), _READABLE)
        except (TypeError, ValueError, AttributeError, psycopg2.Error):  # no int fileno()
            self.poller = None
        self.defaults = defaults
        self.shared = False  # see Driver.share


class Psycopg2Driver(Driver[Any]):
    """psycopg2 connections, with psycopg2.pool's return rules and our opt-in extras."""

    def __init__(
        self,
        args: Tuple[Any, ...],
        kwargs: Dict[str, Any],
        options: PoolOptions,
        source: Optional[Any] = None,
    ) -> None:
        self._args = args
        self._kwargs = kwargs
        #: Where the connect arguments are read at each connect, if given: an object with
        #: ``_args`` and ``_kwargs`` (the psycopg2.pool face, whose users rebind them), held
        #: weakly so that the pool is freed by reference counting, as stock's is.
        self._source = None if source is None else weakref.ref(source)
        self._options = options
        self._discard = options.reset == "discard"
        self._custom_reset = options.reset if callable(options.reset) else None
        self._always_reset = self._discard or self._custom_reset is not None

    def connect(self) -> Any:
        source = None if self._source is None else self._source()
        if source is not None:
            return connect_without_secrets(*source._args, **source._kwargs)
        return connect_without_secrets(*self._args, **self._kwargs)

    def prepare(self, conn: Any) -> Any:
        if self._options.configure is not None:
            self._options.configure(conn)
            if conn.info.transaction_status != _STATUS_IDLE:
                conn.commit()  # a configure that ran queries must not leave a transaction open
        return self.adopt_state(conn)

    def adopt_state(self, conn: Any) -> Any:
        return _ConnState(conn, SessionDefaults(conn) if self._discard else None)

    def is_alive(self, conn: Any, state: Any) -> bool:
        poller = state.poller
        if poller is None:  # not a libpq connection: see _ConnState
            return True
        if conn.closed:
            return False
        if not poller.poll(0):
            return True
        if state.shared:
            # The data may be another holder's query results: libpq must not be entered from
            # two threads. Only the kernel's view of the socket is read, never a byte of it.
            return not _peer_closed(conn.fileno())
        # Readable while idle: a notification, or the server hanging up. Let libpq consume
        # what is there; if the socket is still readable, it is at end of stream.
        notices = conn.notices
        last_notice = _last(notices)
        try:
            conn.poll()
        except psycopg2.Error:
            return False
        if _last(notices) is not last_notice:
            # A server speaks unprompted to an idle session only to end it: a terminated
            # backend sends its FATAL (libpq files it as a notice) long before it closes the
            # socket when its exit has temp tables to drop.
            return False
        return not conn.closed and not poller.poll(0)

    def ping(self, conn: Any, state: Any, timeout: float) -> bool:
        if state.shared or state.poller is None:
            # No round trip on a shared connection, nor on a test double (no socket).
            return self.is_alive(conn, state)
        if not self.is_alive(conn, state) or conn.get_transaction_status() != _STATUS_IDLE:
            return False
        autocommit = conn.autocommit
        cut: Optional[_CutOff] = None
        try:
            with _cut_off_after(conn.fileno(), timeout) as cut:
                conn.autocommit = True  # one statement, not BEGIN / SELECT / ROLLBACK
                with conn.cursor() as cursor:
                    cursor.execute("SELECT 1")
                conn.autocommit = autocommit
        except psycopg2.Error as error:
            if cut is None or not cut.fired:  # else the cut-off caused it: said below
                logger.info("%s: ping failed: %s", self.log_name, type(error).__name__)
                return False
        assert cut is not None
        if cut.fired:
            logger.warning(
                "%s: ping got no answer within %.3g s; connection dropped", self.log_name, timeout
            )
        return not cut.fired

    def return_state(self, conn: Any) -> Optional[bool]:
        if conn.closed:
            return None
        try:  # _transaction_status(conn), inlined: the hot path
            status = conn.get_transaction_status()
        except AttributeError:
            status = conn.info.transaction_status
        if status == _STATUS_UNKNOWN:
            return None
        return self._always_reset or status != _STATUS_IDLE

    def share(self, conn: Any, state: Any) -> None:
        state.shared = True

    def reset(self, conn: Any, state: Any) -> None:
        # Bounded like a ping: on a network that stalled silently, putconn must not hang. Not
        # a shared connection: the cut-off would end the other holder's query.
        timeout = self._options.check_timeout
        shared = state is not None and state.shared
        socket_less = state is not None and state.poller is None  # a test double
        fd = -1 if socket_less else conn.fileno()
        with _cut_off_after(fd, None if shared or socket_less else timeout) as cut:
            if _transaction_status(conn) != _STATUS_IDLE:
                conn.rollback()
            if self._discard and self._custom_reset is None:
                conn.autocommit = True  # DISCARD ALL cannot run inside a transaction block
                with conn.cursor() as cursor:
                    cursor.execute("DISCARD ALL")
                state.defaults.restore(conn)
        if cut.fired:
            raise psycopg2.OperationalError(f"the reset got no answer within {timeout:g} s")
        if self._custom_reset is not None:
            self._custom_reset(conn)  # the user's own: not cut off

    def dispose(self, conn: Any) -> None:
        try:
            conn.close()
        except Exception as error:  # closing must never fail the caller
            logger.debug(
                "%s: error closing a connection: %s", self.log_name, type(error).__name__
            )


def _transaction_status(conn: Any) -> Any:
    try:
        return conn.get_transaction_status()  # a third of the cost of conn.info's
    except AttributeError:  # a test double mimicking only what psycopg2.pool reads
        return conn.info.transaction_status


def _last(notices: Any) -> Any:
    """The newest entry of ``conn.notices`` (a list, or whatever the user put there)."""
    try:
        return notices[-1] if notices else None
    except (TypeError, IndexError, KeyError):  # an append-only sink: nothing to compare
        return None


def _peer_closed(fd: int) -> bool:
    """Whether the server closed its end of a TCP connection (the kernel's CLOSE_WAIT). Reads
    no byte of the stream, so it is safe while another thread uses the connection; a Unix
    socket, or a system without TCP_INFO, has no such state to read and counts as open."""
    if _TCP_INFO is None:
        return False
    sock = socket.socket(fileno=fd)  # a view of the fd: detached below, never closed
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 1)[0] == _TCP_CLOSE_WAIT
    except OSError:
        return False
    finally:
        sock.detach()


# Shared by every watchdog of the process, so that an alarm armed before a fork can never be
# mistaken for one armed by the child's new watchdog.
_alarm_ids = itertools.count()


class _Watchdog:
    """One daemon thread that cuts off pings still waiting at their deadline.

    libpq waits for an answer with no timeout, so a peer that vanished silently would hang a
    ping for ever; shutting the socket down makes the blocked read fail at once.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._alarms: List[Tuple[float, int, int]] = []  # (deadline, alarm id, fd)
        self._armed: Dict[int, bool] = {}  # alarm id -> fired
        self._thread: Optional[threading.Thread] = None

    def arm(self, fd: int, timeout: float) -> int:
        with self._cond:
            alarm = next(_alarm_ids)
            heapq.heappush(self._alarms, (time.monotonic() + timeout, alarm, fd))
            self._armed[alarm] = False
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="pgpool_compat-watchdog", daemon=True
                )
                self._thread.start()
            self._cond.notify()
            return alarm

    def disarm(self, alarm: int) -> bool:
        """Forget the alarm; return whether it fired."""
        with self._cond:
            # Missing when a fork came between arm and disarm: the child never fired it.
            return self._armed.pop(alarm, False)

    def _run(self) -> None:
        with self._cond:
            while True:
                self._drop_disarmed()
                if not self._alarms:
                    self._cond.wait()
                    continue
                deadline, alarm, fd = self._alarms[0]
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                heapq.heappop(self._alarms)
                self._armed[alarm] = True
                _shutdown_socket(fd)

    def _drop_disarmed(self) -> None:
        while self._alarms and self._alarms[0][1] not in self._armed:
            heapq.heappop(self._alarms)


class _CutOff:
    """Whether a ``_cut_off_after`` block ran out of time."""

    fired = False


@contextmanager
def _cut_off_after(fd: int, timeout: Optional[float]) -> Iterator[_CutOff]:
    """Shut the socket down if the block is still waiting after ``timeout`` seconds
    (``None``: never)."""
    outcome = _CutOff()
    if timeout is None:
        yield outcome
        return
    alarm = _watchdog.arm(fd, timeout)
    try:
        yield outcome
    finally:
        outcome.fired = _watchdog.disarm(alarm)


def _shutdown_socket(fd: int) -> None:
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError as error:
        logger.debug("watchdog: could not shut down socket %d: %s", fd, type(error).__name__)


_watchdog = _Watchdog()


def _new_watchdog_after_fork() -> None:
    """A forked child starts with no alarm, no thread and a free lock.

    An inherited alarm names a socket the child shares with its parent: firing it in the
    child would cut off the parent's session. A thread holding the lock at the fork does not
    exist in the child, so the lock is replaced rather than waited for.
    """
    global _watchdog
    _watchdog = _Watchdog()


if hasattr(os, "register_at_fork"):  # not on Windows, where nothing forks
    os.register_at_fork(after_in_child=_new_watchdog_after_fork)


def has_probe(driver: Driver[Any]) -> bool:
    """Whether the driver's ``is_alive`` does anything: if not, checkouts skip the call."""
    return type(driver).is_alive is not Driver.is_alive


def default_releaser(conn: Any) -> Any:
    """Dispose of a connection the generic way: call its ``close()`` if it has one.

    Returns what ``close()`` returned, so an async pool can await a coroutine ``close()``
    (asyncpg's) and a sync one can ignore the ``None``.
    """
    close = getattr(conn, "close", None)
    return close() if callable(close) else None


class FactoryDriver(Driver[ConnT]):
    """Connections from user callables: ``factory()`` opens, ``configure(conn)`` runs once
    on each new one, ``reset(conn)`` on every return, ``releaser(conn)`` closes (default:
    ``conn.close()`` if there is one).

    There is no zero-round-trip probe for an unknown kind of connection: liveness is the
    pool's ``check`` callable, which the engine runs with its lock released.
    """

    def __init__(
        self,
        factory: Callable[[], ConnT],
        releaser: Optional[Callable[[ConnT], Any]] = None,
        reset: Optional[Callable[[ConnT], Any]] = None,
        configure: Optional[Callable[[ConnT], Any]] = None,
    ) -> None:
        self._factory = factory
        self._configure = configure
        self._releaser: Callable[[ConnT], Any] = releaser or default_releaser
        self._reset = reset
        self._needs_reset: Optional[bool] = reset is not None

    def connect(self) -> ConnT:
        # A psycopg2 parse error would quote the factory's DSN, password and all.
        return call_without_secrets(self._factory)

    def prepare(self, conn: ConnT) -> Any:
        if self._configure is not None:
            self._configure(conn)
        return None

    def return_state(self, conn: ConnT) -> Optional[bool]:
        # True makes the engine call reset() on every return, outside its lock.
        return self._needs_reset

    def reset(self, conn: ConnT, state: Any) -> None:
        if self._reset is not None:
            self._reset(conn)

    def dispose(self, conn: ConnT) -> None:
        try:
            self._releaser(conn)
        except Exception as error:  # closing must never fail the caller
            logger.debug(
                "%s: error releasing a connection: %s", self.log_name, type(error).__name__
            )
