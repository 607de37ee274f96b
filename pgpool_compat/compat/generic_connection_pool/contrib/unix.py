"""Synchronous Unix socket manager (``generic_connection_pool.contrib.unix``)."""

from __future__ import annotations

import pathlib
import socket
from typing import Optional

from ..threading import BaseConnectionManager, EndpointT
from ._sockets import close_socket, connect_blocking
from .socket import SocketAlivenessCheckingMixin

if not hasattr(socket, "AF_UNIX"):
    raise ImportError("Unix sockets are not available on this platform")

__all__ = ["CheckSocketAlivenessMixin", "UnixSocketConnectionManager"]


class CheckSocketAlivenessMixin(SocketAlivenessCheckingMixin[EndpointT]):
    """``check_aliveness``: alive unless the peer closed the socket or it failed."""


class UnixSocketConnectionManager(
    CheckSocketAlivenessMixin[pathlib.Path],
    BaseConnectionManager[pathlib.Path, socket.socket],
):
    """Unix stream sockets to the path endpoints."""

    def create(self, endpoint: pathlib.Path, timeout: Optional[float] = None) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        return connect_blocking(sock, str(endpoint), timeout)

    def dispose(
        self, endpoint: pathlib.Path, conn: socket.socket, timeout: Optional[float] = None
    ) -> None:
        close_socket(conn)
