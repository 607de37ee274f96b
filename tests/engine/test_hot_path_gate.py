"""Regression gate on the hot path: checkout+checkin cost in CPU instructions vs stock.

Instruction counts (valgrind's callgrind, via ``benchmarks/overhead_instructions.py``) do
not swing with the machine's load the way wall-clock timings do, so a ceiling on the ratio
to stock psycopg2.pool, measured in the same run, is a test that can fail for real.

Ceilings: the measured figures plus a margin for the interpreter's build (Debian's Python
3.11.2 counts about 5% more than pyenv's 3.11.7), each under its issue-11 target where the
target is met (2.0x with the probe on, the factory pool within 10% of the psycopg2 face);
where one is missed (1.3x without checks on the psycopg2 face), the measured figure plus that
margin, so a regression fails while the target stays visible (see docs/bench.md).
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
    # Target 2.0x; measured 1.72x on pyenv's 3.11.7 (callgrind, --ops 5000).
    assert ratios["pgpool_compat defaults"] <= 1.9, ratios


def test_engine_runner_with_the_probe_on_is_at_most_2x_stock(ratios: Dict[str, float]) -> None:
    # Target 2.0x; measured 1.34x (pyenv 3.11.7).
    assert ratios["engine runner, psycopg2 driver"] <= 1.5, ratios


def test_without_checks_no_regression(ratios: Dict[str, float]) -> None:
    # The target is 1.3x (missed by the psycopg2 face: see docs/bench.md, "The floor under
    # the targets"); measured 1.50x (face) and 1.18x (runner) on pyenv's 3.11.7.
    assert ratios["pgpool_compat pool_check=None"] <= 1.65, ratios
    assert ratios["engine runner, check=None"] <= 1.3, ratios


def test_factory_pool_costs_no_more_than_the_psycopg2_face_plus_10_percent(
    ratios: Dict[str, float],
) -> None:
    # Like for like: neither probes (a factory connection has no socket probe).
    assert ratios["ConnectionPool (factory)"] <= 1.1 * ratios["pgpool_compat pool_check=None"]
