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
import re
import signal
import sys
import threading
from dataclasses import asdict
from types import FrameType
from typing import Any, Dict, Iterator, List, NoReturn, Optional, Sequence, TextIO

import psycopg2
from psycopg2 import ProgrammingError, extensions
from psycopg2.extensions import parse_dsn

from .._commands import shown_python
from ..dsn import connect as connect_without_secrets
from ..dsn import libpq_dsn
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


# A password in a key=value DSN (quoted or not) and in a URI's user information.
_KEYWORD_PASSWORD = re.compile(r"""(password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s'"]+)""", re.I)
_URI_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]+@")


def _mask_pattern(text: str) -> str:
    return _URI_PASSWORD.sub(r"\1***@", _KEYWORD_PASSWORD.sub(r"\1***", text))


def _args_beyond_patterns(argv: Sequence[str]) -> List[str]:
    """The arguments (or ``--option=`` values) that parse as a DSN or URI with a password
    which ``_mask_pattern`` would not hide (percent-encoded, say)."""
    found: List[str] = []
    for arg in argv:
        for candidate in (arg, arg.partition("=")[2] if arg.startswith("-") else ""):
            try:
                password = parse_dsn(libpq_dsn(candidate)).get("password") if candidate else None
            except ProgrammingError:
                continue
            if password and password in _mask_pattern(candidate):
                found.append(candidate)
    return found


def _mask_passwords(text: str, argv: Sequence[str]) -> str:
    """``text`` without a password: each password-shaped part masked as ``***``, and any
    argument of ``argv`` whose password that misses replaced whole by ``DSN``."""
    for arg in sorted(_args_beyond_patterns(argv), key=len, reverse=True):
        for shown in (arg, repr(arg)[1:-1]):
            text = text.replace(shown, "DSN")
    return _mask_pattern(text)


class _Parser(argparse.ArgumentParser):
    """argparse's parser, except that its errors show no password: argparse echoes what it
    could not use ("unrecognized arguments: ..."), such as a DSN given without ``--dsn``."""

    _argv: Sequence[str] = ()

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        masked = _mask_passwords(message, self._argv)
        if message.startswith("unrecognized arguments") and any(
            "=" in arg or "://" in arg for arg in self._argv if not arg.startswith("-")
        ):
            masked += " (a server is given with --dsn DSN)"
        super().error(masked)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=f"{shown_python()} -m pgpool_compat bench",
        # No abbreviations: --ds would be --dsn, whose value the shown command masks.
        allow_abbrev=False,
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


def _shown_command(argv: Sequence[str], dsn: Optional[str] = None) -> str:
    """The command line as run, with the DSN (which may hold a password) left out wherever
    it appears, and any password masked."""
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
        elif dsn and dsn in arg:
            shown.append(arg.replace(dsn, "DSN"))
        else:
            shown.append(arg)
    return _mask_passwords(" ".join(["python -m pgpool_compat bench", *shown]), argv)


def describe_machine(
    argv: Sequence[str],
    server_version: str,
    server: str,
    quick: bool,
    dsn: Optional[str] = None,
) -> Dict[str, Any]:
    """What ran where, for the table header and the JSON ``machine`` object (no DSN).

    ``server``: ``"--dsn"`` or where the throwaway server's binaries came from; ``dsn``: the
    one given, left out of the command shown.
    """
    libpq = extensions.libpq_version()
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "command": _shown_command(argv, dsn),
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


@contextlib.contextmanager
def _ctrl_c_ignored() -> Iterator[None]:
    """A further Ctrl-C (an impatient user presses it twice) is ignored in the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _clean_up(server: Any) -> bool:
    """Remove the throwaway server, if any, to the end, whatever Ctrl-Cs come meanwhile
    (the harness holds them back until it is done, then delivers one); True if one came."""
    if server is None:
        return False
    try:
        server.cleanup()
    except KeyboardInterrupt:
        with _ctrl_c_ignored():
            server.cleanup()  # idempotent: finishes whatever the Ctrl-C cut short
        return True
    return False


def main(argv: Optional[Sequence[str]] = None, stdout: Optional[TextIO] = None) -> int:
    """Run the bench; return the process exit status (130 after Ctrl-C)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    out = sys.stdout if stdout is None else stdout
    _quiet_pool_logs(args.verbose)
    settings = Settings.quick(args.threads) if args.quick else Settings.full(args.threads)
    server: Any = None
    interrupted = False
    try:
        specs, notes = available_pools()  # imports every pool: a Ctrl-C may land here
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
        machine = describe_machine(argv, version, where, args.quick, args.dsn)
        scenarios = make_scenarios(
            args.chosen, settings, None if server is None else server.restart
        )
        progress = Progress(total_steps(scenarios, specs))
        with _ctrl_c_noted(progress):
            outcome = run_bench(dsn, scenarios, specs, progress=progress)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        interrupted = _clean_up(server) or interrupted
    if interrupted:
        with _ctrl_c_ignored():
            sys.stderr.write("\nbench: interrupted\n")
        return 130
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
