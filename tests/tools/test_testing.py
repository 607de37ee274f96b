"""The test harness itself, on real servers: pgpool_compat.testing and tests/helpers.py."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Optional

import psycopg2
import pytest
from helpers import (
    backend_count,
    backend_pids,
    popen_interruptible,
    terminate_backends,
    wait_backend_count,
)

from pgpool_compat import testing as harness
from pgpool_compat._commands import shown_python
from pgpool_compat.testing import PostgresNotFound, PostgresServer, external_dsn

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parents[2]


def query(dsn: str, sql: str) -> object:
    """Run one statement on a new connection and return the first column of the first row."""
    conn = psycopg2.connect(dsn, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()[0]
    finally:
        conn.close()


def refuses(dsn: str) -> bool:
    """True when nothing accepts connections at ``dsn``."""
    try:
        psycopg2.connect(dsn, connect_timeout=2).close()
    except psycopg2.OperationalError:
        return True
    return False


def test_start_query_and_settings(own_server: PostgresServer) -> None:
    dsn = own_server.dsn
    assert dsn == f"host=127.0.0.1 port={own_server.port} user=postgres dbname=postgres"
    assert own_server.is_running
    assert query(dsn, "SELECT 1") == 1
    assert query(dsn, "SHOW listen_addresses") == "127.0.0.1"
    assert query(dsn, "SHOW max_connections") == "200"
    assert query(dsn, "SHOW fsync") == "off"
    assert str(query(dsn, "SHOW server_version")).split()[0] == own_server.server_version
    assert own_server.server_version[0].isdigit()
    # The unix socket lives in the data directory, not in a shared system directory.
    assert (own_server.data_dir / f".s.PGSQL.{own_server.port}").exists()


def test_server_never_runs_as_root(own_server: PostgresServer) -> None:
    expected = pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else os.geteuid()
    assert own_server.pid is not None
    status = Path(f"/proc/{own_server.pid}/status").read_text()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert {int(uid) for uid in uids} == {expected}


def test_settings_override() -> None:
    with PostgresServer(settings={"max_connections": "37"}) as server:
        assert query(server.dsn, "SHOW max_connections") == "37"


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_restart_keeps_port_and_works(own_server: PostgresServer, mode: str) -> None:
    port, pid = own_server.port, own_server.pid
    old = psycopg2.connect(own_server.dsn)
    started = time.monotonic()
    own_server.restart(mode)
    assert time.monotonic() - started < 10
    assert own_server.port == port
    assert own_server.pid not in (None, pid)
    assert query(own_server.dsn, "SELECT 2") == 2
    # Connections from before the restart are dead: the restart was real.
    with pytest.raises(psycopg2.OperationalError), old.cursor() as cur:
        cur.execute("SELECT 1")
    old.close()


def test_stop_makes_connects_fail_and_start_brings_it_back(own_server: PostgresServer) -> None:
    port = own_server.port
    own_server.stop()
    assert not own_server.is_running
    assert own_server.pid is None
    assert refuses(own_server.dsn)
    own_server.stop()  # stopping a stopped server is a no-op
    own_server.start()
    assert own_server.port == port
    assert query(own_server.dsn, "SELECT 3") == 3


def test_stop_rejects_unknown_mode(own_server: PostgresServer) -> None:
    with pytest.raises(ValueError, match="stop mode"):
        own_server.stop("sideways")
    assert own_server.is_running


def test_cleanup_removes_data_dir_and_is_idempotent() -> None:
    server = PostgresServer()
    data_dir, dsn = server.data_dir, server.dsn
    assert data_dir.is_dir()
    server.cleanup()
    assert not data_dir.exists()
    assert not data_dir.parent.exists()
    assert refuses(dsn)
    server.cleanup()
    with pytest.raises(RuntimeError, match="after cleanup"):
        server.start()


def test_context_manager_cleans_up() -> None:
    with PostgresServer() as server:
        data_dir, dsn = server.data_dir, server.dsn
        assert query(dsn, "SELECT 4") == 4
    assert not data_dir.exists()
    assert refuses(dsn)


def test_fixed_port_is_used_and_kept() -> None:
    port = harness._free_port()
    with PostgresServer(port=port) as server:
        assert server.port == port
        server.restart()
        assert server.port == port
        assert query(server.dsn, "SELECT 5") == 5


def occupy_port() -> socket.socket:
    """A listening loopback socket, so nothing else can bind its port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_first_start_moves_off_a_port_taken_meanwhile(monkeypatch: pytest.MonkeyPatch) -> None:
    with occupy_port() as taken:
        port = taken.getsockname()[1]
        picks = iter([port])
        real = harness._free_port
        monkeypatch.setattr(harness, "_free_port", lambda: next(picks, None) or real())
        with PostgresServer() as server:
            assert server.port != port
            assert query(server.dsn, "SELECT 8") == 8


def test_taken_fixed_port_fails_clearly_and_leaves_nothing() -> None:
    with occupy_port() as taken:
        name = f"pgpool_compat-taken-{os.getpid()}"  # unique even with concurrent test runs
        with pytest.raises(
            RuntimeError, match=r"(?s)failed to start on port \d+: .*could not bind"
        ):
            PostgresServer(port=taken.getsockname()[1], name=name)
        assert list(Path(tempfile.gettempdir()).glob(f"{name}-*")) == []


def test_restart_never_moves_the_port(own_server: PostgresServer) -> None:
    """A squatter on the port makes start() fail rather than move; once it is gone the
    server comes back on the same port.

    A client still connected across the stop leaves the server's end of its connection in
    FIN-WAIT-2, then TIME-WAIT (the server closed first), as after many a real test:
    binding the port then needs SO_REUSEADDR, which PostgreSQL uses too (issue 10 item 12).
    """
    port = own_server.port
    client = psycopg2.connect(own_server.dsn)
    try:
        own_server.stop()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            with pytest.raises(RuntimeError, match="could not bind"):
                own_server.start()
    finally:
        client.close()
    own_server.start()
    assert own_server.port == port
    assert query(own_server.dsn, "SELECT 9") == 9


def test_start_after_postmaster_killed(own_server: PostgresServer) -> None:
    port = own_server.port
    busy = [psycopg2.connect(own_server.dsn) for _ in range(3)]
    own_server.stop("kill")
    assert not own_server.is_running
    own_server.start()  # waits until the orphaned backends have let go of shared memory
    assert own_server.port == port
    assert query(own_server.dsn, "SELECT 10") == 10
    with pytest.raises(psycopg2.OperationalError), busy[0].cursor() as cur:
        cur.execute("SELECT 1")
    for conn in busy:
        conn.close()


def test_two_servers_at_once_are_independent(own_server: PostgresServer) -> None:
    with PostgresServer() as other:
        assert other.port != own_server.port
        assert other.data_dir != own_server.data_dir
        conn = psycopg2.connect(own_server.dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE only_here (x int)")
        conn.close()
        assert query(own_server.dsn, "SELECT to_regclass('only_here') IS NOT NULL") is True
        assert query(other.dsn, "SELECT to_regclass('only_here') IS NOT NULL") is False
        other.stop("immediate")
        assert query(own_server.dsn, "SELECT 6") == 6


def test_external_dsn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGPOOL_TEST_DSN", raising=False)
    assert external_dsn() is None
    monkeypatch.setenv("PGPOOL_TEST_DSN", "  ")
    assert external_dsn() is None
    monkeypatch.setenv("PGPOOL_TEST_DSN", "host=127.0.0.1 port=5432 dbname=postgres")
    assert external_dsn() == "host=127.0.0.1 port=5432 dbname=postgres"


def test_missing_binaries_give_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import testing.postgresql as testing_postgresql

    def not_found(name: str, subdirs: list[str]) -> str:
        raise RuntimeError(f"command not found: {name}")

    monkeypatch.setattr(harness.shutil, "which", lambda name: None)
    monkeypatch.setattr(testing_postgresql, "find_program", not_found)
    monkeypatch.setitem(sys.modules, "pgserver", None)  # hides an installed pgserver
    with pytest.raises(PostgresNotFound) as info:
        PostgresServer()
    message = str(info.value)
    assert "\n" not in message
    assert "apt-get install postgresql" in message
    # Into this very interpreter's environment: a bare `pip` may be another one's.
    assert f"{shown_python()} -m pip install pgserver" in message
    assert "PGPOOL_TEST_DSN" in message


def _fake_bin_dir(directory: Path) -> Path:
    for name in ("postgres", "initdb"):
        (directory / name).write_text("#!/bin/sh\necho 'postgres (PostgreSQL) 99.9'\n")
        (directory / name).chmod(0o755)
    return directory


def _needs_embedded() -> Path:
    """The pgserver wheel's binaries (the bench extra installs them where a wheel exists)."""
    bundled = harness._embedded_bin_dir()
    if bundled is None:
        pytest.skip("no pgserver wheel installed (none is published for this platform)")
    return bundled


def test_local_binaries_are_preferred_to_the_embedded_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _needs_embedded()  # both are there: the choice is real
    local = _fake_bin_dir(tmp_path)
    monkeypatch.setenv("PATH", str(local))
    found = harness.find_server_binaries()
    assert found == harness.ServerBinaries(local, embedded=False)
    assert found.origin == "local binaries"


def test_embedded_server_when_there_are_no_local_binaries(monkeypatch: pytest.MonkeyPatch) -> None:
    bundled = _needs_embedded()
    monkeypatch.setattr(harness, "_local_bin_dir", lambda: None)
    with PostgresServer(name="pgpool_compat-embedded") as server:
        assert server.binaries == harness.ServerBinaries(bundled, embedded=True)
        assert server.binaries.origin.startswith("embedded (pgserver wheel ")
        assert "from embedded (pgserver wheel" in server.description
        assert str(query(server.dsn, "SHOW server_version")).split()[0] == server.server_version
        status = Path(f"/proc/{server.pid}/status").read_text()
        uid = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1]
        assert int(uid) != 0


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the server to another user")
def test_root_runs_a_copy_of_binaries_its_stand_in_cannot_reach(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A virtualenv under /root: the server's OS user cannot even enter the directory."""
    bundled = _needs_embedded()
    site = tmp_path / "locked" / "site-packages"
    site.mkdir(parents=True)
    (tmp_path / "locked").chmod(0o700)
    for part in (bundled.parent.relative_to(bundled.parents[2]), Path("pgserver.libs")):
        shutil.copytree(bundled.parents[2] / part, site / part, symlinks=True)
    unreachable = harness.ServerBinaries(site / "pgserver" / "pginstall" / "bin", embedded=True)
    monkeypatch.setattr(harness, "find_server_binaries", lambda: unreachable)
    with PostgresServer(name="pgpool_compat-locked") as server:
        assert query(server.dsn, "SELECT 1") == 1
        assert "pgpool_compat-pginstall-" in server.description  # the copy runs
        assert server.binaries == unreachable


def test_shared_fixtures(pg_server: Any, pg_dsn: str, admin_conn: Any) -> None:
    assert pg_server.dsn == pg_dsn
    assert pg_server.server_version in pg_server.description
    assert query(pg_dsn, "SELECT 7") == 7
    assert admin_conn.autocommit
    with admin_conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        assert cur.fetchone()[0] in backend_pids(pg_dsn)


def test_backend_helpers(own_server: PostgresServer) -> None:
    # A private server: nobody else's connections come and go while we count.
    pg_dsn = own_server.dsn
    # Back-to-back counts never see the previous helper call's still-exiting backend.
    assert [backend_count(pg_dsn) for _ in range(20)] == [0] * 20
    before = 0
    conns = [psycopg2.connect(pg_dsn) for _ in range(3)]
    try:
        pids = [conn.get_backend_pid() for conn in conns]
        assert backend_count(pg_dsn) == before + 3
        assert set(pids) <= set(backend_pids(pg_dsn))
        assert terminate_backends(pg_dsn, pids[:2]) == 2
        assert not set(pids[:2]) & set(backend_pids(pg_dsn))
        assert backend_count(pg_dsn) == before + 1  # terminate_backends waited for them
        with pytest.raises(psycopg2.OperationalError), conns[0].cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        for conn in conns:
            conn.close()
    assert wait_backend_count(pg_dsn, before) == before


# -- cleanup when the owning process ends ------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import os, sys, time
    from pgpool_compat.testing import PostgresServer
    server = PostgresServer()
    print(server.data_dir, server.dsn, sep="|", flush=True)
    how = sys.argv[1]
    if how == "fork":
        child = os.fork()
        if child == 0:
            sys.exit(0)  # runs atexit in the child: must leave the parent's server alone
        os.waitpid(child, 0)
        import psycopg2
        psycopg2.connect(server.dsn).close()
        print("parent server alive", flush=True)
    elif how == "wait":
        time.sleep(60)
    else:  # "exit": once told, fall off the end without cleanup(); atexit must do it
        sys.stdin.readline()
    """
)


def child_env(tmpdir: Optional[Path]) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return env


def run_child(how: str, tmpdir: Optional[Path] = None) -> tuple[subprocess.Popen[str], Path, str]:
    env = child_env(tmpdir)
    process = popen_interruptible(
        [sys.executable, "-c", CHILD, how],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    data_dir, dsn = process.stdout.readline().strip().split("|")
    assert query(dsn, "SELECT 1") == 1
    return process, Path(data_dir), dsn


# SIGINT: Ctrl-C; SIGHUP: the terminal (or the SSH session) was closed.
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_owner_killed_cleans_up(signum: int, private_tmp: Path) -> None:
    process, data_dir, dsn = run_child("wait", private_tmp)
    try:
        process.send_signal(signum)
        # Python dies of the signal either way (KeyboardInterrupt re-raises SIGINT at exit).
        assert process.wait(30) == -signum
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    assert not data_dir.exists()
    assert refuses(dsn)
    assert list(private_tmp.iterdir()) == []  # the initdb template went too


THREAD_FIRST = textwrap.dedent(
    """
    import json, threading, time
    from pgpool_compat.testing import PostgresServer
    made = []
    thread = threading.Thread(target=lambda: made.append(PostgresServer(name="in-a-thread")))
    thread.start()
    thread.join()
    made.append(PostgresServer(name="in-main"))
    print(json.dumps([[str(server.data_dir), server.dsn] for server in made]), flush=True)
    time.sleep(60)
    """
)


def test_a_first_server_made_in_a_thread_does_not_cost_the_signal_clean_up(
    private_tmp: Path,
) -> None:
    """Only the main thread can install signal handlers: the first server of the main
    thread does, even when one made in another thread came first (which used to mark the
    hooks as installed, so SIGTERM left both servers running)."""
    process = popen_interruptible(
        [sys.executable, "-c", THREAD_FIRST],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(private_tmp),
    )
    try:
        assert process.stdout is not None
        servers = json.loads(process.stdout.readline())
        assert len(servers) == 2 and all(query(dsn, "SELECT 1") == 1 for _, dsn in servers)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == -signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    for data_dir, dsn in servers:
        assert not Path(data_dir).exists()
        assert refuses(dsn)


@pytest.fixture
def sigint_raises() -> Any:
    """Python's own Ctrl-C handler (KeyboardInterrupt), whatever the test run's."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_ctrl_c_during_clean_up_waits_until_it_is_done(sigint_raises: None) -> None:
    done = []
    with pytest.raises(KeyboardInterrupt), harness._sigint_held(deliver=True):
        signal.raise_signal(signal.SIGINT)  # the handler runs at once: it holds it back
        done.append("cleaned")
    assert done == ["cleaned"]
    with harness._sigint_held(deliver=False):  # the process is ending: it is dropped
        signal.raise_signal(signal.SIGINT)
        done.append("at exit")
    assert done == ["cleaned", "at exit"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _fake_binaries(directory: Path, initdb: str) -> Path:
    """Stand-in server binaries the server's OS user can run: ``postgres --version`` works,
    ``initdb`` runs the shell script ``initdb``."""
    directory.mkdir(mode=0o755)
    (directory / "postgres").write_text("#!/bin/sh\necho 'postgres (PostgreSQL) 99.9'\n")
    (directory / "initdb").write_text(f"#!/bin/sh\n{initdb}\n")
    for name in ("postgres", "initdb"):
        (directory / name).chmod(0o755)
    return directory


def test_a_failed_initdb_leaves_no_template(
    private_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _fake_binaries(private_tmp / "bin", "echo 'initdb: no space left'; exit 3")
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    monkeypatch.setattr(
        harness, "find_server_binaries", lambda: harness.ServerBinaries(fake, embedded=False)
    )
    with pytest.raises(RuntimeError, match=r"initdb failed \(3\): initdb: no space left"):
        PostgresServer(name="failed-initdb")
    assert [path.name for path in private_tmp.iterdir()] == ["bin"]


SLOW_INITDB = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from pgpool_compat import testing as harness
    fake = harness.ServerBinaries(Path(sys.argv[1]), embedded=False)
    harness.find_server_binaries = lambda: fake
    harness.PostgresServer(name="slow-initdb")
    """
)


def test_ctrl_c_during_initdb_ends_it_and_leaves_no_template(private_tmp: Path) -> None:
    """initdb runs in a session of its own, which the terminal's Ctrl-C does not reach: the
    harness ends it (and what it started) and removes its half-made template."""
    # initdb's output goes to initdb.log in the template: its pid and its child's.
    fake = _fake_binaries(private_tmp / "bin", 'sleep 300 &\necho "$$ $!"\nwait')
    process = popen_interruptible(
        [sys.executable, "-c", SLOW_INITDB, str(fake)], env=child_env(private_tmp)
    )
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while not pids and time.monotonic() < deadline and process.poll() is None:
            for log in private_tmp.glob("pgpool_compat-template-*/initdb.log"):
                pids = [int(pid) for pid in log.read_text().split()]
            time.sleep(0.02)
        assert len(pids) == 2, "the fake initdb never started"
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == -signal.SIGINT
        deadline = time.monotonic() + 10
        while any(map(harness._pid_alive, pids)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(map(harness._pid_alive, pids)), "initdb (or what it started) still runs"
        assert [path.name for path in private_tmp.iterdir()] == ["bin"]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        for pid in pids:  # left running only on failure: the fake initdb and its sleep
            with contextlib.suppress(OSError):
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"sleep" in command or str(fake).encode() in command:
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def sigint_ignored() -> Any:
    """The test run as a background job (``pytest &``) sees it: SIGINT ignored."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_tests_hold_when_the_suite_ignores_sigint(sigint_ignored: None) -> None:
    """Issue 10 item 12: children inherit an ignored SIGINT, and the simulated Ctrl-C then
    did nothing; the tests start their children with SIGINT at its default."""
    process, data_dir, dsn = run_child("wait")
    try:
        process.send_signal(signal.SIGINT)
        assert process.wait(15) == -signal.SIGINT
    finally:
        if process.poll() is None:
            process.terminate()  # SIGTERM: the harness still cleans up
            process.wait(30)
    assert not data_dir.exists()
    assert refuses(dsn)


def test_owner_exit_without_cleanup_uses_atexit() -> None:
    process, data_dir, dsn = run_child("exit")
    process.communicate("go\n", timeout=30)
    assert process.returncode == 0
    assert not data_dir.exists()
    assert refuses(dsn)


def test_forked_child_exit_leaves_parent_server_alone() -> None:
    process, data_dir, _ = run_child("fork")
    out, _ = process.communicate(timeout=30)
    assert "parent server alive" in out
    assert process.returncode == 0
    assert not data_dir.exists()


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def test_leftovers_of_a_zombie_owner_are_swept(
    private_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An owner killed but not yet reaped by its parent is a zombie: os.kill(pid, 0) still
    succeeds on it, and its leftovers used to be kept as a live process's."""
    process, data_dir, dsn = run_child("wait", private_tmp)
    try:
        process.kill()  # SIGKILL, and no wait(): a zombie until we reap it
        deadline = time.monotonic() + 10
        while _state(process.pid) != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _state(process.pid) == "Z"
        assert not harness._pid_alive(process.pid)
        assert harness._pid_alive(os.getpid())
        monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
        harness._sweep_orphans()
        assert not data_dir.parent.exists()
        assert refuses(dsn)
    finally:
        process.kill()
        process.wait(30)


def test_leftovers_of_a_sigkilled_owner_are_swept() -> None:
    process, data_dir, dsn = run_child("wait")
    process.kill()  # SIGKILL: no atexit, no handler; the postmaster lives on in its session
    process.wait(30)
    assert query(dsn, "SELECT 11") == 11
    assert data_dir.exists()
    harness._sweep_orphans()  # what the next process using the harness does once
    assert not data_dir.parent.exists()
    assert refuses(dsn)
