"""What both runners hold: the settings, the driver, the name every log line starts with,
the core's books and the metrics observer. Each runner adds its lock or loop and its verbs."""

from __future__ import annotations

import time
from typing import Generic, Optional, TypeVar

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
        self.core = Core(settings)
        self.core.schedule_upkeep(time.monotonic())
        #: None unless metrics are on; then it hears create, wait and use durations.
        self.observer: Optional[Observer] = None

    @property
    def closed(self) -> bool:
        return self.core.closed
