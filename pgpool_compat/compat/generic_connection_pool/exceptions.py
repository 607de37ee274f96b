"""generic-connection-pool's exceptions (``generic_connection_pool.exceptions``)."""

from __future__ import annotations

__all__ = ["BaseError", "ConnectionPoolClosedError"]


class BaseError(Exception):
    """Base class of this package's errors."""


class ConnectionPoolClosedError(BaseError):
    """The pool is closed: nothing can be acquired from it any more."""
