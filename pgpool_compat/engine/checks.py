"""When and how a pool checks a connection: the socket probe, a ping, the user's callable.

Runners call these with no lock held (a ping is a round trip; a user's callable may do
anything). A connection found dead makes the "ping" mode suspect every connection opened
before it, so those are pinged at their next checkout whatever their idle time.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, Tuple

from ..driver import Driver, has_probe
from ..settings import Settings
from . import log
from .entry import Entry

__all__ = ["CheckPolicy"]


class CheckPolicy:
    """One pool's check setting turned into decisions and calls."""

    def __init__(self, settings: Settings, driver: Driver[Any], name: str) -> None:
        check = settings.check
        self._driver = driver
        self._name = name
        self._callable: Optional[Callable[[Any], Any]] = check if callable(check) else None
        self._ping = check == "ping"
        self._ping_after = settings.ping_after
        self._check_timeout = settings.check_timeout
        #: The zero-round-trip probe run on every checkout, or None (off / no probe).
        self.probe = driver.is_alive if check is not None and has_probe(driver) else None
        #: Whether some checkouts need a check that does I/O (ping, callable).
        self.slow = self._ping or self._callable is not None
        self._suspect_before = -1.0
        self._suspect_marked_at = -1.0

    def passes(
        self, entry: Entry, now: float, deadline: Optional[float], probed: bool = False
    ) -> Tuple[bool, str]:
        """Run the checkout checks (I/O, no lock held): whether ``entry`` may be lent, and
        which check failed. The probe is skipped if ``probed`` already (a second poll could
        say alive: the first consumed what the server sent). A ping waits
        ``check_timeout`` at most and never past ``deadline``."""
        probe = None if probed else self.probe
        try:
            if probe is not None and not probe(entry.conn, entry.state):
                return False, "socket"
            if not self.slow:
                return True, ""
            if self._callable is not None:
                return bool(self._callable(entry.conn)), "check"
            if self._needs_ping(entry, now):
                return self._ping_once(entry, deadline), "ping"
            return True, ""
        except Exception as error:
            log.check_raised(self._name, error)
            return False, "check"

    def full_check(self, entry: Entry) -> bool:
        """``check()``'s verdict: the configured check, or the socket probe when none is
        configured (the caller asked for a check)."""
        try:
            if self._callable is not None:
                return bool(self._callable(entry.conn))
            if self._ping:
                return self._ping_once(entry, None)
            return self._driver.is_alive(entry.conn, entry.state)
        except Exception as error:
            log.check_raised(self._name, error)
            return False

    def probe_alive(self, entry: Entry) -> bool:
        """The keeper's zero-round-trip sweep: the driver's probe only."""
        try:
            return self._driver.is_alive(entry.conn, entry.state)
        except Exception:
            return False

    def lost(self, entry: Entry, now: float) -> None:
        """``entry`` was found dead: suspect those opened before it."""
        self._suspect_before = max(self._suspect_before, entry.created_at)
        self._suspect_marked_at = now

    def _needs_ping(self, entry: Entry, now: float) -> bool:
        return now - entry.idle_since > self._ping_after or (
            entry.created_at <= self._suspect_before and entry.last_good < self._suspect_marked_at
        )

    def _ping_once(self, entry: Entry, deadline: Optional[float]) -> bool:
        limit = self._check_timeout
        if deadline is not None:
            limit = max(0.001, min(limit, deadline - time.monotonic()))
        alive = self._driver.ping(entry.conn, entry.state, limit)
        if alive:
            entry.last_good = time.monotonic()
        return alive
