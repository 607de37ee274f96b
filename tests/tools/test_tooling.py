"""The repository's tools: scripts/reliability_table.py, the PgBouncer helper's command line,
scripts/test.sh's install stamp, and benchmarks/hot_path_floor.py."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Dict

import pytest

from tests.faults import pgbouncer

REPO = Path(__file__).resolve().parents[2]


def _load_table_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "reliability_table", REPO / "scripts" / "reliability_table.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


table = _load_table_script()


def _fault(title: str, stock: int, ours: int, test: str) -> Dict[str, Any]:
    def result(value: int) -> Dict[str, Any]:
        return {"figures": [["dead connections handed out", value]], "measured_at": "x"}

    return {
        "title": title,
        "reproduce": f"python -m pytest {test}",
        "results": {"stock": result(stock), "pgpool_compat": result(ours)},
    }


RESTART = _fault("Server restart, idle pool", 3, 0, "tests/faults/test_restart.py::t")
BOUNCER = _fault("PgBouncer restarted, idle pool", 2, 0, "tests/faults/test_pgbouncer.py::t")
CUT = _fault("Network cut", 2, 0, "tests/faults/test_network.py::t")


def _document(**faults: Dict[str, Any]) -> Dict[str, Any]:
    return {"faults": {name.replace("_", "-"): entry for name, entry in faults.items()}}


def _rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("| <a id=")]


def test_rows_this_run_did_not_measure_are_kept_and_marked() -> None:
    everything, kept = table.render(
        _document(restart_idle=RESTART, pgbouncer_restart=BOUNCER, network_cut=CUT)
    )
    assert kept == [] and table.KEPT_MARK not in everything
    # The next run has no PgBouncer: its row must survive, with its figures, marked.
    without, kept = table.render(
        _document(restart_idle=RESTART, network_cut=CUT), table.previous_rows(everything)
    )
    assert kept == ["pgbouncer-restart"]
    rows = _rows(without)
    assert [row.split('"')[1] for row in rows] == [
        "restart-idle",
        "network-cut",
        "pgbouncer-restart",
    ]  # the table's order, kept rows included
    bouncer_row = rows[2]
    assert table.KEPT_MARK in bouncer_row and "dead connections handed out: 2" in bouncer_row
    assert all(table.KEPT_MARK not in row for row in rows[:2])
    assert "1 row(s) marked *not measured in this run*" in without
    # Kept again on a third run: still one mark, same figures.
    again, kept = table.render(
        _document(restart_idle=RESTART, network_cut=CUT), table.previous_rows(without)
    )
    assert kept == ["pgbouncer-restart"] and again == without
    # Measured again: the mark goes.
    measured, kept = table.render(
        _document(restart_idle=RESTART, pgbouncer_restart=BOUNCER, network_cut=CUT),
        table.previous_rows(again),
    )
    assert kept == [] and measured == everything


def test_rows_of_a_table_without_anchors_are_matched_by_title() -> None:
    old = (
        "| Fault | stock psycopg2.pool | pgpool_compat | Reproduce |\n|---|---|---|---|\n"
        "| Server restart, idle pool | a: 1 | a: 0 | `python -m pytest tests/x.py::t` |\n"
        "| PgBouncer restarted, idle pool | a: 2 | a: 0 | `python -m pytest tests/y.py::t` |\n"
    )
    text, kept = table.render(_document(restart_idle=RESTART), table.previous_rows(old))
    assert kept == ["PgBouncer restarted, idle pool"]
    assert text.count("Server restart, idle pool") == 1  # measured again: replaced
    assert "`.venv/bin/python -m pytest tests/y.py::t`" in text  # the venv's interpreter


def test_script_reports_kept_rows_on_stderr(tmp_path: Path) -> None:
    figures, output = tmp_path / "figures.json", tmp_path / "reliability.md"
    figures.write_text(json.dumps(_document(restart_idle=RESTART, pgbouncer_restart=BOUNCER)))
    command = [sys.executable, str(REPO / "scripts" / "reliability_table.py")]
    command += ["--figures", str(figures), "--output", str(output)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    assert first.stderr == ""
    figures.write_text(json.dumps(_document(restart_idle=RESTART)))
    second = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    assert second.stderr.strip() == (
        "kept 1 row(s) this run did not measure, marked as such: pgbouncer-restart"
    )
    assert "PgBouncer restarted, idle pool" in output.read_text()


def test_pgbouncer_helper_without_pgbouncer_says_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(pgbouncer, "find_pgbouncer", lambda: None)
    assert pgbouncer.main(["--", "true"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert "pgbouncer is not installed" in lines[0] and "apt-get install pgbouncer" in lines[0]
    assert pgbouncer.REQUIRE_ENV not in lines[0]  # advice for the test suite, not for this


FAKE_PYTHON = """#!/bin/sh
# Records pip and pytest calls instead of running them; anything else runs for real.
case "$1 $2" in
    "-m pip"|"-m pytest") echo "$*" >>"$CALLS"; exit 0 ;;
esac
exec "$REAL_PYTHON" "$@"
"""


def test_test_script_installs_only_when_packaging_files_change(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    for name in ("setup.cfg", "pyproject.toml", "scripts/test.sh"):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, copy / name)
    fake = copy / ".venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    calls = tmp_path / "calls"
    # PGPOOL_TEST_DSN set: no server probe; the fake pytest ignores it anyway.
    env = dict(os.environ, CALLS=str(calls), REAL_PYTHON=sys.executable, PGPOOL_TEST_DSN="host=x")

    def pip_calls_of_a_run() -> list[str]:
        calls.write_text("")
        done = subprocess.run(
            ["bash", "scripts/test.sh", "-q"],
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert calls.read_text().splitlines()[-1] == "-m pytest -q"
        return [call for call in calls.read_text().splitlines() if call.startswith("-m pip")]

    assert any("-e .[test,bench,plot]" in call for call in pip_calls_of_a_run())
    assert pip_calls_of_a_run() == []  # nothing changed: nothing installed
    with open(copy / "setup.cfg", "a") as setup_cfg:
        setup_cfg.write("# a new dependency, say\n")
    assert any("-e .[test,bench,plot]" in call for call in pip_calls_of_a_run())


def test_hot_path_floor_compares_the_yardsticks_with_stock_and_ours(
    pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = importlib.util.spec_from_file_location(
        "hot_path_floor", REPO / "benchmarks" / "hot_path_floor.py"
    )
    assert spec is not None and spec.loader is not None
    floor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(floor)
    # The yardsticks keep psycopg2.pool's key contract on the path they know.
    for kind in (floor.FloorPool, floor.ProbedFloorPool):
        pool = kind(pg_dsn)
        conn = pool.getconn("admin")
        assert pool.getconn("admin") is conn
        pool.putconn(conn)
        assert pool.getconn() is conn and pool.requests == 2 and pool.usage_ms >= 0.0
        conn.close()
    assert floor.main(["--dsn", pg_dsn, "--rounds", "1", "--pairs", "50"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row[:32].strip() for row in rows] == list(floor.POOLS)
    assert all(row.split()[-1].endswith("x") for row in rows)
