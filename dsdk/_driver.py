"""The DSDK driver: pools of long-lived workers, and the calls, futures and data they carry.

A :class:`Pool` is one job of ``workers`` tasks, each a :mod:`dsdk.worker` process started once
for the job (never one process per call). The driver -- a background thread with its own asyncio
loop, one per client process -- finds the workers through the master's rendezvous, connects to
each over the data plane, and feeds them calls:

* a function is shipped once per worker (cloudpickle), calls by reference, in batches, with at
  most :data:`WINDOW` calls in flight per worker (work goes where there is room: load balancing);
* a call may *require* a worker (one holding its shard: computation moves to the data) or be
  pinned to one; others go to any worker with room;
* a call whose worker dies is retried on another (``retries``, default 3, as Ray does for tasks);
  the master restarts the lost task elsewhere and the driver connects to the new attempt;
* results come back as :class:`concurrent.futures.Future` values, or stay on the worker as named
  objects for a reduction (:meth:`Pool.push`, :meth:`Pool.fetch`).

Everything that touches sockets runs on the driver loop; the public methods are thread-safe and
blocking (or return futures), like the rest of the client.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import contextlib
import dataclasses
import itertools
import logging
import pickle
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from . import _wire
from ._worker import KIND, ObjArg, ShardArg
from .errors import (
    DeadlineExceeded,
    DomainOSError,
    FailedPrecondition,
    InvalidArgument,
    RemoteError,
    WorkerLost,
)

if TYPE_CHECKING:
    from ._client import Client
    from ._types import Job, JobStats

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Calls in flight per worker at most.
WINDOW = 128
#: Calls per message at most.
BATCH = 256
#: How often the driver reports a running pool's statistics to the master.
STATS_INTERVAL_S = 5.0
#: The command of a DSDK worker task: the node agent's own Python (it has DomainOS installed).
WORKER_COMMAND = ("/bin/sh", "-c", 'exec "${DOMAINOS_PYTHON:-python3}" -m dsdk.worker')
MAX_WORKERS = 1024

__all__ = ["Pool", "WorkerInfo", "driver_loop", "gather"]


# -- the driver loop (one per process) ---------------------------------------------------------------

_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_LOCK = threading.Lock()


def driver_loop() -> asyncio.AbstractEventLoop:
    """The process's driver loop, running in a daemon thread (started on first use)."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None or _LOOP.is_closed():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            threading.Thread(target=run, name="dsdk-driver", daemon=True).start()
            ready.wait()
            _LOOP = loop
        return _LOOP


def _run(coro: Any, timeout: float | None = None) -> Any:
    """Run ``coro`` on the driver loop and wait for it (from any other thread)."""
    loop = driver_loop()
    if threading.current_thread().name == "dsdk-driver":
        raise RuntimeError("a blocking DSDK call was made on the driver thread")
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)


def gather(futures: Iterable[concurrent.futures.Future[T]], timeout: float | None = None) -> list[T]:
    """The results of ``futures`` in order; the first failure is raised (a :class:`RemoteError`
    carries the remote traceback)."""
    futs = list(futures)
    deadline = None if timeout is None else time.monotonic() + timeout
    out: list[T] = []
    for f in futs:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            out.append(f.result(left))
        except concurrent.futures.TimeoutError:
            done = sum(1 for x in futs if x.done())
            raise DeadlineExceeded(f"{done} of {len(futs)} results arrived within {timeout:g}s") from None
    return out


# -- workers and calls -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerInfo:
    """A connected worker: the task it is, where it runs, what data it holds."""

    task_index: int
    attempt: int
    address: str
    node_id: str
    subdomain_id: str
    region: str
    #: dataset -> shard -> stored size, for the datasets the pool was asked about.
    shards: Mapping[str, Mapping[int, int]] = field(default_factory=dict)
    gpus: tuple[int, ...] = ()

    @property
    def place(self) -> _wire.Place:
        return _wire.Place(self.node_id, self.subdomain_id, self.region)

    def holds(self, dataset: str, shard: int) -> bool:
        return shard in self.shards.get(dataset, {})


Require = Callable[[WorkerInfo], bool]


@dataclass(eq=False)
class _Call:
    cid: int
    fid: int
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    future: concurrent.futures.Future[Any]
    keep: str = ""
    require: Require | None = None
    pin: tuple[int, int] | None = None  # (task index, attempt)
    retries: int = 3
    what: str = ""


class _Link:
    """The driver's connection to one worker."""

    def __init__(self, info: WorkerInfo, conn: _wire.Connection) -> None:
        self.info = info
        self.conn = conn
        self.inflight: dict[int, _Call] = {}
        self.defined: set[int] = set()
        self.alive = True
        self.replies: dict[int, asyncio.Future[Any]] = {}
        #: The worker's counters at the last look (kept in the totals if it is lost).
        self.last_stats: dict[str, Any] = {}

    @property
    def key(self) -> tuple[int, int]:
        return (self.info.task_index, self.info.attempt)


# -- the pool ------------------------------------------------------------------------------------------

_OPEN_POOLS: weakref.WeakSet[Pool] = weakref.WeakSet()


@atexit.register
def _close_open_pools() -> None:
    """A program that ends with pools open ends their jobs (their workers would idle out anyway)."""
    for pool in list(_OPEN_POOLS):
        with contextlib.suppress(Exception):
            pool.close(timeout=2.0, wait=True)


class Pool:
    """A set of long-lived DSDK workers (one job) and the calls they run.

    ``workers`` tasks of ``cpus``/``gpus``/``memory`` each. A call whose worker dies is run again
    on another worker up to ``retries`` times; a worker whose process or node dies is restarted
    up to ``restarts`` times (a new attempt of its task) before the pool's job fails. ``affinity`` pins task ``i`` to
    ``affinity[i]`` (``"<sub-domain>/<node>"``; ``soft`` lets it run elsewhere when that node
    cannot take it); ``distinct_nodes`` puts every worker on its own node. ``datasets``: the
    workers report which shards of these datasets they hold (for :class:`dsdk.Dataset`).

    Use as a context manager, or call :meth:`close`; the job ends when the pool closes.
    """

    def __init__(
        self,
        client: Client,
        workers: int = 1,
        *,
        cpus: float | str = 1,
        gpus: float = 0,
        memory: str | int | None = None,
        name: str = "dsdk-pool",
        affinity: Sequence[str] | None = None,
        soft: bool = True,
        distinct_nodes: bool = False,
        datasets: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        retries: int = 3,
        idle_s: float = 60.0,
        priority: str | None = None,
        node_selector: Mapping[str, str] | None = None,
        secret: str | None = None,
        restarts: int = 3,
    ) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
            raise InvalidArgument(
                f"must be a whole number between 1 and {MAX_WORKERS}, got {workers!r}", field="workers"
            )
        if retries < 0:
            raise InvalidArgument(f"must not be negative, got {retries}", field="retries")
        self.client = client
        self.size = workers
        self.retries = retries
        self.datasets = tuple(datasets)
        # Pools that exchange objects worker to worker (a dataset map and its rescue pools) share
        # one data-plane secret; any other pool has its own.
        self._secret = secret or _wire.new_secret()
        self._key = _wire.secret_key(self._secret)
        self._loop = driver_loop()
        self.traffic = _wire.Traffic()  # what the driver itself sent
        self._links: dict[tuple[int, int], _Link] = {}
        self._tried: set[tuple[int, int]] = set()  # attempts connected to (or tried)
        self._gone: set[tuple[int, int]] = set()  # attempts whose connection ended
        self._free: collections.deque[_Call] = collections.deque()
        self._constrained: list[_Call] = []
        self._fids: dict[int, tuple[int, Any, bytes]] = {}
        self._cids = itertools.count(1)
        self._rids = itertools.count(1)
        self._ready = threading.Condition()
        self._closed = False
        self._failed: DomainOSError | None = None
        self._finished_stats: dict[str, Any] = {
            "bytes": dict.fromkeys(_wire.CATEGORIES, 0),
            "calls": 0,
            "local_calls": 0,
        }
        self._reported_at = 0.0
        resources: dict[str, Any] = {"cpus": cpus, "gpus": gpus}
        if memory is not None:
            resources["memory"] = memory
        spec: dict[str, Any] = {
            "name": name,
            "replicas": workers,
            "command": list(WORKER_COMMAND),
            "env": {**(env or {}), "DSDK_SECRET": self._secret, "DSDK_IDLE_S": str(idle_s)},
            "resources": resources,
            # A worker whose node died, or whose process died (a segfault in a call), is started
            # again (a new attempt the driver connects to) instead of failing the whole pool.
            "retry": {"on_exit": restarts, "on_lost": restarts},
            "labels": {"dsdk": "pool"},
        }
        if affinity is not None:
            spec["affinity"] = {"nodes": list(affinity), "soft": soft}
        if distinct_nodes:
            spec["distinct_nodes"] = True
        if priority:
            spec["priority"] = priority
        if node_selector:
            spec["node_selector"] = dict(node_selector)
        self.job: Job = client.submit(spec)
        self.job_id = self.job.job_id
        self._discovery = asyncio.run_coroutine_threadsafe(self._discover(), self._loop)
        _OPEN_POOLS.add(self)
        log.info("pool %s: job %s of %d workers", name, self.job_id, workers)

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> Pool:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Pool(job={self.job_id!r}, workers={len(self.workers)}/{self.size})"

    @property
    def workers(self) -> list[WorkerInfo]:
        """The workers connected now, by task index."""
        return sorted((lk.info for lk in list(self._links.values()) if lk.alive), key=lambda w: w.task_index)

    def wait_ready(self, count: int | None = None, timeout: float = 120.0) -> list[WorkerInfo]:
        """Block until ``count`` workers (default: all) are connected; DeadlineExceeded names how
        many came, FailedPrecondition when the job ended first (with its message)."""
        want = self.size if count is None else count
        deadline = time.monotonic() + timeout
        with self._ready:
            while len(self.workers) < want:
                if self._failed is not None:
                    raise self._failed
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DeadlineExceeded(
                        f"only {len(self.workers)} of {want} workers of job {self.job_id} were ready within "
                        f"{timeout:g}s ({self._why_not_ready()})"
                    )
                self._ready.wait(min(left, 0.5))
        return self.workers

    def _why_not_ready(self) -> str:
        try:
            job = self.client.job(self.job_id)
        except DomainOSError as exc:
            return f"cannot read the job: {exc}"
        counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(job.task_counts().items()))
        return f"job {job.state.value}: {counts}" + (f"; {job.message}" if job.message else "")

    def close(self, *, timeout: float = 15.0, wait: bool = False) -> JobStats | None:
        """Report the pool's statistics and stop its workers (idempotent); returns the statistics.

        The job ends on its own once every worker has exited. Workers that connect later (they
        started while the last calls ran elsewhere) are told to exit as they come; a job still
        not finished after ``timeout`` seconds (tasks that never started) is cancelled. That
        happens in the background unless ``wait``.
        """
        if self._closed:
            return None
        self._closed = True
        _OPEN_POOLS.discard(self)
        stats: JobStats | None = None
        try:
            stats = _run(self._shutdown(), 20.0)
            self._report(stats)
        except (DomainOSError, concurrent.futures.TimeoutError, RuntimeError) as exc:
            log.warning("pool %s: clean shutdown failed: %s", self.job_id, exc)
        self._discovery.cancel()
        reaper = asyncio.run_coroutine_threadsafe(self._reap(timeout), self._loop)
        if wait:
            with contextlib.suppress(concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
                reaper.result(timeout + 10)
        return stats

    async def _reap(self, grace: float) -> None:
        """After close: tell late workers to exit; cancel the job if it has not ended by ``grace``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        try:
            while loop.time() < deadline:
                job = await asyncio.to_thread(self.client.job, self.job_id)
                if job.terminal:
                    return
                left = deadline - loop.time()
                eps, _ = await asyncio.to_thread(
                    self.client.endpoints,
                    self.job_id,
                    kind=KIND,
                    min_count=self.size,
                    wait=max(0.0, min(2.0, left)),
                )
                for ep in eps:
                    key = (ep.task_index, ep.attempt)
                    if key not in self._tried:
                        self._tried.add(key)
                        _wire.spawn(self._dismiss(ep.address))
                await asyncio.sleep(0.05)
            job = await asyncio.to_thread(self.client.job, self.job_id)
            if not job.terminal:
                await asyncio.to_thread(
                    self.client.cancel, self.job_id, reason="DSDK pool closed; some workers never started"
                )
        except Exception as exc:  # the interpreter is exiting, or the client was closed
            log.debug("pool %s: could not see its job to the end: %s", self.job_id, exc)

    async def _dismiss(self, address: str) -> None:
        """Tell a worker that connected after the pool closed to exit."""
        with contextlib.suppress(DomainOSError, OSError):
            conn = await _wire.connect(address, self._key, traffic=self.traffic, local=_wire.Place())
            try:
                await conn.send({"op": "exit"})
            finally:
                conn.close()

    async def _shutdown(self) -> JobStats:
        err = FailedPrecondition(f"the pool (job {self.job_id}) was closed")
        for call in list(self._free) + self._constrained:
            _fail(call, err)
        self._free.clear()
        self._constrained.clear()
        stats = await self._collect_stats(final=True)
        for link in list(self._links.values()):
            if link.alive:
                with contextlib.suppress(_wire.WireError):
                    await link.conn.send({"op": "exit"})
                link.alive = False
                link.conn.close()
        return stats

    # -- discovery and connections -----------------------------------------------------------------

    async def _discover(self) -> None:
        """Connect to every worker that publishes an endpoint (new attempts included) until closed."""
        while not self._closed:
            try:
                want = len([lk for lk in self._links.values() if lk.alive]) + 1
                eps, state = await asyncio.to_thread(
                    self.client.endpoints, self.job_id, kind=KIND, min_count=min(want, self.size), wait=5.0
                )
            except DomainOSError as exc:
                log.warning("pool %s: listing workers failed: %s", self.job_id, exc)
                await asyncio.sleep(1.0)
                continue
            except Exception as exc:  # the client was closed under the pool
                err = FailedPrecondition(f"the pool's client is gone: {exc}")
                err.__cause__ = exc
                self._fail_all(err)
                return
            for ep in eps:
                key = (ep.task_index, ep.attempt)
                if key not in self._tried:
                    self._tried.add(key)  # one try per attempt: a failed connect waits for the next
                    _wire.spawn(self._connect(ep))
            if state.terminal and not self._closed:
                job = await asyncio.to_thread(self.client.job, self.job_id)
                self._fail_all(
                    FailedPrecondition(
                        f"the pool's job {self.job_id} ended: {job.state.value} {job.message}".strip()
                    )
                )
                return
            if time.monotonic() - self._reported_at > STATS_INTERVAL_S and self._links:
                self._reported_at = time.monotonic()
                try:
                    stats = await self._collect_stats()
                    await asyncio.to_thread(self._report, stats)
                except DomainOSError as exc:
                    log.debug("pool %s: stats report failed: %s", self.job_id, exc)
            if len(eps) >= self.size:
                await asyncio.sleep(1.0)

    async def _connect(self, ep: Any) -> None:
        """Connect to a worker's new attempt; a few tries (it may still be starting up)."""
        for delay in (0.2, 0.5, 1.0, 0.0):
            if await self._connect_once(ep) or self._closed:
                return
            if delay:
                await asyncio.sleep(delay)
        log.warning(
            "pool %s: gave up on worker %d.%d at %s", self.job_id, ep.task_index, ep.attempt, ep.address
        )

    async def _connect_once(self, ep: Any) -> bool:
        try:
            conn = await _wire.connect(ep.address, self._key, traffic=self.traffic, local=_wire.Place())
            conn.peer = _wire.Place(ep.node_id, ep.subdomain_id, ep.region)
            link = _Link(
                WorkerInfo(ep.task_index, ep.attempt, ep.address, ep.node_id, ep.subdomain_id, ep.region),
                conn,
            )
            reader = _wire.spawn(self._read(link))
            hello = await self._request(
                link, {"op": "hello", "place": ("", "", ""), "datasets": list(self.datasets)}
            )
        except (DomainOSError, OSError) as exc:
            log.warning(
                "pool %s: cannot connect to worker %d.%d at %s: %s",
                self.job_id,
                ep.task_index,
                ep.attempt,
                ep.address,
                exc,
            )
            return False
        link.info = WorkerInfo(
            ep.task_index,
            ep.attempt,
            ep.address,
            hello["node"],
            hello["subdomain"],
            hello["region"],
            {k: dict(v) for k, v in hello["shards"].items()},
            tuple(hello.get("gpus", ())),
        )
        conn.peer = link.info.place
        if self._closed:  # it came after the pool closed: it has nothing to do
            with contextlib.suppress(_wire.WireError):
                await conn.send({"op": "exit"})
            conn.close()
            reader.cancel()
            return True
        self._links[link.key] = link
        log.info(
            "pool %s: worker %d.%d on node %s (%s)",
            self.job_id,
            ep.task_index,
            ep.attempt,
            link.info.node_id,
            ep.address,
        )
        with self._ready:
            self._ready.notify_all()
        self._dispatch()
        return True

    async def _read(self, link: _Link) -> None:
        try:
            while True:
                msg = await link.conn.recv()
                op = msg.get("op")
                if op == "results":
                    for cid, ok, payload in msg["results"]:
                        call = link.inflight.pop(cid, None)
                        if call is None:
                            continue
                        if ok:
                            _settle(call.future, payload)
                        else:
                            name, text, tb = payload
                            _settle_error(
                                call.future,
                                RemoteError(
                                    name,
                                    text,
                                    tb,
                                    f"on node {link.info.node_id} (task {link.info.task_index})",
                                ),
                            )
                    self._dispatch()
                elif op == "reply":
                    fut = link.replies.pop(msg["rid"], None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
        except _wire.WireError as exc:
            if not self._closed:
                log.warning(
                    "pool %s: lost worker %d.%d on node %s: %s",
                    self.job_id,
                    *link.key,
                    link.info.node_id,
                    exc,
                )
        finally:
            self._lost(link)

    def _lost(self, link: _Link) -> None:
        link.alive = False
        link.conn.close()
        self._links.pop(link.key, None)
        self._gone.add(link.key)
        # What it had done, as of its last report, stays in the pool's totals.
        last = link.last_stats
        if last:
            for k, v in last["bytes"].items():
                self._finished_stats["bytes"][k] = self._finished_stats["bytes"].get(k, 0) + v
            self._finished_stats["calls"] += last["calls"]
            self._finished_stats["local_calls"] += last["local_calls"]
        for fut in link.replies.values():
            if not fut.done():
                fut.set_exception(
                    WorkerLost(f"worker {link.info.task_index} on node {link.info.node_id} went away")
                )
        link.replies.clear()
        for call in link.inflight.values():
            if call.retries > 0 and not self._closed and call.pin is None:
                call.retries -= 1
                if call.require is None:
                    self._free.appendleft(call)
                else:
                    self._constrained.append(call)
            else:
                _fail(
                    call,
                    WorkerLost(
                        f"worker {link.info.task_index} on node {link.info.node_id} went away while running {call.what or 'a call'}"
                    ),
                )
        link.inflight.clear()
        self._dispatch()

    def _fail_all(self, err: DomainOSError) -> None:
        self._failed = err
        for call in list(self._free) + self._constrained:
            _fail(call, err)
        self._free.clear()
        self._constrained.clear()
        with self._ready:
            self._ready.notify_all()

    async def _request(self, link: _Link, msg: dict[str, Any], timeout: float | None = None) -> Any:
        rid = next(self._rids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        link.replies[rid] = fut
        await link.conn.send({**msg, "rid": rid})
        reply = await (asyncio.wait_for(fut, timeout) if timeout else fut)
        if not reply["ok"]:
            name, text, tb = reply["error"]
            raise RemoteError(name, text, tb, f"on node {link.info.node_id} (task {link.info.task_index})")
        return reply["value"]

    # -- calls -------------------------------------------------------------------------------------

    def _fid(self, fn: Callable[..., Any]) -> tuple[int, bytes]:
        import cloudpickle

        if not callable(fn):
            raise InvalidArgument(f"expected a function, got {type(fn).__name__}", field="fn")
        entry = self._fids.get(id(fn))
        if entry is None or entry[1] is not fn:
            try:
                blob = cloudpickle.dumps(fn)
            except Exception as exc:
                raise InvalidArgument(
                    f"cannot ship {getattr(fn, '__qualname__', fn)!r} to the workers: {exc}", field="fn"
                ) from exc
            entry = (len(self._fids) + 1, fn, blob)
            self._fids[id(fn)] = entry
        return entry[0], entry[2]

    def _new_call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        keep: str = "",
        require: Require | None = None,
        pin: tuple[int, int] | None = None,
        retries: int | None = None,
        what: str = "",
    ) -> _Call:
        if self._closed:
            raise FailedPrecondition(f"the pool (job {self.job_id}) is closed")
        if self._failed is not None:
            raise self._failed
        fid, _ = self._fid(fn)
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        return _Call(
            next(self._cids),
            fid,
            args,
            kwargs,
            fut,
            keep,
            require,
            pin,
            self.retries if retries is None else retries,
            what,
        )

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        """Run ``fn(*args, **kwargs)`` on some worker; a future of its result."""
        call = self._new_call(fn, args, kwargs)
        self._loop.call_soon_threadsafe(self._enqueue, [call])
        return call.future

    def map(self, fn: Callable[..., T], *iterables: Iterable[Any]) -> list[concurrent.futures.Future[T]]:
        """``fn`` over the items (zipped, as :func:`map`), spread over the workers; futures in order."""
        calls = [self._new_call(fn, tuple(items), {}) for items in zip(*iterables, strict=False)]
        self._loop.call_soon_threadsafe(self._enqueue, calls)
        return [c.future for c in calls]

    def call(
        self,
        fn: Callable[..., Any],
        *args: Any,
        keep: str = "",
        require: Require | None = None,
        worker: WorkerInfo | None = None,
        retries: int | None = None,
        what: str = "",
        **kwargs: Any,
    ) -> concurrent.futures.Future[Any]:
        """The general form: ``keep`` leaves the result on the worker under that name (the future
        gets a summary); ``require`` limits which workers may run it; ``worker`` pins it."""
        pin = (worker.task_index, worker.attempt) if worker is not None else None
        call = self._new_call(
            fn, args, kwargs, keep=keep, require=require, pin=pin, retries=retries, what=what
        )
        self._loop.call_soon_threadsafe(self._enqueue, [call])
        return call.future

    def run_on_all(
        self, fn: Callable[..., T], *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> list[T]:
        """Run ``fn`` once on every connected worker at the same time (e.g. a training step whose
        body calls collectives); results by task index."""
        futs = [self.call(fn, *args, worker=w, **kwargs) for w in self.workers]
        return gather(futs, timeout)

    def _enqueue(self, calls: list[_Call]) -> None:
        for call in calls:
            if call.require is not None or call.pin is not None:
                self._constrained.append(call)
            else:
                self._free.append(call)
        self._dispatch()

    def _pick(self, call: _Call) -> _Link | None:
        if call.pin is not None:
            link = self._links.get(call.pin)
            if link is None:
                if call.pin in self._gone:
                    _fail(call, WorkerLost(f"worker {call.pin[0]} (attempt {call.pin[1]}) is gone"))
                return None
            return link if len(link.inflight) < WINDOW else None
        best: _Link | None = None
        for link in self._links.values():
            if (
                link.alive
                and len(link.inflight) < WINDOW
                and call.require is not None
                and call.require(link.info)
                and (best is None or len(link.inflight) < len(best.inflight))
            ):
                best = link
        return best

    def _dispatch(self) -> None:
        batches: dict[tuple[int, int], list[_Call]] = {}
        if self._constrained:
            still: list[_Call] = []
            for call in self._constrained:
                if call.future.done():
                    continue
                link = self._pick(call)
                if link is None:
                    if not call.future.done():
                        still.append(call)
                    continue
                link.inflight[call.cid] = call
                batches.setdefault(link.key, []).append(call)
            self._constrained = still
        if self._free and self._links:
            links = sorted((lk for lk in self._links.values() if lk.alive), key=lambda lk: len(lk.inflight))
            for i, link in enumerate(links):
                room = min(WINDOW - len(link.inflight), BATCH)
                if room <= 0 or not self._free:
                    continue
                share = -(-len(self._free) // (len(links) - i))  # an even split of what is left
                for _ in range(min(room, share)):
                    call = self._free.popleft()
                    link.inflight[call.cid] = call
                    batches.setdefault(link.key, []).append(call)
        for key, calls in batches.items():
            _wire.spawn(self._send_calls(self._links[key], calls))

    async def _send_calls(self, link: _Link, calls: list[_Call]) -> None:
        try:
            for call in calls:
                if call.fid not in link.defined:
                    blob = next(e[2] for e in self._fids.values() if e[0] == call.fid)
                    await link.conn.send({"op": "def", "fid": call.fid, "fn": blob})
                    link.defined.add(call.fid)
            await link.conn.send(
                {"op": "calls", "calls": [(c.cid, c.fid, c.args, c.kwargs, c.keep) for c in calls]}
            )
        except _wire.WireError:
            pass  # the reader notices and requeues what was in flight
        except Exception:  # some argument cannot be pickled: find which, send the others
            good: list[_Call] = []
            for c in calls:
                try:
                    pickle.dumps((c.args, c.kwargs), protocol=5)
                except Exception as exc:
                    link.inflight.pop(c.cid, None)
                    _fail(
                        c,
                        InvalidArgument(
                            f"cannot send the arguments of a call to the workers: {exc}", field="args"
                        ),
                    )
                else:
                    good.append(c)
            if good:
                with contextlib.suppress(_wire.WireError):
                    await link.conn.send(
                        {"op": "calls", "calls": [(c.cid, c.fid, c.args, c.kwargs, c.keep) for c in good]}
                    )
            self._dispatch()

    # -- objects and data on the workers (used by datasets and reductions) ---------------------------

    def link_for(self, worker: WorkerInfo) -> _Link:
        link = self._links.get((worker.task_index, worker.attempt))
        if link is None or not link.alive:
            raise WorkerLost(f"worker {worker.task_index} on node {worker.node_id} is gone")
        return link

    def request(self, worker: WorkerInfo, msg: dict[str, Any], timeout: float | None = 300.0) -> Any:
        """One request/reply with a worker (blocking)."""

        async def go() -> Any:
            return await self._request(self.link_for(worker), msg)

        return _run(go(), timeout)

    async def arequest(self, worker: WorkerInfo, msg: dict[str, Any]) -> Any:
        return await self._request(self.link_for(worker), msg)

    def run_async(self, coro: Any, timeout: float | None = None) -> Any:
        """Run a coroutine (using :meth:`arequest`) on the driver loop and wait for it."""
        return _run(coro, timeout)

    def define(self, worker: WorkerInfo, fn: Callable[..., Any]) -> int:
        """Ship ``fn`` to ``worker`` (if not yet) and return its function id."""
        fid, blob = self._fid(fn)
        link = self.link_for(worker)

        async def go() -> None:
            if fid not in link.defined:
                await link.conn.send({"op": "def", "fid": fid, "fn": blob})
                link.defined.add(fid)

        _run(go(), 60)
        return fid

    async def adefine(self, worker: WorkerInfo, fn: Callable[..., Any]) -> int:
        fid, blob = self._fid(fn)
        link = self.link_for(worker)
        if fid not in link.defined:
            await link.conn.send({"op": "def", "fid": fid, "fn": blob})
            link.defined.add(fid)
        return fid

    def refresh_shards(self, datasets: Sequence[str]) -> list[WorkerInfo]:
        """Ask every worker again which shards of ``datasets`` its node holds (after shards were
        stored or removed); returns the workers as updated."""

        async def go() -> None:
            for link in list(self._links.values()):
                if not link.alive:
                    continue
                try:
                    found = await self._request(
                        link, {"op": "shards", "datasets": list(datasets)}, timeout=30
                    )
                except (DomainOSError, TimeoutError):
                    continue
                shards = {**link.info.shards, **{k: dict(v) for k, v in found.items()}}
                link.info = dataclasses.replace(link.info, shards=shards)

        _run(go(), 60)
        return self.workers

    @property
    def secret(self) -> str:
        """The data-plane secret of this pool's workers (pools that exchange data share one)."""
        return self._secret

    def fetch(self, worker: WorkerInfo, keys: Sequence[str]) -> list[Any]:
        """Objects kept on a worker, brought to the client."""
        return list(self.request(worker, {"op": "get", "keys": list(keys)}))

    def push(
        self,
        src: WorkerInfo,
        keys: Sequence[str],
        dst: WorkerInfo,
        as_keys: Sequence[str] | None = None,
        *,
        drop: bool = True,
    ) -> None:
        """Move kept objects from one worker to another, directly (worker to worker)."""
        self.request(
            src,
            {
                "op": "push",
                "keys": list(keys),
                "as": list(as_keys or keys),
                "to": dst.address,
                "place": (dst.node_id, dst.subdomain_id, dst.region),
                "drop": drop,
            },
        )

    def free(self, worker: WorkerInfo, keys: Sequence[str]) -> None:
        link = self._links.get((worker.task_index, worker.attempt))
        if link is not None and link.alive:
            asyncio.run_coroutine_threadsafe(link.conn.send({"op": "free", "keys": list(keys)}), self._loop)

    # -- statistics ----------------------------------------------------------------------------------

    async def _collect_stats(self, final: bool = False) -> JobStats:
        from ._types import JobStats

        totals = _wire.Traffic()
        totals.merge(self.traffic.bytes)
        totals.merge(self._finished_stats["bytes"])
        calls = self._finished_stats["calls"]
        local = self._finished_stats["local_calls"]
        for link in list(self._links.values()):
            if not link.alive:
                continue
            try:
                s = await self._request(link, {"op": "stats"}, timeout=5.0)
            except (DomainOSError, TimeoutError):
                s = link.last_stats
                if not s:
                    continue
            link.last_stats = s
            totals.merge(s["bytes"])
            calls += s["calls"]
            local += s["local_calls"]
        b = totals.bytes
        return JobStats(
            bytes_intra_node=b["intra_node"],
            bytes_inter_node=b["inter_node"],
            bytes_inter_subdomain=b["inter_subdomain"],
            bytes_inter_region=b["inter_region"],
            bytes_client=b["client"],
            calls=calls,
            local_calls=local,
        )

    def stats(self) -> JobStats:
        """What this pool's data plane has moved so far (driver and every live worker)."""
        return _run(self._collect_stats(), 30)  # type: ignore[no-any-return]

    def _report(self, stats: JobStats) -> None:
        try:
            self.client.report_stats(self.job_id, stats)
        except Exception as exc:  # the master is away, or the client was closed before the pool
            log.warning("pool %s: cannot report statistics: %s", self.job_id, exc)


def _settle(fut: concurrent.futures.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _settle_error(fut: concurrent.futures.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _fail(call: _Call, exc: BaseException) -> None:
    _settle_error(call.future, exc)


__all__ += ["ObjArg", "ShardArg"]
