"""Scenarios run on ``generic_connection_pool`` and on
``pgpool_compat.compat.generic_connection_pool``: same outcomes.

``lib`` is the package; its modules are imported by their names under it, so the face must
mirror the original's layout. Where the face differs on purpose (unhashable connections,
``close()`` with borrowed connections, an expired connection is never handed out, validation
that survives ``python -O``) see tests/compat/test_faces.py.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from scenario_kit import Counter, signature


def _mod(lib: Any, name: str) -> Any:
    return importlib.import_module(f"{lib.__name__}.{name}")


class Conn:
    def __init__(self, counter: Counter, endpoint: str) -> None:
        self.i = counter.next()
        self.endpoint = endpoint


def _manager(lib: Any, counter: Counter, alive: Optional[Dict[str, bool]] = None) -> Any:
    """A connection manager logging every call (timeouts logged as "none" / "number")."""
    base = _mod(lib, "threading").BaseConnectionManager
    alive = alive if alive is not None else {"now": True}

    class Manager(base):  # type: ignore[misc, valid-type]
        def create(self, endpoint: str, timeout: Optional[float] = None) -> Conn:
            conn = Conn(counter, endpoint)
            counter.log.append(["create", endpoint, conn.i])
            return conn

        def dispose(self, endpoint: str, conn: Conn, timeout: Optional[float] = None) -> None:
            counter.log.append(["dispose", endpoint, conn.i])

        def check_aliveness(
            self, endpoint: str, conn: Conn, timeout: Optional[float] = None
        ) -> bool:
            counter.log.append(["check", endpoint, conn.i])
            return alive["now"]

        def on_acquire(self, endpoint: str, conn: Conn) -> None:
            counter.log.append(["on_acquire", endpoint, conn.i])

        def on_release(self, endpoint: str, conn: Conn) -> None:
            counter.log.append(["on_release", endpoint, conn.i])

        def on_connection_dead(self, endpoint: str, conn: Conn) -> None:
            counter.log.append(["dead", endpoint, conn.i])
            alive["now"] = True

    return Manager()


def _take_log(counter: Counter) -> List[Any]:
    log, counter.log = counter.log, []
    return log


def case_layout_and_names(lib: Any) -> Any:
    names = {}
    for module, wanted in (
        (
            "exceptions",
            [
                "BaseError",
                "ConnectionPoolClosedError",
                "ConnectionPoolIsFull",
                "ConnectionPoolNotFound",
            ],
        ),
        ("threading", ["BaseConnectionManager", "ConnectionPool"]),
        ("asyncio", ["BaseConnectionManager", "ConnectionPool"]),
        (
            "contrib.socket",
            [
                "SocketAlivenessCheckingMixin",
                "SslSocketAlivenessCheckingMixin",
                "SslSocketConnectionManager",
                "TcpSocketConnectionManager",
            ],
        ),
        (
            "contrib.socket_async",
            [
                "SocketAlivenessCheckingMixin",
                "StreamAlivenessCheckingMixin",
                "TcpSocketConnectionManager",
                "TcpStreamConnectionManager",
            ],
        ),
        ("contrib.unix", ["CheckSocketAlivenessMixin", "UnixSocketConnectionManager"]),
        (
            "contrib.unix_async",
            ["UnixSocketConnectionManager", "UnixSocketStreamConnectionManager"],
        ),
    ):
        mod = _mod(lib, module)
        names[module] = [hasattr(mod, name) for name in wanted]
    exceptions = _mod(lib, "exceptions")
    names["closed_error_bases"] = [
        issubclass(exceptions.ConnectionPoolClosedError, exceptions.BaseError),
        issubclass(exceptions.BaseError, Exception),
        lib.ConnectionPoolClosedError is exceptions.ConnectionPoolClosedError,
        issubclass(exceptions.ConnectionPoolIsFull, exceptions.BaseError),
        issubclass(exceptions.ConnectionPoolNotFound, exceptions.BaseError),
    ]
    names["base_pool"] = hasattr(lib, "BaseConnectionPool")
    return names


def case_signatures(lib: Any) -> Any:
    threaded = _mod(lib, "threading")
    aio = _mod(lib, "asyncio")
    out = {
        "base": signature(lib.BaseConnectionPool.__init__),
        "threading": signature(threaded.ConnectionPool.__init__),
        "asyncio": signature(aio.ConnectionPool.__init__),
    }
    for side, mod in (("threading", threaded), ("asyncio", aio)):
        manager = mod.BaseConnectionManager
        out[side + " manager"] = {
            name: signature(getattr(manager, name))
            for name in (
                "create",
                "dispose",
                "check_aliveness",
                "on_acquire",
                "on_release",
                "on_connection_dead",
            )
        }
        out[side + " abstract"] = sorted(getattr(manager, "__abstractmethods__", ()))
        out[side + " acquire"] = signature(mod.ConnectionPool.acquire)
        out[side + " release"] = signature(mod.ConnectionPool.release)
        out[side + " close"] = signature(mod.ConnectionPool.close)
    out["ssl manager"] = signature(_mod(lib, "contrib.socket").SslSocketConnectionManager.__init__)
    out["stream manager"] = signature(
        _mod(lib, "contrib.socket_async").TcpStreamConnectionManager.__init__
    )
    return out


def case_validation(lib: Any) -> Any:
    pool_class = _mod(lib, "threading").ConnectionPool
    counter = Counter()
    out = []
    for kwargs in (
        {"min_idle": 3, "max_size": 2},
        {"max_size": 200},
        {"max_size": 5, "total_max_size": 4},
        {"idle_timeout": 10, "max_lifetime": 5},
    ):
        try:
            pool_class(_manager(lib, counter), **kwargs).close()
            out.append("accepted")
        except AssertionError:  # the original asserts
            out.append("AssertionError")
    return out


def case_properties(lib: Any) -> Any:
    pool_class = _mod(lib, "threading").ConnectionPool
    pool = pool_class(
        _manager(lib, Counter()),
        idle_timeout=5.0,
        max_lifetime=50.0,
        min_idle=2,
        max_size=4,
        total_max_size=8,
    )
    out = [
        pool.idle_timeout,
        pool.max_lifetime,
        pool.min_idle,
        pool.max_size,
        pool.total_max_size,
        pool.is_full,
        pool.get_size(),
    ]
    pool.close()
    return out


def case_acquire_release_hooks(lib: Any) -> Any:
    counter = Counter()
    pool = _mod(lib, "threading").ConnectionPool(_manager(lib, counter), min_idle=1, max_size=2)
    trace: List[Any] = [[pool.get_size(), pool.get_endpoint_pool_size("a")]]
    conn = pool.acquire("a")
    trace.append(_take_log(counter))
    trace.append([pool.get_size(), pool.get_endpoint_pool_size("a", acquired=True)])
    pool.release(conn, "a")
    trace.append(_take_log(counter))
    trace.append([pool.get_endpoint_pool_size("a", acquired=False)])
    again = pool.acquire("a")
    trace.append([again is conn, _take_log(counter)])
    pool.release(again, "a")
    with pool.connection("a") as third:
        trace.append([third is conn, pool.get_endpoint_pool_size("a", acquired=True)])
    trace.append(_take_log(counter))
    pool.close()
    trace.append([_take_log(counter), pool.get_size()])
    return trace


def case_per_endpoint_cap_and_timeout(lib: Any) -> Any:
    counter = Counter()
    pool = _mod(lib, "threading").ConnectionPool(
        _manager(lib, counter), min_idle=1, max_size=2, acquire_timeout=0.2
    )
    a1, a2 = pool.acquire("a"), pool.acquire("a")
    started = time.monotonic()
    try:
        pool.acquire("a")
        error = None
    except BaseException as exc:
        error = type(exc).__name__
    took = time.monotonic() - started
    b = pool.acquire("b")  # another endpoint has its own cap
    short = time.monotonic()
    try:
        pool.acquire("a", timeout=0.05)
        short_error = None
    except TimeoutError:
        short_error = "TimeoutError"
    short_took = time.monotonic() - short
    out = [error, 0.15 <= took < 2, short_error, short_took < 1, pool.get_size()]
    for conn, endpoint in ((a1, "a"), (a2, "a"), (b, "b")):
        pool.release(conn, endpoint)
    pool.close()
    return out


def case_release_wakes_waiter(lib: Any) -> Any:
    counter = Counter()
    pool = _mod(lib, "threading").ConnectionPool(
        _manager(lib, counter), min_idle=1, max_size=1, acquire_timeout=5
    )
    held = pool.acquire("a")
    box: Dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.setdefault("got", pool.acquire("a")))
    thread.start()
    time.sleep(0.1)
    waiting = "got" not in box
    pool.release(held, "a")
    thread.join(5)
    out = [waiting, box.get("got") is held, counter.made]
    pool.release(box["got"], "a")
    pool.close()
    return out


def case_total_cap_drops_idle_of_other_endpoint(lib: Any) -> Any:
    counter = Counter()
    pool = _mod(lib, "threading").ConnectionPool(
        _manager(lib, counter), min_idle=1, max_size=2, total_max_size=3, acquire_timeout=0.2
    )
    a1, a2 = pool.acquire("a"), pool.acquire("a")
    b = pool.acquire("b")
    trace: List[Any] = [pool.get_size(), pool.is_full]
    try:
        pool.acquire("c", timeout=0.1)
    except TimeoutError:
        trace.append("full: TimeoutError")
    pool.release(a2, "a")
    _take_log(counter)
    c = pool.acquire("c")
    trace.append([entry[0] for entry in _take_log(counter)])
    trace.append(
        [pool.get_size(), pool.get_endpoint_pool_size("a"), pool.get_endpoint_pool_size("c")]
    )
    for conn, endpoint in ((a1, "a"), (b, "b"), (c, "c")):
        pool.release(conn, endpoint)
    pool.close()
    return trace


def case_dead_connection_replaced(lib: Any) -> Any:
    counter = Counter()
    alive = {"now": True}
    pool = _mod(lib, "threading").ConnectionPool(
        _manager(lib, counter, alive), min_idle=1, max_size=2
    )
    conn = pool.acquire("a")
    pool.release(conn, "a")
    _take_log(counter)
    alive["now"] = False  # the manager's on_connection_dead sets it back
    fresh = pool.acquire("a")
    trace = [fresh is conn, [entry[0] for entry in _take_log(counter)], pool.get_size()]
    pool.release(fresh, "a")
    pool.close()
    return trace


def case_on_acquire_error_gives_connection_back(lib: Any) -> Any:
    counter = Counter()
    manager = _manager(lib, counter)
    failing = {"now": True}
    plain_on_acquire = manager.on_acquire

    def on_acquire(endpoint: str, conn: Conn) -> None:
        if failing["now"]:
            raise ValueError("on_acquire refused")
        plain_on_acquire(endpoint, conn)

    manager.on_acquire = on_acquire
    pool = _mod(lib, "threading").ConnectionPool(manager, min_idle=1, max_size=1)
    try:
        pool.acquire("a")
    except ValueError:
        trace: List[Any] = ["raised"]
    trace.append(
        [
            pool.get_endpoint_pool_size("a", acquired=True),
            pool.get_endpoint_pool_size("a", acquired=False),
        ]
    )
    failing["now"] = False
    conn = pool.acquire("a")
    trace.append([conn.i, counter.made])
    pool.release(conn, "a")
    pool.close()
    return trace


def case_idle_extras_disposed_on_release(lib: Any) -> Any:
    counter = Counter()
    pool = _mod(lib, "threading").ConnectionPool(
        _manager(lib, counter), min_idle=1, max_size=3, idle_timeout=0.1, max_lifetime=60
    )
    conns = [pool.acquire("a") for _ in range(3)]
    for conn in conns:
        pool.release(conn, "a")
    _take_log(counter)
    time.sleep(0.25)
    conn = pool.acquire("a")
    pool.release(conn, "a")
    disposed = [entry for entry in _take_log(counter) if entry[0] == "dispose"]
    out = [len(disposed), pool.get_size(), pool.get_endpoint_pool_size("a")]
    pool.close()
    return out


def case_background_collector(lib: Any) -> Any:
    counter = Counter()
    pool = _mod(lib, "threading").ConnectionPool(
        _manager(lib, counter),
        background_collector=True,
        min_idle=0,
        max_size=2,
        idle_timeout=0.1,
        max_lifetime=60,
    )
    conn = pool.acquire("a")
    pool.release(conn, "a")
    _take_log(counter)
    deadline = time.monotonic() + 5
    while pool.get_size() and time.monotonic() < deadline:
        time.sleep(0.02)
    out = [pool.get_size(), [e[0] for e in _take_log(counter)]]
    pool.close()
    return out


def case_closed_pool(lib: Any) -> Any:
    counter = Counter()
    exceptions = _mod(lib, "exceptions")
    pool = _mod(lib, "threading").ConnectionPool(_manager(lib, counter), min_idle=1, max_size=2)
    a, b = pool.acquire("a"), pool.acquire("b")
    pool.release(a, "a")
    pool.release(b, "b")
    _take_log(counter)
    pool.close()
    trace: List[Any] = [sorted(entry[0] + entry[1] for entry in _take_log(counter))]
    try:
        pool.acquire("a")
    except exceptions.ConnectionPoolClosedError as error:
        trace.append([type(error).__name__, isinstance(error, exceptions.BaseError)])
    pool.close()  # idempotent
    trace.append(pool.get_size())
    return trace


def case_check_aliveness_gets_the_time_left(lib: Any) -> Any:
    # The original calls check_aliveness(endpoint, conn, timer.remains): positionally, the
    # time left to the acquire (None without a timeout), so a manager may require it.
    seen: List[Any] = []
    base = _mod(lib, "threading").BaseConnectionManager

    class Manager(base):  # type: ignore[misc, valid-type]
        def create(self, endpoint: str, timeout: Optional[float] = None) -> Conn:
            return Conn(Counter(), endpoint)

        def dispose(self, endpoint: str, conn: Conn, timeout: Optional[float] = None) -> None:
            pass

        def check_aliveness(self, *args: Any, **kwargs: Any) -> bool:
            # How it is called, and the timeout: None, or more than 0 and within the limit.
            timeout = args[2] if len(args) > 2 else "missing"
            within = timeout is None or (timeout != "missing" and 0 < timeout <= limit["now"])
            seen.append([len(args), sorted(kwargs), timeout is None, within])
            return True

    limit = {"now": 2.0}
    out = []
    for acquire_timeout, call_timeout in ((2.0, None), (2.0, 0.5), (None, None)):
        pool = _mod(lib, "threading").ConnectionPool(
            Manager(), min_idle=1, max_size=1, acquire_timeout=acquire_timeout
        )
        limit["now"] = call_timeout or acquire_timeout or 0.0
        for _ in range(2):  # the second acquire takes the idle connection: checked
            conn = pool.acquire("a", timeout=call_timeout)
            pool.release(conn, "a")
        pool.close()
        out.append(seen[:])
        seen.clear()
    return out


def case_release_an_equal_connection(lib: Any) -> Any:
    # The original books borrowed connections in a dict: an equal object (a pair rebuilt
    # after unpacking) is the connection it lent.
    counter = Counter()
    base = _mod(lib, "threading").BaseConnectionManager

    class PairManager(base):  # type: ignore[misc, valid-type]
        def create(self, endpoint: str, timeout: Optional[float] = None) -> Any:
            conn = (Conn(counter, endpoint), Conn(counter, endpoint))
            counter.log.append(["create", endpoint, conn[0].i])
            return conn

        def dispose(self, endpoint: str, conn: Any, timeout: Optional[float] = None) -> None:
            counter.log.append(["dispose", endpoint, conn[0].i])

        def on_release(self, endpoint: str, conn: Any) -> None:
            counter.log.append(["on_release", endpoint, conn[0].i])

    pool = _mod(lib, "threading").ConnectionPool(
        PairManager(), min_idle=2, max_size=2, acquire_timeout=0.2
    )
    first, second = pool.acquire("a"), pool.acquire("a")
    reader, writer = second
    pool.release((reader, writer), "a")  # a new tuple, equal to the one lent
    trace: List[Any] = [
        pool.get_endpoint_pool_size("a", acquired=True),
        pool.get_endpoint_pool_size("a", acquired=False),
    ]
    again = pool.acquire("a")
    trace.append([again is second, counter.made])
    pool.release(tuple(again), "a")
    pool.release(tuple(first), "a")
    trace.append(_take_log(counter))
    pool.close()
    trace.append(pool.get_size())
    return trace


def case_release_to_the_wrong_endpoint(lib: Any) -> Any:
    # The original refuses a connection the named endpoint did not lend, and changes
    # nothing: AssertionError "connection is not acquired" (its assert; RuntimeError
    # "connection not acquired" under -O and here), ConnectionPoolNotFound for an endpoint
    # that holds no connection. on_release has already run with the endpoint given.
    counter = Counter()
    exceptions = _mod(lib, "exceptions")
    pool = _mod(lib, "threading").ConnectionPool(_manager(lib, counter), min_idle=1, max_size=2)
    a, b = pool.acquire("a"), pool.acquire("b")
    _take_log(counter)

    def sizes() -> List[int]:
        return [pool.get_endpoint_pool_size(e, k) for e in "ab" for k in (True, False)]

    trace: List[Any] = []
    for endpoint in ("b", "nowhere"):
        try:
            pool.release(a, endpoint)
            trace.append("accepted")
        except (AssertionError, RuntimeError) as error:
            trace.append(["not acquired", "not acquired" in str(error)])
        except exceptions.ConnectionPoolNotFound as error:
            trace.append([type(error).__name__, isinstance(error, exceptions.BaseError)])
        trace.append([sizes(), _take_log(counter)])
    pool.release(a, "a")
    pool.release(b, "b")
    trace.append([sizes(), _take_log(counter)])
    pool.close()
    return trace


def case_settings_the_original_accepts(lib: Any) -> Any:
    # Accepted (as given by the properties): infinite or long expiry, an idle_timeout of 0,
    # a truthy non-bool background_collector, a negative acquire_timeout. Refused with an
    # AssertionError: max_size=0 (below the default min_idle).
    pool_class = _mod(lib, "threading").ConnectionPool
    counter = Counter()
    out: List[Any] = []
    for kwargs in (
        {"max_lifetime": float("inf")},
        {"idle_timeout": float("inf"), "max_lifetime": float("inf")},
        {"max_lifetime": 2 * 365 * 86400.0},
        {"idle_timeout": 0},
        {"background_collector": 1},
        {"acquire_timeout": -1},
        {"max_size": 0},
    ):
        try:
            pool = pool_class(_manager(lib, counter), **kwargs)
        except AssertionError:
            out.append([sorted(kwargs), "AssertionError"])
            continue
        out.append([sorted(kwargs), str(pool.idle_timeout), str(pool.max_lifetime)])
        pool.close()
    return out


def case_infinite_lifetime_and_zero_idle_timeout(lib: Any) -> Any:
    counter = Counter()
    pool_class = _mod(lib, "threading").ConnectionPool
    never = pool_class(
        _manager(lib, counter),
        min_idle=1,
        max_size=2,
        idle_timeout=float("inf"),
        max_lifetime=float("inf"),
    )
    extras = [never.acquire("a") for _ in range(2)]
    for conn in extras:
        never.release(conn, "a")
    reused = never.acquire("a")
    never.release(reused, "a")
    out: List[Any] = [[reused in extras, never.get_size(), counter.made]]
    never.close()
    _take_log(counter)
    # idle_timeout=0: idle connections beyond min_idle go at once (the original at the
    # release, the face at the next checkout: compared after it).
    eager = pool_class(_manager(lib, counter), min_idle=1, max_size=3, idle_timeout=0)
    conns = [eager.acquire("a") for _ in range(3)]
    for conn in conns:
        eager.release(conn, "a")
    conn = eager.acquire("a")
    eager.release(conn, "a")
    disposed = [entry for entry in _take_log(counter) if entry[0] == "dispose"]
    out.append([len(disposed), eager.get_size(), eager.get_endpoint_pool_size("a", False)])
    eager.close()
    return out


def case_negative_acquire_timeout_does_not_wait(lib: Any) -> Any:
    counter = Counter()
    pool = _mod(lib, "threading").ConnectionPool(
        _manager(lib, counter), min_idle=1, max_size=1, acquire_timeout=-1
    )
    held = pool.acquire("a")  # room: a connection is opened all the same
    started = time.monotonic()
    try:
        pool.acquire("a")
        error = None
    except TimeoutError:
        error = "TimeoutError"
    out = [error, time.monotonic() - started < 1]
    pool.release(held, "a")
    again = pool.acquire("a")  # an idle one is handed out
    out.append(again is held)
    pool.release(again, "a")
    pool.close()
    return out


def case_background_collector_checks_nothing(lib: Any) -> Any:
    # The original's collector only closes connections whose idle or lifetime event is
    # due: it never calls check_aliveness (a manager that queries in it, like the
    # original's own psycopg2 manager, would leave the connection in a transaction).
    counter = Counter()
    pool = _mod(lib, "threading").ConnectionPool(
        _manager(lib, counter), background_collector=True, min_idle=1, max_size=2
    )
    conn = pool.acquire("a")
    pool.release(conn, "a")
    time.sleep(1.5)  # past the face's keeper interval (1 s)
    out = [[entry[0] for entry in _take_log(counter)], pool.get_size()]
    pool.close()
    return out


# -- asyncio -------------------------------------------------------------------------------


def _async_manager(lib: Any, counter: Counter, alive: Dict[str, bool]) -> Any:
    base = _mod(lib, "asyncio").BaseConnectionManager

    class Manager(base):  # type: ignore[misc, valid-type]
        async def create(self, endpoint: str) -> Conn:
            conn = Conn(counter, endpoint)
            counter.log.append(["create", endpoint, conn.i])
            return conn

        async def dispose(self, endpoint: str, conn: Conn) -> None:
            counter.log.append(["dispose", endpoint, conn.i])

        async def check_aliveness(self, endpoint: str, conn: Conn) -> bool:
            counter.log.append(["check", endpoint, conn.i])
            return alive["now"]

        async def on_acquire(self, endpoint: str, conn: Conn) -> None:
            counter.log.append(["on_acquire", endpoint, conn.i])

        async def on_release(self, endpoint: str, conn: Conn) -> None:
            counter.log.append(["on_release", endpoint, conn.i])

        async def on_connection_dead(self, endpoint: str, conn: Conn) -> None:
            counter.log.append(["dead", endpoint, conn.i])
            alive["now"] = True

    return Manager()


def case_async_acquire_release_close(lib: Any) -> Any:
    async def main() -> Any:
        counter = Counter()
        alive = {"now": True}
        exceptions = _mod(lib, "exceptions")
        pool = _mod(lib, "asyncio").ConnectionPool(
            _async_manager(lib, counter, alive), min_idle=1, max_size=2, acquire_timeout=0.2
        )
        a = await pool.acquire("a")
        trace: List[Any] = [_take_log(counter)]
        await pool.release(a, "a")
        trace.append(_take_log(counter))
        async with pool.connection("a") as again:
            trace.append([again is a, await pool.get_endpoint_pool_size("a", acquired=True)])
        _take_log(counter)
        alive["now"] = False
        fresh = await pool.acquire("a")
        trace.append([fresh is a, [entry[0] for entry in _take_log(counter)]])
        await pool.release(fresh, "a")
        _take_log(counter)
        await pool.close()
        trace.append([entry[0] for entry in _take_log(counter)])
        try:
            await pool.acquire("a")
        except exceptions.ConnectionPoolClosedError:
            trace.append("closed")
        return trace

    return asyncio.run(main())


def case_async_cap_timeout(lib: Any) -> Any:
    async def main() -> Any:
        counter = Counter()
        pool = _mod(lib, "asyncio").ConnectionPool(
            _async_manager(lib, counter, {"now": True}), min_idle=1, max_size=1
        )
        held = await pool.acquire("a")
        started = time.monotonic()
        try:
            await pool.acquire("a", timeout=0.2)
            error = None
        except (asyncio.TimeoutError, TimeoutError):  # one class from 3.11 on
            error = "timed out"
        took = time.monotonic() - started
        other = await pool.acquire("b", timeout=0.2)
        await pool.release(held, "a")
        await pool.release(other, "b")
        await pool.close()
        return [error, 0.15 <= took < 2]

    return asyncio.run(main())


def case_async_release_an_equal_connection_or_wrong_endpoint(lib: Any) -> Any:
    async def main() -> Any:
        counter = Counter()
        exceptions = _mod(lib, "exceptions")
        base = _mod(lib, "asyncio").BaseConnectionManager

        class PairManager(base):  # type: ignore[misc, valid-type]
            async def create(self, endpoint: str) -> Any:
                return (Conn(counter, endpoint), Conn(counter, endpoint))

            async def dispose(self, endpoint: str, conn: Any) -> None:
                counter.log.append(["dispose", endpoint, conn[0].i])

        pool = _mod(lib, "asyncio").ConnectionPool(
            PairManager(), min_idle=1, max_size=1, acquire_timeout=0.2
        )
        reader, writer = await pool.acquire("a")
        other = await pool.acquire("b")
        trace: List[Any] = []
        for endpoint in ("b", "nowhere"):
            try:
                await pool.release((reader, writer), endpoint)
                trace.append("accepted")
            except (AssertionError, RuntimeError):
                trace.append("not acquired")
            except exceptions.ConnectionPoolNotFound:
                trace.append("ConnectionPoolNotFound")
        await pool.release((reader, writer), "a")  # a new tuple, equal to the one lent
        again = await pool.acquire("a")
        trace.append([again[0] is reader, counter.made])
        await pool.release(again, "a")
        await pool.release(other, "b")
        trace.append([await pool.get_endpoint_pool_size(e, True) for e in "ab"])
        await pool.close()
        return trace

    return asyncio.run(main())


# -- contrib managers ----------------------------------------------------------------------


class _EchoServer:
    """A local TCP or Unix stream server that echoes, with a way to cut every client."""

    def __init__(self, family: int, address: Any, tls: Optional[ssl.SSLContext] = None) -> None:
        self.tls = tls
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind(address)
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.clients: List[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        deadline = time.monotonic() + 60
        while not self._stop and time.monotonic() < deadline:
            try:
                client, _ = self.sock.accept()
            except OSError:
                continue
            if self.tls is not None:
                client.settimeout(5)
                try:
                    client = self.tls.wrap_socket(client, server_side=True)
                except OSError:
                    client.close()
                    continue
            self.clients.append(client)

    def cut_all(self, expected: int = 1) -> None:
        """Close every client accepted since the last cut, once at least ``expected`` are
        (bounded): a client still in the listen backlog would escape the cut."""
        deadline = time.monotonic() + 5
        while len(self.clients) < expected and time.monotonic() < deadline:
            time.sleep(0.01)
        cut, self.clients = self.clients, []
        for client in cut:
            client.close()
        time.sleep(0.05)

    def stop(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.cut_all(expected=0)
        self.sock.close()


def _socket_pool_roundtrip(pool: Any, endpoint: Any, server: _EchoServer) -> List[Any]:
    conn = pool.acquire(endpoint)
    kind = type(conn).__name__
    pool.release(conn, endpoint)
    again = pool.acquire(endpoint)
    reused = again is conn
    pool.release(again, endpoint)
    server.cut_all()  # the peer closes: the idle socket reads EOF and is replaced
    fresh = pool.acquire(endpoint)
    replaced = fresh is not conn
    pool.release(fresh, endpoint)
    pool.close()
    return [kind, reused, replaced]


def case_contrib_tcp_socket(lib: Any) -> Any:
    server = _EchoServer(socket.AF_INET, ("127.0.0.1", 0))
    try:
        port = server.sock.getsockname()[1]
        manager = _mod(lib, "contrib.socket").TcpSocketConnectionManager()
        pool = _mod(lib, "threading").ConnectionPool(manager, min_idle=1, max_size=2)
        return _socket_pool_roundtrip(pool, (IPv4Address("127.0.0.1"), port), server)
    finally:
        server.stop()


def case_contrib_unix_socket(lib: Any) -> Any:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "echo.sock"
        server = _EchoServer(socket.AF_UNIX, str(path))
        try:
            manager = _mod(lib, "contrib.unix").UnixSocketConnectionManager()
            pool = _mod(lib, "threading").ConnectionPool(manager, min_idle=1, max_size=2)
            return _socket_pool_roundtrip(pool, path, server)
        finally:
            server.stop()


async def _async_stream_roundtrip(pool: Any, endpoint: Any, server: _EchoServer) -> List[Any]:
    conn = await pool.acquire(endpoint)
    kinds = (
        [type(part).__name__ for part in conn] if isinstance(conn, tuple) else type(conn).__name__
    )
    await pool.release(conn, endpoint)
    again = await pool.acquire(endpoint)
    reused = again is conn
    await pool.release(again, endpoint)
    server.cut_all()
    await asyncio.sleep(0.2)  # the loop reads the end of file
    fresh = await pool.acquire(endpoint)
    replaced = fresh is not conn
    await pool.release(fresh, endpoint)
    await pool.close()
    return [kinds, reused, replaced]


def case_contrib_async_tcp_stream(lib: Any) -> Any:
    server = _EchoServer(socket.AF_INET, ("127.0.0.1", 0))
    try:
        port = server.sock.getsockname()[1]

        async def main() -> Any:
            manager = _mod(lib, "contrib.socket_async").TcpStreamConnectionManager()
            pool = _mod(lib, "asyncio").ConnectionPool(manager, min_idle=1, max_size=2)
            return await _async_stream_roundtrip(pool, ("127.0.0.1", port), server)

        return asyncio.run(main())
    finally:
        server.stop()


def case_contrib_async_tcp_socket(lib: Any) -> Any:
    server = _EchoServer(socket.AF_INET, ("127.0.0.1", 0))
    try:
        port = server.sock.getsockname()[1]

        async def main() -> Any:
            manager = _mod(lib, "contrib.socket_async").TcpSocketConnectionManager()
            pool = _mod(lib, "asyncio").ConnectionPool(manager, min_idle=1, max_size=2)
            return await _async_stream_roundtrip(pool, (IPv4Address("127.0.0.1"), port), server)

        return asyncio.run(main())
    finally:
        server.stop()


def case_contrib_async_unix(lib: Any) -> Any:
    async def roundtrip(manager: Any, path: Path) -> List[Any]:
        # One server per manager: with a shared one, the first pool's replacement connection
        # (accepted after the first cut) would satisfy the second cut's wait for a client, and
        # the second pool's connection, still in the listen backlog, would escape the cut.
        server = _EchoServer(socket.AF_UNIX, str(path))
        try:
            pool = _mod(lib, "asyncio").ConnectionPool(manager, min_idle=1, max_size=2)
            return await _async_stream_roundtrip(pool, path, server)
        finally:
            server.stop()

    async def main() -> List[Any]:
        unix_async = _mod(lib, "contrib.unix_async")
        with tempfile.TemporaryDirectory() as folder:
            return [
                await roundtrip(unix_async.UnixSocketConnectionManager(), Path(folder) / "a.sock"),
                await roundtrip(
                    unix_async.UnixSocketStreamConnectionManager(), Path(folder) / "b.sock"
                ),
            ]

    return asyncio.run(main())


def _self_signed(folder: str) -> Tuple[str, str]:
    """A throwaway certificate and key for ``localhost`` (openssl, bounded)."""
    cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            key,
            "-out",
            cert,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def case_contrib_ssl_socket(lib: Any) -> Any:
    with tempfile.TemporaryDirectory() as folder:
        cert, key = _self_signed(folder)
        server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_side.load_cert_chain(cert, key)
        server = _EchoServer(socket.AF_INET, ("127.0.0.1", 0), tls=server_side)
        try:
            port = server.sock.getsockname()[1]
            client_side = ssl.create_default_context(cafile=cert)
            manager = _mod(lib, "contrib.socket").SslSocketConnectionManager(client_side)
            pool = _mod(lib, "threading").ConnectionPool(manager, min_idle=1, max_size=2)
            return _socket_pool_roundtrip(pool, ("localhost", port), server)
        finally:
            server.stop()
