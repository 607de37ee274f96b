"""Run a PgBouncer in transaction pooling mode in front of a test server.

:class:`PgBouncer` starts ``pgbouncer`` in the foreground (as the OS user ``postgres`` when we
are root, like the test servers), listening on a free port of 127.0.0.1 only, with
``auth_type = trust`` and a generated ``userlist.txt``, and stops it again on :meth:`stop`,
leaving a ``with`` block, or interpreter exit.

Run any test command through PgBouncer (the drop-in and option suites, for instance)::

    .venv/bin/python -m tests.faults.pgbouncer -- .venv/bin/python -m pytest tests/test_dropin.py

starts a throwaway PostgreSQL (or uses ``PGPOOL_TEST_DSN`` as the upstream), puts PgBouncer in
front of it, and runs the command with ``PGPOOL_TEST_DSN`` pointing at PgBouncer.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import psycopg2
import psycopg2.extensions

__all__ = ["PGBOUNCER", "PgBouncer", "find_pgbouncer", "not_installed", "require_pgbouncer"]

#: Where Debian's ``pgbouncer`` package installs the binary.
PGBOUNCER = "/usr/sbin/pgbouncer"

#: Set to ``1`` to fail, rather than skip, when the binary is missing (CI sets it).
REQUIRE_ENV = "PGPOOL_REQUIRE_PGBOUNCER"

_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 5.0


def find_pgbouncer() -> Optional[str]:
    """The pgbouncer binary: Debian's path first, then ``PATH``; None when not installed."""
    if os.access(PGBOUNCER, os.X_OK):
        return PGBOUNCER
    return shutil.which("pgbouncer")


def not_installed() -> str:
    """One line: PgBouncer is missing, where we looked, how to install it."""
    return (
        f"pgbouncer is not installed (not at {PGBOUNCER} nor on PATH; "
        "Debian/Ubuntu: apt-get install pgbouncer)"
    )


def require_pgbouncer() -> None:
    """In a test: skip it when PgBouncer is missing, or fail it when ``REQUIRE_ENV=1`` (CI)."""
    if find_pgbouncer() is not None:
        return
    import pytest

    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{not_installed()}, and {REQUIRE_ENV}=1 requires it", pytrace=False)
    pytest.skip(f"{not_installed()}; set {REQUIRE_ENV}=1 to make this a failure")


def _die_with_parent() -> None:
    """In the child before exec: die when the test process dies, however it dies (a killed
    test run must not leave PgBouncer behind). Linux only; elsewhere a no-op."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


_PR_SET_PDEATHSIG = 1


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PgBouncer:
    """A PgBouncer in front of ``upstream_dsn`` (a loopback server), started on construction.

    :param pool_mode: ``transaction`` (the default: the mode that breaks session state),
        ``session`` or ``statement``.
    :param pool_size: server connections per database/user pair; 1 makes every client share
        one server connection, which shows session state crossing clients.
    """

    def __init__(
        self,
        upstream_dsn: str,
        *,
        pool_mode: str = "transaction",
        pool_size: int = 4,
        binary: Optional[str] = None,
    ) -> None:
        found = binary or find_pgbouncer()
        if found is None:
            raise FileNotFoundError(not_installed())
        self._binary = found
        params = psycopg2.extensions.parse_dsn(upstream_dsn)
        self.upstream_host = params.get("host", "127.0.0.1")
        self.upstream_port = int(params.get("port", 5432))
        self.user = params.get("user", "postgres")
        self.dbname = params.get("dbname", self.user)
        self.host = "127.0.0.1"
        self.port = _free_port()
        self.pool_mode = pool_mode
        self.pool_size = pool_size
        self._dir = Path(tempfile.mkdtemp(prefix="pgpool_compat-pgbouncer-"))
        self._process: Optional[subprocess.Popen[bytes]] = None
        atexit.register(self.stop)
        try:
            self._write_config()
            self.start()
        except BaseException:
            self.stop()
            raise

    @property
    def dsn(self) -> str:
        """Clients connect here; same user and database as the upstream."""
        return f"host={self.host} port={self.port} user={self.user} dbname={self.dbname}"

    @property
    def admin_dsn(self) -> str:
        """PgBouncer's admin console (``SHOW POOLS``, ``SHOW SERVERS``...)."""
        return f"host={self.host} port={self.port} user={self.user} dbname=pgbouncer"

    @property
    def log_path(self) -> Path:
        return self._dir / "pgbouncer.log"

    def start(self) -> None:
        """Start PgBouncer and wait (bounded) until it answers a query through to the server."""
        if self._process is not None and self._process.poll() is None:
            return
        extra: Dict[str, Any] = {}
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")  # pgbouncer, like postgres, is not run as root
            extra = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [self._binary, str(self._dir / "pgbouncer.ini")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                **extra,
            )
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited at start: {self._log_tail()}")
            try:
                psycopg2.connect(self.dsn, connect_timeout=2).close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"pgbouncer not ready in {_START_TIMEOUT}s: {self._log_tail()}"
                    ) from None
                time.sleep(0.05)

    def kill(self) -> None:
        """Kill the PgBouncer process (SIGKILL), keeping its configuration for :meth:`start`.

        PgBouncer keeps no state worth a clean exit, and its SIGTERM shutdown takes about two
        seconds, which every test using it would pay.
        """
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(_STOP_TIMEOUT)

    def restart(self) -> None:
        """Kill and start again on the same port: every client connection is cut."""
        self.kill()
        self.start()

    def stop(self) -> None:
        """Kill PgBouncer and remove its directory; idempotent."""
        self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)

    def show(self, what: str) -> List[Dict[str, Any]]:
        """Rows of an admin console ``SHOW <what>`` as dicts (``show("pools")``)."""
        conn = psycopg2.connect(self.admin_dsn, connect_timeout=2)
        try:
            conn.autocommit = True  # the console accepts no BEGIN
            with conn.cursor() as cur:
                cur.execute(f"SHOW {what}")
                names = [column.name for column in cur.description]
                return [dict(zip(names, row)) for row in cur.fetchall()]
        finally:
            conn.close()

    def __enter__(self) -> PgBouncer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _write_config(self) -> None:
        ini = f"""\
[databases]
* = host={self.upstream_host} port={self.upstream_port}

[pgbouncer]
listen_addr = {self.host}
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self._dir / "userlist.txt"}
admin_users = {self.user}
pool_mode = {self.pool_mode}
default_pool_size = {self.pool_size}
max_client_conn = 200
; the pool under test, not PgBouncer, is what the tests observe
server_check_delay = 0
"""
        (self._dir / "pgbouncer.ini").write_text(ini)
        # trust still requires the user to be listed in the auth file.
        (self._dir / "userlist.txt").write_text(f'"{self.user}" ""\n')
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            for path in (self._dir, *self._dir.iterdir()):
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def _log_tail(self, size: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:].strip()
        except OSError:
            return "(no pgbouncer log)"


def main(argv: Optional[List[str]] = None) -> int:
    """Run a command with ``PGPOOL_TEST_DSN`` pointing at a PgBouncer; see the module doc."""
    parser = argparse.ArgumentParser(
        prog=".venv/bin/python -m tests.faults.pgbouncer",
        description="Run a command with PGPOOL_TEST_DSN pointing at PgBouncer "
        "(transaction mode) in front of a throwaway PostgreSQL.",
    )
    parser.add_argument("--pool-mode", default="transaction")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if find_pgbouncer() is None:  # before starting a server it would not use
        print(f"{parser.prog}: {not_installed()}", file=sys.stderr)
        return 1
    command = [part for part in args.command if part != "--"] or [
        sys.executable,
        "-m",
        "pytest",
        "tests",
    ]
    from pgpool_compat.testing import PostgresServer, external_dsn

    upstream = external_dsn()
    server = None if upstream else PostgresServer(name="pgpool_compat-pgbouncer-upstream")
    try:
        with PgBouncer(upstream or server.dsn, pool_mode=args.pool_mode) as bouncer:  # type: ignore[union-attr]
            env = dict(os.environ, PGPOOL_TEST_DSN=bouncer.dsn)
            return subprocess.call(command, env=env)
    finally:
        if server is not None:
            server.cleanup()


if __name__ == "__main__":
    sys.exit(main())
