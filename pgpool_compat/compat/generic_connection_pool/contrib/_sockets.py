"""Socket helpers shared by the sync and asyncio managers (no I/O that can block)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Tuple, Union

IpAddress = Union[IPv4Address, IPv6Address]
TcpEndpoint = Tuple[IpAddress, int]
Stream = Tuple[asyncio.StreamReader, asyncio.StreamWriter]


def peer_gone(sock: socket.socket) -> bool:
    """Whether the peer closed ``sock`` or it failed, without blocking or consuming data.

    Peeks at one byte with the socket non-blocking (its timeout is restored): no data yet
    means alive, end of file or an error means gone. For an ``SSLSocket`` the raw TCP bytes
    are peeked, since TLS reads take no flags.
    """
    previous = sock.gettimeout()
    try:
        sock.settimeout(0.0)
        return socket.socket.recv(sock, 1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(previous)


def family_of(address: IpAddress) -> int:
    return socket.AF_INET6 if address.version == 6 else socket.AF_INET


def close_socket(sock: socket.socket) -> None:
    """Shut both directions down (the peer sees end of file at once), then close."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def connect_blocking(sock: socket.socket, address: Any, timeout: Any) -> socket.socket:
    """Connect within ``timeout`` seconds (None: no bound), leave ``sock`` blocking; close it
    if the connect fails."""
    try:
        sock.settimeout(timeout)
        sock.connect(address)
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock


async def connect_nonblocking(sock: socket.socket, address: Any) -> socket.socket:
    """Connect a non-blocking socket on the running loop; close it if the connect fails."""
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


def stream_gone(conn: Stream) -> bool:
    reader, writer = conn
    return writer.is_closing() or reader.at_eof() or reader.exception() is not None


async def close_stream(conn: Stream) -> None:
    """Half-close then close the stream and wait for it (errors ignored: it is going)."""
    _, writer = conn
    with contextlib.suppress(OSError, RuntimeError):
        if writer.can_write_eof() and not writer.is_closing():
            writer.write_eof()
    writer.close()
    with contextlib.suppress(OSError, RuntimeError):
        await writer.wait_closed()
