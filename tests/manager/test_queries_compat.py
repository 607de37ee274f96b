"""pgpool_compat.manager as a drop-in for queries.pool.

Two proofs. First, the expectations of queries' own unit tests (mocked psycopg2 handles,
patched ``PoolManager._pools``, ``Pool.connections`` values carrying ``.handle``,
``Connection.used_by`` weak references, properties patched on the classes) run against our
module, in our own words. Second, the real ``queries.Session`` runs on a real server with
``sys.modules["queries.pool"]`` pointing at our module.
"""

from __future__ import annotations

import gc
import hashlib
import importlib
import inspect
import logging
import sys
import threading
import time
import types
import uuid
import weakref
from typing import Any, Callable, Dict, Iterator
from unittest import mock
from urllib.parse import quote

import psycopg2
import psycopg2.extensions
import pytest
import queries.pool as real_queries_pool

from pgpool_compat import manager as pool

pytestmark = pytest.mark.timeout(60)


def fake_handle(*, closed: Any = False, executing: bool = False) -> mock.Mock:
    """A stand-in psycopg2 connection, as queries' tests build them."""
    handle = mock.Mock()
    handle.closed = closed
    handle.isexecuting = mock.Mock(return_value=executing)
    return handle


def new_pid() -> str:
    return str(uuid.uuid4())


@pytest.fixture(autouse=True)
def registry() -> Iterator[Dict[str, Any]]:
    """A private ``PoolManager._pools`` for each test, patched the way queries' tests do."""
    with mock.patch.object(pool.PoolManager, "_pools", {}) as pools:
        yield pools


# -- the module's surface --------------------------------------------------------------------


def test_every_public_name_of_queries_pool_exists() -> None:
    names = [n for n in vars(real_queries_pool) if not n.startswith("_")]
    missing = [n for n in names if n not in ("datetime", "logging", "os", "threading", "time",
                                             "weakref", "psycopg2", "LOGGER")
               and not hasattr(pool, n)]
    assert missing == []


def _signature_prefix_matches(ours: Callable[..., Any], theirs: Callable[..., Any]) -> bool:
    our_params = list(inspect.signature(ours).parameters.values())
    their_params = list(inspect.signature(theirs).parameters.values())
    if len(our_params) < len(their_params):
        return False
    for mine, other in zip(our_params, their_params):
        if mine.name != other.name or mine.default != other.default:
            return False
    # Anything we add must be optional, so every call written for queries still binds.
    return all(p.default is not inspect.Parameter.empty or p.kind is p.KEYWORD_ONLY
               for p in our_params[len(their_params):])


@pytest.mark.parametrize("class_name", ["Connection", "Pool", "PoolManager"])
def test_methods_and_properties_match_queries_signatures(class_name: str) -> None:
    theirs = getattr(real_queries_pool, class_name)
    ours = getattr(pool, class_name)
    for name, member in vars(theirs).items():
        if name.startswith("__") and name not in ("__contains__", "__len__", "__init__"):
            continue
        if name in ("_lock", "_pools"):
            continue
        assert hasattr(ours, name), f"{class_name}.{name} missing"
        our_member = inspect.getattr_static(ours, name)
        assert type(our_member) is type(member), f"{class_name}.{name}: {type(our_member)}"
        if isinstance(member, (classmethod, staticmethod)):
            assert _signature_prefix_matches(getattr(ours, name), getattr(theirs, name)), name
        elif inspect.isfunction(member):
            assert _signature_prefix_matches(our_member, member), f"{class_name}.{name}"


def test_defaults() -> None:
    assert pool.DEFAULT_IDLE_TTL == real_queries_pool.DEFAULT_IDLE_TTL == 60
    assert pool.Pool.idle_ttl == 60
    assert pool.Pool.idle_start is None
    assert pool.Pool.max_size == pool.DEFAULT_MAX_SIZE


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("ActivePoolError", ("p",)),
        ("ConnectionBusyError", ("c",)),
        ("ConnectionNotFoundError", ("p", "c")),
        ("NoIdleConnectionsError", ("p",)),
        ("PoolFullError", ("p",)),
    ],
)
def test_exception_messages_and_attributes_match_queries(name: str, args: tuple[str, ...]) -> None:
    ids = tuple(uuid.uuid4() for _ in args)
    ours = getattr(pool, name)(*ids)
    theirs = getattr(real_queries_pool, name)(*ids)
    assert str(ours) == str(theirs)
    for attribute in ("pid", "cid"):
        assert getattr(ours, attribute, None) == getattr(theirs, attribute, None)
    assert isinstance(ours, pool.QueriesException)
    assert issubclass(getattr(pool, name), pool.QueriesException)


# -- Connection ------------------------------------------------------------------------------


class TestConnection:
    def setup_method(self) -> None:
        self.handle = fake_handle(closed=True)
        self.connection = pool.Connection(self.handle)

    def test_handle_and_id(self) -> None:
        assert self.connection.handle is self.handle
        assert self.connection.id == id(self.handle)
        assert self.connection.used_by is None
        assert (self.connection.executions, self.connection.exceptions) == (0, 0)

    def test_busy_follows_isexecuting_and_used_by(self) -> None:
        assert not self.connection.busy
        self.handle.isexecuting.return_value = True
        assert self.connection.busy
        self.handle.isexecuting.return_value = False
        self.connection.used_by = mock.Mock()  # a "weakref" whose referent is alive
        assert self.connection.busy

    def test_executing(self) -> None:
        assert not self.connection.executing
        self.handle.isexecuting.return_value = True
        assert self.connection.executing

    def test_locked(self) -> None:
        assert not self.connection.locked
        self.connection.used_by = mock.Mock()
        assert self.connection.locked

    def test_closed(self) -> None:
        assert self.connection.closed
        self.handle.closed = False
        assert not self.connection.closed

    def test_close_raises_when_busy_and_open(self) -> None:
        self.handle.closed = False
        self.handle.isexecuting.return_value = True
        with pytest.raises(pool.ConnectionBusyError):
            self.connection.close()
        self.handle.close.assert_not_called()

    def test_close_closes_the_handle(self) -> None:
        self.handle.closed = False
        self.connection.close()
        self.handle.close.assert_called_once_with()

    def test_free_raises_while_executing(self) -> None:
        self.handle.isexecuting.return_value = True
        with pytest.raises(pool.ConnectionBusyError):
            self.connection.free()

    def test_free_clears_used_by(self) -> None:
        self.connection.used_by = mock.Mock()
        self.connection.free()
        assert self.connection.used_by is None

    def test_lock_raises_when_busy(self) -> None:
        self.connection.used_by = mock.Mock()
        with pytest.raises(pool.ConnectionBusyError):
            self.connection.lock(mock.Mock())

    def test_lock_keeps_a_weak_reference_to_the_session(self) -> None:
        session = mock.Mock()
        self.connection.lock(session)
        assert self.connection.used_by in weakref.getweakrefs(session)
        assert self.connection.used_by() is session


# -- Pool ------------------------------------------------------------------------------------


class TestPool:
    def test_id_and_defaults(self) -> None:
        pid = new_pid()
        obj = pool.Pool(pid)
        assert obj._id == obj.id == pid
        assert obj.idle_ttl == pool.DEFAULT_IDLE_TTL
        assert obj.max_size == pool.DEFAULT_MAX_SIZE
        assert obj.time_method is time.time
        assert len(obj) == 0 and "foo" not in obj

    def test_constructor_and_setters(self) -> None:
        obj = pool.Pool(new_pid(), 10, max_size=11)
        assert (obj.idle_ttl, obj.max_size) == (10, 11)
        obj.set_idle_ttl(12)
        obj.set_max_size(13)
        assert (obj.idle_ttl, obj.max_size) == (12, 13)

    def test_add(self) -> None:
        obj = pool.Pool(new_pid())
        handle = mock.Mock()
        obj.add(handle)
        assert handle in obj and len(obj) == 1
        assert obj.connections[id(handle)].handle is handle
        assert obj.connection_handle(handle).handle is handle
        with pytest.raises(ValueError, match="already exists"):
            obj.add(handle)

    def test_add_when_full_raises_and_closes_the_newcomer(self) -> None:
        obj = pool.Pool(new_pid(), max_size=1)
        obj.add(mock.Mock())
        newcomer = mock.Mock()
        with pytest.raises(pool.PoolFullError):
            obj.add(newcomer)
        newcomer.close.assert_called_once_with()
        assert newcomer not in obj

    def test_clean_removes_closed_connections(self) -> None:
        obj = pool.Pool(new_pid())
        handle = fake_handle(closed=True)
        obj.add(handle)
        obj.remove = mock.Mock()  # type: ignore[method-assign]
        obj.clean()
        obj.remove.assert_called_once_with(handle)

    def test_clean_closes_all_when_idle_past_ttl(self) -> None:
        obj = pool.Pool(new_pid(), idle_ttl=10)
        obj.idle_start = time.time() - 20
        obj.close = mock.Mock()  # type: ignore[method-assign]
        obj.clean()
        obj.close.assert_called_once_with()

    def test_close_removes_every_connection(self) -> None:
        obj = pool.Pool(new_pid(), max_size=100)
        obj.remove = mock.Mock()  # type: ignore[method-assign]
        handles = [mock.Mock(), mock.Mock()]
        for handle in handles:
            obj.add(handle)
        obj.close()
        obj.remove.assert_has_calls([mock.call(h) for h in handles])

    def test_free_calls_connection_free(self) -> None:
        obj = pool.Pool(new_pid())
        handle = mock.Mock()
        obj.add(handle)
        wrapper = obj.connection_handle(handle)
        wrapper.free = mock.Mock()  # type: ignore[method-assign]
        obj.free(handle)
        wrapper.free.assert_called_once_with()

    def test_free_starts_the_idle_clock_when_all_idle(self) -> None:
        obj = pool.Pool(new_pid(), max_size=100)
        handles = [mock.Mock(), mock.Mock()]
        with mock.patch.multiple(pool.Connection, busy=False, closed=False):
            for handle in handles:
                obj.add(handle)
                obj.connection_handle(handle).free = mock.Mock()  # type: ignore[method-assign]
            obj.free(handles[1])
            assert obj.idle_start is not None
            assert abs(obj.idle_start - time.time()) < 1

    def test_free_unknown_raises_not_found(self) -> None:
        with pytest.raises(pool.ConnectionNotFoundError):
            pool.Pool(new_pid()).free(mock.Mock())

    def test_get_returns_and_locks_the_first_idle(self) -> None:
        obj = pool.Pool(new_pid(), max_size=100)
        handles = [mock.Mock(), mock.Mock()]
        for handle in handles:
            obj.add(handle)
        lock = mock.Mock()
        with mock.patch.multiple(pool.Connection, busy=False, closed=False, lock=lock):
            session = mock.Mock()
            obj.idle_start = time.time()
            assert obj.get(session) is handles[0]
            lock.assert_called_once_with(session)
            assert obj.idle_start is None

    def test_get_raises_when_no_idle_connections(self) -> None:
        obj = pool.Pool(new_pid(), max_size=100)
        for handle in (mock.Mock(), mock.Mock()):
            obj.add(handle)
        with pytest.raises(pool.NoIdleConnectionsError):
            obj.get(mock.Mock())

    def test_idle_connections(self) -> None:
        obj = pool.Pool(new_pid(), max_size=100)
        handles = [mock.Mock(), mock.Mock()]
        for handle in handles:
            obj.add(handle)
        with mock.patch.multiple(pool.Connection, busy=False, closed=False):
            assert [c.handle for c in obj.idle_connections] == handles

    def test_idle_duration(self) -> None:
        obj = pool.Pool(new_pid())
        assert obj.idle_duration == 0
        obj.idle_start = time.time() - 5
        assert int(obj.idle_duration) == 5

    def test_is_full(self) -> None:
        obj = pool.Pool(new_pid(), max_size=2)
        obj.add(mock.Mock())
        assert not obj.is_full
        obj.add(mock.Mock())
        assert obj.is_full

    def test_lock_calls_connection_lock_and_stops_the_idle_clock(self) -> None:
        with mock.patch.object(pool.Connection, "lock") as lock:
            obj = pool.Pool(new_pid())
            obj.idle_start = time.time()
            handle = mock.Mock()
            obj.add(handle)
            session = mock.Mock()
            obj.lock(handle, session)
            lock.assert_called_once_with(session)
            assert obj.idle_start is None

    def test_lock_unknown_raises_not_found(self) -> None:
        with pytest.raises(pool.ConnectionNotFoundError):
            pool.Pool(new_pid()).lock(mock.Mock(), mock.Mock())

    def test_remove_closes_and_removes(self) -> None:
        close = mock.Mock()
        with mock.patch.multiple(pool.Connection, busy=False, closed=False, close=close):
            obj = pool.Pool(new_pid())
            handle = mock.Mock()
            obj.add(handle)
            obj.remove(handle)
            assert handle not in obj
            close.assert_called_once_with()

    def test_remove_unknown_raises_not_found(self) -> None:
        with pytest.raises(pool.ConnectionNotFoundError):
            pool.Pool(new_pid()).remove(mock.Mock())

    def test_remove_busy_raises_and_keeps_it(self) -> None:
        obj = pool.Pool(new_pid())
        handle = mock.Mock()  # isexecuting() returns a truthy Mock: busy
        handle.closed = False
        obj.add(handle)
        with pytest.raises(pool.ConnectionBusyError):
            obj.remove(handle)
        assert handle in obj

    def test_shutdown_raises_when_executing(self) -> None:
        obj = pool.Pool(new_pid())
        obj.add(fake_handle(closed=True, executing=True))
        with pytest.raises(pool.ConnectionBusyError):
            obj.shutdown()

    def test_report_has_queries_keys(self) -> None:
        ours = pool.Pool(new_pid()).report()
        theirs = real_queries_pool.Pool(new_pid()).report()
        assert set(theirs) <= set(ours)
        assert set(theirs["connections"]) == set(ours["connections"])
        assert set(theirs["idle"]) == set(ours["idle"])


# -- PoolManager -----------------------------------------------------------------------------


class TestPoolManager:
    manager = pool.PoolManager.instance()

    def test_singleton(self) -> None:
        assert pool.PoolManager.instance() is self.manager

    def test_contains(self) -> None:
        pid = new_pid()
        assert pid not in self.manager
        self.manager.create(pid)
        assert pid in self.manager

    def test_create(self, registry: Dict[str, Any]) -> None:
        pid = new_pid()
        clock = mock.Mock(return_value=1.0)
        self.manager.create(pid, 12, 16, clock)
        created = registry[pid]
        assert isinstance(created, pool.Pool)
        assert (created.idle_ttl, created.max_size, created.time_method) == (12, 16, clock)
        with pytest.raises(KeyError):
            self.manager.create(pid)

    def test_create_refuses_a_patched_in_pool(self, registry: Dict[str, Any]) -> None:
        pid = new_pid()
        with mock.patch.object(pool, "Pool") as fake_pool:
            registry[pid] = fake_pool()
            with pytest.raises(KeyError):
                self.manager.create(pid, 10, 10)

    @pytest.mark.parametrize(
        ("method", "args"),
        [
            ("add", (mock.Mock(),)),
            ("get", (mock.Mock(),)),
            ("free", (mock.Mock(),)),
            ("get_connection", (mock.Mock(),)),
            ("has_connection", (None,)),
            ("has_idle_connection", ()),
            ("is_full", ()),
            ("lock", (None, None)),
            ("remove", ()),
            ("remove_connection", (None,)),
            ("set_idle_ttl", (None,)),
            ("set_max_size", (None,)),
            ("size", ()),
        ],
    )
    def test_methods_raise_key_error_for_a_missing_pool(
        self, method: str, args: tuple[Any, ...]
    ) -> None:
        with pytest.raises(KeyError):
            getattr(self.manager, method)(new_pid(), *args)

    def test_clean_of_a_missing_pool_is_ignored(self) -> None:
        self.manager.clean(new_pid())  # queries 2.1.1 logs and returns

    def test_add(self, registry: Dict[str, Any]) -> None:
        pid = new_pid()
        self.manager.create(pid)
        handle = mock.Mock()
        self.manager.add(pid, handle)
        assert handle in registry[pid]

    def test_clean_calls_pool_clean_and_drops_the_empty_pool(
        self, registry: Dict[str, Any]
    ) -> None:
        pid = new_pid()
        with mock.patch.object(pool, "Pool") as fake_pool:
            registry[pid] = fake_pool()
            registry[pid].clean = clean = mock.Mock()
            self.manager.clean(pid)
            clean.assert_called_once_with()
            assert pid not in registry

    @pytest.mark.parametrize(
        ("method", "pool_method", "args"),
        [
            ("get", "get", ("session",)),
            ("free", "free", ("conn",)),
            ("lock", "lock", ("conn", "session")),
            ("remove_connection", "remove", ("conn",)),
            ("set_idle_ttl", "set_idle_ttl", (256,)),
            ("set_max_size", "set_max_size", (128,)),
        ],
    )
    def test_delegates_to_the_pool(
        self, registry: Dict[str, Any], method: str, pool_method: str, args: tuple[Any, ...]
    ) -> None:
        pid = new_pid()
        self.manager.create(pid)
        delegate = mock.Mock()
        setattr(registry[pid], pool_method, delegate)
        getattr(self.manager, method)(pid, *args)
        delegate.assert_called_once_with(*args)

    def test_has_connection(self, registry: Dict[str, Any]) -> None:
        pid = new_pid()
        self.manager.create(pid)
        handle = mock.Mock()
        assert not self.manager.has_connection(pid, handle)
        registry[pid].connections[id(handle)] = handle
        assert self.manager.has_connection(pid, handle)

    @pytest.mark.parametrize(("idle", "expected"), [(0, False), (5, True)])
    def test_has_idle_connection(self, idle: int, expected: bool) -> None:
        pid = new_pid()
        self.manager.create(pid)
        with mock.patch.object(pool.Pool, "idle_connections", new_callable=mock.PropertyMock,
                               return_value=idle):
            assert self.manager.has_idle_connection(pid) is expected

    def test_is_full_reads_pool_is_full_once(self) -> None:
        pid = new_pid()
        self.manager.create(pid)
        with mock.patch.object(pool.Pool, "is_full", new_callable=mock.PropertyMock) as is_full:
            self.manager.is_full(pid)
            is_full.assert_called_once_with()

    def test_get_connection(self) -> None:
        pid = new_pid()
        self.manager.create(pid)
        handle = mock.Mock()
        self.manager.add(pid, handle)
        assert self.manager.get_connection(pid, handle).handle is handle

    def test_remove_closes_and_deletes(self, registry: Dict[str, Any]) -> None:
        pid = new_pid()
        self.manager.create(pid)
        registry[pid].close = close = mock.Mock()
        self.manager.remove(pid)
        close.assert_called_once_with()
        assert pid not in registry

    def test_size(self, registry: Dict[str, Any]) -> None:
        pid = new_pid()
        self.manager.create(pid, max_size=5)
        self.manager.add(pid, mock.Mock())
        assert self.manager.size(pid) == len(registry[pid]) == 1

    def test_shutdown_closes_everything(self, registry: Dict[str, Any]) -> None:
        pid = new_pid()
        self.manager.create(pid, max_size=5)
        handles = [fake_handle(), fake_handle()]
        for handle in handles:
            self.manager.add(pid, handle)
        self.manager.lock(pid, handles[0], mock.Mock())
        assert self.manager.shutdown() == {}
        for handle in handles:
            handle.close.assert_called_once_with()
        assert registry == {}

    def test_report(self) -> None:
        pid = new_pid()
        self.manager.create(pid)
        report = self.manager.report()
        assert set(report) == {"timestamp", "process", "pools"}
        assert list(report["pools"]) == [pid]


# -- queries.Session on our module, against a real server -----------------------------------


@pytest.fixture
def queries_on_ours() -> Iterator[types.ModuleType]:
    """Import queries afresh with ``sys.modules["queries.pool"]`` pointing at our module."""
    saved = {n: m for n, m in sys.modules.items() if n == "queries" or n.startswith("queries.")}
    for name in saved:
        del sys.modules[name]
    sys.modules["queries.pool"] = pool
    try:
        fresh = importlib.import_module("queries")
        # An injected submodule is not set as the package's attribute by the import system;
        # mock.patch("queries.pool...") on Python 3.9 (and `queries.pool.X` anywhere) needs it.
        fresh.pool = pool  # type: ignore[attr-defined]
        assert sys.modules["queries.session"].pool is pool
        yield fresh
    finally:
        for name in [n for n in sys.modules if n == "queries" or n.startswith("queries.")]:
            del sys.modules[name]
        sys.modules.update(saved)
        pool.PoolManager.shutdown()


def session_uri(dsn: str) -> str:
    """The queries-style URI for a key=value DSN."""
    params = psycopg2.extensions.parse_dsn(dsn)
    auth = quote(params.get("user", "postgres"), safe="")
    if params.get("password"):
        auth += ":" + quote(params["password"], safe="")
    host, port = params.get("host", "127.0.0.1"), params.get("port", "5432")
    return f"postgresql://{auth}@{host}:{port}/{params.get('dbname', 'postgres')}"


def session_pid(uri: str) -> str:
    """What queries.Session computes as its pool id."""
    return hashlib.md5(f"Session:{uri}".encode()).hexdigest()


def test_session_reuses_one_connection(queries_on_ours: types.ModuleType, pg_dsn: str) -> None:
    queries = queries_on_ours
    uri = session_uri(pg_dsn)
    with queries.Session(uri, pool_max_size=2) as session:
        first_backend = session.backend_pid
        assert session.query("SELECT 1 AS one").as_dict() == {"one": 1}
        pid = session.pid
    assert pid in pool.PoolManager.instance()
    assert pool.PoolManager.size(pid) == 1
    assert pool.PoolManager.has_idle_connection(pid)
    with queries.Session(uri, pool_max_size=2) as session:
        assert session.backend_pid == first_backend
        counted = pool.PoolManager.get_connection(pid, session.connection).executions
    assert counted == 1  # Session counts executions through get_connection


def test_session_full_pool_raises_no_idle(queries_on_ours: types.ModuleType, pg_dsn: str) -> None:
    queries = queries_on_ours
    uri = session_uri(pg_dsn)
    with queries.Session(uri, pool_max_size=1) as holder:
        with pytest.raises(pool.NoIdleConnectionsError):
            queries.Session(uri, pool_max_size=1)
        assert holder.query("SELECT 2 AS two").as_dict() == {"two": 2}


def test_session_close_removes_the_connection(
    queries_on_ours: types.ModuleType, pg_dsn: str
) -> None:
    queries = queries_on_ours
    session = queries.Session(session_uri(pg_dsn))
    conn = session.connection
    session.close()
    assert conn.closed
    assert pool.PoolManager.size(session.pid) == 0


def test_garbage_collected_session_frees_its_connection(
    queries_on_ours: types.ModuleType, pg_dsn: str
) -> None:
    queries = queries_on_ours
    uri = session_uri(pg_dsn)
    session = queries.Session(uri, pool_max_size=1)
    pid, backend = session.pid, session.backend_pid
    del session
    gc.collect()
    with queries.Session(uri, pool_max_size=1) as again:
        assert again.backend_pid == backend
    assert pool.PoolManager.size(pid) == 1


def test_idle_ttl_is_enforced_on_access(queries_on_ours: types.ModuleType, pg_dsn: str) -> None:
    queries = queries_on_ours
    uri = session_uri(pg_dsn)
    with queries.Session(uri, pool_idle_ttl=0.2) as session:
        old_conn, old_backend = session.connection, session.backend_pid
    time.sleep(0.4)
    with queries.Session(uri, pool_idle_ttl=0.2) as session:
        assert session.backend_pid != old_backend
    assert old_conn.closed


def test_session_del_during_gc_inside_the_lock_does_not_deadlock(
    queries_on_ours: types.ModuleType, pg_dsn: str
) -> None:
    """queries' non-reentrant lock deadlocks here: __del__ -> free -> the same lock."""
    queries = queries_on_ours
    uri = session_uri(pg_dsn)
    outcome: Dict[str, Any] = {}

    def collect_inside_the_lock() -> None:
        session = queries.Session(uri)
        session.cycle = session  # only the cycle collector can free it
        del session
        with pool.PoolManager._lock:
            outcome["collected"] = gc.collect()
            outcome["idle"] = pool.PoolManager.has_idle_connection(session_pid(uri))

    gc.disable()
    try:
        worker = threading.Thread(target=collect_inside_the_lock, daemon=True)
        worker.start()
        worker.join(10)
    finally:
        gc.enable()
    assert not worker.is_alive(), "deadlocked"
    assert outcome["collected"] > 0 and outcome["idle"] is True


def test_session_after_server_restart_gets_a_working_connection(
    queries_on_ours: types.ModuleType, own_server: Any
) -> None:
    queries = queries_on_ours
    uri = session_uri(own_server.dsn)
    with queries.Session(uri) as session:
        stale = session.connection
    own_server.restart()
    with queries.Session(uri) as session:  # the dead idle connection is dropped, not reused
        assert session.connection is not stale
        assert session.query("SELECT 3 AS three").as_dict() == {"three": 3}
    assert stale.closed


def test_string_patch_targets_reach_our_module(queries_on_ours: types.ModuleType) -> None:
    """``mock.patch("queries.pool....")``, as queries' tests write it, patches our classes."""
    from queries import pool as imported

    assert imported is pool
    handles = [mock.Mock(), mock.Mock()]
    with mock.patch.multiple("queries.pool.Connection", busy=False, closed=False):
        obj = imported.Pool(new_pid(), max_size=100)
        for handle in handles:
            obj.add(handle)
        assert obj.get(mock.Mock()) is handles[0]
    with mock.patch("queries.pool.Pool.is_full", new_callable=mock.PropertyMock) as is_full:
        is_full.return_value = True
        pid = new_pid()
        imported.PoolManager.create(pid)
        assert imported.PoolManager.is_full(pid) is True


def test_session_with_no_idle_ttl(queries_on_ours: types.ModuleType, pg_dsn: str) -> None:
    """queries accepts ``pool_idle_ttl=None``; the first get() raised TypeError here."""
    queries = queries_on_ours
    uri = session_uri(pg_dsn) + "?application_name=mgr_ttl_none_session"
    with queries.Session(uri, pool_idle_ttl=None) as session:
        backend = session.backend_pid
    with queries.Session(uri, pool_idle_ttl=None) as session:
        assert session.backend_pid == backend
        assert pool.PoolManager.report()["pools"][session.pid]["idle"]["ttl"] is None


def test_a_session_inherited_across_fork_fails_naming_the_fork(
    queries_on_ours: types.ModuleType, pg_dsn: str
) -> None:
    """gunicorn --preload style: a module-level Session opened before fork(), used in the
    child. Its query used to run on the parent's server session, then get_connection raised
    a bare KeyError. Now nothing reaches the parent's session and the error names the fork."""
    from tests.dropin.test_fork import run_in_child

    queries = queries_on_ours
    session = queries.Session(session_uri(pg_dsn) + "?application_name=mgr_fork_session")
    session.query("SET application_name = 'parent_session'")
    parent_backend = session.backend_pid

    def child() -> Dict[str, Any]:
        outcome: Dict[str, Any] = {}
        try:
            session.query("SET application_name = 'child_was_here'")
            outcome["query"] = "ran"
        except pool.InheritedConnectionError as error:
            outcome["query"] = type(error).__name__
            outcome["message"] = str(error)
            outcome["is_key_error"] = isinstance(error, KeyError)
            outcome["not_found"] = isinstance(error, pool.ConnectionNotFoundError)
        session._cleanup()  # what the Session's exit and __del__ do: must not raise
        return outcome

    outcome = run_in_child(child)
    assert outcome["query"] == "InheritedConnectionError", outcome
    assert "fork()" in outcome["message"] and "parent" in outcome["message"]
    assert outcome["is_key_error"] and outcome["not_found"]
    # The parent's server session: the same backend, and the child's SET never reached it.
    assert session.query("SELECT pg_backend_pid() AS b, "
                         "current_setting('application_name') AS a").as_dict() == {
        "b": parent_backend, "a": "parent_session"}
    session._cleanup()


def test_mock_patch_of_the_module_logger_catches_the_managers_lines(
    queries_on_ours: types.ModuleType, pg_dsn: str
) -> None:
    """queries.pool has ``LOGGER``, which tests patch; ours had none (AttributeError)."""
    queries = queries_on_ours
    uri = session_uri(pg_dsn) + "?application_name=mgr_logger_patch"
    with mock.patch("queries.pool.LOGGER") as logger:
        assert pool.LOGGER is logger
        with queries.Session(uri, pool_max_size=1) as session:
            pid = session.pid
        logged = [c.args[0] for c in logger.debug.call_args_list]
        assert "%s: added connection %s" in logged
        extra = psycopg2.connect(pg_dsn)
        with pytest.raises(pool.PoolFullError):
            pool.PoolManager.add(pid, extra)  # full: closed, and a WARNING through LOGGER
        assert extra.closed
        assert logger.warning.call_args.args[0].endswith(
            "pool full: closing the connection that cannot be added")
    assert pool.LOGGER is logging.getLogger("pgpool_compat")
