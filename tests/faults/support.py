"""Shared pieces of the fault tests: the two pools side by side, bounded probes, figures.

Every fault test runs the same scenario on stock ``psycopg2.pool`` and on ``pgpool_compat``,
measures what happened (dead connections handed out, slots leaked, seconds to recover...) and
hands those figures to :class:`Figures`, which ``scripts/reliability_table.py`` turns into
``docs/reliability.md``. Nothing in the published table is typed by hand.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List

import psycopg2
import psycopg2.pool

__all__ = [
    "IMPLS",
    "Figures",
    "Outcome",
    "bounded_query",
    "make_pool",
    "peer_hung_up",
    "reproduce_command",
    "slots_in_use",
    "wait_until",
]

#: The two pools every fault scenario runs on, in the order the table shows them.
IMPLS = ("stock", "pgpool_compat")

#: Where the measured figures go; scripts/reliability_table.py reads it.
FIGURES_PATH = Path("build") / "reliability.json"


def make_pool(impl: str, minconn: Any, maxconn: Any, dsn: str, **kwargs: Any) -> Any:
    """A ThreadedConnectionPool of ``impl``; stock has no ``pool_*`` options, so they are
    dropped for it and it runs with its only behaviour."""
    if impl == "stock":
        plain = {k: v for k, v in kwargs.items() if not k.startswith("pool_")}
        return psycopg2.pool.ThreadedConnectionPool(minconn, maxconn, dsn, **plain)
    import pgpool_compat

    return pgpool_compat.ThreadedConnectionPool(minconn, maxconn, dsn, **kwargs)


def slots_in_use(pool: Any) -> int:
    """Connections the pool believes are borrowed (the stock bookkeeping both pools keep)."""
    return len(pool._used)


@dataclass
class Outcome:
    """What one statement on a handed-out connection did."""

    status: str  # "ok", "error" (failed at once) or "hung" (cut off by our watchdog)
    elapsed: float
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def bounded_query(conn: Any, sql: str = "SELECT 1", timeout: float = 3.0) -> Outcome:
    """Run ``sql`` on ``conn`` and report how it went, never waiting longer than ``timeout``.

    A statement on a blackholed connection would wait for ever; past ``timeout`` the socket is
    shut down under it, so it fails and is reported as ``hung``.
    """
    fired = threading.Event()

    def cut_off() -> None:
        fired.set()
        try:
            with socket.socket(fileno=os.dup(conn.fileno())) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except (OSError, psycopg2.Error):
            pass  # already closed: the statement fails by itself

    started = time.monotonic()
    timer = threading.Timer(timeout, cut_off)
    timer.daemon = True
    timer.start()
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            if cur.description is not None:
                cur.fetchall()
        status, error = "ok", ""
    except psycopg2.Error as exc:
        status, error = "error", (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    finally:
        timer.cancel()
    if fired.is_set() and status != "ok":
        status = "hung"
    return Outcome(status, time.monotonic() - started, error)


#: Linux ``tcp_info.tcpi_state`` once the peer's FIN has arrived.
_TCP_CLOSE_WAIT = 8


def peer_hung_up(conns: List[Any], timeout: float = 5.0) -> bool:
    """Wait (bounded) until the server's FIN reached every client socket (TCP CLOSE_WAIT), so a
    test never races the fault it caused. Reads nothing: the pool still has to notice."""

    def state(conn: Any) -> int:
        with socket.socket(fileno=os.dup(conn.fileno())) as sock:
            return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]

    return wait_until(lambda: all(state(conn) == _TCP_CLOSE_WAIT for conn in conns), timeout)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; return the last result."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


class Figures:
    """Collects ``record(fault, pool, ...)`` calls of one session and merges them into
    ``build/reliability.json``, replacing the rows this session measured again."""

    def __init__(self, root: Path) -> None:
        self.path = root / FIGURES_PATH
        self._faults: Dict[str, Dict[str, Any]] = {}
        self._lock = threading.Lock()

    def record(
        self, *, fault: str, title: str, pool: str, reproduce: str, figures: Dict[str, Any]
    ) -> None:
        """Keep ``figures`` (label -> measured value, in display order) for one table cell."""
        if pool not in IMPLS:
            raise ValueError(f"pool must be one of {IMPLS}, got {pool!r}")
        with self._lock:
            entry = self._faults.setdefault(
                fault, {"title": title, "reproduce": reproduce, "results": {}}
            )
            entry["results"][pool] = {
                "figures": [[label, value] for label, value in figures.items()],
                "measured_at": _now(),
            }

    def write(self, server_version: str) -> None:
        if not self._faults:
            return
        document: Dict[str, Any] = {"faults": {}}
        if self.path.exists():
            # A broken file from an interrupted run: start again.
            with contextlib.suppress(ValueError):
                document = json.loads(self.path.read_text())
        faults: Dict[str, Any] = document.setdefault("faults", {})
        for fault, entry in self._faults.items():
            kept = faults.get(fault, {}).get("results", {})
            kept.update(entry["results"])
            faults[fault] = {**entry, "results": kept}
        document["environment"] = {
            "python": platform.python_version(),
            "psycopg2": psycopg2.__version__.split()[0],
            "postgresql": server_version,
            "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cpus",
            "written_at": _now(),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(document, indent=1, sort_keys=False) + "\n")
        tmp.replace(self.path)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def reproduce_command(nodeid: str) -> str:
    """The pytest command that re-runs a test for both pools (parameters stripped)."""
    return f"python -m pytest {nodeid.split('[', 1)[0]}"
