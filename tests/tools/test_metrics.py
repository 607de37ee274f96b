"""pgpool_compat.metrics: OpenTelemetry instruments and a Prometheus collector over real pools.

The instruments are read through the OpenTelemetry SDK's InMemoryMetricReader and the
collector through a real prometheus_client HTTP endpoint on loopback; every pool talks to
the throwaway server. Each face is checked for names, units, attributes and values: a held
connection counts as used, a timeout is counted, a wait and a use are timed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import threading
import time
import urllib.request
import uuid
import weakref
from typing import Any, Dict, Iterator, List, Optional, Tuple

import psycopg2
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

import pgpool_compat
from pgpool_compat import metrics
from pgpool_compat.engine import stats
from pgpool_compat.manager import PoolManager

POOL = "db.client.connection.pool.name"
STATE = "db.client.connection.state"
HOLD = 0.15  # seconds a test holds a connection, or keeps a caller waiting


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    """Instruments on a private meter provider, read in memory; uninstrumented afterwards."""
    memory = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[memory])
    metrics.instrument(meter_provider=provider)
    try:
        yield memory
    finally:
        metrics.uninstrument()
        provider.shutdown()


class Reading:
    """One collection: every data point by metric name, and each metric's unit."""

    def __init__(self, reader: InMemoryMetricReader) -> None:
        self.points: Dict[str, List[Any]] = {}
        self.units: Dict[str, str] = {}
        data = reader.get_metrics_data()
        for resource in data.resource_metrics if data is not None else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    self.points.setdefault(metric.name, []).extend(metric.data.data_points)
                    self.units[metric.name] = metric.unit

    def value(self, name: str, pool: str, **attributes: str) -> Any:
        """The value (or histogram point) of ``name`` for ``pool``; None when absent."""
        wanted = {POOL: pool, **{f"db.client.connection.{k}": v for k, v in attributes.items()}}
        for point in self.points.get(name, []):
            if dict(point.attributes) == wanted:
                return getattr(point, "value", point)
        return None


def gauges(reading: Reading, pool: str) -> Dict[str, Any]:
    prefix = "db.client.connection."
    return {
        "idle": reading.value(prefix + "count", pool, state="idle"),
        "used": reading.value(prefix + "count", pool, state="used"),
        "max": reading.value(prefix + "max", pool),
        "idle_max": reading.value(prefix + "idle.max", pool),
        "idle_min": reading.value(prefix + "idle.min", pool),
        "pending": reading.value(prefix + "pending_requests", pool),
        "timeouts": reading.value(prefix + "timeouts", pool),
    }


def test_units_follow_the_conventions(
    reader: InMemoryMetricReader, pg_dsn: str, pools: List[Any]
) -> None:
    name = unique("units")
    pool = pgpool_compat.ThreadedConnectionPool(1, 2, pg_dsn, pool_name=name)
    pools.append(pool)
    pool.putconn(pool.getconn())
    units = Reading(reader).units
    assert units == {
        "db.client.connection.count": "{connection}",
        "db.client.connection.max": "{connection}",
        "db.client.connection.idle.max": "{connection}",
        "db.client.connection.idle.min": "{connection}",
        "db.client.connection.pending_requests": "{request}",
        "db.client.connection.timeouts": "{timeout}",
        "db.client.connection.create_time": "s",
        "db.client.connection.wait_time": "s",
        "db.client.connection.use_time": "s",
    }


def test_threaded_pool_held_timeout_wait_and_use(
    reader: InMemoryMetricReader, pg_dsn: str, pools: List[Any]
) -> None:
    name = unique("threaded")
    pool = pgpool_compat.ThreadedConnectionPool(
        1, 2, pg_dsn, pool_name=name, pool_timeout=4 * HOLD
    )
    pools.append(pool)
    first, second = pool.getconn(), pool.getconn()  # the prefilled one, then a new one
    assert gauges(Reading(reader), name) == {
        "idle": 0, "used": 2, "max": 2, "idle_max": 1, "idle_min": 1, "pending": 0,
        "timeouts": 0,
    }  # fmt: skip

    # A caller that waits HOLD seconds for a return, and one that times out.
    got: List[Any] = []
    waiter = threading.Thread(target=lambda: got.append(pool.getconn()), daemon=True)
    waiter.start()
    deadline = time.monotonic() + 5
    while gauges(Reading(reader), name)["pending"] != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(HOLD)
    pool.putconn(first)  # held about 2 * HOLD: the use is timed
    waiter.join(5)
    assert got and not waiter.is_alive()
    with pytest.raises(pgpool_compat.PoolTimeout):
        pool.getconn()
    pool.putconn(got[0])

    reading = Reading(reader)
    figures = gauges(reading, name)
    assert (figures["used"], figures["idle"], figures["pending"], figures["timeouts"]) == (
        1, 1, 0, 1,
    )  # fmt: skip
    create = reading.value("db.client.connection.create_time", name)
    assert create.count == 2 and 0 < create.max < 5  # prefill and the second connect
    wait = reading.value("db.client.connection.wait_time", name)
    assert wait.count == 3 and wait.max >= HOLD
    use = reading.value("db.client.connection.use_time", name)
    assert use.count == 2 and use.max >= HOLD
    assert list(wait.explicit_bounds) == list(metrics.BUCKETS)
    pool.putconn(second)


def test_simple_pool_and_a_pool_made_before_instrument(pg_dsn: str, pools: List[Any]) -> None:
    name = unique("simple")
    pool = pgpool_compat.SimpleConnectionPool(0, 3, pg_dsn, pool_name=name)
    pools.append(pool)
    memory = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[memory])
    metrics.instrument(meter_provider=provider)
    try:
        conn = pool.getconn()
        time.sleep(HOLD)
        reading = Reading(memory)
        assert gauges(reading, name)["used"] == 1 and gauges(reading, name)["max"] == 3
        pool.putconn(conn)
        reading = Reading(memory)
        assert reading.value("db.client.connection.use_time", name).max >= HOLD
        assert reading.value("db.client.connection.create_time", name).count == 1
    finally:
        metrics.uninstrument()
        provider.shutdown()


def test_closed_and_collected_pools_disappear(
    reader: InMemoryMetricReader, pg_dsn: str
) -> None:
    closed, dropped = unique("closed"), unique("dropped")
    first = pgpool_compat.ThreadedConnectionPool(1, 1, pg_dsn, pool_name=closed)
    second = pgpool_compat.ThreadedConnectionPool(1, 1, pg_dsn, pool_name=dropped)
    reading = Reading(reader)
    assert gauges(reading, closed)["idle"] == 1 and gauges(reading, dropped)["idle"] == 1
    first.closeall()
    second.closeall()
    del second
    gc.collect()
    reading = Reading(reader)
    assert gauges(reading, closed)["idle"] is None
    assert gauges(reading, dropped)["max"] is None
    assert dropped not in [metrics.label_of(pool) for pool in stats.live_runners()]


def test_unnamed_pool_is_labelled_host_port_dbname_without_credentials(
    reader: InMemoryMetricReader, pg_dsn: str, pools: List[Any]
) -> None:
    secret = "hunter2-" + uuid.uuid4().hex[:8]
    pool = pgpool_compat.ThreadedConnectionPool(0, 1, f"{pg_dsn} password={secret}")
    pools.append(pool)
    params = psycopg2.extensions.parse_dsn(pg_dsn)
    expected = f"{params.get('host', 'localhost')}:{params.get('port', '5432')}/"
    label = metrics.label_of(pool)
    assert label.startswith(expected) and secret not in label and "password" not in label
    pool.putconn(pool.getconn())
    reading = Reading(reader)
    assert reading.value("db.client.connection.wait_time", label).count >= 1
    assert secret not in repr(reading.points)


def test_factory_pool(reader: InMemoryMetricReader, pg_dsn: str) -> None:
    pool: Any = pgpool_compat.ConnectionPool(
        lambda: psycopg2.connect(pg_dsn), min_size=0, max_size=1, timeout=0.05
    )
    name = metrics.label_of(pool)
    try:
        with pool.connection():  # a connect in a free slot: served without queueing
            assert gauges(Reading(reader), name)["used"] == 1
            with pytest.raises(pgpool_compat.PoolTimeoutError):
                pool.acquire()
            time.sleep(HOLD)
        pool.release(pool.acquire())  # served from the idle set
        reading = Reading(reader)
    finally:
        pool.close_all()
    assert gauges(reading, name) == {
        "idle": 1, "used": 0, "max": 1, "idle_max": 1, "idle_min": 0, "pending": 0,
        "timeouts": 1,
    }  # fmt: skip
    assert reading.value("db.client.connection.use_time", name).max >= HOLD
    assert reading.value("db.client.connection.create_time", name).count == 1
    # Every checkout served is timed, queued or not; the timeout is counted, not timed.
    assert reading.value("db.client.connection.wait_time", name).count == 2


@pytest.mark.parametrize("face", ["AsyncConnectionPool", "nextorm.AsyncConnectionPool"])
def test_async_pool(reader: InMemoryMetricReader, pg_dsn: str, face: str) -> None:
    """The async factory pool and an async seed face (both on the asyncio runner)."""
    from pgpool_compat.compat import nextorm

    async def connect() -> Any:
        return psycopg2.connect(pg_dsn)

    async def scenario() -> Tuple[str, Reading, Reading]:
        make = {
            "AsyncConnectionPool": pgpool_compat.AsyncConnectionPool,
            "nextorm.AsyncConnectionPool": nextorm.AsyncConnectionPool,
        }[face]
        pool: Any = make(connect, min_size=1, max_size=1, timeout=4 * HOLD)
        runner = pool._runner
        try:
            conn = await pool.acquire()
            waiter = asyncio.ensure_future(pool.acquire())
            await asyncio.sleep(HOLD)
            held = Reading(reader)
            await pool.release(conn)
            await pool.release(await waiter)
            conn = await pool.acquire()
            with pytest.raises(pgpool_compat.PoolTimeout):
                await pool.acquire()
            await pool.release(conn)
            return metrics.label_of(runner), held, Reading(reader)
        finally:
            await runner.close()

    name, held, after = asyncio.run(scenario())
    assert gauges(held, name) == {
        "idle": 0, "used": 1, "max": 1, "idle_max": 1, "idle_min": 1, "pending": 1,
        "timeouts": 0,
    }  # fmt: skip
    assert gauges(after, name)["timeouts"] == 1
    wait = after.value("db.client.connection.wait_time", name)
    assert wait.count == 3 and wait.max >= HOLD
    assert after.value("db.client.connection.use_time", name).max >= HOLD
    assert after.value("db.client.connection.create_time", name).count == 1
    assert gauges(Reading(reader), name)["max"] is None  # closed: gone


# -- the seed faces (nextorm, generic-connection-pool, escudeiro): their runners register --


def test_seed_face_sync_held_timeout_wait_and_use(
    reader: InMemoryMetricReader, pg_dsn: str
) -> None:
    from pgpool_compat.compat import nextorm

    pool = nextorm.ConnectionPool(
        lambda: psycopg2.connect(pg_dsn), min_size=1, max_size=1, timeout=0.05
    )
    runner = pool._runner
    name = metrics.label_of(runner)  # no name keyword in nextorm: the log name
    try:
        conn = pool.acquire()
        held = Reading(reader)
        with pytest.raises(nextorm.PoolTimeoutError):
            pool.acquire()
        time.sleep(HOLD)
        pool.release(conn)
        pool.release(pool.acquire())
        after = Reading(reader)
    finally:
        runner.close()
    assert name == runner.name and name.startswith("pool-")
    assert gauges(held, name) == {
        "idle": 0, "used": 1, "max": 1, "idle_max": 1, "idle_min": 1, "pending": 0,
        "timeouts": 0,
    }  # fmt: skip
    assert gauges(after, name)["timeouts"] == 1 and gauges(after, name)["idle"] == 1
    assert after.value("db.client.connection.wait_time", name).count == 2  # not the timeout
    assert after.value("db.client.connection.use_time", name).max >= HOLD
    assert after.value("db.client.connection.create_time", name).count == 1  # prefilled
    assert gauges(Reading(reader), name)["max"] is None  # closed: gone


def test_every_seed_face_is_listed(reader: InMemoryMetricReader, pg_dsn: str) -> None:
    from pgpool_compat.compat import escudeiro, nextorm
    from pgpool_compat.compat.generic_connection_pool import asyncio as gcp_asyncio
    from pgpool_compat.compat.generic_connection_pool import threading as gcp_threading

    class Manager(gcp_threading.BaseConnectionManager[str, Any]):
        def create(self, endpoint: str, timeout: Any = None) -> Any:
            return psycopg2.connect(pg_dsn)

        def dispose(self, endpoint: str, conn: Any, timeout: Any = None) -> None:
            conn.close()

    class AsyncManager(gcp_asyncio.BaseConnectionManager[str, Any]):
        async def create(self, endpoint: str) -> Any:
            return psycopg2.connect(pg_dsn)

        async def dispose(self, endpoint: str, conn: Any) -> None:
            conn.close()

    async def connect() -> Any:
        return psycopg2.connect(pg_dsn)

    async def close(conn: Any) -> None:
        conn.close()

    faces: Dict[str, Any] = {
        "nextorm.ConnectionPool": nextorm.ConnectionPool(connect, min_size=0, max_size=2),
        "nextorm.AsyncConnectionPool": nextorm.AsyncConnectionPool(connect, max_size=3),
        "generic_connection_pool.threading": gcp_threading.ConnectionPool(
            Manager(), max_size=4, total_max_size=4
        ),
        "generic_connection_pool.asyncio": gcp_asyncio.ConnectionPool(
            AsyncManager(), max_size=5, total_max_size=5
        ),
        "escudeiro.AsyncPool": escudeiro.AsyncPool(connect, close, pool_size=6),
    }
    runners = {face: pool._runner for face, pool in faces.items()}
    try:
        reading = Reading(reader)
        maxima = {face: gauges(reading, runner.name)["max"] for face, runner in runners.items()}
    finally:
        for runner in runners.values():
            closing = runner.close()
            if asyncio.iscoroutine(closing):
                asyncio.run(closing)
    assert maxima == {
        "nextorm.ConnectionPool": 2,
        "nextorm.AsyncConnectionPool": 3,
        "generic_connection_pool.threading": 4,
        "generic_connection_pool.asyncio": 5,
        "escudeiro.AsyncPool": 6,
    }
    labels = {figures.name for figures in metrics.pool_figures()}
    assert not labels & {runner.name for runner in runners.values()}  # closed: gone


@pytest.fixture
def own_database(pg_dsn: str, admin_conn: Any) -> Iterator[str]:
    """A DSN to a database of its own: the one pool labelled with its host:port/dbname."""
    dbname = unique("metrics").replace("-", "_")
    with admin_conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {dbname}")
    try:
        yield f"{pg_dsn} dbname={dbname}"
    finally:
        PoolManager.shutdown()
        with admin_conn.cursor() as cur:
            cur.execute(f"DROP DATABASE {dbname}")


def test_manager_pool(reader: InMemoryMetricReader, own_database: str) -> None:
    dsn = own_database
    params = psycopg2.extensions.parse_dsn(dsn)
    name = f"{params.get('host', 'localhost')}:{params.get('port', '5432')}/{params['dbname']}"
    try:
        with PoolManager.connection(dsn, max_size=1):
            with pytest.raises(pgpool_compat.PoolFullError), PoolManager.connection(
                dsn, timeout=0.05
            ):
                pass
            time.sleep(HOLD)
            reading = Reading(reader)
            assert gauges(reading, name) == {
                "idle": 0, "used": 1, "max": 1, "idle_max": 1, "idle_min": 0, "pending": 0,
                "timeouts": 1,
            }  # fmt: skip
        reading = Reading(reader)
        assert gauges(reading, name)["idle"] == 1
        assert reading.value("db.client.connection.use_time", name).max >= HOLD
        assert reading.value("db.client.connection.create_time", name).count == 1
        assert reading.value("db.client.connection.wait_time", name).count == 1  # served
    finally:
        PoolManager.shutdown()
    assert gauges(Reading(reader), name)["max"] is None


# -- Prometheus ------------------------------------------------------------------------------


@pytest.fixture
def endpoint() -> Iterator[str]:
    """A prometheus_client HTTP endpoint on loopback serving a PrometheusCollector."""
    registry = CollectorRegistry()
    registry.register(metrics.PrometheusCollector())
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        gc.collect()  # the collector goes: observers go with it


def scrape(url: str) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: Dict[Any, float], name: str, pool: str, **labels: str) -> Optional[float]:
    return samples.get((name, tuple(sorted({"pool_name": pool, **labels}.items()))))


def test_prometheus_endpoint(endpoint: str, pg_dsn: str, pools: List[Any]) -> None:
    name = unique("prom")
    pool = pgpool_compat.ThreadedConnectionPool(1, 2, pg_dsn, pool_name=name, pool_timeout=0.05)
    pools.append(pool)
    conn, other = pool.getconn(), pool.getconn()
    with pytest.raises(pgpool_compat.PoolTimeout):
        pool.getconn()
    samples = scrape(endpoint)
    assert sample(samples, "db_client_connection_count", name, state="used") == 2
    assert sample(samples, "db_client_connection_count", name, state="idle") == 0
    assert sample(samples, "db_client_connection_max", name) == 2
    assert sample(samples, "db_client_connection_idle_max", name) == 1
    assert sample(samples, "db_client_connection_idle_min", name) == 1
    assert sample(samples, "db_client_connection_pending_requests", name) == 0
    assert sample(samples, "db_client_connection_timeouts_total", name) == 1
    time.sleep(HOLD)
    pool.putconn(conn)
    pool.putconn(other)
    samples = scrape(endpoint)
    assert sample(samples, "db_client_connection_count", name, state="idle") == 1
    use = "db_client_connection_use_time_seconds"
    assert sample(samples, use + "_count", name) == 2
    assert sample(samples, use + "_sum", name) >= 2 * HOLD
    assert sample(samples, use + "_bucket", name, le="0.1") == 0  # both held longer
    assert sample(samples, use + "_bucket", name, le="+Inf") == 2
    assert sample(samples, "db_client_connection_wait_time_seconds_count", name) == 2
    assert sample(samples, "db_client_connection_create_time_seconds_count", name) == 2
    pool.closeall()
    assert sample(scrape(endpoint), "db_client_connection_max", name) is None


def test_prometheus_never_shows_a_password(endpoint: str, pg_dsn: str, pools: List[Any]) -> None:
    secret = "hunter2-" + uuid.uuid4().hex[:8]
    pool = pgpool_compat.ThreadedConnectionPool(1, 1, f"{pg_dsn} password={secret}")
    pools.append(pool)
    with urllib.request.urlopen(endpoint, timeout=5) as response:
        text = response.read().decode()
    assert metrics.label_of(pool) in text and secret not in text


# -- off by default -----------------------------------------------------------------------------


def test_no_metrics_code_runs_when_metrics_are_off(pg_dsn: str, pools: List[Any]) -> None:
    """No observer and no wrapper unless instrumented, and none again after uninstrument()."""
    gc.collect()  # collectors left by other tests are gone
    pool = pgpool_compat.ThreadedConnectionPool(1, 1, pg_dsn)
    pools.append(pool)
    runner = pool._runner  # the engine behind the psycopg2 face: the observer hangs there
    assert runner.observer is None
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    metrics.instrument(meter_provider=provider)
    assert runner.observer is not None
    metrics.uninstrument()
    provider.shutdown()
    assert runner.observer is None and "getconn" not in vars(pool) and "putconn" not in vars(pool)


def test_without_opentelemetry_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.setitem(sys.modules, "opentelemetry.metrics", None)
    with pytest.raises(ImportError) as error:
        metrics.instrument()
    message = str(error.value)
    assert "\n" not in message and "pip install 'pgpool_compat[metrics]'" in message


class _MeterBefore130:
    """A meter as OpenTelemetry before 1.30 has it: histograms take no buckets."""

    def create_histogram(self, name: str, unit: str = "", description: str = "") -> Any:
        raise AssertionError("not reached: the buckets are always given")

    def create_observable_up_down_counter(self, *args: Any, **kwargs: Any) -> Any:
        return None

    def create_observable_counter(self, *args: Any, **kwargs: Any) -> Any:
        return None


class _ProviderBefore130:
    def get_meter(self, name: str, version: Optional[str] = None) -> Any:
        return _MeterBefore130()


def test_opentelemetry_before_1_30_one_clear_line() -> None:
    """setup.cfg asks for 1.30, the first release whose histograms take buckets; an older
    one already installed gets a line saying what to upgrade, not a TypeError."""
    before, provider = metrics._otel, _ProviderBefore130()
    with pytest.raises(ImportError) as error:
        metrics.instrument(meter_provider=provider)
    message = str(error.value)
    assert "\n" not in message and "opentelemetry-api>=1.30" in message
    assert "-m pip install 'opentelemetry-api>=1.30'" in message
    # Nothing half made stays instrumented or is reused.
    assert metrics._otel is before
    assert all(made.meter_provider is not provider for made in metrics._made)


# -- one log vocabulary ---------------------------------------------------------------------


def timeout_lines(caplog: pytest.LogCaptureFixture, name: str) -> List[str]:
    return [
        record.getMessage() for record in caplog.records
        if record.name == "pgpool_compat"
        and record.getMessage().startswith(f"{name}: checkout timed out after ")
    ]  # fmt: skip


def test_every_face_words_a_timeout_alike(
    pg_dsn: str, own_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pgpool_compat")
    named = unique("words")
    threaded = pgpool_compat.ThreadedConnectionPool(0, 1, pg_dsn, pool_name=named,
                                                    pool_timeout=0.05)
    factory: Any = pgpool_compat.ConnectionPool(
        lambda: psycopg2.connect(pg_dsn), min_size=0, max_size=1, timeout=0.05
    )
    names = [named, factory.name]
    try:
        for borrow in (threaded.getconn, factory.acquire):
            borrow()
            with pytest.raises(pgpool_compat.PoolTimeout):
                borrow()
    finally:
        threaded.closeall()
        factory.close_all()

    async def async_timeout() -> str:
        async def connect() -> Any:
            return psycopg2.connect(pg_dsn)

        async with pgpool_compat.AsyncConnectionPool(
            connect, min_size=0, max_size=1, timeout=0.05
        ) as pool:
            async with pool.connection():
                with pytest.raises(pgpool_compat.PoolTimeoutError):
                    await pool.acquire()
            return str(pool.name)

    names.append(asyncio.run(async_timeout()))
    params = psycopg2.extensions.parse_dsn(own_database)
    names.append(f"{params['host']}:{params['port']}/{params['dbname']}")
    with PoolManager.connection(own_database, max_size=1), pytest.raises(
        pgpool_compat.PoolFullError
    ), PoolManager.connection(own_database, timeout=0.05):
        pass
    for name in names:
        assert len(timeout_lines(caplog, name)) == 1, (name, caplog.text)


def test_a_connect_that_succeeds_after_failures_is_logged_as_reconnected(
    pg_dsn: str, pools: List[Any], caplog: pytest.LogCaptureFixture
) -> None:
    failures = [2]

    class Flaky(psycopg2.extensions.connection):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if failures[0]:
                failures[0] -= 1
                raise psycopg2.OperationalError("server not there yet")
            super().__init__(*args, **kwargs)

    caplog.set_level(logging.INFO, logger="pgpool_compat")
    name = unique("flaky")
    pool = pgpool_compat.ThreadedConnectionPool(0, 1, pg_dsn, pool_name=name,
                                                connection_factory=Flaky)
    pools.append(pool)
    for _ in range(2):
        with pytest.raises(psycopg2.OperationalError):
            pool.getconn()
    pool.putconn(pool.getconn())
    messages = [r.getMessage() for r in caplog.records if r.name == "pgpool_compat"]
    assert messages.count(f"{name}: connection failed: OperationalError") == 2, messages
    assert f"{name}: reconnected after 2 failed connects" in messages, messages


def test_both_runners_log_a_connect_after_failures_as_reconnected(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pgpool_compat")
    failures = [2]

    def flaky() -> Any:
        if failures[0]:
            failures[0] -= 1
            raise psycopg2.OperationalError("server not there yet")
        return psycopg2.connect(pg_dsn)

    async def flaky_async() -> Any:
        return flaky()

    threaded: Any = pgpool_compat.ConnectionPool(flaky, min_size=0, max_size=1)
    try:
        for _ in range(2):
            with pytest.raises(psycopg2.OperationalError):
                threaded.acquire()
        threaded.release(threaded.acquire())
    finally:
        threaded.close_all()

    async def on_a_loop() -> str:
        failures[0] = 2
        async with pgpool_compat.AsyncConnectionPool(flaky_async, min_size=0) as pool:
            for _ in range(2):
                with pytest.raises(psycopg2.OperationalError):
                    await pool.acquire()
            await pool.release(await pool.acquire())
            return str(pool.name)

    names = [threaded.name, asyncio.run(on_a_loop())]
    messages = [r.getMessage() for r in caplog.records if r.name == "pgpool_compat"]
    for name in names:
        assert messages.count(f"{name}: connection failed: OperationalError") == 2, messages
    unlogged = [n for n in names if f"{n}: reconnected after 2 failed connects" not in messages]
    assert not unlogged, messages


def test_timing_keeps_a_patched_method_and_holds_the_pool_weakly(pg_dsn: str) -> None:
    calls: List[Any] = []
    name = unique("patched")
    pool = pgpool_compat.ThreadedConnectionPool(0, 1, pg_dsn, pool_name=name)
    original = [pool.getconn]  # a list, emptied before the pool is let go

    def patched(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return original[0](*args, **kwargs)

    pool.getconn = patched  # type: ignore[method-assign]  # a user's patch, before metrics
    memory = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[memory])
    metrics.instrument(meter_provider=provider)
    try:
        pool.putconn(pool.getconn())
        assert calls == [()]  # the patch ran, inside the timing
        assert Reading(memory).value("db.client.connection.wait_time", name).count == 1
        metrics.uninstrument()
        assert pool.getconn is patched  # put back as the user left it
        metrics.instrument(meter_provider=provider)
        pool.closeall()
        gone = weakref.ref(pool)
        gc.disable()  # freed by reference counting, as without metrics: no cycle through them
        try:
            original.clear()
            del pool, patched
            assert gone() is None
        finally:
            gc.enable()
    finally:
        metrics.uninstrument()
        provider.shutdown()


def test_observe_alone_records_a_psycopg2_face(pg_dsn: str, pools: List[Any]) -> None:
    """The bench's "metrics on" row: observing one psycopg2 pool reaches its engine."""
    name = unique("alone")
    pool = pgpool_compat.ThreadedConnectionPool(1, 1, pg_dsn, pool_name=name)
    pools.append(pool)
    reader = metrics.observe_alone(pool)
    try:
        pool.putconn(pool.getconn())
        reading = Reading(reader)
        assert reading.value("db.client.connection.wait_time", name).count == 1
        assert reading.value("db.client.connection.use_time", name).count == 1
    finally:
        pool.observer = None
