"""One object per connection, owning everything the pool knows about it."""

from __future__ import annotations

import os
import random
import traceback
from typing import Any, Hashable, List, Optional

__all__ = ["LIFETIME_JITTER", "Entry", "jittered_deadline"]

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep

#: Each lifetime is cut by a random share up to this, so a pool opened at once does not
#: expire at once (a reconnect storm).
LIFETIME_JITTER = 0.10


def jittered_deadline(start: float, lifetime: Optional[float]) -> Optional[float]:
    """When a connection opened at ``start`` expires, or ``None`` for no lifetime."""
    if lifetime is None:
        return None
    return start + lifetime * (1.0 - random.uniform(0.0, LIFETIME_JITTER))


class Entry:
    """A pooled connection: its key, driver state, timestamps (``time.monotonic()``),
    expiry and checkout stack.

    The entry holds the connection strongly, so ``id(conn)`` (the books' key: connections
    are never hashed) cannot be reused by another object while the pool holds it.
    """

    __slots__ = (
        "checked_out_at",
        "checkout_stack",
        "conn",
        "created_at",
        "expires_at",
        "idle_since",
        "key",
        "last_good",
        "leak_reported",
        "state",
    )

    def __init__(
        self, conn: Any, state: Any, key: Hashable, now: float, lifetime: Optional[float]
    ) -> None:
        self.conn = conn
        self.state = state  # what the driver's prepare() returned; passed back to it
        self.key = key  # the sub-pool (endpoint) it belongs to
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
