"""What the pool remembers about each connection beside psycopg2.pool's own books."""

from __future__ import annotations

import os
import random
import traceback
from typing import Any, List, Optional

__all__ = ["LIFETIME_JITTER", "ConnRecord", "jittered_deadline"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep

#: Each lifetime is cut by a random share up to this, so a pool opened at once does not
#: expire at once (a reconnect storm).
LIFETIME_JITTER = 0.10


def jittered_deadline(start: float, lifetime: Optional[float]) -> Optional[float]:
    """When a connection opened at ``start`` expires, or ``None`` for no lifetime."""
    if lifetime is None:
        return None
    return start + lifetime * (1.0 - random.uniform(0.0, LIFETIME_JITTER))


class ConnRecord:
    """Timestamps (``time.monotonic()``) and driver state of one connection.

    It holds a strong reference to the connection so that ``id(conn)``, its key in the
    pool's maps, cannot be reused by another object while the record exists.
    """

    __slots__ = (
        "checked_out_at",
        "checkout_stack",
        "conn",
        "created_at",
        "expires_at",
        "idle_since",
        "last_good",
        "leak_reported",
        "state",
    )

    def __init__(self, conn: Any, state: Any, now: float, lifetime: Optional[float]) -> None:
        self.conn = conn
        self.state = state  # what the driver's ``prepare`` returned, passed back to it
        self.created_at = now
        self.expires_at = jittered_deadline(now, lifetime)
        self.idle_since = now
        self.last_good = now  # last time a check or a clean return showed it working
        self.checked_out_at = now
        self.checkout_stack: Optional[List[str]] = None
        self.leak_reported = False

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def capture_stack(self) -> None:
        """Remember who checked the connection out, for the leak warning."""
        self.leak_reported = False
        frames = traceback.extract_stack()
        # Drop the package's own frames: the stack a user wants ends in their code.
        while frames and frames[-1].filename.startswith(_PACKAGE_DIR):
            frames.pop()
        self.checkout_stack = traceback.format_list(frames)
