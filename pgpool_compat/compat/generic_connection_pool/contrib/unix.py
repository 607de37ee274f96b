"""Synchronous Unix socket manager (``generic_connection_pool.contrib.unix``)."""

from __future__ import annotations

import pathlib
import socket
from typing import Generic, Optional

from ..threading import BaseConnectionManager, EndpointT
from ._sockets import close_socket, connect_blocking, peer_gone

if not hasattr(socket, "AF_UNIX"):
    raise ImportError("Unix sockets are not available on this platform")

__all__ = ["CheckSocketAlivenessMixin", "UnixSocketConnectionManager"]


class CheckSocketAlivenessMixin(Generic[EndpointT]):
    """``check_aliveness``: alive unless the peer closed the socket or it failed."""

    def check_aliveness(
        self, endpoint: EndpointT, conn: socket.socket, timeout: Optional[float] = None
    ) -> bool:
        return not peer_gone(conn)

    def on_connection_dead(self, endpoint: EndpointT, conn: socket.socket) -> None:
        close_socket(conn)  # a dead socket is not disposed by the pool: close it here


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
