"""The per-connection record of the pre-engine psycopg2 shell: the engine's ``Entry``.

One class owns a connection's timestamps, expiry and checkout stack for every face; this
module keeps the old constructor (no key: those books have none) for ``pool.py``.
"""

from __future__ import annotations

from typing import Any, Optional

from .engine.entry import LIFETIME_JITTER, Entry, jittered_deadline

__all__ = ["LIFETIME_JITTER", "ConnRecord", "jittered_deadline"]


class ConnRecord(Entry):
    """An ``Entry`` of the single-key books (its key is always ``None``)."""

    __slots__ = ()

    def __init__(self, conn: Any, state: Any, now: float, lifetime: Optional[float]) -> None:
        super().__init__(conn, state, None, now, lifetime)
