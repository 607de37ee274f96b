"""Stands in for the ``generic_connection_pool`` package: change
``generic_connection_pool`` to ``pgpool_compat.compat.generic_connection_pool`` in imports.

The same modules (``exceptions``, ``common``, ``threading``, ``asyncio``, ``contrib.socket``,
``contrib.socket_async``, ``contrib.unix``, ``contrib.unix_async``), names, parameters and
defaults; the pools run on pgpool_compat's engine (one endpoint is one sub-pool).
"""

from . import common, exceptions
from .common import BaseConnectionPool
from .exceptions import BaseError, ConnectionPoolClosedError

__all__ = ["BaseConnectionPool", "BaseError", "ConnectionPoolClosedError", "common", "exceptions"]
