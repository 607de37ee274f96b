"""Pool metrics by OpenTelemetry's database-client connection-pool conventions.

``instrument()`` reports every live pool of every face through OpenTelemetry;
``PrometheusCollector()`` exposes the same figures to ``prometheus_client``. Both read the
pools' own figures when collected and receive durations through the pools' observer hook,
which is switched on only while one of them is active: with neither, pools run no metrics
code at all. See docs/metrics.md.

Pools are labelled by name: ``pool_name``, else ``host:port/dbname`` (never a user or
password), else the pool's log name. Pools that share a label are reported as one (their
figures are added), as the conventions ask for one series per pool name.
"""

from __future__ import annotations

import bisect
import threading
import weakref
from typing import Any, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

from . import __version__
from ._commands import pip_install
from .engine import stats

__all__ = [
    "BUCKETS",
    "PoolFigures",
    "PrometheusCollector",
    "instrument",
    "label_of",
    "observe_alone",
    "pool_figures",
    "uninstrument",
]

#: Histogram bucket bounds, in seconds, for create, wait and use times: from a hand-over
#: from the idle set (well under a millisecond) to a connect through a slow network.
BUCKETS: Tuple[float, ...] = (
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0,
)  # fmt: skip

POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"

#: The three durations: (name in the conventions, _PoolObserver attribute, description).
DURATIONS = (
    ("create_time", "create", "The time it took to create a new connection"),
    ("wait_time", "wait", "The time it took to obtain an open connection from the pool"),
    ("use_time", "use", "The time between borrowing a connection and returning it to the pool"),
)

#: The gauges: (name in the conventions, unit, description, figure).
GAUGES = (
    ("max", "{connection}", "The maximum number of open connections allowed", "max"),
    ("idle.max", "{connection}", "The maximum number of idle open connections allowed",
     "idle_max"),
    ("idle.min", "{connection}", "The minimum number of idle open connections allowed",
     "idle_min"),
    ("pending_requests", "{request}",
     "The number of current pending requests for an open connection", "pending_requests"),
)  # fmt: skip

COUNT_DESCRIPTION = (
    "The number of connections that are currently in state described by the state attribute"
)
TIMEOUTS_DESCRIPTION = (
    "The number of connection timeouts that have occurred trying to obtain a connection "
    "from the pool"
)


class PoolFigures(NamedTuple):
    """One pool's gauges in the conventions' terms."""

    name: str  # the label: see label_of()
    idle: int
    used: int  # borrowed, or being opened, reset or checked
    max: int
    idle_max: int
    idle_min: int
    pending_requests: int
    timeouts: int


def label_of(pool: Any) -> str:
    """``db.client.connection.pool.name``: a face may say (``metrics_label``: the psycopg2
    faces give ``pool_name``, else ``host:port/dbname``), else the pool's own name."""
    return getattr(pool, "metrics_label", None) or str(pool.name)


def pool_figures() -> List[PoolFigures]:
    """The figures of every open pool of every face, those sharing a label added together."""
    by_name: Dict[str, PoolFigures] = {}
    for pool in stats.live_runners():
        raw = pool.figures()
        figures = PoolFigures(
            label_of(pool), raw.idle, raw.size - raw.idle, raw.max, raw.idle_max, raw.idle_min,
            raw.pending, raw.timeouts,
        )  # fmt: skip
        seen = by_name.get(figures.name)
        if seen is not None:
            figures = PoolFigures(figures.name, *(a + b for a, b in zip(seen[1:], figures[1:])))
        by_name[figures.name] = figures
    return list(by_name.values())


# -- durations: the observer each pool gets while metrics are on -------------------------


class _Histogram:
    """Bucket counts and sum of one duration of one pool (for Prometheus)."""

    __slots__ = ("_lock", "counts", "total")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0

    def add(self, seconds: float) -> None:
        index = bisect.bisect_left(BUCKETS, seconds)  # a bound is inclusive: le
        with self._lock:
            self.counts[index] += 1
            self.total += seconds

    def snapshot(self) -> Tuple[List[int], float]:
        with self._lock:
            return list(self.counts), self.total


class _PoolObserver:
    """One pool's observer: keeps histograms for Prometheus, records to OpenTelemetry
    (``otel``, else the instruments of ``instrument()``, if any)."""

    __slots__ = ("attributes", "create", "name", "otel", "use", "wait")

    def __init__(self, name: str, otel: Optional[_OpenTelemetry] = None) -> None:
        self.name = name
        self.otel = otel
        self.attributes = {POOL_NAME: name}
        self.create = _Histogram()
        self.wait = _Histogram()
        self.use = _Histogram()

    # The engine's Observer protocol: the pool's log name comes first; ours is self.name.

    def created(self, pool_name: str, seconds: float) -> None:
        self.create.add(seconds)
        otel = self.otel or _otel
        if otel is not None:
            otel.histograms["create_time"].record(seconds, self.attributes)

    def waited(self, pool_name: str, seconds: float) -> None:
        self.wait.add(seconds)
        otel = self.otel or _otel
        if otel is not None:
            otel.histograms["wait_time"].record(seconds, self.attributes)

    def used(self, pool_name: str, seconds: float) -> None:
        self.use.add(seconds)
        otel = self.otel or _otel
        if otel is not None:
            otel.histograms["use_time"].record(seconds, self.attributes)


def _observer_for(pool: Any) -> _PoolObserver:
    return _PoolObserver(label_of(pool))


def observe_alone(pool: Any) -> Any:
    """Record ``pool``'s durations, and only its, to a private OpenTelemetry SDK meter
    provider with an in-memory reader, which is returned. For the bench's "metrics on" row:
    the full cost of metrics on that pool, without instrumenting the pools it is compared to.
    """
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    otel = _OpenTelemetry(MeterProvider(metric_readers=[reader]))
    pool.observer = _PoolObserver(label_of(pool), otel)
    return reader


def _observers() -> Iterator[_PoolObserver]:
    """The observers of the open pools."""
    for pool in stats.live_runners():
        observer = pool.observer
        if isinstance(observer, _PoolObserver):
            yield observer


# Reentrant: a collector's finalizer may run in a garbage-collection pass under it.
_state_lock = threading.RLock()
_collectors: weakref.WeakSet[PrometheusCollector] = weakref.WeakSet()


def _update_observers() -> None:
    """Observers on while OpenTelemetry is instrumented or a collector exists, else off."""
    wanted = _otel is not None or any(True for _ in _collectors)  # skips dead ones
    if wanted != stats.observers_enabled():
        stats.set_observer_factory(_observer_for if wanted else None)


# -- OpenTelemetry --------------------------------------------------------------------------


# The oldest OpenTelemetry that takes the histograms' buckets (setup.cfg's floor).
_OTEL_REQUIREMENT = "opentelemetry-api>=1.30"


def _otel_version() -> str:
    try:
        from importlib.metadata import version

        return f"opentelemetry-api {version('opentelemetry-api')}"
    except Exception:  # metadata missing: say what we know
        return "the installed opentelemetry-api"


class _OpenTelemetry:
    """The instruments of one ``instrument()`` call."""

    def __init__(self, meter_provider: Any) -> None:
        from opentelemetry import metrics as otel_metrics

        self.meter_provider = meter_provider or otel_metrics.get_meter_provider()
        meter = self.meter_provider.get_meter("pgpool_compat", __version__)
        try:
            self.histograms = {
                name: meter.create_histogram(
                    f"db.client.connection.{name}",
                    unit="s",
                    description=description,
                    explicit_bucket_boundaries_advisory=list(BUCKETS),
                )
                for name, _attribute, description in DURATIONS
            }
        except TypeError as error:
            if "explicit_bucket_boundaries_advisory" not in str(error):
                raise
            # OpenTelemetry before 1.30 has no way to give the buckets; its default ones
            # (0 to 10,000) would put every duration in seconds in the first few.
            raise ImportError(
                f"pgpool_compat.metrics needs {_OTEL_REQUIREMENT} (histogram buckets), not "
                f"{_otel_version()}: {pip_install(repr(_OTEL_REQUIREMENT))}"
            ) from None
        meter.create_observable_up_down_counter(
            "db.client.connection.count",
            callbacks=[self._count],
            unit="{connection}",
            description=COUNT_DESCRIPTION,
        )
        for name, unit, description, figure in GAUGES:
            meter.create_observable_up_down_counter(
                f"db.client.connection.{name}",
                callbacks=[self._gauge(figure)],
                unit=unit,
                description=description,
            )
        meter.create_observable_counter(
            "db.client.connection.timeouts",
            callbacks=[self._gauge("timeouts")],
            unit="{timeout}",
            description=TIMEOUTS_DESCRIPTION,
        )

    def _figures(self) -> List[PoolFigures]:
        return pool_figures() if _otel is self else []  # nothing after uninstrument()

    def _count(self, options: Any) -> Iterator[Any]:
        from opentelemetry.metrics import Observation

        for figures in self._figures():
            yield Observation(figures.idle, {POOL_NAME: figures.name, STATE: "idle"})
            yield Observation(figures.used, {POOL_NAME: figures.name, STATE: "used"})

    def _gauge(self, figure: str) -> Any:
        from opentelemetry.metrics import Observation

        def callback(options: Any) -> Iterator[Any]:
            for figures in self._figures():
                yield Observation(getattr(figures, figure), {POOL_NAME: figures.name})

        return callback


_otel: Optional[_OpenTelemetry] = None
# Instruments already made, one set per meter provider: a provider keeps an instrument for
# good and ignores a second one of the same name, so instrument() again reuses them.
_made: List[_OpenTelemetry] = []


def instrument(meter_provider: Any = None) -> None:
    """Report every pool, of every face, through OpenTelemetry.

    ``meter_provider``: the provider to use (default: the global one). Pools created later
    are included; closed and collected pools stop being reported. Calling it again
    replaces the previous instruments.
    """
    global _otel
    try:
        import opentelemetry.metrics  # noqa: F401
    except ImportError:
        raise ImportError(
            "pgpool_compat.metrics.instrument() needs the OpenTelemetry API: "
            "pip install 'pgpool_compat[metrics]'"
        ) from None
    from opentelemetry.metrics import get_meter_provider

    provider = meter_provider or get_meter_provider()
    with _state_lock:
        made = [instruments for instruments in _made if instruments.meter_provider is provider]
        if not made:
            made.append(_OpenTelemetry(provider))
            _made.append(made[0])
        _otel = made[0]
        _update_observers()


def uninstrument() -> None:
    """Stop reporting through OpenTelemetry (a no-op when not instrumented)."""
    global _otel
    with _state_lock:
        _otel = None
        _update_observers()


# -- Prometheus -----------------------------------------------------------------------------


class PrometheusCollector:
    """A ``prometheus_client`` collector with the same figures in Prometheus naming.

    Register it once: ``prometheus_client.REGISTRY.register(PrometheusCollector())``.
    Durations are recorded from the moment the first collector is created.
    """

    def __init__(self) -> None:
        try:
            from prometheus_client import core
        except ImportError:
            raise ImportError(
                "pgpool_compat.metrics.PrometheusCollector needs the Prometheus client: "
                "pip install 'pgpool_compat[prometheus]'"
            ) from None
        self._core = core
        with _state_lock:
            _collectors.add(self)
            _update_observers()
        weakref.finalize(self, _collector_gone)

    def describe(self) -> Iterable[Any]:
        """The metric families, without samples (lets a registry check names cheaply)."""
        return self._families([], [])

    def collect(self) -> Iterable[Any]:
        return self._families(pool_figures(), list(_observers()))

    def _families(
        self, pools: Sequence[PoolFigures], observers: Sequence[_PoolObserver]
    ) -> List[Any]:
        core = self._core
        count = core.GaugeMetricFamily(
            "db_client_connection_count", COUNT_DESCRIPTION, labels=["pool_name", "state"]
        )
        families = [count]
        for figures in pools:
            count.add_metric([figures.name, "idle"], figures.idle)
            count.add_metric([figures.name, "used"], figures.used)
        for name, _unit, description, figure in GAUGES:
            gauge = core.GaugeMetricFamily(
                "db_client_connection_" + name.replace(".", "_"),
                description,
                labels=["pool_name"],
            )
            for figures in pools:
                gauge.add_metric([figures.name], getattr(figures, figure))
            families.append(gauge)
        timeouts = core.CounterMetricFamily(
            "db_client_connection_timeouts", TIMEOUTS_DESCRIPTION, labels=["pool_name"]
        )
        for figures in pools:
            timeouts.add_metric([figures.name], figures.timeouts)
        families.append(timeouts)
        for name, attribute, description in DURATIONS:
            histogram = core.HistogramMetricFamily(
                f"db_client_connection_{name}_seconds", description, labels=["pool_name"]
            )
            for pool_name, (counts, total) in _merged(observers, attribute).items():
                histogram.add_metric([pool_name], _cumulative(counts), total)
            families.append(histogram)
        return families


def _collector_gone() -> None:
    with _state_lock:
        _update_observers()


def _merged(
    observers: Sequence[_PoolObserver], attribute: str
) -> Dict[str, Tuple[List[int], float]]:
    """One duration's histograms by pool name, those sharing a name added together."""
    merged: Dict[str, Tuple[List[int], float]] = {}
    for observer in observers:
        counts, total = getattr(observer, attribute).snapshot()
        seen = merged.get(observer.name)
        if seen is not None:
            counts = [a + b for a, b in zip(seen[0], counts)]
            total += seen[1]
        merged[observer.name] = (counts, total)
    return merged


def _cumulative(counts: List[int]) -> List[Tuple[str, float]]:
    """Per-bucket counts as Prometheus's cumulative ``le`` buckets, +Inf last."""
    buckets = []
    running = 0
    for bound, count in zip([*map(str, BUCKETS), "+Inf"], counts):
        running += count
        buckets.append((bound, float(running)))
    return buckets
