"""Throwaway PostgreSQL servers for tests, the benchmark and users' own test suites.

``PostgresServer()`` initialises a fresh cluster in a temporary directory, starts it on a free
loopback port with trust authentication and durability switched off (tests want speed, not
crash safety), and removes everything again on :meth:`PostgresServer.cleanup`, on leaving a
``with`` block, at interpreter exit, on ``KeyboardInterrupt`` and when the owning process gets
``SIGTERM`` or ``SIGHUP`` (the terminal closed) that it does not handle itself; signal handlers
can only be installed from the main thread, so that needs a server created there. A Ctrl-C
during clean-up waits until it is done. What an owner killed with ``SIGKILL`` left running (or
an interrupted ``initdb``) is stopped and removed by the next process that starts a server.

PostgreSQL refuses to run as root, so when the current user is root the server processes
(``initdb`` and ``postgres``) run as the unprivileged OS user ``postgres`` (or ``nobody`` when
that user does not exist) and the temporary directory is handed to that user.

Server binaries (:func:`find_server_binaries`, the one place that decides, for the tests and the
bench alike): local ones first, found on ``PATH`` or in the locations testing.postgresql
searches (``/usr/lib/postgresql/*/bin`` and friends); else the embedded PostgreSQL bundled in
the ``pgserver`` wheel, which the ``bench`` extra installs. When none is available the
constructor raises :class:`PostgresNotFound` with one line saying what to install. When root's
unprivileged stand-in cannot reach the binaries (a virtualenv under ``/root``), the bundled
installation is copied to a temporary directory it can read, once per process.

Set ``PGPOOL_TEST_DSN`` to test against an existing server instead; :func:`external_dsn`
returns it.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Iterator, Optional

import psycopg2

from ._commands import pip_install

__all__ = [
    "PostgresNotFound",
    "PostgresServer",
    "ServerBinaries",
    "external_dsn",
    "find_server_binaries",
]

logger = logging.getLogger("pgpool_compat")

#: Environment variable naming an existing server to test against instead of a throwaway one.
DSN_ENV = "PGPOOL_TEST_DSN"

#: ``application_name`` of the harness's own short-lived connections (readiness probes, test
#: helpers), so backend counts can leave them out while they are still exiting.
HARNESS_APPLICATION_NAME = "pgpool_compat.testing"

#: Settings every throwaway server gets; ``settings=`` in the constructor overrides them.
DEFAULT_SETTINGS: dict[str, str] = {
    "listen_addresses": "127.0.0.1",
    # Fault tests open many connections at once.
    "max_connections": "200",
    # Durability is pointless for a throwaway cluster and costs seconds per test run.
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "checkpoint_timeout": "1h",
    # No background work competing with the test on small CI machines.
    "autovacuum": "off",
    "shared_buffers": "32MB",
    "logging_collector": "off",
}

#: The pip package whose wheel bundles a complete PostgreSQL (the ``bench`` extra pulls it in).
EMBEDDED_PACKAGE = "pgserver"


def _install_hint() -> str:
    return (
        "no PostgreSQL server binaries found (initdb/postgres) and no embedded one: "
        f"{pip_install(EMBEDDED_PACKAGE)} (or Debian/Ubuntu: apt-get install postgresql), "
        f"or set {DSN_ENV} to an existing server"
    )


# Signal sent to the postmaster for each shutdown mode (see the PostgreSQL "Shutting Down the
# Server" docs): SIGINT is a fast shutdown, SIGQUIT an immediate one (crash recovery on start),
# SIGKILL a crash of the postmaster alone (its backends linger until they notice).
_STOP_SIGNALS = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT, "kill": signal.SIGKILL}

_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 30.0
_PORT_ATTEMPTS = 5


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server binaries are available on this machine."""


def external_dsn() -> Optional[str]:
    """Return the DSN in ``PGPOOL_TEST_DSN`` if it is set and non-empty, else ``None``."""
    dsn = os.environ.get(DSN_ENV, "").strip()
    return dsn or None


@dataclass(frozen=True)
class ServerBinaries:
    """Where the server's ``initdb`` and ``postgres`` come from."""

    bin_dir: Path
    #: True for the PostgreSQL bundled in the pgserver wheel, False for local binaries.
    embedded: bool

    @property
    def origin(self) -> str:
        """``"local binaries"`` or ``"embedded (pgserver wheel X.Y.Z)"``, for one-line reports."""
        if not self.embedded:
            return "local binaries"
        try:
            from importlib.metadata import version

            return f"embedded ({EMBEDDED_PACKAGE} wheel {version(EMBEDDED_PACKAGE)})"
        except Exception:  # metadata missing or unreadable: the origin is still known
            return f"embedded ({EMBEDDED_PACKAGE} wheel)"


def find_server_binaries() -> ServerBinaries:
    """Local server binaries if there are any, else pgserver's embedded PostgreSQL; raise
    :class:`PostgresNotFound` (one line saying what to install) when neither is there."""
    local = _local_bin_dir()
    if local is not None:
        return ServerBinaries(local, embedded=False)
    embedded = _embedded_bin_dir()
    if embedded is not None:
        return ServerBinaries(embedded, embedded=True)
    raise PostgresNotFound(_install_hint())


def _local_bin_dir() -> Optional[Path]:
    found = shutil.which("postgres")
    if found:
        # Resolve symlinks (e.g. /usr/local/bin -> /usr/lib/postgresql/15/bin) so initdb is
        # taken from the same installation as postgres.
        directory = Path(found).resolve().parent
        if (directory / "initdb").exists():
            return directory
    try:
        # testing.postgresql knows the usual install locations (Debian, MacPorts, /usr/local).
        from testing.postgresql import find_program

        return Path(find_program("postgres", ["bin"])).parent
    except (ImportError, RuntimeError):
        return None


def _embedded_bin_dir() -> Optional[Path]:
    # Found without importing pgserver: its import does work we do not need.
    try:
        spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    except (ImportError, ValueError):  # hidden (sys.modules entry None) or broken
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        bundled = Path(location) / "pginstall" / "bin"
        if (bundled / "postgres").exists() and (bundled / "initdb").exists():
            return bundled
    return None


def _free_port() -> int:
    """Ask the kernel for a currently unused loopback TCP port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _OsUser:
    """The OS account the server processes run as: the current one, or an unprivileged one
    when we are root (PostgreSQL refuses to run as root)."""

    def __init__(self) -> None:
        self.uid: Optional[int] = None
        self.gid: Optional[int] = None
        self.name = pwd.getpwuid(os.geteuid()).pw_name
        if os.geteuid() == 0:
            for candidate in ("postgres", "nobody"):
                try:
                    entry = pwd.getpwnam(candidate)
                except KeyError:
                    continue
                self.uid, self.gid, self.name = entry.pw_uid, entry.pw_gid, candidate
                break
            else:
                raise RuntimeError(
                    "running as root needs an unprivileged OS user 'postgres' to run the "
                    "PostgreSQL server (useradd --system postgres)"
                )

    def give(self, path: Path) -> None:
        """Make ``path`` (recursively) owned by this user, when we are switching users."""
        if self.uid is None or self.gid is None:
            return
        os.chown(path, self.uid, self.gid)
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(os.path.join(root, name), self.uid, self.gid, follow_symlinks=False)

    def postgres_version(self, bin_dir: Path) -> Optional[str]:
        """``postgres --version`` of ``bin_dir`` run as this user; None if it cannot run it."""
        try:
            with tempfile.TemporaryFile() as out:
                process = self.popen([str(bin_dir / "postgres"), "--version"], out, Path("/"))
                code = process.wait(30)
                out.seek(0)
                text = out.read().decode(errors="replace")
        except (OSError, subprocess.TimeoutExpired):
            return None
        if code != 0:
            return None
        match = re.search(r"\(PostgreSQL\)\s+(\S+)", text)
        return match.group(1) if match else text.strip()

    def popen(self, args: list[str], log: Any, cwd: Path) -> subprocess.Popen[bytes]:
        """Start ``args`` as this user, output to ``log``, in its own session (so a Ctrl-C in
        the terminal reaches only the test process, which then shuts the server down)."""
        extra: dict[str, Any] = {}
        if self.uid is not None:
            extra = {"user": self.uid, "group": self.gid, "extra_groups": []}
        env = dict(os.environ, LC_ALL="C")
        env.pop("PGDATA", None)
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
            **extra,
        )


# One initdb per binary directory and OS user per process: later servers copy the template
# (tens of milliseconds) instead of running initdb again (about a second).
_templates: dict[tuple[Path, str], Path] = {}
# Reentrant: the SIGTERM handler runs in the main thread, which may already hold them.
_templates_lock = threading.RLock()
# Copies of installations root's stand-in could not reach, per binary directory and OS user.
_copies: dict[tuple[Path, str], Path] = {}
_live: set[PostgresServer] = set()
_live_lock = threading.RLock()
# Directories being filled (a template during initdb, a copy of binaries) and the initdbs
# running, for a signal that ends the process before they are recorded or removed.
_unfinished: set[Path] = set()
_initdbs: set[subprocess.Popen[bytes]] = set()
_atexit_installed = False
_signals_installed = False
#: Signals that end the process unless handled: the harness cleans up first (SIGHUP: the
#: terminal or SSH session was closed).
_EXIT_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _forget_after_fork() -> None:
    """A forked child inherits the registries but must never shut down its parent's servers
    or delete its templates at exit; it starts with empty ones and fresh locks."""
    global _templates_lock, _live_lock
    _templates_lock, _live_lock = threading.RLock(), threading.RLock()
    _templates.clear()
    _copies.clear()
    _live.clear()
    _unfinished.clear()
    _initdbs.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


class PostgresServer:
    """A throwaway PostgreSQL server on 127.0.0.1, started on construction.

    :param port: TCP port to listen on; by default a free one is picked. The port stays the
        same across :meth:`stop` / :meth:`start` / :meth:`restart`.
    :param settings: extra ``postgresql.conf`` settings, overriding :data:`DEFAULT_SETTINGS`.
    :param name: prefix of the temporary directory, to tell servers apart in ``ps``/``/tmp``.

    Connect with :attr:`dsn` (libpq ``key=value`` string, superuser ``postgres``, trust auth,
    no password). Use it as a context manager or call :meth:`cleanup` when done.
    """

    def __init__(
        self,
        *,
        port: Optional[int] = None,
        settings: Optional[dict[str, str]] = None,
        name: str = "pgpool_compat",
    ) -> None:
        self.host = "127.0.0.1"
        self.user = "postgres"
        self.dbname = "postgres"
        self._fixed_port = port is not None
        self.port = port if port is not None else _free_port()
        self._settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self._binaries = find_server_binaries()
        self._os_user = _OsUser()
        self._bin, self._version = _runnable_binaries(self._binaries, self._os_user)
        self._lock = threading.RLock()
        self._process: Optional[subprocess.Popen[bytes]] = None
        self._started = False  # until the first successful start, a taken port may change
        self._base = _make_base(f"{name}-")
        self._data = self._base / "data"
        self._log_path = self._base / "postgres.log"
        try:
            _register(self)
            self._os_user.give(self._base)
            self._init_cluster()
            self.start()
        except BaseException:
            self.cleanup()
            raise

    # -- public API -------------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        """libpq ``key=value`` connection string for the superuser (no password needed)."""
        return f"host={self.host} port={self.port} user={self.user} dbname={self.dbname}"

    @property
    def is_running(self) -> bool:
        """True while the postmaster process is alive."""
        process = self._process
        return process is not None and process.poll() is None

    @property
    def pid(self) -> Optional[int]:
        """PID of the postmaster while running (fault tests may signal it), else None."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def server_version(self) -> str:
        """The server's version, e.g. ``"15.18"``."""
        return self._version

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory (removed by :meth:`cleanup`)."""
        return self._data

    @property
    def log_path(self) -> Path:
        """The server log file, handy when a test wants to see what the server said."""
        return self._log_path

    @property
    def binaries(self) -> ServerBinaries:
        """Where the server binaries came from (local or embedded), as found at construction."""
        return self._binaries

    @property
    def description(self) -> str:
        """One line saying what runs where, for test-session headers and logs."""
        return (
            f"PostgreSQL {self._version} (throwaway server) from {self._binaries.origin} "
            f"{self._bin}, at {self.host}:{self.port}, run as OS user {self._os_user.name}"
        )

    def start(self) -> None:
        """Start the server (no-op if it is running) and wait until it accepts connections."""
        with self._lock:
            if self.is_running:
                return
            if not self._data.exists():
                raise RuntimeError("PostgresServer.start() after cleanup()")
            deadline = time.monotonic() + _START_TIMEOUT
            new_ports = 0 if self._fixed_port or self._started else _PORT_ATTEMPTS
            while True:
                said = self._launch(deadline)
                if said is None:
                    self._started = True
                    return
                if "could not bind" in said and new_ports > 0:
                    # Another process took our free port between picking and binding it; only
                    # the first start may move, later ones keep the port.
                    new_ports -= 1
                    self.port = _free_port()
                elif "pre-existing shared memory block" in said and time.monotonic() < deadline:
                    # Backends of a killed postmaster are still exiting.
                    time.sleep(0.1)
                else:
                    raise RuntimeError(
                        f"PostgreSQL failed to start on port {self.port}: {said[-2000:].strip()}"
                    )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server and wait until the postmaster has exited. The port is kept.

        ``mode``: ``"fast"`` (disconnect clients, clean shutdown), ``"immediate"`` (abort at
        once, crash recovery on the next start) or ``"kill"`` (SIGKILL the postmaster, as a
        crash would; :meth:`start` waits for its orphaned backends to go).
        """
        if mode not in _STOP_SIGNALS:
            raise ValueError(f"stop mode must be one of {sorted(_STOP_SIGNALS)}, not {mode!r}")
        with self._lock:
            process = self._process
            if process is None:
                return
            if process.poll() is None:
                process.send_signal(_STOP_SIGNALS[mode])
                try:
                    process.wait(_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    logger.warning("PostgreSQL did not stop in %ss, killing it", _STOP_TIMEOUT)
                    process.kill()
                    process.wait(_STOP_TIMEOUT)
            self._process = None

    def restart(self, mode: str = "fast") -> None:
        """Stop (see :meth:`stop`) and start again on the same port."""
        with self._lock:
            self.stop(mode)
            self.start()

    def cleanup(self) -> None:
        """Stop the server and delete its directory. Idempotent; safe to call at any time.

        A Ctrl-C meanwhile (in the main thread) waits until it is done, then is delivered.
        """
        with self._lock, _sigint_held(deliver=True):
            try:
                self.stop("fast")
            finally:
                shutil.rmtree(self._base, ignore_errors=True)
                with _live_lock:
                    _live.discard(self)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"<PostgresServer {self.host}:{self.port} {state} {self._data}>"

    # -- internals --------------------------------------------------------------------------

    def _init_cluster(self) -> None:
        """Create the data directory: copy the per-process template, made by initdb once."""
        key = (self._bin, self._os_user.name)
        with _templates_lock:
            template = _templates.get(key)
            if template is None or not template.exists():
                template = _make_base("pgpool_compat-template-")
                _unfinished.add(template)
                try:
                    self._os_user.give(template)
                    self._run_initdb(template / "data")
                except BaseException:  # failed or interrupted (Ctrl-C): nothing stays
                    with _sigint_held(deliver=False):  # the exception is on its way already
                        shutil.rmtree(template, ignore_errors=True)
                    raise
                finally:
                    _unfinished.discard(template)
                _templates[key] = template
        shutil.copytree(template / "data", self._data, symlinks=True)
        self._os_user.give(self._data)

    def _run_initdb(self, target: Path) -> None:
        args = [
            str(self._bin / "initdb"),
            "-D",
            str(target),
            "-U",
            self.user,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            # 1 MB WAL segments instead of 16: less to copy for every new server.
            "--wal-segsize=1",
        ]
        with open(target.parent / "initdb.log", "wb") as log:
            process = self._os_user.popen(args, log, cwd=target.parent)
            _initdbs.add(process)
            try:
                code = process.wait(120)
            except subprocess.TimeoutExpired:
                code = -1
            finally:
                # Timed out or interrupted (Ctrl-C): initdb runs in a session of its own, which
                # the terminal's signal never reaches; end it and the postgres it runs.
                with _sigint_held(deliver=True):
                    _end_session(process)
                    _initdbs.discard(process)
        if code != 0:
            output = (target.parent / "initdb.log").read_text(errors="replace").strip()
            raise RuntimeError(f"initdb failed ({code}): {output[-2000:]}")

    def _launch(self, deadline: float) -> Optional[str]:
        """Start the postmaster once and wait until it accepts connections (None), or return
        what it logged if it exited instead."""
        args = [str(self._bin / "postgres"), "-D", str(self._data), "-p", str(self.port)]
        settings = {**self._settings, "unix_socket_directories": str(self._data)}
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        with open(self._log_path, "ab") as log:
            offset = log.tell()
            process = self._os_user.popen(args, log, cwd=self._base)
        self._process = process
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self._process = None
                with open(self._log_path, "rb") as log:
                    log.seek(offset)
                    return log.read().decode(errors="replace")
            try:
                psycopg2.connect(
                    self.dsn, connect_timeout=2, application_name=HARNESS_APPLICATION_NAME
                ).close()
                return None
            except psycopg2.OperationalError:
                time.sleep(0.05)
        self.stop("immediate")
        raise RuntimeError(
            f"PostgreSQL did not accept connections in {_START_TIMEOUT}s: {self._log_tail()}"
        )

    def _log_tail(self, size: int = 2000) -> str:
        try:
            return self._log_path.read_text(errors="replace")[-size:].strip()
        except OSError:
            return "(no server log)"


def _end_session(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``process`` and its session (it leads one: ``_OsUser.popen``) if it is still
    running, and reap it."""
    if process.poll() is not None:
        return  # reaped: its pid, and so the session id, may be reused by now
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:  # gone meanwhile
        process.kill()
    try:
        process.wait(_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        logger.warning("process %d did not die of SIGKILL in %ss", process.pid, _STOP_TIMEOUT)


@contextlib.contextmanager
def _sigint_held(*, deliver: bool) -> Iterator[None]:
    """Clean-up that a Ctrl-C must not cut short: a SIGINT during the block waits for its
    end, then (``deliver``) reaches the handler that was in place, or is dropped (the process
    is ending anyway, or an exception is already on its way). Main thread only: elsewhere
    no signal handler runs, so the block is not interrupted anyway."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is None  # set outside Python: cannot be put back
    ):
        yield
        return
    came: list[int] = []

    def note(signum: int, frame: Optional[FrameType]) -> None:
        came.append(signum)

    try:
        previous = signal.signal(signal.SIGINT, note)
    except ValueError:  # not the main interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if came and deliver:
            if callable(previous):  # Python's default raises KeyboardInterrupt here
                previous(signal.SIGINT, None)
            elif previous == signal.SIG_DFL:
                signal.raise_signal(signal.SIGINT)


def _runnable_binaries(binaries: ServerBinaries, os_user: _OsUser) -> tuple[Path, str]:
    """A binary directory ``os_user`` can run, and its version: the one found, or (root's
    stand-in locked out of the embedded server, say in a virtualenv under /root) a copy."""
    bin_dir = binaries.bin_dir
    version = os_user.postgres_version(bin_dir)
    if version is None and binaries.embedded and os_user.uid is not None:
        key = (bin_dir, os_user.name)
        with _templates_lock:
            copy = _copies.get(key)
            if copy is None or not copy.exists():
                copy = _copy_embedded(bin_dir)
                _copies[key] = copy
        bin_dir = copy / bin_dir.relative_to(bin_dir.parents[2])
        version = os_user.postgres_version(bin_dir)
    if version is None:
        raise RuntimeError(f"OS user {os_user.name} cannot run {bin_dir / 'postgres'}")
    return bin_dir, version


def _copy_embedded(bin_dir: Path) -> Path:
    """Copy pgserver's installation, and the libraries its binaries find relative to
    themselves (``$ORIGIN/../../../pgserver.libs``), to a new directory anyone can read."""
    site = bin_dir.parents[2]
    copy = _make_base("pgpool_compat-pginstall-")
    _unfinished.add(copy)
    try:
        copy.chmod(0o755)
        shutil.copytree(bin_dir.parent, copy / bin_dir.parent.relative_to(site), symlinks=True)
        libs = site / f"{EMBEDDED_PACKAGE}.libs"
        if libs.is_dir():
            shutil.copytree(libs, copy / libs.name, symlinks=True)
    except BaseException:  # failed or interrupted (Ctrl-C): no half copy stays
        with _sigint_held(deliver=False):
            shutil.rmtree(copy, ignore_errors=True)
        raise
    finally:
        _unfinished.discard(copy)
    return copy


# Each directory we create names its owner (pid in a pid namespace), so a later process can
# remove what an owner killed with SIGKILL (no atexit, no signal handler) left running.
_OWNER_FILE = "pgpool_compat.owner"


def _owner_tag(pid: int) -> str:
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:  # no /proc (macOS): the pid alone
        namespace = ""
    return f"{pid} {namespace}"


def _make_base(prefix: str) -> Path:
    """A new temporary directory, marked as owned by this process."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        (base / _OWNER_FILE).write_text(_owner_tag(os.getpid()))
    except BaseException:  # unmarked, no later process would remove it
        shutil.rmtree(base, ignore_errors=True)
        raise
    return base


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (dead, not yet reaped by its parent) is dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive, unless a zombie
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (macOS), or hidden: os.kill's answer stands
        return True
    # "pid (comm) state ...": comm may hold spaces and parentheses, the state follows the last.
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _sweep_orphans() -> None:
    """Remove the directories (and stop the postmasters) of owners that died without cleaning
    up. Only directories from our pid namespace, and only postmasters whose command line names
    the directory (a reused pid is left alone)."""
    for marker in Path(tempfile.gettempdir()).glob(f"*/{_OWNER_FILE}"):
        try:
            pid_text, _, namespace = marker.read_text().partition(" ")
            owner = int(pid_text)
        except (OSError, ValueError):
            continue
        if _owner_tag(owner) != f"{pid_text} {namespace}" or _pid_alive(owner):
            continue
        base = marker.parent
        logger.warning("removing %s, left behind by dead process %d", base, owner)
        _kill_orphan_postmaster(base / "data")
        shutil.rmtree(base, ignore_errors=True)


def _kill_orphan_postmaster(data: Path) -> None:
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return  # no postmaster, or no way to be sure it is ours
    if str(data).encode() not in cmdline:
        return
    os.kill(pid, signal.SIGQUIT)
    deadline = time.monotonic() + 10
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _register(server: PostgresServer) -> None:
    """Track a live server so exit paths can clean it up; install those paths: the atexit
    hook with the first server, the signal handlers with the first one made in the main
    thread (the only thread that may install them)."""
    global _atexit_installed, _signals_installed
    in_main = threading.current_thread() is threading.main_thread()
    with _live_lock:
        _live.add(server)
        first = not _atexit_installed
        _atexit_installed = True
        signals = in_main and not _signals_installed
        _signals_installed = _signals_installed or in_main
    if first:
        # KeyboardInterrupt and sys.exit both end in atexit.
        atexit.register(_cleanup_all)
    if signals:
        # SIGTERM and SIGHUP would kill us without atexit; handle them unless the application
        # already does (or ignores them: nohup).
        for signum in _EXIT_SIGNALS:
            if signal.getsignal(signum) == signal.SIG_DFL:
                signal.signal(signum, _on_exit_signal)
    if first:
        _sweep_orphans()


def _cleanup_all() -> None:
    """Clean up every server this process started, and the initdb templates. The process is
    ending: a Ctrl-C meanwhile is dropped rather than leave files behind."""
    with _sigint_held(deliver=False):
        with _live_lock:
            servers = list(_live)
        for server in servers:
            try:
                server.cleanup()
            except Exception:  # keep cleaning the others; this runs at exit
                logger.exception("cleanup of %r failed", server)
        for process in list(_initdbs):  # a signal handler ending us during an initdb
            _end_session(process)
        with _templates_lock:
            for directory in [*_templates.values(), *_copies.values(), *_unfinished]:
                shutil.rmtree(directory, ignore_errors=True)
            _templates.clear()
            _copies.clear()


def _on_exit_signal(signum: int, frame: Optional[FrameType]) -> None:
    """Clean up, then die of the signal (SIGTERM, SIGHUP) as we would have without this
    handler."""
    _cleanup_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
