"""Synchronous socket managers (``generic_connection_pool.contrib.socket``)."""

from __future__ import annotations

import socket
from ssl import SSLContext, SSLSocket
from typing import Generic, Optional, Tuple

from ..threading import BaseConnectionManager, EndpointT
from ._sockets import TcpEndpoint, close_socket, connect_blocking, family_of, peer_gone

__all__ = [
    "SocketAlivenessCheckingMixin",
    "SslSocketAlivenessCheckingMixin",
    "SslSocketConnectionManager",
    "TcpSocketConnectionManager",
]

SslEndpoint = Tuple[str, int]


class SocketAlivenessCheckingMixin(Generic[EndpointT]):
    """``check_aliveness``: the socket is alive unless its peer closed it or it failed."""

    def check_aliveness(
        self, endpoint: EndpointT, conn: socket.socket, timeout: Optional[float] = None
    ) -> bool:
        return not peer_gone(conn)

    def on_connection_dead(self, endpoint: EndpointT, conn: socket.socket) -> None:
        close_socket(conn)  # a dead socket is not disposed by the pool: close it here


class TcpSocketConnectionManager(
    SocketAlivenessCheckingMixin[TcpEndpoint],
    BaseConnectionManager[TcpEndpoint, socket.socket],
):
    """TCP sockets to ``(ip_address, port)`` endpoints (``ipaddress`` objects)."""

    def create(self, endpoint: TcpEndpoint, timeout: Optional[float] = None) -> socket.socket:
        address, port = endpoint
        sock = socket.socket(family_of(address), socket.SOCK_STREAM)
        return connect_blocking(sock, (str(address), port), timeout)

    def dispose(
        self, endpoint: TcpEndpoint, conn: socket.socket, timeout: Optional[float] = None
    ) -> None:
        close_socket(conn)


class SslSocketAlivenessCheckingMixin(SocketAlivenessCheckingMixin[EndpointT]):
    """``check_aliveness`` for TLS sockets: the underlying TCP socket is peeked."""


class SslSocketConnectionManager(
    SslSocketAlivenessCheckingMixin[SslEndpoint],
    BaseConnectionManager[SslEndpoint, SSLSocket],
):
    """TLS sockets to ``(hostname, port)`` endpoints, made with the ``ssl`` context given
    (the hostname is what the certificate is checked against)."""

    def __init__(self, ssl: SSLContext) -> None:
        self._ssl = ssl

    def create(self, endpoint: SslEndpoint, timeout: Optional[float] = None) -> SSLSocket:
        hostname, port = endpoint
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        connect_blocking(raw, (hostname, port), timeout)
        try:
            tls = self._ssl.wrap_socket(
                raw, server_hostname=hostname, do_handshake_on_connect=False
            )
            tls.settimeout(timeout)
            tls.do_handshake()
            tls.settimeout(None)
        except BaseException:
            raw.close()
            raise
        return tls

    def dispose(
        self, endpoint: SslEndpoint, conn: SSLSocket, timeout: Optional[float] = None
    ) -> None:
        close_socket(conn)
