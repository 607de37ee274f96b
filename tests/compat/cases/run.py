"""Run one suite of differential scenarios and print their outcomes as JSON.

    python tests/compat/cases/run.py SUITE SIDE [CASE ...]

SUITE is ``nextorm``, ``escudeiro`` or ``generic_connection_pool``; SIDE is ``original`` (the
library itself) or ``face`` (pgpool_compat.compat). The differential test runs the original
side in a subprocess when it needs another interpreter (nextorm and escudeiro need 3.12+).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

#: Where each side of each suite lives. escudeiro 0.4.0 exports AsyncPool from
#: ``escudeiro.ds`` (its docs' ``escudeiro.ds.pools`` does not have it).
MODULES = {
    ("nextorm", "original"): "nextorm.pool",
    ("nextorm", "face"): "pgpool_compat.compat.nextorm",
    ("escudeiro", "original"): "escudeiro.ds",
    ("escudeiro", "face"): "pgpool_compat.compat.escudeiro",
    ("generic_connection_pool", "original"): "generic_connection_pool",
    ("generic_connection_pool", "face"): "pgpool_compat.compat.generic_connection_pool",
}


def case_names(suite: str) -> List[str]:
    cases = importlib.import_module(f"{suite}_cases")
    return sorted(name for name in vars(cases) if name.startswith("case_"))


def run(suite: str, side: str, names: List[str]) -> Dict[str, Any]:
    cases = importlib.import_module(f"{suite}_cases")
    lib = importlib.import_module(MODULES[suite, side])
    results: Dict[str, Any] = {}
    for name in names or case_names(suite):
        try:
            # Through JSON and back, so both sides compare as the same plain data.
            results[name] = json.loads(json.dumps(getattr(cases, name)(lib)))
        except BaseException:
            results[name] = {"scenario crashed": traceback.format_exc(limit=6)}
    return results


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1], sys.argv[2], sys.argv[3:])))
