"""The async twin of the driver seam (``driver.Driver``), for the asyncio runner.

The methods that may do I/O are coroutines (``connect``, ``ping``, ``reset``, ``dispose``);
``prepare``, ``is_alive`` and ``return_state`` stay plain functions, as the runner calls
them between two awaits. ``AsyncFactoryDriver`` turns a user's callables into a driver;
each may be a plain function or return an awaitable.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Awaitable, Callable, Generic, Hashable, Optional, TypeVar, Union

import psycopg2

from .driver import default_releaser
from .dsn import call_without_secrets, without_secrets

__all__ = ["AsyncDriver", "AsyncFactoryDriver", "call_hook"]

logger = logging.getLogger("pgpool_compat")

ConnT = TypeVar("ConnT")

#: A user hook: a plain function, or one returning an awaitable (a coroutine function).
Hook = Callable[..., Any]


async def call_hook(hook: Hook, *args: Any) -> Any:
    """Call a sync or async hook and return its result."""
    result = hook(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


async def _without_secrets(awaitable: Awaitable[Any]) -> Any:
    """``await awaitable``; a psycopg2 error is re-raised without the password it may show
    (as ``dsn.call_without_secrets`` does for a call)."""
    try:
        return await awaitable
    except psycopg2.Error as error:
        safe = without_secrets(error)
        if safe is None:
            raise
    raise safe  # outside the except block: not even __context__ keeps the original


class AsyncDriver(Generic[ConnT]):
    """Everything that touches a connection, for the asyncio runner."""

    #: False: the runner skips ``is_alive`` on checkout (no zero-round-trip probe).
    has_probe = False
    #: What the driver's own log lines start with: the pool's name, which the runner sets.
    log_name = "pgpool_compat"

    async def connect(self) -> ConnT:
        """Open a new connection (ready for use: ``configure`` already ran)."""
        raise NotImplementedError

    def prepare(self, conn: ConnT) -> Any:
        """Once per new connection; the result is kept as the entry's driver state."""
        return None

    def is_alive(self, conn: ConnT, state: Any) -> bool:
        """Cheap liveness probe, no round trip."""
        return True

    async def ping(self, conn: ConnT, state: Any) -> bool:
        """One round trip; the runner bounds it with ``check_timeout``."""
        return True

    def return_state(self, conn: ConnT) -> Optional[bool]:
        """On return: ``None`` discards, ``False`` keeps as is, ``True`` calls ``reset()``."""
        return False

    async def reset(self, conn: ConnT, state: Any) -> None:
        """Make a returned connection clean; raise if it cannot be reused. The runner
        bounds it with ``check_timeout``."""

    async def dispose(self, conn: ConnT) -> None:
        """Close a connection; never raises."""

    # Endpoint-keyed pools (generic-connection-pool) need the key to open a connection and
    # its state to close one; every other driver ignores both through these defaults.

    async def connect_to(self, key: Hashable) -> ConnT:
        """Open a connection for sub-pool ``key`` (default: ``connect()``)."""
        return await self.connect()

    def prepare_for(self, conn: ConnT, key: Hashable) -> Any:
        """``prepare(conn)`` for a connection of sub-pool ``key``."""
        return self.prepare(conn)

    async def dispose_with(self, conn: ConnT, state: Any) -> None:
        """``dispose(conn)``, given the state ``prepare`` returned (never raising)."""
        await self.dispose(conn)


class AsyncFactoryDriver(AsyncDriver[ConnT]):
    """Connections from user callables: ``factory()`` opens, ``configure(conn)`` runs once on
    each new one, ``reset(conn)`` on every return, ``releaser(conn)`` closes (default:
    ``conn.close()``, awaited if it returns an awaitable). Each may be sync or async.

    There is no zero-round-trip probe for an unknown kind of connection: liveness is the
    pool's ``check`` callable.
    """

    def __init__(
        self,
        factory: Callable[[], Union[Awaitable[ConnT], ConnT]],
        releaser: Optional[Hook] = None,
        reset: Optional[Hook] = None,
        configure: Optional[Hook] = None,
    ) -> None:
        self._factory = factory
        self._releaser: Hook = releaser or default_releaser
        self._reset = reset
        self._configure = configure
        self._needs_reset: Optional[bool] = reset is not None

    async def connect(self) -> ConnT:
        # A psycopg2 parse error would quote the factory's DSN, password and all.
        made = call_without_secrets(self._factory)
        conn: ConnT = await _without_secrets(made) if inspect.isawaitable(made) else made
        if self._configure is not None:
            try:
                await call_hook(self._configure, conn)
            except BaseException:
                await self.dispose(conn)  # a failed configure must not leave it open
                raise
        return conn

    def return_state(self, conn: ConnT) -> Optional[bool]:
        # True makes the runner await reset() on every return.
        return self._needs_reset

    async def reset(self, conn: ConnT, state: Any) -> None:
        if self._reset is not None:
            await call_hook(self._reset, conn)

    async def dispose(self, conn: ConnT) -> None:
        try:
            await call_hook(self._releaser, conn)
        except Exception as error:  # closing must never fail the caller
            logger.debug(
                "%s: error releasing a connection: %s", self.log_name, type(error).__name__
            )
