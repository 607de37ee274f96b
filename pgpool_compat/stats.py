"""Pool counters: the engine's (``engine.stats``), under the names the pre-engine modules
import. One class, so the counters of every face are kept the same way."""

from __future__ import annotations

from .engine.stats import COUNTER_KEYS, GAUGE_KEYS
from .engine.stats import Counters as PoolStats

__all__ = ["COUNTER_KEYS", "GAUGE_KEYS", "PoolStats"]
