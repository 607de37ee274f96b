"""The same scenarios on each original library and on its pgpool_compat face: same outcomes.

The scenarios live in ``tests/compat/cases/<suite>_cases.py`` and use no pytest and no
pgpool_compat, so they also run in the originals' own interpreter:

- generic-connection-pool installs here (the ``test`` extra pins it): it runs in-process;
- nextorm and escudeiro need Python >= 3.12: they run in ``.venv-seeds`` (made by
  scripts/test.sh from tests/compat/originals-py312.txt when a Python 3.12+ exists, or the
  interpreter named by ``PGPOOL_SEEDS_PYTHON``). Without one those suites skip, naming it.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

CASES_DIR = Path(__file__).resolve().parent / "cases"
REPO = CASES_DIR.parents[2]
sys.path.insert(0, str(CASES_DIR))

runner = importlib.import_module("run")  # tests/compat/cases/run.py

SUITES = ("nextorm", "escudeiro", "generic_connection_pool")
_results: Dict[Any, Dict[str, Any]] = {}


def _seeds_python() -> Optional[str]:
    named = os.environ.get("PGPOOL_SEEDS_PYTHON")
    if named:
        return named
    venv = REPO / ".venv-seeds" / "bin" / "python"
    return str(venv) if venv.exists() else None


def _original_results(suite: str) -> Dict[str, Any]:
    module = runner.MODULES[suite, "original"]
    if importlib.util.find_spec(module.split(".")[0]) is not None:
        return dict(runner.run(suite, "original", []))
    python = _seeds_python()
    if python is None:
        pytest.skip(
            f"the original {module} is not importable here and there is no Python >= 3.12 venv "
            "with it: run scripts/test.sh where python3.12 exists (it builds .venv-seeds from "
            "tests/compat/originals-py312.txt) or set PGPOOL_SEEDS_PYTHON"
        )
    done = subprocess.run(
        [python, str(CASES_DIR / "run.py"), suite, "original"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0 and f"No module named '{module.split('.')[0]}'" in done.stderr:
        pytest.skip(f"{python} lacks {module}: install tests/compat/originals-py312.txt there")
    if done.returncode != 0 or not done.stdout.strip():
        pytest.fail(f"running {suite} scenarios on the original failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout))


def _outcomes(suite: str, side: str) -> Dict[str, Any]:
    if (suite, side) not in _results:
        if side == "original":
            _results[suite, side] = _original_results(suite)
        else:
            _results[suite, side] = dict(runner.run(suite, "face", []))
    return _results[suite, side]


def _params() -> List[Any]:
    return [
        pytest.param(suite, name, id=f"{suite}-{name[len('case_') :]}")
        for suite in SUITES
        for name in runner.case_names(suite)
    ]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("suite", "case"), _params())
def test_face_matches_original(suite: str, case: str) -> None:
    original = _outcomes(suite, "original")[case]
    assert not (isinstance(original, dict) and "scenario crashed" in original), original
    face = _outcomes(suite, "face")[case]
    assert face == original
