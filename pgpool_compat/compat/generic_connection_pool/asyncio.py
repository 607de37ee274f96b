"""generic-connection-pool's asyncio pool (``generic_connection_pool.asyncio``)."""

from __future__ import annotations

import abc
from typing import Any, Generic, Optional

from .common import ConnectionT, EndpointT

__all__ = ["BaseConnectionManager", "ConnectionPool", "ConnectionT", "EndpointT"]


class BaseConnectionManager(Generic[EndpointT, ConnectionT], abc.ABC):
    """How to open, close and check connections of an endpoint, as coroutines (subclass it)."""

    @abc.abstractmethod
    async def create(self, endpoint: EndpointT) -> ConnectionT:
        """Open a new connection to ``endpoint``."""

    @abc.abstractmethod
    async def dispose(self, endpoint: EndpointT, conn: ConnectionT) -> None:
        """Close ``conn``."""

    async def check_aliveness(self, endpoint: EndpointT, conn: ConnectionT) -> bool:
        """Whether an idle ``conn`` may be handed out (default: yes)."""
        return True

    async def on_acquire(self, endpoint: EndpointT, conn: ConnectionT) -> None:
        """Called when ``conn`` is handed out."""

    async def on_release(self, endpoint: EndpointT, conn: ConnectionT) -> None:
        """Called when ``conn`` is given back."""

    async def on_connection_dead(self, endpoint: EndpointT, conn: ConnectionT) -> None:
        """Called instead of ``dispose`` when ``check_aliveness`` said ``conn`` is dead."""


class ConnectionPool(Generic[EndpointT, ConnectionT]):
    """Placeholder until the asyncio runner lands."""

    def __init__(self, connection_manager: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "the asyncio generic-connection-pool face needs the asyncio runner"
        )

    _unused: Optional[int] = None
