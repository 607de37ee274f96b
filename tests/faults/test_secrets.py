"""Secrets and isolation.

A password in the DSN (key=value, URI or keyword form) never appears in a ``repr``, an
exception, a warning, a log record or the stats, whatever the pool goes through: checkouts,
waits that time out, leaks, dead connections, failed connects, bad options, ``closeall``. The
test servers use trust authentication, so the password is accepted and ignored.

With ``pool_reset="discard"``, ``SET ROLE``, ``SET search_path``, temp tables, prepared
statements, advisory locks and changed session characteristics set by one borrower are gone
for the next one.
"""

from __future__ import annotations

import logging
import time
import traceback
import warnings
from typing import Any, Callable, Dict, Iterator, List

import psycopg2
import psycopg2.extensions
import psycopg2.pool
import pytest

from tests.helpers import terminate_backends

from .support import make_pool

pytestmark = pytest.mark.timeout(60)

PASSWORD = "pgpool-Secret-7f3a9"


def dsn_forms(pg_dsn: str) -> Dict[str, Any]:
    """The same server three ways, each carrying the password."""
    params = psycopg2.extensions.parse_dsn(pg_dsn)
    host, port = params.get("host", "127.0.0.1"), params.get("port", "5432")
    user, dbname = params.get("user", "postgres"), params.get("dbname", "postgres")
    return {
        "key=value": ((f"{pg_dsn} password={PASSWORD}",), {}),
        "uri": ((f"postgresql://{user}:{PASSWORD}@{host}:{port}/{dbname}",), {}),
        "keywords": ((), {**params, "password": PASSWORD}),
    }


def closed_port_dsn(pg_dsn: str) -> str:
    params = psycopg2.extensions.parse_dsn(pg_dsn)
    return f"host={params.get('host', '127.0.0.1')} port=1 user=postgres password={PASSWORD}"


def exception_text(exc: BaseException) -> str:
    """The exception as a user could ever see it: str, repr, args, the exceptions chained
    to it (even suppressed ones) and the whole traceback."""
    parts = [str(exc), repr(exc), repr(exc.args), repr(exc.__context__), repr(exc.__cause__)]
    parts += traceback.format_exception(type(exc), exc, exc.__traceback__)
    return "\n".join(parts)


class Seen:
    """Every string the pool showed the outside world during one scenario."""

    def __init__(self) -> None:
        self.texts: List[str] = []
        self.errors = 0

    def add(self, where: str, text: Any) -> None:
        self.texts.append(f"{where}: {text}")

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        self.add("exception", exception_text(exc))

    def leaks(self) -> List[str]:
        return [text for text in self.texts if PASSWORD in text]


def exercise(impl: str, args: Any, kwargs: Any, pg_dsn: str, seen: Seen, *, leak: bool) -> None:
    """Drive one pool through checkouts, a timed-out wait, a leak (if ``leak``: it costs a
    second), dead connections, a failed connect, bad options and closeall, keeping every
    string it shows."""
    options: Dict[str, Any] = {}
    if impl == "pgpool_compat":
        options = dict(
            pool_timeout=0.1,
            pool_leak_timeout=0.05,
            pool_reset="discard",
            pool_check="ping",
            pool_ping_after=0,
            pool_max_lifetime=60,
        )
    pool = (psycopg2.pool.ThreadedConnectionPool if impl == "stock" else _ours())(
        1, 2, *args, **kwargs, **options
    )
    seen.add("repr", repr(pool))
    seen.add("str", str(pool))
    first, second = pool.getconn(), pool.getconn()
    seen.add("conn repr", repr(first))
    try:
        pool.getconn()  # exhausted: stock at once, ours after pool_timeout
    except psycopg2.pool.PoolError as exc:
        seen.error(exc)
    if leak:
        time.sleep(1.1)  # longer than pool_leak_timeout and the housekeeping interval
    pool.putconn(second)  # housekeeping runs here: the leak report of `first`
    with first.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    first.rollback()
    pool.putconn(first)
    terminate_backends(pg_dsn, [pid])
    for conn in [pool.getconn(), pool.getconn()]:  # dead ones found and replaced
        pool.putconn(conn)
    for name in ("get_stats", "pop_stats"):
        if hasattr(pool, name):
            seen.add(name, getattr(pool, name)())
    seen.add("repr", repr(pool))
    pool.closeall()
    for call in (pool.getconn, pool.closeall):
        try:
            call()
        except psycopg2.pool.PoolError as exc:
            seen.error(exc)
    seen.add("repr after closeall", repr(pool))

    try:  # a connect that fails, with the password in the DSN
        make_pool(impl, 1, 2, closed_port_dsn(pg_dsn))
    except psycopg2.Error as exc:
        seen.error(exc)
    if impl == "pgpool_compat":
        for bad in ({"pool_timeout": -1}, {"pool_bogus": 1}):
            try:
                _ours()(1, 2, *args, **kwargs, **bad)
            except (TypeError, ValueError) as exc:
                seen.error(exc)


def _ours() -> Any:
    import pgpool_compat

    return pgpool_compat.ThreadedConnectionPool


@pytest.fixture
def everything_logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG, logger="pgpool_compat")
    yield caplog


def test_password_never_shown(
    impl: str, record: Any, pg_dsn: str, everything_logged: pytest.LogCaptureFixture
) -> None:
    seen = Seen()
    formatter = logging.Formatter("%(levelname)s %(name)s %(message)s")
    with warnings.catch_warnings(record=True) as caught_warnings:
        warnings.simplefilter("always")
        for number, (form, (args, kwargs)) in enumerate(dsn_forms(pg_dsn).items()):
            seen.add("form", form)
            # Stock reports no leaks; ours once (the report is a stack, not the DSN).
            leak = impl == "pgpool_compat" and number == 0
            exercise(impl, args, kwargs, pg_dsn, seen, leak=leak)
    for log_record in everything_logged.records:
        seen.add("log", formatter.format(log_record))  # message, exc_info and stack_info
    for warning in caught_warnings:
        seen.add("warning", f"{warning.category.__name__}: {warning.message}")
    leaks = seen.leaks()
    record(
        "secrets",
        "Password in the DSN (key=value, URI, keywords): reprs, exceptions, warnings, log "
        "records and stats searched",
        {
            "strings searched": len(seen.texts),
            "log records": len(everything_logged.records),
            "exceptions": seen.errors,
            "password found": len(leaks),
        },
    )
    assert not leaks, leaks[0][:500]
    if impl == "pgpool_compat":
        # The search is not vacuous: the leak warning (with its stack) was there to search.
        assert any("leak timeout" in r.getMessage() for r in everything_logged.records)
        assert seen.errors >= 3 * 6


def test_manager_never_shows_password(
    pg_dsn: str, everything_logged: pytest.LogCaptureFixture
) -> None:
    """The queries-style PoolManager, fed the same DSNs: its pool ids, report, reprs and
    errors (a full pool, a failed connect) never carry the password."""
    from pgpool_compat import PoolManager
    from pgpool_compat.dsn import pool_id

    seen = Seen()
    args_by_form = dsn_forms(pg_dsn)
    dsns = [args[0] for args, _ in args_by_form.values() if args] + [closed_port_dsn(pg_dsn)]
    try:
        for dsn in dsns[:-1]:
            seen.add("pool_id", pool_id(dsn))
            with PoolManager.connection(dsn, max_size=1) as conn:
                seen.add("handle repr", repr(conn))
                try:
                    with PoolManager.connection(dsn, max_size=1):
                        pass
                except Exception as exc:  # full pool
                    seen.error(exc)
        try:
            with PoolManager.connection(dsns[-1]):
                pass
        except Exception as exc:  # connect refused
            seen.error(exc)
        seen.add("report", PoolManager.report())
    finally:
        seen.add("shutdown", PoolManager.shutdown())
    for log_record in everything_logged.records:
        seen.add("log", logging.Formatter("%(message)s").format(log_record))
    assert seen.errors == len(dsns)
    leaks = seen.leaks()
    assert not leaks, leaks[0][:500]


# -- isolation -----------------------------------------------------------------------------

ROLE = "pgpool_tenant"

#: What a borrower leaves behind, and how the next borrower checks it is gone.
STATE_CHECKS = {
    "SET ROLE": "SELECT current_user <> session_user",
    "SET search_path": "SELECT current_setting('search_path') <> '\"$user\", public'",
    "temp table": "SELECT to_regclass('pg_temp.tenant_scratch') IS NOT NULL",
    "prepared statement": "SELECT count(*) > 0 FROM pg_prepared_statements",
    "advisory lock": "SELECT count(*) > 0 FROM pg_locks "
    "WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
}


@pytest.fixture
def tenant_role(admin_conn: Any) -> Iterator[str]:
    with admin_conn.cursor() as cur:
        cur.execute(f"DROP ROLE IF EXISTS {ROLE}; CREATE ROLE {ROLE} NOLOGIN")
    yield ROLE
    with admin_conn.cursor() as cur:
        cur.execute(f"DROP ROLE IF EXISTS {ROLE}")


def leave_state_behind(conn: Any) -> None:
    with conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE tenant_scratch (x int)")
        cur.execute("PREPARE tenant_query AS SELECT 1")
        cur.execute("SELECT pg_advisory_lock(4242)")
        cur.execute("SET search_path TO tenant_a")
        cur.execute(f"SET ROLE {ROLE}")
    conn.commit()
    conn.autocommit = True
    conn.readonly = True


def test_discard_isolates_borrowers(impl: str, record: Any, pg_dsn: str, tenant_role: str) -> None:
    reset = "discard" if impl == "pgpool_compat" else "rollback"
    pool = make_pool(impl, 1, 1, pg_dsn, pool_reset=reset)
    try:
        conn = pool.getconn()
        pid = conn.info.backend_pid
        initial = (conn.autocommit, conn.readonly)
        leave_state_behind(conn)
        pool.putconn(conn)

        nxt = pool.getconn()
        assert nxt.info.backend_pid == pid, "the next borrower must get the same session"
        survived = []
        if (nxt.autocommit, nxt.readonly) != initial:
            survived.append("autocommit/readonly")
            nxt.autocommit, nxt.readonly = initial
        for name, sql in STATE_CHECKS.items():
            with nxt.cursor() as cur:
                cur.execute(sql)
                if cur.fetchone()[0]:
                    survived.append(name)
        nxt.rollback()
        pool.putconn(nxt)
        total = len(STATE_CHECKS) + 1
        record(
            "isolation-discard",
            "Session state left by one borrower (SET ROLE, search_path, temp table, prepared "
            "statement, advisory lock, autocommit/readonly), seen by the next",
            {
                "pool_reset": reset,
                "state reaching the next borrower": f"{len(survived)} of {total}"
                + (f" ({', '.join(survived)})" if survived else ""),
            },
        )
        if impl == "stock":
            assert len(survived) == total
        else:
            assert survived == []
    finally:
        pool.closeall()


# -- issue 10 item 7: every face, fed DSNs that libpq cannot read or refuses ------------------

#: Part of every password below; it must appear nowhere the user can see.
MARK = "pgpoolSecretQ7"


def secret_dsns() -> Dict[str, str]:
    """Connection strings carrying MARK in their password, none of which can connect: libpq
    quotes the token it could not parse, or the value it refused."""
    return {
        "bad percent escape": f"postgresql://app:p%zz{MARK}@127.0.0.1:1/db",
        "unquoted space": f"host=127.0.0.1 port=1 password=my {MARK}",
        "bad port value": f"host=127.0.0.1 port=x{MARK} password={MARK}",
        "bad sslmode value": f"host=127.0.0.1 port=1 sslmode={MARK} password={MARK}",
        # Refused once connecting: libpq's message then starts with 'connection to server
        # at "127.0.0.1", port 1 failed: invalid integer value "..."'. A misplaced password
        # (no password= to recover it from), quoted, so the mask must find the whole value.
        "bad connect_timeout value": f'host=127.0.0.1 port=1 connect_timeout=x"{MARK}',
        "refused": f"host=127.0.0.1 port=1 user=postgres password={MARK}",
    }


#: The forms libpq cannot parse at all: ``pool_id`` fails on them too.
UNPARSABLE = ("bad percent escape", "unquoted space")


def _attempts(dsn: str, seen_reprs: List[str]) -> Dict[str, Callable[[], Any]]:
    """Every face's way of being handed ``dsn``, each expected to fail; the reprs of the
    pools built on the way go to ``seen_reprs``."""
    import asyncio
    import functools

    import pgpool_compat
    from pgpool_compat import AsyncConnectionPool, ConnectionPool, PoolManager
    from pgpool_compat.dsn import pool_id

    def lazy(cls: Any) -> Any:
        pool = cls(0, 2, dsn)
        seen_reprs.append(repr(pool))
        return pool.getconn()

    def factory_pool() -> Any:
        pool = ConnectionPool(functools.partial(psycopg2.connect, dsn), min_size=0, timeout=1)
        seen_reprs.append(repr(pool))
        return pool.acquire()

    async def async_pool() -> Any:
        async with AsyncConnectionPool(
            functools.partial(psycopg2.connect, dsn), min_size=0, timeout=1
        ) as pool:
            seen_reprs.append(repr(pool))
            return await pool.acquire()

    def manager() -> Any:
        with PoolManager.connection(dsn, timeout=1) as conn:
            return conn

    attempts: Dict[str, Callable[[], Any]] = {
        "ThreadedConnectionPool(1, 2, dsn)": lambda: pgpool_compat.ThreadedConnectionPool(
            1, 2, dsn
        ),
        "SimpleConnectionPool(1, 2, dsn)": lambda: pgpool_compat.SimpleConnectionPool(1, 2, dsn),
        "ThreadedConnectionPool(dsn, 1, 2) (swapped)": lambda: (
            pgpool_compat.ThreadedConnectionPool(dsn, 1, 2)
        ),
        "SimpleConnectionPool(1, dsn, 2) (swapped)": lambda: (
            pgpool_compat.SimpleConnectionPool(1, dsn, 2)
        ),
        "ThreadedConnectionPool(0, 2, dsn).getconn()": lambda: lazy(
            pgpool_compat.ThreadedConnectionPool
        ),
        "ConnectionPool(factory).acquire()": factory_pool,
        "ConnectionPool(factory, min_size=1)": lambda: ConnectionPool(
            functools.partial(psycopg2.connect, dsn), min_size=1
        ),
        "AsyncConnectionPool(factory).acquire()": lambda: asyncio.run(
            asyncio.wait_for(async_pool(), 10)
        ),
        "PoolManager.connection(dsn)": manager,
    }
    if any(secret_dsns()[form] == dsn for form in UNPARSABLE):
        attempts["pool_id(dsn)"] = lambda: pool_id(dsn)
    return attempts


def test_every_face_keeps_the_password_out_of_errors_reprs_and_logs(
    everything_logged: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 10 item 7: libpq's parse errors quote the token (``p%zz...``, an unquoted
    space), its setting checks quote the value, and swapped arguments used to print the DSN
    in ``minconn must be an integer, got '...'``. Every face (psycopg2 pools, factory pools
    sync and async, the manager, ``pool_id``, the bench's ``--dsn`` line) shows none of it."""
    from pgpool_compat import PoolManager
    from pgpool_compat.bench import cli

    seen = Seen()
    seen_reprs: List[str] = []
    try:
        for form, dsn in secret_dsns().items():
            for face, attempt in _attempts(dsn, seen_reprs).items():
                try:
                    attempt()
                except Exception as exc:
                    seen.error(exc)
                    seen.add("where", f"{form} / {face}: {type(exc).__name__}")
                else:
                    pytest.fail(f"{form} / {face}: connected to a port nothing listens on")
            assert cli.main(["--dsn", dsn, "--quick"]) == 1
            seen.add("bench", capsys.readouterr())
        seen.add("report", PoolManager.report())
    finally:
        seen.add("shutdown", PoolManager.shutdown())
    for text in seen_reprs:
        seen.add("repr", text)
    for log_record in everything_logged.records:
        seen.add("log", logging.Formatter("%(levelname)s %(message)s").format(log_record))
    assert seen.errors >= len(secret_dsns()) * 9  # the search is not vacuous
    leaks = [text for text in seen.texts if MARK in text]
    assert not leaks, leaks[0][:800]


@pytest.mark.parametrize(
    "message, shown",
    [
        (
            f'invalid integer value "x{MARK}" for connection option "port"\n',
            'invalid integer value "***" for connection option "port"\n',
        ),
        (
            'connection to server at "127.0.0.1", port 1 failed: invalid integer value '
            f'"x"{MARK}" for connection option "connect_timeout"\n'
            'connection to server at "::1", port 1 failed: invalid integer value '
            f'"x"{MARK}" for connection option "connect_timeout"\n',
            'connection to server at "127.0.0.1", port 1 failed: invalid integer value "***" '
            'for connection option "connect_timeout"\n'
            'connection to server at "::1", port 1 failed: invalid integer value "***" '
            'for connection option "connect_timeout"\n',
        ),
        (f'invalid sslmode value: "{MARK}"\n', 'invalid sslmode value: "***"\n'),
    ],
)
def test_a_refused_value_is_masked_wherever_libpq_quotes_it(message: str, shown: str) -> None:
    """Only a message starting with "invalid" was masked, and only up to the value's first
    quote; libpq prefixes the settings it checks while connecting with the server it tried.
    The option's name and the server stay: they say what to fix."""
    from pgpool_compat.dsn import without_secrets

    safe = without_secrets(psycopg2.OperationalError(message))
    assert safe is not None and type(safe) is psycopg2.OperationalError
    assert str(safe) == shown
