"""The bench scenarios: what one round of one scenario measures.

A sample is a flat dict of numbers. Every scenario reports ``ops_per_s``, ``p50_us``,
``p99_us``, ``errors`` and ``connections_opened`` (during the measured phase, after warm-up);
some add their own keys. The runner repeats rounds and keeps each metric's median.

Two shapes: a :class:`Scenario` measures one pool at a time (the multi-threaded ones, where
pools must not compete with each other); a :class:`GroupScenario` opens every pool at once and
lets them take short turns (100 checkouts, 10 queries), so that a burst of load from elsewhere
on the machine hits all pools alike instead of ruining one pool's numbers.
"""

from __future__ import annotations

import gc
import math
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .adapters import BenchPool, run_select_one
from .ratios import MIN_ROUNDS

__all__ = [
    "SCENARIO_NAMES",
    "GroupScenario",
    "Sample",
    "Scenario",
    "Settings",
    "TurnRates",
    "checkout",
    "describe_error",
    "make_scenarios",
    "percentile_us",
]

Sample = Dict[str, Optional[float]]
#: Per pool key, the rate (ops/s) of each timed turn of one round, for scenarios that take turns.
TurnRates = Dict[str, List[float]]
#: Pools of one group round, by key, in the order they take turns.
Group = Sequence[Tuple[str, BenchPool]]

SCENARIO_NAMES: Tuple[str, ...] = ("overhead", "query", "contention", "churn", "restart")

#: How long a pool that cannot wait sleeps before retrying, as its users' loops do.
RETRY_SLEEP_S = 0.001
#: Past a phase's end, how long a thread may still try to check out before giving up.
GIVE_UP_GRACE_S = 35.0
# Turns are kept well under a scheduler time slice (0.1-2 ms): on a loaded machine a longer
# turn is more likely to be preempted, which would penalise the slower pools twice.
#: Checkouts per timed turn of the overhead scenario.
OVERHEAD_TURN = 100
#: Checkouts timed one by one after each overhead turn, for the latency percentiles.
OVERHEAD_TIMED_TURN = 20
#: Queries per turn of the query scenario.
QUERY_TURN = 10
#: Which quantile of the pooled turn rates is a turn-taking scenario's ops/s: the faster
#: turns, since interference only ever slows a turn down (see :mod:`.ratios`).
FAST_QUARTILE = 0.75
#: Upper bound on a restart sample: the server may come back slowly on a busy machine.
RESTART_SAMPLE_LIMIT_S = 20.0


@dataclass(frozen=True)
class Settings:
    """Sizes of every scenario; ``quick`` and ``full`` are the two presets.

    ``rounds`` is the minimum number of rounds: five, the fewest that bound a ratio
    (:data:`.ratios.MIN_ROUNDS`). While some ratio is still too uncertain, more run, up to
    ``max_rounds`` (in the scenarios where more rounds help); a ratio still unsettled then is
    reported as noisy (:mod:`.ratios`).
    """

    rounds: int
    max_rounds: int
    overhead_ops: int
    query_seconds: float
    contention_seconds: float
    contention_threads: int
    churn_threads: int
    churn_bursts: int
    churn_ops_per_thread: int
    churn_gap_s: float
    restart_ops: int
    contention_connections: int = 4
    hold_s: float = 0.002

    @classmethod
    def full(cls, threads: Optional[int] = None) -> Settings:
        return cls(
            rounds=MIN_ROUNDS,
            max_rounds=11,
            overhead_ops=20_000,
            query_seconds=0.6,
            contention_seconds=1.2,
            contention_threads=threads or 32,
            churn_threads=threads or 16,
            churn_bursts=6,
            churn_ops_per_thread=10,
            churn_gap_s=0.1,
            restart_ops=100,
        )

    @classmethod
    def quick(cls, threads: Optional[int] = None) -> Settings:
        return cls(
            rounds=MIN_ROUNDS,
            max_rounds=7,
            overhead_ops=4_000,
            query_seconds=0.1,
            contention_seconds=0.2,
            contention_threads=threads or 32,
            churn_threads=threads or 16,
            churn_bursts=2,
            churn_ops_per_thread=5,
            churn_gap_s=0.03,
            restart_ops=20,
        )


def describe_error(exc: BaseException) -> str:
    """One line naming an error, for the notes under the table."""
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first_line}"[:200]


def percentile_us(sorted_ns: Sequence[int], fraction: float) -> Optional[float]:
    """Nearest-rank percentile of sorted nanosecond durations, in microseconds."""
    if not sorted_ns:
        return None
    rank = max(1, math.ceil(fraction * len(sorted_ns)))
    return sorted_ns[rank - 1] / 1000.0


def _latency_keys(durations_ns: List[int]) -> Sample:
    durations_ns.sort()
    return {
        "p50_us": percentile_us(durations_ns, 0.50),
        "p99_us": percentile_us(durations_ns, 0.99),
    }


def checkout(pool: BenchPool, give_up_at: float) -> Tuple[Optional[Any], int]:
    """Check out as the pool's users do: wait if it can, else sleep 1 ms and retry.

    Returns the connection (None once ``give_up_at`` has passed) and how many attempts raised
    the pool's "exhausted" (or timeout) error.
    """
    failures = 0
    while True:
        try:
            return pool.acquire(), failures
        except pool.exhausted:
            failures += 1
            if time.monotonic() >= give_up_at:
                return None, failures
            if not pool.waits:
                time.sleep(RETRY_SLEEP_S)


class Scenario:
    """One scenario measured one pool at a time; ``measure`` runs one sample."""

    name = ""
    description = ""
    minconn = 1
    maxconn = 4
    #: The quantile of the rates over rounds (or turns) that the table shows as ops/s.
    rate_quantile = 0.5
    #: Whether rounds beyond the minimum may settle a noisy ratio (see :class:`Settings`).
    more_rounds_help = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def measure(self, pool: BenchPool) -> Sample:
        raise NotImplementedError


class GroupScenario(Scenario):
    """A scenario measured with every pool open at once, the pools taking turns."""

    def measure_group(
        self, pools: Group, failures: Dict[str, str], turn_rates: TurnRates
    ) -> Dict[str, Sample]:
        """One sample per pool; a pool that raises is recorded in ``failures`` and dropped.
        A scenario that times turns puts each pool's turn rates in ``turn_rates``."""
        raise NotImplementedError


def _take_turns(
    pools: Group, failures: Dict[str, str], turn: Callable[[str, BenchPool], None], turns: int
) -> None:
    """Call ``turn`` for each pool in rotating order, ``turns`` times over."""
    for index in range(turns):
        shift = index % len(pools) if pools else 0
        for key, pool in list(pools[shift:]) + list(pools[:shift]):
            if key in failures:
                continue
            try:
                turn(key, pool)
            except Exception as exc:  # that pool's row becomes a note; the others go on
                failures[key] = describe_error(exc)


class Overhead(GroupScenario):
    name = "overhead"
    description = "checkout + checkin, no query, 1 thread: the pool's own cost"
    rate_quantile = FAST_QUARTILE

    def measure_group(
        self, pools: Group, failures: Dict[str, str], turn_rates: TurnRates
    ) -> Dict[str, Sample]:
        turn_ns: Dict[str, List[int]] = {key: [] for key, _ in pools}
        durations: Dict[str, List[int]] = {key: [] for key, _ in pools}
        opened_before: Dict[str, int] = {}

        def warm(key: str, pool: BenchPool) -> None:
            pool.release(pool.acquire())
            opened_before[key] = pool.opened()

        def turn(key: str, pool: BenchPool) -> None:
            acquire, release, clock = pool.acquire, pool.release, time.perf_counter_ns
            # Throughput from a loop timed as a whole: per-operation timer calls would blur
            # the ratios. Then a few operations timed one by one for the percentiles.
            started = clock()
            for _ in range(OVERHEAD_TURN):
                release(acquire())
            turn_ns[key].append(clock() - started)
            timed = durations[key]
            for _ in range(OVERHEAD_TIMED_TURN):
                began = clock()
                release(acquire())
                timed.append(clock() - began)

        _take_turns(pools, failures, warm, 1)
        gc.collect()
        _take_turns(pools, failures, turn, max(1, self.settings.overhead_ops // OVERHEAD_TURN))
        samples: Dict[str, Sample] = {}
        for key, pool in pools:
            if key in failures or not turn_ns[key]:
                continue
            turn_rates[key] = [OVERHEAD_TURN * 1e9 / max(1, ns) for ns in turn_ns[key]]
            typical_ns = statistics.median(turn_ns[key]) / OVERHEAD_TURN
            samples[key] = {
                "ops_per_s": 1e9 / typical_ns,
                "ns_per_op": typical_ns,
                "best_ns_per_op": min(turn_ns[key]) / OVERHEAD_TURN,
                "errors": 0,
                "connections_opened": pool.opened() - opened_before[key],
                **_latency_keys(durations[key]),
            }
        return samples


class Query(GroupScenario):
    name = "query"
    description = "checkout + SELECT 1 + commit + checkin, 1 thread; the held row is the limit"
    rate_quantile = FAST_QUARTILE

    def measure_group(
        self, pools: Group, failures: Dict[str, str], turn_rates: TurnRates
    ) -> Dict[str, Sample]:
        rates: Dict[str, List[float]] = {key: [] for key, _ in pools}
        durations: Dict[str, List[int]] = {key: [] for key, _ in pools}
        opened_before: Dict[str, int] = {}

        def warm(key: str, pool: BenchPool) -> None:
            conn = pool.acquire()
            try:
                run_select_one(conn)
            finally:
                pool.release(conn)
            opened_before[key] = pool.opened()

        def turn(key: str, pool: BenchPool) -> None:
            acquire, release, clock = pool.acquire, pool.release, time.perf_counter_ns
            timed = durations[key]
            started = clock()
            for _ in range(QUERY_TURN):
                began = clock()
                conn = acquire()
                try:
                    run_select_one(conn)
                finally:
                    release(conn)
                timed.append(clock() - began)
            rates[key].append(QUERY_TURN * 1e9 / (clock() - started))

        _take_turns(pools, failures, warm, 1)
        # Size the turns from a first one, so a round lasts about query_seconds per pool.
        started = time.monotonic()
        _take_turns(pools, failures, turn, 1)
        first_turn_s = max(1e-3, (time.monotonic() - started) / max(1, len(pools)))
        turns = max(1, int(self.settings.query_seconds / first_turn_s) - 1)
        _take_turns(pools, failures, turn, turns)
        turn_rates.update((key, rates[key]) for key, _ in pools if key not in failures)
        return {
            key: {
                # The median turn: a burst of load elsewhere spoils a few turns, not the figure.
                "ops_per_s": statistics.median(rates[key]),
                "errors": 0,
                "connections_opened": pool.opened() - opened_before[key],
                **_latency_keys(durations[key]),
            }
            for key, pool in pools
            if key not in failures and rates[key]
        }


def _run_threads(count: int, target: Callable[[int], None], limit_s: float) -> float:
    """Run ``target(index)`` on ``count`` daemon threads released together; return seconds.

    A worker's exception is re-raised here; a worker still running after ``limit_s`` is an
    error too (its pool hung), never a silent wait.
    """
    barrier = threading.Barrier(count + 1)
    failures: List[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=30.0)
            target(index)
        except BaseException as exc:  # reported by the caller, not lost in a thread
            failures.append(exc)

    threads = [
        threading.Thread(target=run, args=(index,), name=f"bench-{index}", daemon=True)
        for index in range(count)
    ]
    for thread in threads:
        thread.start()
    barrier.wait(timeout=30.0)
    started = time.monotonic()
    deadline = started + limit_s
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    elapsed = time.monotonic() - started
    if any(thread.is_alive() for thread in threads):
        raise RuntimeError(f"bench threads still running after {limit_s:.0f} s")
    if failures:
        raise failures[0]
    return elapsed


class Contention(Scenario):
    name = "contention"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.minconn = self.maxconn = settings.contention_connections
        self.description = (
            f"{settings.contention_threads} threads on {self.maxconn} connections, each holding"
            f" one {settings.hold_s * 1000:g} ms; p50/p99 are the checkout wait"
        )

    def measure(self, pool: BenchPool) -> Sample:
        settings = self.settings
        threads = settings.contention_threads
        waits: List[List[int]] = [[] for _ in range(threads)]
        holds: List[List[int]] = [[] for _ in range(threads)]
        failures = [0] * threads
        served = [0] * threads
        opened_before = pool.opened()
        end = time.monotonic() + settings.contention_seconds + 0.05

        def work(index: int) -> None:
            clock, release, hold = time.perf_counter_ns, pool.release, settings.hold_s
            while time.monotonic() < end:
                began = clock()
                conn, failed = checkout(pool, end)
                failures[index] += failed
                got = clock()
                if conn is None:
                    # Never served before the end: that wait counts too, or starving is hidden.
                    waits[index].append(got - began)
                    return
                time.sleep(hold)
                held = clock()
                release(conn)
                waits[index].append(got - began)
                holds[index].append(held - got)
                served[index] += 1

        elapsed = _run_threads(threads, work, settings.contention_seconds + 2 * GIVE_UP_GRACE_S)
        counts = served
        all_waits = sorted(wait for per_thread in waits for wait in per_thread)
        all_holds = [hold for per_thread in holds for hold in per_thread]
        mean_hold_ns = sum(all_holds) / len(all_holds) if all_holds else 0.0
        # With first-come-first-served hand-off every thread waits for the others ahead of it.
        ideal_wait_ms = mean_hold_ns * max(0.0, threads / self.maxconn - 1) / 1e6
        p99_wait_us = percentile_us(all_waits, 0.99)
        p99_wait_ms = None if p99_wait_us is None else p99_wait_us / 1000.0
        # The longest wait shows starvation that the p99 over checkouts hides.
        max_wait_ms = all_waits[-1] / 1e6 if all_waits else None
        return {
            "ops_per_s": sum(counts) / elapsed,
            "errors": sum(failures),
            "connections_opened": pool.opened() - opened_before,
            "p50_us": percentile_us(all_waits, 0.50),
            "p99_us": p99_wait_us,
            "fairness": (max(counts) / min(counts)) if min(counts) else math.inf,
            "min_checkouts": min(counts),
            "max_checkouts": max(counts),
            "p99_wait_ms": p99_wait_ms,
            "max_wait_ms": max_wait_ms,
            "ideal_wait_ms": ideal_wait_ms,
            "p99_wait_vs_ideal": (
                p99_wait_ms / ideal_wait_ms if p99_wait_ms is not None and ideal_wait_ms else None
            ),
        }


class Churn(Scenario):
    name = "churn"
    minconn = 1
    maxconn = 16
    # Its ops/s hangs on how long connecting takes on the machine at that moment.
    more_rounds_help = False

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.description = (
            f"bursts of {settings.churn_threads} threads (SELECT 1 each), then idle gaps;"
            f" pools of 1..{self.maxconn}"
        )

    def measure(self, pool: BenchPool) -> Sample:
        settings = self.settings
        threads = settings.churn_threads
        per_thread: List[List[int]] = [[] for _ in range(threads)]
        failures = [0] * threads
        opened_before = pool.opened()
        busy_s = 0.0

        def work(index: int) -> None:
            clock = time.perf_counter_ns
            for _ in range(settings.churn_ops_per_thread):
                began = clock()
                conn, failed = checkout(pool, time.monotonic() + GIVE_UP_GRACE_S)
                failures[index] += failed
                if conn is None:
                    return
                try:
                    run_select_one(conn)
                finally:
                    pool.release(conn)
                per_thread[index].append(clock() - began)

        for _ in range(settings.churn_bursts):
            busy_s += _run_threads(threads, work, 2 * GIVE_UP_GRACE_S)
            time.sleep(settings.churn_gap_s)
        durations = [duration for done in per_thread for duration in done]
        opened = pool.opened() - opened_before
        return {
            "ops_per_s": len(durations) / busy_s,
            "errors": sum(failures),
            "connections_opened": opened,
            "opened_per_1000": opened * 1000.0 / len(durations) if durations else None,
            **_latency_keys(durations),
        }


class Restart(GroupScenario):
    """The server restarts while every pool holds idle connections; then traffic resumes.

    One restart serves all pools of a round: each pool is warmed (``maxconn`` connections
    checked out at once and returned), the server restarts, and then each pool in turn runs
    ``restart_ops`` good queries. ``dead_after_restart`` counts connections handed out whose
    query failed; ``first_good_ms`` is the time from resuming to the first query that worked.
    """

    name = "restart"
    description = "server restarted while pools are idle; then 1 thread resumes"
    minconn = 4
    maxconn = 4
    # Its ops/s hangs on how soon the restarted server answers, not on the pool.
    more_rounds_help = False

    def __init__(self, settings: Settings, restart_server: Callable[[], None]) -> None:
        super().__init__(settings)
        self.restart_server = restart_server

    def measure_group(
        self, pools: Group, failures: Dict[str, str], turn_rates: TurnRates
    ) -> Dict[str, Sample]:
        samples: Dict[str, Sample] = {}

        def resume(key: str, pool: BenchPool) -> None:
            samples[key] = self._resume(pool)

        _take_turns(pools, failures, self._warm, 1)
        self.restart_server()
        _take_turns(pools, failures, resume, 1)
        return samples

    def _warm(self, key: str, pool: BenchPool) -> None:
        conns = [pool.acquire() for _ in range(self.maxconn)]
        try:
            for conn in conns:
                run_select_one(conn)
        finally:
            for conn in conns:
                pool.release(conn)

    def _resume(self, pool: BenchPool) -> Sample:
        opened_before = pool.opened()
        clock = time.perf_counter_ns
        started = time.monotonic()
        give_up_at = started + RESTART_SAMPLE_LIMIT_S
        durations: List[int] = []
        dead = failures = 0
        first_good_s: Optional[float] = None
        while len(durations) < self.settings.restart_ops and time.monotonic() < give_up_at:
            began = clock()
            # Every pool fails in its own way here (connect errors, driver errors, its own
            # wrappers); the sample counts them all rather than guessing each type.
            try:
                conn = pool.acquire()
            except Exception:
                failures += 1
                time.sleep(0.005)
                continue
            good = True
            try:
                run_select_one(conn)
            except Exception:
                good = False
                dead += 1
            try:
                pool.release(conn)
            except Exception:
                failures += 1
            if good:
                durations.append(clock() - began)
                if first_good_s is None:
                    first_good_s = time.monotonic() - started
        elapsed = time.monotonic() - started
        return {
            "ops_per_s": len(durations) / elapsed,
            "errors": dead + failures,
            "connections_opened": pool.opened() - opened_before,
            "dead_after_restart": dead,
            "first_good_ms": None if first_good_s is None else first_good_s * 1000.0,
            **_latency_keys(durations),
        }


def make_scenarios(
    names: Sequence[str],
    settings: Settings,
    restart_server: Optional[Callable[[], None]] = None,
) -> List[Scenario]:
    """The scenarios named, in the canonical order; ``restart`` needs ``restart_server``."""
    scenarios: List[Scenario] = []
    for name in SCENARIO_NAMES:
        if name not in names:
            continue
        if name == "restart":
            if restart_server is None:
                raise ValueError("the restart scenario needs a server the bench may restart")
            scenarios.append(Restart(settings, restart_server))
        else:
            kinds = {kind.name: kind for kind in (Overhead, Query, Contention, Churn)}
            scenarios.append(kinds[name](settings))
    return scenarios
