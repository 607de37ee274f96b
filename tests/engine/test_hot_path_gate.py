"""Regression gate on the hot path: checkout+checkin cost in CPU instructions vs stock.

Instruction counts (valgrind's callgrind, via ``benchmarks/overhead_instructions.py``) do
not swing with the machine's load the way wall-clock timings do, so a ceiling on the ratio
to stock psycopg2.pool, measured in the same run, is a test that can fail for real.

Ceilings: the measured figures plus a margin, each under its issue-11 target where the
target is met (2.0x with the probe on, the factory pool within 10% of the psycopg2 face);
where one is missed (1.3x without checks on the psycopg2 face), the measured figure plus a
margin, so a regression fails while the target stays visible (see CHANGELOG).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any, Dict

import pytest

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed"),
]

OPS = 3000

_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "overhead_instructions.py"


def _bench_module() -> Any:
    spec = importlib.util.spec_from_file_location("overhead_instructions", _SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ratios(pg_dsn: str) -> Dict[str, float]:
    bench = _bench_module()
    names = [
        "psycopg2.pool (stock)",
        "pgpool_compat defaults",
        "pgpool_compat pool_check=None",
        "ConnectionPool (factory)",
        "engine runner, psycopg2 driver",
        "engine runner, check=None",
    ]
    costs = {name: bench.cost_per_pair(bench.POOLS[name], pg_dsn, OPS) for name in names}
    stock = costs["psycopg2.pool (stock)"]
    return {name: cost / stock for name, cost in costs.items()}


def test_psycopg2_face_with_the_probe_on_is_at_most_2x_stock(ratios: Dict[str, float]) -> None:
    # Target 2.0x. Ratios depend on the interpreter's build: measured 1.82x on pyenv's 3.11.7,
    # 1.91x on Debian's 3.11.2 (callgrind, --ops 5000), so the gate is the target itself.
    assert ratios["pgpool_compat defaults"] <= 2.0, ratios


def test_engine_runner_with_the_probe_on_is_at_most_2x_stock(ratios: Dict[str, float]) -> None:
    # Target 2.0x; measured 1.42x (pyenv 3.11.7) and 1.46x (Debian 3.11.2).
    assert ratios["engine runner, psycopg2 driver"] <= 1.6, ratios


def test_without_checks_no_regression(ratios: Dict[str, float]) -> None:
    # The target is 1.3x (missed by the psycopg2 face); measured 1.59x / 1.67x (face) and
    # 1.25x / 1.30x (runner) on pyenv's 3.11.7 / Debian's 3.11.2: ceilings above both builds,
    # so a regression fails while the target stays visible.
    assert ratios["pgpool_compat pool_check=None"] <= 1.75, ratios
    assert ratios["engine runner, check=None"] <= 1.4, ratios


def test_factory_pool_costs_no_more_than_the_psycopg2_face_plus_10_percent(
    ratios: Dict[str, float],
) -> None:
    # Like for like: neither probes (a factory connection has no socket probe).
    assert ratios["ConnectionPool (factory)"] <= 1.1 * ratios["pgpool_compat pool_check=None"]
