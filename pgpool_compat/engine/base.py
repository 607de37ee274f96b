"""What both runners hold: the settings, the driver, the name every log line starts with,
the core's books and the metrics observer. Each runner adds its lock or loop and its verbs."""

from __future__ import annotations

import contextlib
import time
from typing import Generic, Optional, TypeVar

from ..driver import Driver
from ..driver_async import AsyncDriver
from ..settings import Settings
from .core import Core
from .stats import Observer

__all__ = ["RunnerBase"]

DriverT = TypeVar("DriverT")


class RunnerBase(Generic[DriverT]):
    """The state a runner is built with; see ``ThreadedRunner`` and ``AsyncRunner``."""

    def __init__(self, settings: Settings, driver: DriverT, kind: str) -> None:
        self.settings = settings
        self.driver = driver
        self.kind = kind
        self.name = settings.name or f"pool-{id(self):x}"
        if isinstance(driver, (Driver, AsyncDriver)):
            # Its log lines name the pool, as the engine's do (a driver shared by several
            # pools names the last one; one whose log_name is read-only keeps its own).
            with contextlib.suppress(AttributeError):
                driver.log_name = self.name
        self.core = Core(settings)
        if isinstance(driver, Driver):
            self.core.stray_state = driver.adopt_state
        self.core.schedule_upkeep(time.monotonic())
        #: None unless metrics are on; then it hears create, wait and use durations.
        self.observer: Optional[Observer] = None

    @property
    def closed(self) -> bool:
        return self.core.closed
