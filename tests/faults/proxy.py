"""A loopback TCP proxy the fault tests control: pass traffic, cut it, or blackhole it.

One daemon thread runs a selector over the listening socket and every proxied pair, so the
proxy costs one thread however many connections go through it, and stops by itself on
:meth:`Proxy.close` (or leaving a ``with`` block).

Modes, switched at any time from the test:

- ``pass``: forward bytes both ways.
- ``cut``: close both sides of every open pair, and accept-then-close any new connection
  (what a client sees when a firewall or load balancer resets its connections).
- ``blackhole``: stop forwarding on every open pair (bytes stay queued, as on a partitioned
  network) and accept new connections but never answer them (a silently vanished peer).
- ``stall``: stop forwarding on every open pair, but forward new connections (a firewall or
  NAT that silently dropped its idle entries: old connections hang, new ones work).

Leaving ``blackhole`` or ``stall`` for ``pass`` resumes the held pairs, like a healed
partition. The proxy binds 127.0.0.1 only and refuses to forward anywhere but a loopback
address.
"""

from __future__ import annotations

import contextlib
import ipaddress
import selectors
import socket
import threading
from dataclasses import dataclass
from typing import Dict, List, Optional, Set

__all__ = ["MODES", "Proxy"]

MODES = ("pass", "cut", "blackhole", "stall")

#: Upper bound on pairs alive at once: a runaway test fails instead of exhausting descriptors.
MAX_PAIRS = 256

_CHUNK = 65536
_TICK = 0.05  # selector timeout: how fast the thread notices a mode change or close()


@dataclass
class _Pair:
    client: socket.socket
    upstream: Optional[socket.socket]  # None: a blackholed connection, never answered


class Proxy:
    """Forward ``127.0.0.1:<port>`` to ``upstream_host:upstream_port``; see the module doc."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        if not ipaddress.ip_address(socket.gethostbyname(upstream_host)).is_loopback:
            raise ValueError(f"the test proxy forwards to loopback only, not {upstream_host!r}")
        self.upstream = (upstream_host, upstream_port)
        self._lock = threading.Lock()
        self._mode = "pass"
        self._pairs: List[_Pair] = []
        self._owner: Dict[socket.socket, _Pair] = {}
        self._paused: Set[socket.socket] = set()
        self.accepted = 0  # connections accepted in any mode, for the tests' books
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.host = "127.0.0.1"
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-proxy", daemon=True)
        self._thread.start()

    # -- control ----------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: str) -> None:
        """Switch mode; ``cut`` also closes every open pair at once, before returning."""
        if mode not in MODES:
            raise ValueError(f"proxy mode must be one of {MODES}, got {mode!r}")
        with self._lock:
            self._mode = mode
            if mode == "cut":
                for pair in list(self._pairs):
                    self._close_pair(pair)
            self._sync_pauses()  # before returning: no byte crosses after a stall starts

    def pass_through(self) -> None:
        self.set_mode("pass")

    def cut(self) -> None:
        self.set_mode("cut")

    def blackhole(self) -> None:
        self.set_mode("blackhole")

    def stall(self) -> None:
        self.set_mode("stall")

    @property
    def open_pairs(self) -> int:
        with self._lock:
            return len(self._pairs)

    def dsn(self, base_dsn: str) -> str:
        """``base_dsn`` (libpq key=value) with host and port pointed at this proxy."""
        address = ("host=", "port=", "hostaddr=")
        kept = [part for part in base_dsn.split() if not part.startswith(address)]
        return " ".join([f"host={self.host}", f"port={self.port}", *kept])

    def close(self) -> None:
        """Stop the thread and close every socket; idempotent."""
        self._stop.set()
        self._thread.join(5)
        with self._lock:
            for pair in list(self._pairs):
                self._close_pair(pair)
        self._selector.close()
        self._listener.close()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the forwarding thread ----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _events in self._selector.select(_TICK):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                with self._lock:
                    if sock is self._listener:
                        self._accept()
                    elif sock in self._owner and sock not in self._paused:
                        self._forward(sock)

    def _sync_pauses(self) -> None:
        """Stop reading from paired sockets in blackhole mode; resume them otherwise."""
        holding = self._mode in ("blackhole", "stall")
        for pair in self._pairs:
            if pair.upstream is None:
                continue  # never answered in any mode; read only to notice the client leave
            for sock in (pair.client, pair.upstream):
                if holding and sock not in self._paused:
                    self._selector.unregister(sock)
                    self._paused.add(sock)
                elif not holding and sock in self._paused:
                    self._selector.register(sock, selectors.EVENT_READ)
                    self._paused.discard(sock)

    def _accept(self) -> None:
        try:
            client, _address = self._listener.accept()
        except BlockingIOError:
            return
        self.accepted += 1
        if self._mode == "cut" or len(self._pairs) >= MAX_PAIRS:
            client.close()
            return
        if self._mode == "blackhole":
            # Accept and never answer: the client waits for the server's first reply. Its bytes
            # are read and dropped, so the pair goes away when the client gives up.
            pair = _Pair(client, None)
            self._pairs.append(pair)
            self._owner[client] = pair
            self._selector.register(client, selectors.EVENT_READ)
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=2)
        except OSError:
            client.close()  # upstream down: the client sees the connection closed
            return
        for sock in (client, upstream):
            sock.settimeout(5)  # a sendall to a peer that stopped reading fails, never hangs
            self._selector.register(sock, selectors.EVENT_READ)
        pair = _Pair(client, upstream)
        self._pairs.append(pair)
        self._owner[client] = self._owner[upstream] = pair

    def _forward(self, sock: socket.socket) -> None:
        pair = self._owner[sock]
        peer = pair.upstream if sock is pair.client else pair.client
        try:
            data = sock.recv(_CHUNK)
            if data and peer is not None:
                peer.sendall(data)
        except OSError:
            data = b""
        if not data:
            self._close_pair(pair)

    def _close_pair(self, pair: _Pair) -> None:
        for sock in (pair.client, pair.upstream):
            if sock is None:
                continue
            if sock in self._paused:
                self._paused.discard(sock)
            else:
                # Already gone, or the selector is closed.
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(sock)
            self._owner.pop(sock, None)
            with contextlib.suppress(OSError):  # the peer already went away
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if pair in self._pairs:
            self._pairs.remove(pair)
