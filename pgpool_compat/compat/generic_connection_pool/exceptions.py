"""generic-connection-pool's exceptions (``generic_connection_pool.exceptions``)."""

from __future__ import annotations

__all__ = [
    "BaseError",
    "ConnectionPoolClosedError",
    "ConnectionPoolIsFull",
    "ConnectionPoolNotFound",
]


class BaseError(Exception):
    """Base class of this package's errors."""


class ConnectionPoolClosedError(BaseError):
    """The pool is closed: nothing can be acquired from it any more."""


class ConnectionPoolIsFull(BaseError):
    """A pool is full of connections. The original raises it only inside its own books; so
    does nothing here (the name is kept for imports and ``except`` clauses)."""


class ConnectionPoolNotFound(BaseError):
    """``release(conn, endpoint)`` named an endpoint that holds no connection."""
