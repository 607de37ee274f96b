"""asyncio socket and stream managers (``generic_connection_pool.contrib.socket_async``)."""

from __future__ import annotations

import asyncio
import socket
from ssl import SSLContext
from typing import Generic, Optional, Tuple, Union

from ..asyncio import BaseConnectionManager, EndpointT
from ._sockets import (
    Stream,
    TcpEndpoint,
    close_socket,
    close_stream,
    connect_nonblocking,
    family_of,
    peer_gone,
    stream_gone,
)

__all__ = [
    "SocketAlivenessCheckingMixin",
    "Stream",
    "StreamAlivenessCheckingMixin",
    "TcpSocketConnectionManager",
    "TcpStreamConnectionManager",
]

TcpStreamEndpoint = Tuple[str, int]


class SocketAlivenessCheckingMixin(Generic[EndpointT]):
    """``check_aliveness`` for non-blocking sockets: alive unless the peer closed it."""

    async def check_aliveness(self, endpoint: EndpointT, conn: socket.socket) -> bool:
        return not peer_gone(conn)

    async def on_connection_dead(self, endpoint: EndpointT, conn: socket.socket) -> None:
        close_socket(conn)  # a dead socket is not disposed by the pool: close it here


class TcpSocketConnectionManager(
    SocketAlivenessCheckingMixin[TcpEndpoint],
    BaseConnectionManager[TcpEndpoint, socket.socket],
):
    """Non-blocking TCP sockets to ``(ip_address, port)`` endpoints."""

    async def create(self, endpoint: TcpEndpoint) -> socket.socket:
        address, port = endpoint
        sock = socket.socket(family_of(address), socket.SOCK_STREAM)
        return await connect_nonblocking(sock, (str(address), port))

    async def dispose(self, endpoint: TcpEndpoint, conn: socket.socket) -> None:
        close_socket(conn)


class StreamAlivenessCheckingMixin(Generic[EndpointT]):
    """``check_aliveness`` for ``(reader, writer)`` streams: alive unless closing, at end of
    file or failed."""

    async def check_aliveness(self, endpoint: EndpointT, conn: Stream) -> bool:
        await asyncio.sleep(0)  # let the loop deliver an end of file already received
        return not stream_gone(conn)

    async def on_connection_dead(self, endpoint: EndpointT, conn: Stream) -> None:
        await close_stream(conn)


class TcpStreamConnectionManager(
    StreamAlivenessCheckingMixin[TcpStreamEndpoint],
    BaseConnectionManager[TcpStreamEndpoint, Stream],
):
    """asyncio streams to ``(hostname, port)`` endpoints; ``ssl`` as ``asyncio.open_connection``
    takes it (``None``: plain TCP)."""

    def __init__(self, ssl: Union[bool, SSLContext, None] = None) -> None:
        self._ssl = ssl

    async def create(self, endpoint: TcpStreamEndpoint) -> Stream:
        hostname, port = endpoint
        server_hostname: Optional[str] = hostname if self._ssl else None
        return await asyncio.open_connection(
            hostname, port, ssl=self._ssl, server_hostname=server_hostname
        )

    async def dispose(self, endpoint: TcpStreamEndpoint, conn: Stream) -> None:
        await close_stream(conn)
