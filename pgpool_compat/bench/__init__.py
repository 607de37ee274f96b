"""``python -m pgpool_compat bench``: pools side by side on a (throwaway) PostgreSQL.

``adapters`` wraps each pool, ``scenarios`` measures one sample, ``runner`` repeats and
interleaves, ``report`` prints the table, JSON and chart, ``cli`` ties them to the command line.
Only pgpool_compat's public API is used, as any user would.
"""

from __future__ import annotations

from .cli import main

__all__ = ["main"]
