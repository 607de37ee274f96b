"""``python -m pgpool_compat bench``: arguments, JSON shape, clean-up, a real --quick run.

The runs use a real PostgreSQL: the shared test server for ``--dsn`` runs, and the bench's own
throwaway server for the smoke and interrupt runs (which is what a new user gets).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from pgpool_compat.__main__ import main as package_main
from pgpool_compat._commands import shown_python
from pgpool_compat.bench import cli
from pgpool_compat.bench.adapters import PoolSpec, available_pools
from pgpool_compat.bench.ratios import MIN_ROUNDS, pooled_rate, rate_ratio
from pgpool_compat.bench.report import format_table, to_json
from pgpool_compat.bench.runner import (
    Outcome,
    Progress,
    Row,
    ScenarioResult,
    median_sample,
    run_bench,
)
from pgpool_compat.bench.scenarios import (
    SCENARIO_NAMES,
    Group,
    GroupScenario,
    Sample,
    Settings,
    TurnRates,
    percentile_us,
)
from tests.helpers import backend_count, popen_interruptible, wait_backend_count

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parents[2]
BENCH = (sys.executable, "-m", "pgpool_compat", "bench")
RESULT_KEYS = {"pool", "ops_per_s", "p50_us", "p99_us", "errors", "connections_opened"}
STARTED = re.compile(r"bench: started .* at 127\.0\.0\.1:(\d+).*, data in (\S+)")


def _bench_process(*args: str, tmpdir: Optional[Path] = None) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("PGPOOL_TEST_DSN", None)
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return popen_interruptible(
        [*BENCH, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(REPO),
    )


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# -- arguments ----------------------------------------------------------------------------


def test_unknown_scenario_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(["--scenario", "overhead", "warp"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "unknown scenario 'warp'" in error
    assert all(name in error for name in SCENARIO_NAMES)


@pytest.mark.parametrize("threads", ["0", "-3", "many", "2.5", "100000"])
def test_bad_thread_counts_are_rejected(threads: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(["--threads", threads])
    assert exit_info.value.code == 2
    assert "--threads" in capsys.readouterr().err


def test_defaults_and_valid_arguments() -> None:
    args = cli.parse_args([])
    assert args.chosen == list(SCENARIO_NAMES)
    assert args.threads is None and not args.quick and args.dsn is None
    args = cli.parse_args(["--scenario", "churn", "--scenario", "overhead", "--threads", "8"])
    assert args.chosen == ["overhead", "churn"]  # canonical order, repeats merged
    assert args.threads == 8


def test_dsn_skips_restart_and_refuses_it_explicitly(capsys: pytest.CaptureFixture[str]) -> None:
    args = cli.parse_args(["--dsn", "host=db.invalid"])
    assert "restart" not in args.chosen
    assert args.chosen == [name for name in SCENARIO_NAMES if name != "restart"]
    assert any("restart" in note for note in args.skipped)
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(["--dsn", "host=db.invalid", "--scenario", "restart"])
    assert exit_info.value.code == 2
    assert "throwaway" in capsys.readouterr().err


def test_plot_without_matplotlib_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "plot_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(["--plot", "chart.png"])
    assert exit_info.value.code == 2
    assert f"{shown_python()} -m pip install 'pgpool_compat[plot]'" in capsys.readouterr().err


def test_output_files_in_missing_directories_fail_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for option in ("--json", "--plot"):
        with pytest.raises(SystemExit) as exit_info:
            cli.parse_args([option, str(tmp_path / "missing" / "out.x")])
        assert exit_info.value.code == 2
        assert f"{option}: no such directory" in capsys.readouterr().err


SECRET = "hunter2-secret"


@pytest.mark.parametrize(
    "argv",
    [
        ["--ds", f"host=db.invalid password={SECRET}"],  # --dsn abbreviated: refused
        ["--quick", f"host=db.invalid password={SECRET}"],  # --dsn forgotten
        [f"postgresql://me:{SECRET}@db.invalid/db"],
        [f"postgresql://db.invalid/db?password={SECRET}"],
        [f"host=db.invalid password='{SECRET} with spaces'"],
        [f"postgresql://me:{SECRET.replace('-', '%2D')}@db.invalid/db"],  # percent-encoded
        ["--threads", f"host=db.invalid password={SECRET}"],
        ["--scenario", f"postgresql://me:{SECRET}@db.invalid/db"],
    ],
)
def test_no_argument_error_shows_a_password(
    argv: List[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "error: " in error
    assert SECRET not in error and SECRET.replace("-", "%2D") not in error
    if argv[0] == "--ds":
        assert "unrecognized arguments: --ds " in error
    elif not argv[0].startswith("--") or argv[0] == "--quick":
        assert "--dsn DSN" in error  # says how to give a server


def test_the_command_shown_never_holds_the_dsn() -> None:
    dsn = f"host=db.invalid password={SECRET}"
    for argv in (
        ["--dsn", dsn],
        [f"--dsn={dsn}"],
        ["--quick", "--dsn", dsn, "--json", "out.json"],
        ["--json", f"{dsn}.json", "--dsn", dsn],  # wherever it appears
    ):
        machine = cli.describe_machine(argv, "15.0", "--dsn", True, dsn)
        assert SECRET not in machine["command"] and "DSN" in machine["command"], argv
        assert SECRET not in json.dumps(machine)
    shown = cli._shown_command(["--quick", "--json", "out.json"])
    assert shown == "python -m pgpool_compat bench --quick --json out.json"


def test_unreachable_dsn_is_one_line_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]  # bound, not listening: connections are refused
        code = cli.main(["--dsn", f"host=127.0.0.1 port={closed_port} user=postgres", "--quick"])
    assert code == 1
    error = capsys.readouterr().err
    assert "bench: no server to run against" in error and "Traceback" not in error


def test_missing_pool_is_left_out_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dbutils", None)  # import dbutils now raises ImportError
    specs, notes = available_pools()
    keys = [spec.key for spec in specs]
    assert "dbutils" not in keys
    assert {"stock", "pgpool", "pgpool_production", "held"} <= set(keys)
    assert any("dbutils is not installed" in note and "[bench]" in note for note in notes)
    labels = [spec.label for spec in specs]
    assert all(re.search(r"\d+\.\d+", label) for label in labels)  # each named with a version


def test_commands_shown_name_this_interpreter(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A bare `python` is often missing (Debian) or another environment's."""
    venv_python = tmp_path / ".venv" / "bin" / "python"
    monkeypatch.setattr(sys, "executable", str(venv_python))
    monkeypatch.chdir(tmp_path)
    assert shown_python() == os.path.join(".venv", "bin", "python")
    monkeypatch.chdir("/")
    assert shown_python() == str(venv_python)
    assert cli.build_parser().prog == f"{venv_python} -m pgpool_compat bench"


def test_package_main_dispatches_only_bench(capsys: pytest.CaptureFixture[str]) -> None:
    assert package_main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert package_main([]) == 2
    with pytest.raises(SystemExit) as exit_info:
        package_main(["bench", "--help"])
    assert exit_info.value.code == 0
    assert "--scenario" in capsys.readouterr().out


# -- numbers and report -------------------------------------------------------------------


def test_percentiles_and_medians() -> None:
    durations = list(range(1000, 101_000, 1000))  # 1..100 us
    assert percentile_us(durations, 0.50) == 50.0
    assert percentile_us(durations, 0.99) == 99.0
    assert percentile_us([], 0.5) is None
    merged = median_sample([{"a": 1.0, "b": None}, {"a": 3.0, "b": 2.0}, {"a": 2.0}])
    assert merged == {"a": 2.0, "b": 2.0}


def test_starved_thread_shows_in_table_and_is_null_in_json() -> None:
    row = Row("stock", "psycopg2.pool x", {"ops_per_s": 10.0, "fairness": math.inf}, 1)
    outcome = Outcome([ScenarioResult("contention", "test", [row])], ["a note"])
    table = format_table(outcome)
    assert "starved" in table and "note: a note" in table
    document = json.loads(json.dumps(to_json(outcome, {}, {})))
    result = document["scenarios"][0]["results"][0]
    assert result["fairness"] is None and result["ops_per_s"] == 10


# -- ratios the bench can stand behind --------------------------------------------------

#: Per-round ops/s of ours and stock's, as measured in `--quick` query runs on the shared
#: 2-core machine: each round, one side's server backend may be stuck on a busy CPU.
WILD_ROUNDS = [(0.91, 1.0), (1.64, 1.0), (5.94, 1.0), (0.14, 1.0), (0.12, 1.0), (4.17, 1.0)]


def _steady(
    ratio: float, rounds: int, wobble: float = 0.02
) -> list[tuple[list[float], list[float]]]:
    """Rounds of 20 turns each, ours at ``ratio`` times stock's, both wobbling a little."""
    return [
        (
            [ratio * 10_000 * (1 + wobble * ((turn + index) % 3 - 1)) for turn in range(20)],
            [10_000 * (1 + wobble * ((turn + 2 * index) % 3 - 1)) for turn in range(20)],
        )
        for index in range(rounds)
    ]


def test_a_ratio_needs_enough_rounds_that_agree() -> None:
    steady = rate_ratio(_steady(0.95, MIN_ROUNDS), 0.75)
    assert steady is not None and steady.settled
    assert steady.value == pytest.approx(0.95, rel=0.03)
    assert steady.low is not None and steady.high is not None
    assert steady.low <= steady.value <= steady.high
    too_few = rate_ratio(_steady(0.95, MIN_ROUNDS - 1), 0.75)
    assert too_few is not None and not too_few.settled and too_few.low is None
    wild = rate_ratio([([ours], [stock]) for ours, stock in WILD_ROUNDS], 0.5)
    assert wild is not None and not wild.settled
    assert rate_ratio([([1.0], [0.0])] * MIN_ROUNDS, 0.5) is None  # no reference rate


def test_a_round_stuck_on_a_busy_cpu_does_not_move_the_pooled_rate() -> None:
    rounds = _steady(0.95, 7)
    ours, stock = rounds[2]
    rounds[2] = ([rate / 8 for rate in ours], stock)  # that round our backend crawled
    ours, stock = rounds[5]
    rounds[5] = (ours, [rate / 8 for rate in stock])  # and in this one stock's did
    ratio = rate_ratio(rounds, 0.75)
    assert ratio is not None and ratio.settled
    assert ratio.value == pytest.approx(0.95, rel=0.05)
    assert pooled_rate([[1.0, 2.0, 3.0], [4.0]], 0.75) == 3.0
    assert pooled_rate([], 0.5) is None


class _ScriptedScenario(GroupScenario):
    """A group scenario whose turn rates are given, round by round (no database)."""

    name = "query"
    description = "scripted"

    def __init__(self, rounds: list[dict[str, list[float]]], more_rounds_help: bool) -> None:
        settings = dataclasses.replace(Settings.quick(), rounds=MIN_ROUNDS, max_rounds=15)
        super().__init__(settings)
        self.scripted = rounds
        self.more_rounds_help = more_rounds_help
        self.rate_quantile = 0.75
        self.played = 0

    def measure_group(
        self, pools: Group, failures: Dict[str, str], turn_rates: TurnRates
    ) -> Dict[str, Sample]:
        rates = self.scripted[self.played]
        self.played += 1
        turn_rates.update(rates)
        return {key: {"ops_per_s": rates[key][0], "errors": 0} for key, _ in pools}


def _fake_spec(key: str, is_stock: bool = False) -> PoolSpec:
    return PoolSpec(key, key, lambda dsn, minconn, maxconn: _FakePool(), is_stock=is_stock)


class _FakePool:
    def close(self) -> None:
        pass


def _run_scripted(scenario: _ScriptedScenario) -> Row:
    specs = [_fake_spec("stock", is_stock=True), _fake_spec("ours")]
    outcome = run_bench("unused", [scenario], specs, progress=Progress(1, io.StringIO()))
    return next(row for row in outcome.scenarios[0].rows if row.key == "ours")


def _round(ours: float) -> dict[str, list[float]]:
    return {"stock": [100.0] * 4, "ours": [ours] * 4}


def test_more_rounds_run_until_the_ratio_settles_or_the_maximum() -> None:
    calm = [_round(95.0)] * 20
    # One round in five where our backend raced ahead: too few rounds to outvote it.
    one_odd = [_round(95.0), _round(300.0), *calm]
    settling = _ScriptedScenario(one_odd, more_rounds_help=True)
    row = _run_scripted(settling)
    assert MIN_ROUNDS < settling.played < settling.settings.max_rounds and row.noisy == []
    assert row.metrics["vs_stock"] == pytest.approx(0.95)
    wild = [_round(100.0 * factor) for factor in (0.2, 3, 0.3, 5, 1)] * 4
    never = _ScriptedScenario(wild, more_rounds_help=True)
    row = _run_scripted(never)
    assert never.played == never.settings.max_rounds and row.noisy == ["vs_stock"]
    hopeless = _ScriptedScenario(one_odd, more_rounds_help=False)
    row = _run_scripted(hopeless)
    assert hopeless.played == MIN_ROUNDS and row.noisy == ["vs_stock"]
    # Where more rounds cannot help (churn, restart), even calm rounds give no ratio to stand
    # behind: a quick run printed 0.46x where the full run could not pin one down.
    machine_bound = _ScriptedScenario(calm, more_rounds_help=False)
    row = _run_scripted(machine_bound)
    assert machine_bound.played == MIN_ROUNDS and row.noisy == ["vs_stock"]


def test_noisy_ratio_is_printed_as_noisy_with_a_note_and_kept_in_json() -> None:
    metrics: Sample = {
        "ops_per_s": 9.0,
        "vs_stock": 2.41,
        "vs_stock_low": 0.4,
        "vs_stock_high": 6.0,
    }
    row = Row("pgpool", "pgpool_compat x", metrics, 5, noisy=["vs_stock"])
    stock = Row("stock", "psycopg2.pool x", {"ops_per_s": 10.0, "vs_stock": 1.0}, 5)
    outcome = Outcome([ScenarioResult("query", "test", [stock, row])])
    table = format_table(outcome)
    ours_line = next(line for line in table.splitlines() if line.startswith("pgpool_compat"))
    assert "noisy" in ours_line and "2.41" not in ours_line
    assert "note: noisy: " in table
    result = to_json(outcome, {}, {})["scenarios"][0]["results"][1]
    assert result["noisy"] == ["vs_stock"] and result["vs_stock"] == 2.41
    assert result["vs_stock_low"] == 0.4 and result["vs_stock_high"] == 6


# -- real runs ----------------------------------------------------------------------------


def test_json_shape_against_a_given_server(pg_dsn: str, tmp_path: Path) -> None:
    target = tmp_path / "bench.json"
    out = io.StringIO()
    backends_before = backend_count(pg_dsn)
    code = cli.main(
        ["--dsn", pg_dsn, "--quick", "--scenario", "overhead", "query", "--json", str(target)],
        stdout=out,
    )
    assert code == 0
    # A given server keeps nothing of the run: every connection the bench opened is closed.
    assert wait_backend_count(pg_dsn, backends_before) == backends_before
    document = json.loads(target.read_text())
    assert set(document) >= {"machine", "scenarios"}
    assert document["machine"]["server"] == "--dsn"
    assert pg_dsn not in target.read_text()  # the DSN (maybe with a password) never leaks
    assert [scenario["name"] for scenario in document["scenarios"]] == ["overhead", "query"]
    for scenario in document["scenarios"]:
        results: List[Dict[str, Any]] = scenario["results"]
        assert results, scenario
        for result in results:
            assert set(result) >= RESULT_KEYS, result
            assert result["ops_per_s"] > 0 and result["p50_us"] <= result["p99_us"]
            assert result["errors"] == 0
        stock = [r for r in results if r["pool"].startswith("psycopg2.pool ")]
        assert len(stock) == 1 and stock[0]["vs_stock"] == 1
        assert any(r["pool"].startswith("pgpool_compat ") for r in results)
    assert "psycopg2.pool" in out.getvalue() and "vs stock" in out.getvalue()


def test_progress_bar_on_a_terminal(pg_dsn: str) -> None:
    primary, secondary = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    try:
        process = subprocess.Popen(
            [*BENCH, "--dsn", pg_dsn, "--quick", "--scenario", "overhead"],
            stdout=subprocess.PIPE,
            stderr=secondary,
            text=True,
            env=env,
            cwd=str(REPO),
        )
        os.close(secondary)
        stdout, _ = process.communicate(timeout=60)
        chunks = []
        while select.select([primary], [], [], 0.5)[0]:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(primary)
    terminal = b"".join(chunks).decode(errors="replace")
    assert process.returncode == 0
    assert "\r[" in terminal and "overhead: psycopg2.pool" in terminal
    assert "\r[" not in stdout and "overhead: checkout + checkin" in stdout


def test_quick_run_with_throwaway_server(tmp_path: Path) -> None:
    """The README's first line: no server set up beforehand, table, JSON and chart."""
    target, chart = tmp_path / "quick.json", tmp_path / "quick.png"
    started = time.monotonic()
    process = _bench_process("--quick", "--json", str(target), "--plot", str(chart))
    stdout, stderr = process.communicate(timeout=85)
    elapsed = time.monotonic() - started
    assert process.returncode == 0, stderr[-2000:]
    # Target is under 30 s on an idle 2-core machine; leave room for a busy shared one.
    assert elapsed < 60, f"--quick took {elapsed:.1f} s"
    match = STARTED.search(stderr)
    assert match, stderr
    assert not Path(match.group(2)).exists()  # throwaway server removed
    assert not _accepts(int(match.group(1)))
    assert "\r[" not in stderr  # no progress bar when stderr is not a terminal
    for name in SCENARIO_NAMES:
        assert f"\n{name}: " in stdout
    document = json.loads(target.read_text())
    by_name = {scenario["name"]: scenario["results"] for scenario in document["scenarios"]}
    assert list(by_name) == list(SCENARIO_NAMES)
    contention = {r["key"]: r for r in by_name["contention"]}
    assert {"stock", "pgpool", "pgpool_production"} <= set(contention)
    assert contention["pgpool_production"]["errors"] == 0  # it waits, stock retries
    assert contention["stock"]["errors"] > 0
    restart = {r["key"]: r for r in by_name["restart"]}
    assert restart["stock"]["dead_after_restart"] > 0  # stock hands out dead connections
    assert restart["pgpool"]["dead_after_restart"] == 0  # the socket check catches them
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bare_machine_runs_on_the_embedded_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No local server binaries: the bench starts pgserver's PostgreSQL and says so."""
    from pgpool_compat import testing as harness

    if harness._embedded_bin_dir() is None:
        pytest.skip("no pgserver wheel installed (none is published for this platform)")
    monkeypatch.setattr(harness, "_local_bin_dir", lambda: None)
    target = tmp_path / "bare.json"
    assert cli.main(["--quick", "--scenario", "overhead", "--json", str(target)]) == 0
    started = [line for line in capsys.readouterr().err.splitlines() if "started" in line]
    assert len(started) == 1
    assert re.match(
        r"bench: started PostgreSQL 1\d\.\d+ \(throwaway server\) from embedded \(pgserver wheel ",
        started[0],
    ), started
    machine = json.loads(target.read_text())["machine"]
    assert machine["server"].startswith("throwaway, embedded (pgserver wheel ")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_ctrl_c_lost_in_a_finalizer_still_stops_the_bench() -> None:
    """Python drops an exception raised inside ``__del__``, KeyboardInterrupt included; the
    pools' finalizers run all through the bench, so the next step raises it again."""
    progress = Progress(5, io.StringIO())
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs as a background job

    class Finalized:
        def __del__(self) -> None:
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt), cli._ctrl_c_noted(progress):
        Finalized()  # collected at once: the Ctrl-C lands in its __del__ and is dropped
        progress.step("the next pool")
    assert signal.getsignal(signal.SIGINT) is before  # put back as it was


def test_ctrl_c_removes_the_throwaway_server() -> None:
    process = _bench_process("--quick", "--scenario", "contention", "churn")
    assert process.stderr is not None
    try:
        line = process.stderr.readline()  # the server is up once this line is out
        match = STARTED.search(line)
        assert match, line
        port, data_dir = int(match.group(1)), Path(match.group(2))
        assert data_dir.exists() and _accepts(port)
        time.sleep(1.5)  # well inside the run
        assert process.poll() is None
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=40)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, rest[-2000:]
    assert "interrupted" in rest
    assert not data_dir.parent.exists()
    assert not _accepts(port)


def test_ctrl_c_again_during_clean_up_is_quiet_and_leaves_nothing(private_tmp: Path) -> None:
    """An impatient user presses Ctrl-C again (and again) while the bench cleans up: the
    clean-up finishes, no traceback, exit status 130. The Ctrl-Cs come 30 ms apart for half
    a second, through the server's stop and the removal of its files and template."""
    process = _bench_process("--quick", "--scenario", "contention", tmpdir=private_tmp)
    assert process.stderr is not None
    try:
        line = process.stderr.readline()
        match = STARTED.search(line)
        assert match, line
        port = int(match.group(1))
        time.sleep(1.0)  # inside the contention scenario
        for _ in range(16):
            if process.poll() is not None:
                break
            process.send_signal(signal.SIGINT)
            time.sleep(0.03)
        _, rest = process.communicate(timeout=40)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # 130; or, for a Ctrl-C after Python's own exit clean-up (handlers back at their
    # defaults), death by SIGINT, which a shell also reports as 130.
    assert process.returncode in (130, -signal.SIGINT), rest[-2000:]
    assert "Traceback" not in rest and "bench: interrupted" in rest, rest[-2000:]
    assert list(private_tmp.iterdir()) == []  # server, data and initdb template all gone
    assert not _accepts(port)
