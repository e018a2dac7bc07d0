"""The DSDK driver's :class:`Pool` against a fake control plane and real in-process workers.

No master and no processes: the fake client's ``submit`` starts the job's workers as real
:class:`dsdk._worker.Worker` objects, each on its own asyncio loop in a thread of its own, and its
``endpoints`` lists the addresses they publish. The pool finds them, connects over the real data
plane with the secret it put in the job's spec, and everything after that is the real code.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from dsdk import _shards, _wire
from dsdk._context import TaskContext
from dsdk._driver import WORKER_COMMAND, Pool, WorkerInfo, gather
from dsdk._types import Endpoint, Job, JobState, JobStats, Task, TaskState
from dsdk._worker import KIND, ObjArg, ShardArg, Worker
from dsdk.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    RemoteError,
    WorkerLost,
)

pytestmark = pytest.mark.timeout(90)

#: Where the fake puts task i: two regions, one sub-domain each.
PLACES = [("node-0", "sd-east-1", "east"), ("node-1", "sd-west-1", "west"), ("node-2", "sd-east-1", "east")]

#: Gates a function can wait on inside a worker (module level: cloudpickle ships functions that
#: use it by reference, and the in-process workers see this very dict).
GATES: dict[str, threading.Event] = {}


def worker_index() -> int:
    """Which worker runs the calling function (each worker's call thread is named ``w<i>-a<n>``)."""
    name = threading.current_thread().name
    assert name.startswith("w"), name
    return int(name[1:].split("-")[0])


def doubled_unless_gated(x: int) -> int:
    """Blocks while its worker's gate is closed: calls that stay in flight."""
    gate = GATES.get(f"w{worker_index()}")
    if gate is not None:
        gate.wait(10)
    return 2 * x


def divide(a: float, b: float) -> float:
    return a / b


# -- the fake control plane ----------------------------------------------------------------------


class _Worker(Worker):
    """Publishes to the fake client instead of the master."""

    def __init__(self, ctx: TaskContext, key: bytes, fake: FakeClient, **kwargs: Any) -> None:
        super().__init__(ctx, key, **kwargs)
        self.fake = fake
        # Production runs one worker per process and counts its traffic process-wide; several
        # share this process, so each gets counters of its own.
        self.traffic = _wire.Traffic()
        self._executor.shutdown()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"w{ctx.task_index}-a{ctx.attempt}")

    def _publish(self) -> None:
        self.fake.publish(
            Endpoint(self.ctx.task_index, self.ctx.attempt, self.address, KIND, self.ctx.node_id)
        )


class _Running:
    def __init__(self, worker: _Worker, fake: FakeClient) -> None:
        self.worker = worker
        self.fake = fake
        self.code: int | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._main, name=f"fake-task-{worker.ctx.task_index}", daemon=True
        )

    def _main(self) -> None:
        try:
            self.code = asyncio.run(self.worker.run())
        except BaseException as exc:
            self.error = exc
        finally:
            self.fake.changed()

    def stop(self) -> None:
        loop = self.worker._loop
        if loop is not None and self.thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(self.worker._stop.set)
        self.thread.join(10)
        assert not self.thread.is_alive(), "a worker thread did not end"


class FakeClient:
    """What a :class:`Pool` uses of :class:`dsdk.Client`, with in-process workers as its tasks."""

    def __init__(self, datasets_dir: str, start: int | None = None) -> None:
        self.datasets_dir = datasets_dir
        self.start = start
        self.specs: list[dict[str, Any]] = []
        self.reports: list[tuple[str, JobStats]] = []
        self.cancelled: list[tuple[str, str]] = []
        self.tasks: dict[int, list[_Running]] = {}  # task index -> its attempts
        self.endpoint_list: list[Endpoint] = []
        self.replicas = 0
        self.job_id = ""
        self.key = b""
        self.idle_s = 60.0
        self._cond = threading.Condition()
        self._closed = False
        self._jobs = itertools.count(1)

    # what the pool calls ---------------------------------------------------------------------------

    def submit(self, spec: dict[str, Any]) -> Job:
        assert not self.specs, "one pool per fake client"
        self.specs.append(spec)
        self.job_id = f"job-{next(self._jobs)}"
        self.replicas = spec["replicas"]
        self.key = _wire.secret_key(spec["env"]["DSDK_SECRET"])
        self.idle_s = float(spec["env"]["DSDK_IDLE_S"])
        for i in range(self.replicas if self.start is None else self.start):
            self.start_task(i)
        return Job(job_id=self.job_id, state=JobState.PENDING, name=spec["name"], replicas=self.replicas)

    def endpoints(
        self, job_id: str, *, kind: str = "collective", min_count: int = 0, wait: float = 0.0
    ) -> tuple[list[Endpoint], JobState]:
        assert job_id == self.job_id and kind == KIND
        deadline = time.monotonic() + wait
        with self._cond:
            while len(self.endpoint_list) < min_count and not self._closed and not self._state().terminal:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return list(self.endpoint_list), self._state()

    def job(self, job_id: str) -> Job:
        assert job_id == self.job_id
        with self._cond:
            tasks = []
            for i in range(self.replicas):
                attempts = self.tasks.get(i)
                if not attempts:
                    tasks.append(Task(i, 0, TaskState.PENDING))
                    continue
                last = attempts[-1]
                state = TaskState.RUNNING if last.thread.is_alive() else TaskState.SUCCEEDED
                node, sd, region = PLACES[i % len(PLACES)]
                tasks.append(Task(i, last.worker.ctx.attempt, state, node, sd, region))
            return Job(job_id=self.job_id, state=self._state(), replicas=self.replicas, tasks=tuple(tasks))

    def cancel(self, job_id: str, reason: str = "") -> None:
        with self._cond:
            self.cancelled.append((job_id, reason))
        self.stop_all()

    def report_stats(self, job_id: str, stats: JobStats) -> None:
        with self._cond:
            self.reports.append((job_id, stats))

    # what the tests use ----------------------------------------------------------------------------

    def _state(self) -> JobState:
        if self.cancelled:
            return JobState.CANCELLED
        if len(self.tasks) == self.replicas and all(
            not a[-1].thread.is_alive() and a[-1].thread.ident is not None for a in self.tasks.values()
        ):
            return JobState.SUCCEEDED
        return JobState.RUNNING

    def changed(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def publish(self, ep: Endpoint) -> None:
        with self._cond:
            self.endpoint_list.append(ep)
            self._cond.notify_all()

    def start_task(self, index: int) -> _Running:
        """Start task ``index`` (a new attempt if it ran before), as the master would."""
        attempt = len(self.tasks.get(index, []))
        node, sd, region = PLACES[index % len(PLACES)]
        ctx = TaskContext(
            job_id=self.job_id,
            task_index=index,
            attempt=attempt,
            replicas=self.replicas,
            node_id=node,
            subdomain_id=sd,
            region=region,
            node_host="127.0.0.1",
            datasets_dir=f"{self.datasets_dir}/{node}",
        )
        running = _Running(_Worker(ctx, self.key, self, idle_s=self.idle_s), self)
        with self._cond:
            self.tasks.setdefault(index, []).append(running)
        published = len(self.endpoint_list)
        running.thread.start()
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.endpoint_list) > published, timeout=10)
        assert ok, f"task {index} did not publish its endpoint"
        return running

    def worker(self, index: int) -> _Running:
        return self.tasks[index][-1]

    def stop_all(self) -> None:
        for attempts in list(self.tasks.values()):
            for running in attempts:
                running.stop()
        self.changed()

    def shutdown(self) -> None:
        for gate in GATES.values():
            gate.set()
        self.stop_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for attempts in self.tasks.values():
            for running in attempts:
                assert running.error is None, running.error
                assert _refused(running.worker.address), f"{running.worker.address} still listening"


def _refused(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((host, int(port))) == errno.ECONNREFUSED


@pytest.fixture
def fake(tmp_path: Any) -> Iterator[FakeClient]:
    client = FakeClient(str(tmp_path))
    yield client
    client.shutdown()
    GATES.clear()


@pytest.fixture
def pools(fake: FakeClient) -> Iterator[Callable[..., Pool]]:
    """``pools(workers=2, **options)``: a pool on the fake client, closed at the end of the test."""
    made: list[Pool] = []

    def make(workers: int = 2, **options: Any) -> Pool:
        pool = Pool(fake, workers, **options)  # type: ignore[arg-type]
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.close(timeout=2.0, wait=True)


@pytest.fixture
def pool(pools: Callable[..., Pool]) -> Pool:
    """Two workers, connected: task 0 on node-0 (east), task 1 on node-1 (west)."""
    p = pools(2)
    p.wait_ready(timeout=20)
    return p


def _until(cond: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.005)


# -- the job the pool submits ------------------------------------------------------------------------


def test_the_pool_submits_a_worker_job_with_its_secret_and_placement(
    fake: FakeClient, pools: Callable[..., Pool]
) -> None:
    p = pools(
        2,
        cpus=0.5,
        memory="256Mi",
        name="unit-pool",
        affinity=["sd-east-1/node-0", "sd-west-1/node-1"],
        soft=False,
        distinct_nodes=True,
        env={"EXTRA": "1"},
        idle_s=30,
        priority="high",
        node_selector={"zone": "a"},
        restarts=2,
    )
    (spec,) = fake.specs
    assert spec["name"] == "unit-pool"
    assert spec["replicas"] == 2
    assert spec["command"] == list(WORKER_COMMAND)
    assert "-m dsdk.worker" in spec["command"][-1]
    secret = spec["env"]["DSDK_SECRET"]
    assert len(secret) == 64 and int(secret, 16) >= 0
    assert spec["env"]["EXTRA"] == "1"
    assert float(spec["env"]["DSDK_IDLE_S"]) == 30.0
    assert spec["resources"] == {"cpus": 0.5, "gpus": 0, "memory": "256Mi"}
    assert spec["retry"] == {"on_exit": 2, "on_lost": 2}
    assert spec["affinity"] == {"nodes": ["sd-east-1/node-0", "sd-west-1/node-1"], "soft": False}
    assert spec["distinct_nodes"] is True
    assert spec["priority"] == "high"
    assert spec["node_selector"] == {"zone": "a"}
    assert p.job_id == fake.job_id
    # The workers were given that secret: the pool's handshakes with them succeed.
    ready = p.wait_ready(timeout=20)
    assert [(w.task_index, w.node_id, w.subdomain_id, w.region) for w in ready] == [
        (0, "node-0", "sd-east-1", "east"),
        (1, "node-1", "sd-west-1", "west"),
    ]
    assert "workers=2/2" in repr(p)


def test_a_plain_pool_asks_for_no_placement_and_has_its_own_secret(
    tmp_path: Any, pools: Callable[..., Pool], fake: FakeClient
) -> None:
    pools(1)
    (spec,) = fake.specs
    assert "affinity" not in spec and "distinct_nodes" not in spec
    assert "priority" not in spec and "node_selector" not in spec
    assert spec["resources"] == {"cpus": 1, "gpus": 0}
    other = FakeClient(str(tmp_path / "other"))
    try:
        p2 = Pool(other, 1)  # type: ignore[arg-type]
        p2.close(timeout=2.0, wait=True)
    finally:
        other.shutdown()
    assert other.specs[0]["env"]["DSDK_SECRET"] != spec["env"]["DSDK_SECRET"]


@pytest.mark.parametrize(
    ("kwargs", "fld"),
    [({"workers": 0}, "workers"), ({"workers": True}, "workers"), ({"workers": 2, "retries": -1}, "retries")],
)
def test_bad_pool_arguments_are_refused_before_submitting(
    fake: FakeClient, kwargs: dict[str, Any], fld: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        Pool(fake, **kwargs)  # type: ignore[arg-type]
    assert info.value.field == fld
    assert fake.specs == []


# -- calls ------------------------------------------------------------------------------------------


def test_map_of_a_thousand_calls_returns_in_order_over_both_workers(pool: Pool, fake: FakeClient) -> None:
    futures = pool.map(lambda x: x * x, range(1000))
    assert gather(futures, timeout=30) == [x * x for x in range(1000)]
    counts = [fake.worker(i).worker.calls for i in (0, 1)]
    assert sum(counts) == 1000
    assert min(counts) >= 100, counts  # spread, not all on one worker
    pairs = pool.map(lambda a, b: f"{a}{b}", "abc", [1, 2, 3, 4])
    assert gather(pairs, timeout=10) == ["a1", "b2", "c3"]


def test_submit_with_keyword_arguments(pool: Pool) -> None:
    def power(base: int, *, exp: int = 1, plus: int = 0) -> int:
        return int(base**exp + plus)

    assert pool.submit(power, 2, exp=10).result(10) == 1024
    assert pool.submit(power, 3, exp=2, plus=1).result(10) == 10
    assert pool.submit(power, base=5).result(10) == 5


def test_a_remote_exception_raises_remote_error_with_the_remote_traceback(pool: Pool) -> None:
    fut = pool.submit(divide, 1.0, 0.0)
    with pytest.raises(RemoteError) as info:
        fut.result(10)
    err = info.value
    assert err.type_name == "ZeroDivisionError"
    assert "division by zero" in err.remote_message
    assert "in divide" in err.remote_traceback and "return a / b" in err.remote_traceback
    assert "_run_calls" not in err.remote_traceback
    assert err.where.startswith("on node node-") and "(task " in err.where
    assert "Remote traceback:" in str(err) and "ZeroDivisionError" in str(err)
    # gather raises the first failure; the pool goes on working.
    futures = pool.map(divide, [4.0, 1.0, 9.0], [2.0, 0.0, 3.0])
    with pytest.raises(RemoteError, match="ZeroDivisionError"):
        gather(futures, timeout=10)
    assert futures[0].result(10) == 2.0 and futures[2].result(10) == 3.0


def test_an_argument_that_cannot_be_pickled_fails_that_call(pool: Pool) -> None:
    bad = pool.submit(lambda x: x, threading.Lock())
    with pytest.raises(InvalidArgument, match="cannot send the arguments") as info:
        bad.result(10)
    assert info.value.field == "args"
    assert pool.submit(lambda x: x + 1, 1).result(10) == 2
    with pytest.raises(InvalidArgument) as fn_info:
        lock = threading.Lock()
        pool.submit(lambda: lock)  # the function itself cannot be shipped
    assert fn_info.value.field == "fn"


def test_an_argument_that_cannot_be_pickled_fails_only_that_call_in_a_map(pool: Pool) -> None:
    items: list[Any] = list(range(10))
    items[1] = threading.Lock()
    futures = pool.map(lambda x: x, items)
    with pytest.raises(InvalidArgument):
        futures[1].result(10)
    assert [f.result(10) for i, f in enumerate(futures) if i != 1] == [i for i in range(10) if i != 1]


def test_a_result_that_cannot_be_pickled_fails_the_call(pool: Pool) -> None:
    fut = pool.submit(lambda: threading.Lock())
    with pytest.raises(RemoteError):
        fut.result(3)


def test_run_on_all_runs_once_per_worker(pool: Pool, fake: FakeClient) -> None:
    before = [fake.worker(i).worker.calls for i in (0, 1)]
    assert pool.run_on_all(lambda tag: (worker_index(), tag), "step", timeout=10) == [
        (0, "step"),
        (1, "step"),
    ]
    assert [fake.worker(i).worker.calls - before[i] for i in (0, 1)] == [1, 1]


def test_require_and_pinning_choose_the_worker(pool: Pool) -> None:
    west = [pool.call(worker_index, require=lambda w: w.region == "west") for _ in range(30)]
    east = [pool.call(worker_index, require=lambda w: w.node_id == "node-0") for _ in range(30)]
    assert gather(west, timeout=10) == [1] * 30
    assert gather(east, timeout=10) == [0] * 30
    w0, w1 = pool.workers
    assert pool.call(worker_index, worker=w1).result(10) == 1
    assert pool.call(worker_index, worker=w0).result(10) == 0
    assert w0.place == _wire.Place("node-0", "sd-east-1", "east")


def test_a_call_no_worker_may_run_waits_and_fails_when_the_pool_closes(pool: Pool) -> None:
    stuck = pool.call(worker_index, require=lambda w: w.region == "mars")
    assert pool.submit(worker_index).result(10) in (0, 1)
    assert not stuck.done()
    pool.close(timeout=2.0, wait=True)
    with pytest.raises(FailedPrecondition, match="was closed"):
        stuck.result(5)


# -- losing workers --------------------------------------------------------------------------------------


def test_calls_in_flight_on_a_stopped_worker_are_retried_on_the_other(pool: Pool, fake: FakeClient) -> None:
    GATES["w0"] = threading.Event()  # worker 0 holds its calls until it is stopped
    futures = pool.map(doubled_unless_gated, range(200))
    _until(lambda: fake.worker(0).worker.calls == 0 and sum(f.done() for f in futures) >= 50, what="w1 works")
    link0 = pool._links[(0, 0)]
    assert link0.inflight, "worker 0 holds calls in flight"
    fake.worker(0).stop()
    assert gather(futures, timeout=20) == [2 * x for x in range(200)]
    assert [w.task_index for w in pool.workers] == [1]
    assert fake.worker(1).worker.calls == 200  # all of them ran there in the end
    # Pinned to the lost worker: WorkerLost at once, not a hang.
    with pytest.raises(WorkerLost, match="worker 0"):
        pool.call(worker_index, worker=link0.info).result(10)


def test_a_restarted_worker_is_connected_again(pool: Pool, fake: FakeClient) -> None:
    fake.worker(0).stop()
    _until(lambda: [w.task_index for w in pool.workers] == [1], what="the pool notices")
    fake.start_task(0)  # the master starts the task again: attempt 1
    ready = pool.wait_ready(timeout=20)
    assert [(w.task_index, w.attempt) for w in ready] == [(0, 1), (1, 0)]
    assert sorted(set(gather(pool.map(lambda _: worker_index(), range(300)), timeout=20))) == [0, 1]


def test_when_retries_are_spent_the_call_fails_with_worker_lost(
    pools: Callable[..., Pool], fake: FakeClient
) -> None:
    p = pools(2, retries=0)
    p.wait_ready(timeout=20)
    GATES["w0"] = threading.Event()
    futures = p.map(doubled_unless_gated, range(100))
    _until(lambda: sum(f.done() for f in futures) >= 30, what="worker 1 finishes calls")
    held = len(p._links[(0, 0)].inflight)
    assert held > 0
    fake.worker(0).stop()
    concurrent.futures.wait(futures, timeout=20)
    assert all(f.done() for f in futures)
    lost = [f for f in futures if f.exception() is not None]
    assert len(lost) == held
    for f in lost:
        err = f.exception()
        assert isinstance(err, WorkerLost)
        assert "worker 0 on node node-0 went away while running" in str(err)
    assert all(f.result() == 2 * x for x, f in enumerate(futures) if f.exception() is None)


def test_wait_ready_timeout_names_how_many_workers_came(tmp_path: Any) -> None:
    client = FakeClient(str(tmp_path), start=1)  # one task never starts
    try:
        p = Pool(client, 2)  # type: ignore[arg-type]
        try:
            assert len(p.wait_ready(count=1, timeout=20)) == 1
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded) as info:
                p.wait_ready(timeout=0.5)
            assert time.monotonic() - started < 5
            text = str(info.value)
            assert f"only 1 of 2 workers of job {client.job_id} were ready within 0.5s" in text
            assert "job RUNNING: 1 pending, 1 running" in text
        finally:
            p.close(timeout=0.5, wait=True)
        # The task that never started keeps the job from ending: the closed pool cancels it.
        assert client.cancelled and client.cancelled[0][0] == client.job_id
        assert "never started" in client.cancelled[0][1]
    finally:
        client.shutdown()


# -- close, statistics, data between workers -----------------------------------------------------------


def test_close_reports_statistics_stops_the_workers_and_refuses_later_calls(
    pool: Pool, fake: FakeClient
) -> None:
    arg = np.ones(12_500)  # 100 kB each way per call
    assert all(
        np.array_equal(r, arg * 3) for r in gather([pool.submit(lambda a: a * 3, arg) for _ in range(10)], 10)
    )
    running = pool.stats()
    assert running.calls == 10
    stats = pool.close(wait=True)
    assert stats is not None
    assert fake.reports and fake.reports[-1] == (fake.job_id, stats)
    assert stats.calls == 10 and stats.local_calls == 0
    moved = 2 * 10 * arg.nbytes
    assert moved <= stats.bytes_client < moved + 256 * 1024, stats
    assert stats.bytes_intra_node == stats.bytes_inter_node == 0
    assert stats.bytes_inter_subdomain == stats.bytes_inter_region == 0
    with pytest.raises(FailedPrecondition, match="is closed"):
        pool.submit(lambda: 1)
    assert pool.close() is None  # idempotent
    # The workers were told to exit; the job ended by itself and needed no cancel.
    _until(lambda: all(not fake.worker(i).thread.is_alive() for i in (0, 1)), what="workers exit")
    assert [fake.worker(i).code for i in (0, 1)] == [0, 0]
    assert fake.job(fake.job_id).state is JobState.SUCCEEDED
    assert fake.cancelled == []


def test_push_and_fetch_between_two_pool_workers(pool: Pool, fake: FakeClient) -> None:
    w0, w1 = pool.workers
    summary = pool.call(lambda: np.arange(100_000, dtype=np.float64), keep="a", worker=w0).result(10)
    assert summary == {"type": "ndarray", "nbytes": 800_000}
    before = pool.stats()
    pool.push(w0, ["a"], w1, ["b"])
    (b,) = pool.fetch(w1, ["b"])
    assert np.array_equal(b, np.arange(100_000, dtype=np.float64))
    with pytest.raises(RemoteError) as info:
        pool.fetch(w0, ["a"])  # moved, not copied
    assert info.value.type_name == "KeyError"
    # Computation where the object is, then worker to worker without dropping.
    assert pool.call(lambda x: float(x.sum()), ObjArg("b"), worker=w1).result(10) == float(
        np.arange(100_000).sum()
    )
    pool.push(w1, ["b"], w0, ["c"], drop=False)
    assert [len(v) for v in pool.fetch(w0, ["c"]) + pool.fetch(w1, ["b"])] == [100_000, 100_000]
    after = pool.stats()
    # Two pushes of 800 kB between east and west, counted once each (by the sender).
    crossed = after.bytes_inter_region - before.bytes_inter_region
    assert 2 * 800_000 <= crossed < 2 * 800_000 + 64 * 1024
    assert after.bytes_intra_node == after.bytes_inter_node == after.bytes_inter_subdomain == 0
    pool.free(w1, ["b"])

    def gone() -> bool:
        try:
            pool.fetch(w1, ["b"])
        except RemoteError:
            return True
        return False

    _until(gone, what="the freed object is gone")


def test_workers_report_the_shards_their_node_holds(pools: Callable[..., Pool], fake: FakeClient) -> None:
    size = _shards.write_shard(f"{fake.datasets_dir}/node-1", "corpus", 3, np.arange(10))
    p = pools(2, datasets=["corpus"])
    w0, w1 = p.wait_ready(timeout=20)
    assert isinstance(w1, WorkerInfo)
    assert w0.shards == {"corpus": {}} and w1.shards == {"corpus": {3: size}}
    assert not w0.holds("corpus", 3) and w1.holds("corpus", 3)
    total = p.call(lambda a: int(a.sum()), ShardArg("corpus", 3), require=lambda w: w.holds("corpus", 3))
    assert total.result(10) == 45
    assert p.stats().local_calls == 1
    # A shard stored later on node-0 shows once the pool asks again.
    later = _shards.write_shard(f"{fake.datasets_dir}/node-0", "corpus", 5, np.arange(3))
    w0, w1 = p.refresh_shards(["corpus"])
    assert w0.shards == {"corpus": {5: later}} and w1.shards == {"corpus": {3: size}}
