"""Threads hammering one ThreadedConnectionPool.

Invariants checked while 16 threads borrow, use, dirty and return connections:
- never more than ``maxconn`` connections open at once (counted by the connections themselves,
  through ``connection_factory``, and on the server once the run is over);
- never one connection in two threads at once (a registry of owners, and a session variable
  on the server that another thread's use would overwrite);
- the books are consistent at the end: nothing borrowed, nothing idle twice, idle ones alive.
The stock pool runs the same hammer (no waiting there) to show the checks themselves are sound.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from typing import Any, Dict, List, Optional

import psycopg2
import psycopg2.extensions
import psycopg2.pool
import pytest

import pgpool_compat
from tests.helpers import sessions_named

pytestmark = pytest.mark.timeout(60)

THREADS = 16
OPS_PER_THREAD = 200
MAXCONN = 4
MINCONN = 2


class Census:
    """Counts the live connections of one run; each one reports its own birth and close."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.live = 0
        self.peak = 0
        self.opened = 0

    def born(self) -> None:
        with self._lock:
            self.live += 1
            self.opened += 1
            self.peak = max(self.peak, self.live)

    def closed(self) -> None:
        with self._lock:
            self.live -= 1


def counted_connection(census: Census) -> type:
    """A connection class that tells the census when it opens and closes."""

    class CountedConnection(psycopg2.extensions.connection):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            census.born()  # before connecting: a connection counts from its first packet
            self._counted = True
            try:
                super().__init__(*args, **kwargs)
            except BaseException:
                census.closed()
                raise

        def close(self) -> None:
            if self._counted:
                self._counted = False
                census.closed()
            super().close()

    return CountedConnection


class Owners:
    """Which thread holds which connection; a second holder is a violation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: Dict[int, int] = {}
        self.violations: List[str] = []

    def take(self, conn: Any, me: int) -> None:
        with self._lock:
            other = self._owner.setdefault(id(conn), me)
            if other != me:
                self.violations.append(f"connection {id(conn):x} held by {other} and {me}")

    def give_back(self, conn: Any, me: int) -> None:
        with self._lock:
            if self._owner.get(id(conn)) == me:
                del self._owner[id(conn)]


def _use(conn: Any, me: int, rng: random.Random) -> None:
    """A short unit of work that would notice another thread using the same session."""
    token = f"{me}-{rng.random()}"
    with conn.cursor() as cursor:
        cursor.execute("SELECT set_config('pgpool_compat.owner', %s, false)", (token,))
        cursor.execute("SELECT current_setting('pgpool_compat.owner')")
        seen = cursor.fetchone()[0]
    if seen != token:
        raise AssertionError(f"thread {me}: session variable {seen!r}, expected {token!r}")


def _dirty(conn: Any, rng: random.Random) -> None:
    """Leave the connection the way careless callers do: committed, open, failed, autocommit."""
    roll = rng.random()
    if roll < 0.5:
        conn.commit()
    elif roll < 0.75:
        pass  # transaction left open: putconn must roll it back
    elif roll < 0.95:
        # Left in error: putconn must roll it back.
        with conn.cursor() as cursor, contextlib.suppress(psycopg2.errors.DivisionByZero):
            cursor.execute("SELECT 1/0")
    else:
        conn.rollback()
        conn.autocommit = not conn.autocommit


def _hammer(pool: Any, me: int, owners: Owners, errors: List[str], tally: Dict[str, int]) -> None:
    """One thread's share: ``tally`` is this thread's own, so it needs no lock."""
    rng = random.Random(me)
    key: Optional[str] = f"thread-{me}"
    for _ in range(OPS_PER_THREAD):
        use_key = rng.random() < 0.3
        try:
            conn = pool.getconn(key if use_key else None)
        except pgpool_compat.PoolError as error:
            if "exhausted" not in str(error):
                errors.append(f"thread {me}: {error!r}")
                return
            tally["exhausted"] += 1
            time.sleep(0.001)
            continue
        owners.take(conn, me)
        try:
            if use_key and pool.getconn(key) is not conn:
                errors.append(f"thread {me}: key {key!r} gave two connections")
            _use(conn, me, rng)
            _dirty(conn, rng)
        except Exception as error:
            errors.append(f"thread {me}: {error!r}")
        finally:
            owners.give_back(conn, me)
            close = rng.random() < 0.05
            pool.putconn(conn, key if use_key and rng.random() < 0.5 else None, close=close)
        tally["served"] += 1


def _settled_sessions(admin_conn: Any, application_name: str, expected: int) -> int:
    """Server sessions once closed backends have had up to 5 s to exit (they exit async)."""
    deadline = time.monotonic() + 5
    while True:
        count = sessions_named(admin_conn, application_name)
        if count == expected or time.monotonic() > deadline:
            return count
        time.sleep(0.02)


@pytest.fixture
def census() -> Census:
    return Census()


@pytest.fixture
def app_name() -> str:
    return f"pgpool-threads-{uuid.uuid4().hex[:12]}"


@pytest.mark.own_session
@pytest.mark.parametrize(
    ("module", "options"),
    [
        (pgpool_compat, {}),
        (pgpool_compat, {"pool_timeout": 20}),
        (psycopg2.pool, {}),
    ],
    ids=["ours", "ours-waiting", "stock"],
)
def test_threads_hammer_one_pool(
    module: Any,
    options: Dict[str, Any],
    pg_dsn: str,
    census: Census,
    admin_conn: Any,
    app_name: str,
) -> None:
    pool = module.ThreadedConnectionPool(
        MINCONN,
        MAXCONN,
        pg_dsn,
        application_name=app_name,
        connection_factory=counted_connection(census),
        **options,
    )
    try:
        _hammer_and_check(pool, "pool_timeout" in options, census, admin_conn, app_name)
    finally:
        if not pool.closed:
            pool.closeall()


def _hammer_and_check(
    pool: Any, waits: bool, census: Census, admin_conn: Any, app_name: str
) -> None:
    owners = Owners()
    errors: List[str] = []
    tallies = [{"served": 0, "exhausted": 0} for _ in range(THREADS)]
    threads = [
        threading.Thread(target=_hammer, args=(pool, n, owners, errors, tallies[n]), daemon=True)
        for n in range(THREADS)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.1, started + 40 - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "a thread hung (deadlock?)"

    assert errors == []
    assert owners.violations == []
    assert census.peak <= MAXCONN, f"{census.peak} connections open at once, maxconn {MAXCONN}"
    served = sum(tally["served"] for tally in tallies)
    exhausted = sum(tally["exhausted"] for tally in tallies)
    assert served + exhausted == THREADS * OPS_PER_THREAD
    if waits:
        assert exhausted == 0  # with pool_timeout, callers wait their turn instead
    else:
        assert served >= THREADS * OPS_PER_THREAD // 10  # the hammer really ran

    # Books at rest: nothing borrowed, each idle connection once, alive, within the idle cap.
    assert pool._used == {} and pool._rused == {}
    assert len(pool._pool) == len({id(conn) for conn in pool._pool}) <= MINCONN
    assert all(not conn.closed for conn in pool._pool)
    assert census.live == len(pool._pool)
    assert _settled_sessions(admin_conn, app_name, len(pool._pool)) == len(pool._pool)
    for conn in pool._pool:
        assert conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE

    pool.closeall()
    assert census.live == 0
    assert _settled_sessions(admin_conn, app_name, 0) == 0


@pytest.mark.parametrize("module", [pgpool_compat, psycopg2.pool], ids=["ours", "stock"])
def test_threads_asking_for_one_key_share_one_new_connection(
    module: Any, pg_dsn: str, census: Census, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one thread connects for a key, others asking for that key get the same one."""
    pool = module.ThreadedConnectionPool(
        0, 4, pg_dsn, connection_factory=counted_connection(census)
    )
    real_connect = psycopg2.connect

    def slow_connect(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.3)  # long enough for every thread to ask while the first connects
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(psycopg2, "connect", slow_connect)
    got: List[Any] = []
    errors: List[BaseException] = []

    def ask() -> None:
        try:
            got.append(pool.getconn("shared"))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=ask, daemon=True) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=20)
        assert not any(thread.is_alive() for thread in threads)
        assert errors == []
        assert len(got) == 4 and all(conn is got[0] for conn in got)
        assert census.opened == 1 and census.peak == 1
        assert pool._used == {"shared": got[0]}
    finally:
        pool.closeall()
