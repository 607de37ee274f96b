"""The engine driver that runs a generic-connection-pool connection manager's hooks.

The endpoint travels in the engine's per-connection state (``prepare_for`` returns it), so
the face keeps no map of its own from connections to endpoints, and never hashes one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from time import monotonic
from typing import Any, Hashable, Optional

from ...driver import Driver
from ...driver_async import AsyncDriver

__all__ = ["OUTSIDE", "AsyncManagerDriver", "ConnectionState", "ManagerDriver"]

logger = logging.getLogger("pgpool_compat")

#: ``ManagerDriver.checkout.deadline`` when no ``acquire()`` runs in this thread.
OUTSIDE = object()


class ConnectionState:
    """What the engine keeps for each connection on the manager's behalf."""

    __slots__ = ("dead", "endpoint")

    def __init__(self, endpoint: Hashable) -> None:
        self.endpoint = endpoint
        self.dead = False  # check_aliveness said no: on_connection_dead ran instead of dispose


class ManagerDriver(Driver[Any]):
    """A synchronous ``BaseConnectionManager`` as an engine driver.

    ``check_aliveness`` is the driver's ping, which the runner calls at every checkout of an
    idle connection and never from its keeper (the original's collector only expires
    connections; a check there would leave psycopg2 connections idle in a transaction).
    It gets the time left to the ``acquire()`` running in this thread, positionally, as
    the original passes it: the pool sets ``checkout.deadline`` around the engine call.
    A dead connection is reported to ``on_connection_dead`` and is not passed to
    ``dispose`` (as the original).
    """

    def __init__(self, manager: Any, dispose_timeout: Optional[float]) -> None:
        self._manager = manager
        self._dispose_timeout = dispose_timeout
        #: ``deadline``: when this thread's ``acquire()`` gives up (``None``: never), or
        #: ``OUTSIDE``.
        self.checkout = threading.local()

    def connect_to(self, key: Hashable) -> Any:
        return self._manager.create(key)

    def prepare_for(self, conn: Any, key: Hashable) -> ConnectionState:
        return ConnectionState(key)

    def ping(self, conn: Any, state: ConnectionState, timeout: float) -> bool:
        if state.dead:  # already reported: the engine may ask twice before dropping it
            return False
        deadline: Any = getattr(self.checkout, "deadline", OUTSIDE)
        remains: Optional[float]
        if deadline is OUTSIDE:  # a check outside acquire(): the engine's own bound
            remains = timeout
        elif deadline is None:
            remains = None
        else:
            remains = max(0.0, deadline - monotonic())
        if self._manager.check_aliveness(state.endpoint, conn, remains):
            return True
        state.dead = True
        self._manager.on_connection_dead(state.endpoint, conn)
        return False

    def dispose_with(self, conn: Any, state: Optional[ConnectionState]) -> None:
        if state is None or state.dead:
            return
        try:
            self._manager.dispose(state.endpoint, conn, timeout=self._dispose_timeout)
        except Exception as error:  # disposal never fails the caller; the original logs it
            logger.error("connection disposal failed: %s", type(error).__name__)


class AsyncManagerDriver(AsyncDriver[Any]):
    """An asyncio ``BaseConnectionManager`` as an engine driver.

    ``check_aliveness`` is the ping the runner awaits at every checkout of an idle
    connection (bounded by ``check_timeout``); a dead connection goes to
    ``on_connection_dead`` instead of ``dispose``, as in the original.
    """

    def __init__(self, manager: Any, dispose_timeout: Optional[float]) -> None:
        self._manager = manager
        self._dispose_timeout = dispose_timeout

    async def connect_to(self, key: Hashable) -> Any:
        return await self._manager.create(key)

    def prepare_for(self, conn: Any, key: Hashable) -> ConnectionState:
        return ConnectionState(key)

    async def ping(self, conn: Any, state: ConnectionState) -> bool:
        if state.dead:
            return False
        if await self._manager.check_aliveness(state.endpoint, conn):
            return True
        state.dead = True
        await self._manager.on_connection_dead(state.endpoint, conn)
        return False

    async def dispose_with(self, conn: Any, state: Optional[ConnectionState]) -> None:
        if state is None or state.dead:
            return
        try:
            await asyncio.wait_for(
                self._manager.dispose(state.endpoint, conn), self._dispose_timeout
            )
        except Exception as error:  # disposal never fails the caller; the original logs it
            logger.error("connection disposal failed: %s", type(error).__name__)
