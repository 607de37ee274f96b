"""``python -m pgpool_compat bench``: argument handling, the server's lifecycle, the output.

Without ``--dsn`` the bench starts a throwaway PostgreSQL (:mod:`pgpool_compat.testing`) and
removes it afterwards, also on Ctrl-C. With ``--dsn`` it only opens and closes its own
connections there and never restarts anything.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import platform
import signal
import sys
import threading
from dataclasses import asdict
from types import FrameType
from typing import Any, Dict, Iterator, List, Optional, Sequence, TextIO

import psycopg2
from psycopg2 import extensions

from .._commands import shown_python
from ..dsn import connect as connect_without_secrets
from .adapters import PRODUCTION_OPTIONS, available_pools
from .report import PLOT_MISSING, format_table, plot_available, to_json, write_plot
from .runner import Progress, run_bench, total_steps
from .scenarios import SCENARIO_NAMES, Settings, make_scenarios

__all__ = ["build_parser", "main", "parse_args"]

MAX_THREADS = 512
#: Loggers of the compared pools: their fault warnings would garble the table.
POOL_LOGGERS = ("pgpool_compat", "psycopg.pool", "sqlalchemy.pool", "DBUtils")


def _thread_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_THREADS}, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{shown_python()} -m pgpool_compat bench",
        description=(
            "Compare psycopg2.pool, pgpool_compat and the other installed pools side by side. "
            "Without --dsn a throwaway PostgreSQL is started and removed afterwards."
        ),
    )
    parser.add_argument(
        "--dsn", help="use this server (libpq DSN or URI); the restart scenario is skipped"
    )
    parser.add_argument(
        "--scenario",
        dest="scenarios",
        metavar="NAME",
        nargs="+",
        action="extend",
        help=f"scenarios to run (default: all): {', '.join(SCENARIO_NAMES)}",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short run (about 30 s on 2 cores): shorter rounds; a ratio its rounds do not "
        "agree on shows as 'noisy'",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw a PNG chart (matplotlib)")
    parser.add_argument(
        "--threads",
        type=_thread_count,
        metavar="N",
        help="threads in contention (default 32) and per churn burst (default 16)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show the pools' own log messages"
    )
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse and check the arguments; errors exit with status 2, as argparse does."""
    parser = build_parser()
    args = parser.parse_args(argv)
    requested: List[str] = args.scenarios or []
    unknown = [name for name in requested if name not in SCENARIO_NAMES]
    if unknown:
        parser.error(
            f"unknown scenario {', '.join(map(repr, unknown))}: "
            f"choose from {', '.join(SCENARIO_NAMES)}"
        )
    if args.dsn is not None and "restart" in requested:
        parser.error("the restart scenario needs the throwaway server: drop --dsn to run it")
    if args.plot is not None and not plot_available():
        parser.error(PLOT_MISSING)
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        # Fail now, not after minutes of measuring.
        if path is not None and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            parser.error(f"{option}: no such directory for {path!r}")
    chosen = [name for name in SCENARIO_NAMES if name in requested] or list(SCENARIO_NAMES)
    args.skipped = []
    if args.dsn is not None and "restart" in chosen:
        chosen.remove("restart")
        args.skipped.append("restart: skipped with --dsn (it never restarts a server it was given)")
    args.chosen = chosen
    return args


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _load_average() -> List[float]:
    """1, 5 and 15 minute load averages: how busy the machine was besides the bench."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return [round(value, 2) for value in load]


def _server_version(dsn: str) -> str:
    conn = connect_without_secrets(dsn)  # its error is printed: it must not show a password
    try:
        number = int(conn.server_version)
    finally:
        conn.close()
    return f"{number // 10000}.{number % 10000}"


def _shown_command(argv: Sequence[str]) -> str:
    """The command line as run, with the DSN (which may hold a password) left out."""
    shown: List[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            shown.append("DSN")
            hide_next = False
        elif arg == "--dsn":
            shown.append(arg)
            hide_next = True
        elif arg.startswith("--dsn="):
            shown.append("--dsn=DSN")
        else:
            shown.append(arg)
    return " ".join(["python -m pgpool_compat bench", *shown])


def describe_machine(
    argv: Sequence[str], server_version: str, server: str, quick: bool
) -> Dict[str, Any]:
    """What ran where, for the table header and the JSON ``machine`` object (no DSN).

    ``server``: ``"--dsn"`` or where the throwaway server's binaries came from.
    """
    libpq = extensions.libpq_version()
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "command": _shown_command(argv),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "load_avg_at_start": _load_average(),
        "python": platform.python_version(),
        "psycopg2": psycopg2.__version__.split()[0],
        "libpq": f"{libpq // 10000}.{libpq % 10000}",
        "postgresql": server_version,
        "server": server,
        "mode": "quick" if quick else "full",
        "production_options": dict(PRODUCTION_OPTIONS),
    }


def _header(machine: Dict[str, Any]) -> List[str]:
    return [
        f"pgpool_compat bench ({machine['mode']}), {machine['date_utc']} UTC",
        f"machine: {machine['cpus']} x {machine['cpu']}, {machine['platform']}",
        f"load average (1, 5, 15 min): {machine['load_avg_at_start']} at start,"
        f" {machine.get('load_avg_at_end', '?')} at end",
        f"python {machine['python']}, psycopg2 {machine['psycopg2']}, libpq {machine['libpq']}, "
        f"PostgreSQL {machine['postgresql']} ({machine['server']})",
        "pools interleaved, fresh pools each round; medians over rounds, but ops/s pooled over"
        " rounds (the faster quartile of turns in overhead and query)",
        "vs stock = ops/s over psycopg2.pool's, shown when its 90% confidence interval is"
        " within 10%, else 'noisy'",
    ]


def _quiet_pool_logs(verbose: bool) -> None:
    if verbose:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        return
    for name in POOL_LOGGERS:
        logging.getLogger(name).addHandler(logging.NullHandler())


@contextlib.contextmanager
def _ctrl_c_noted(progress: Progress) -> Iterator[None]:
    """While measuring, a Ctrl-C also marks ``progress`` interrupted (see there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_ctrl_c(signum: int, frame: Optional[FrameType]) -> None:
        progress.interrupted = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def main(argv: Optional[Sequence[str]] = None, stdout: Optional[TextIO] = None) -> int:
    """Run the bench; return the process exit status (130 after Ctrl-C)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    out = sys.stdout if stdout is None else stdout
    _quiet_pool_logs(args.verbose)
    settings = Settings.quick(args.threads) if args.quick else Settings.full(args.threads)
    specs, notes = available_pools()
    server: Any = None
    try:
        try:
            if args.dsn is None:
                from ..testing import PostgresServer

                server = PostgresServer(name="pgpool_compat-bench")
                sys.stderr.write(
                    f"bench: started {server.description}, data in {server.data_dir}\n"
                )
                sys.stderr.flush()
                dsn, version = server.dsn, server.server_version
            else:
                dsn, version = args.dsn, _server_version(args.dsn)
        except (psycopg2.Error, RuntimeError) as exc:  # no server: say why in one line
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            sys.stderr.write(f"bench: no server to run against: {first_line}\n")
            return 1
        where = "--dsn" if server is None else f"throwaway, {server.binaries.origin}"
        machine = describe_machine(argv, version, where, args.quick)
        scenarios = make_scenarios(
            args.chosen, settings, None if server is None else server.restart
        )
        progress = Progress(total_steps(scenarios, specs))
        with _ctrl_c_noted(progress):
            outcome = run_bench(dsn, scenarios, specs, progress=progress)
    except KeyboardInterrupt:
        sys.stderr.write("\nbench: interrupted\n")
        return 130
    finally:
        if server is not None:
            server.cleanup()
    machine["load_avg_at_end"] = _load_average()
    outcome.notes[:0] = notes + args.skipped
    out.write(format_table(outcome, _header(machine)))
    out.flush()
    if args.json is not None:
        with open(args.json, "w", encoding="utf-8") as target:
            json.dump(to_json(outcome, machine, asdict(settings)), target, indent=2)
            target.write("\n")
    if args.plot is not None:
        write_plot(outcome, args.plot, _header(machine)[:3])
    return 0
