"""asyncio Unix socket and stream managers (``generic_connection_pool.contrib.unix_async``)."""

from __future__ import annotations

import asyncio
import pathlib
import socket

from ..asyncio import BaseConnectionManager
from ._sockets import Stream, close_socket, close_stream, connect_nonblocking
from .socket_async import SocketAlivenessCheckingMixin, StreamAlivenessCheckingMixin

if not hasattr(socket, "AF_UNIX"):
    raise ImportError("Unix sockets are not available on this platform")

__all__ = ["UnixSocketConnectionManager", "UnixSocketStreamConnectionManager"]


class UnixSocketConnectionManager(
    SocketAlivenessCheckingMixin[pathlib.Path],
    BaseConnectionManager[pathlib.Path, socket.socket],
):
    """Non-blocking Unix stream sockets to the path endpoints."""

    async def create(self, endpoint: pathlib.Path) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        return await connect_nonblocking(sock, str(endpoint))

    async def dispose(self, endpoint: pathlib.Path, conn: socket.socket) -> None:
        close_socket(conn)


class UnixSocketStreamConnectionManager(
    StreamAlivenessCheckingMixin[pathlib.Path],
    BaseConnectionManager[pathlib.Path, Stream],
):
    """asyncio streams over Unix sockets to the path endpoints."""

    async def create(self, endpoint: pathlib.Path) -> Stream:
        return await asyncio.open_unix_connection(str(endpoint))

    async def dispose(self, endpoint: pathlib.Path, conn: Stream) -> None:
        await close_stream(conn)
