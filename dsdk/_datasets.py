"""Datasets: shards stored on agents, computation moved to them.

:meth:`Dataset.put` stores a client's shards on nodes (each shard ``replicas`` times, on distinct
nodes, spread over sub-domains: the scheduler picks the nodes for a job of writer workers with
``distinct_nodes``); :meth:`Dataset.create` makes each shard *on* a worker (the client sends a
function, not data). The copies are stored under each node's datasets directory -- so they outlive
the job and an agent restart -- and the master's registry records where each copy lives.

:meth:`Dataset.map` runs a function on every shard *where the shard is*: one worker per node
holding shards (pinned there by node affinity), each call sent to a worker that holds its shard.
:meth:`DatasetMap.reduce` then combines results on each worker, then inside each sub-domain, then
across sub-domains, so only reduced results cross domains; :meth:`DatasetMap.collect` brings every
shard's result to the client instead. The bytes moved, by distance, become the job's statistics.

Faults: a call whose worker dies is run again on another node holding a copy of its shard (a
worker is started there if none runs there yet); a shard no live node holds fails the whole map
-- a result is never computed from part of a dataset.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import _shards, _wire
from ._driver import Pool, WorkerInfo, gather
from ._types import DatasetInfo, JobStats, ShardInfo, ShardReplica
from ._worker import ObjArg, ShardArg
from .errors import (
    DomainOSError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RemoteError,
    WorkerLost,
)

if TYPE_CHECKING:
    from ._client import Client

log = logging.getLogger(__name__)

#: Writer workers of one put/create at most, and map workers by default at most.
MAX_WRITERS = 32
MAX_MAP_WORKERS = 16
#: Shards stored at once (each a store and its copies).
PARALLEL_STORES = 8

_DEFAULT: list[Client] = []
_DEFAULT_LOCK = threading.Lock()
_LAST = threading.local()


def last_stats() -> JobStats | None:
    """What the last dataset operation (map, reduce, collect, CONDUCT, ESTABLISH, CONTACT) of this
    thread moved, by distance -- its jobs' data planes together."""
    stats: JobStats | None = getattr(_LAST, "stats", None)
    return stats


def set_last_stats(stats: JobStats | None) -> None:
    _LAST.stats = stats


def default_client() -> Client:
    """The process's default client (:func:`dsdk.connect` with no arguments, made once)."""
    from ._client import connect

    with _DEFAULT_LOCK:
        if not _DEFAULT:
            _DEFAULT.append(connect())
        return _DEFAULT[0]


def _interleave(workers: Sequence[WorkerInfo]) -> list[WorkerInfo]:
    """Workers ordered so that neighbours are in different sub-domains where possible."""
    groups: dict[str, list[WorkerInfo]] = {}
    for w in sorted(workers, key=lambda w: (w.subdomain_id, w.node_id)):
        groups.setdefault(w.subdomain_id, []).append(w)
    out: list[WorkerInfo] = []
    lists = sorted(groups.values(), key=len, reverse=True)
    for i in range(max((len(g) for g in lists), default=0)):
        out.extend(g[i] for g in lists if i < len(g))
    return out


def _ready_nodes(client: Client) -> int:
    return sum(sd.nodes_ready for region in client.domains() for sd in region.subdomains if sd.connected)


@dataclass(frozen=True)
class Dataset:
    """A registered dataset: its shards and where their copies live (see the module docstring)."""

    info: DatasetInfo
    client: Client = field(repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def num_shards(self) -> int:
        return self.info.num_shards

    @property
    def replicas(self) -> int:
        return self.info.replicas

    @property
    def size_bytes(self) -> int:
        return self.info.size_bytes

    @property
    def shards(self) -> tuple[ShardInfo, ...]:
        return self.info.shards

    def holders(self, shard: int) -> tuple[ShardReplica, ...]:
        """The nodes holding a copy of ``shard``."""
        return self.info.shards[shard].replicas

    # -- making datasets -----------------------------------------------------------------------

    @classmethod
    def get(cls, name: str, *, client: Client | None = None) -> Dataset:
        """The dataset ``name`` from the master's registry (NotFound if there is none)."""
        c = client or default_client()
        return cls(c.dataset(_shards.check_dataset_name(name)), c)

    @classmethod
    def list(cls, *, client: Client | None = None) -> list[DatasetInfo]:
        """The caller's tenant's datasets (shards omitted)."""
        return (client or default_client()).datasets()

    @classmethod
    def put(
        cls,
        name: str,
        shards: Sequence[Any],
        *,
        replicas: int = 2,
        client: Client | None = None,
        replace: bool = False,
        cpus: float | str = "250m",
        timeout: float = 300.0,
        labels: Mapping[str, str] | None = None,
        pool: Pool | None = None,
    ) -> Dataset:
        """Store ``shards`` (any picklable objects; numpy arrays are stored and read back without
        copies) on the federation's nodes, ``replicas`` copies of each on distinct nodes, and
        register them as dataset ``name``. The client sends each shard once; nodes copy it on.

        ``pool``: store through the workers of this pool (on distinct nodes) instead of starting
        a job for it (a warm pool makes many dataset operations cheap)."""
        items = list(shards)
        if not items:
            raise InvalidArgument("a dataset has at least one shard", field="shards")
        return cls._store(
            name, len(items), replicas, client, replace, cpus, timeout, labels, values=items, pool=pool
        )

    @classmethod
    def create(
        cls,
        name: str,
        fn: Callable[[int], Any],
        num_shards: int,
        *,
        replicas: int = 2,
        client: Client | None = None,
        replace: bool = False,
        cpus: float | str = 1,
        timeout: float = 300.0,
        labels: Mapping[str, str] | None = None,
        pool: Pool | None = None,
    ) -> Dataset:
        """Make shard ``i`` as ``fn(i)`` *on a node* (the client ships the function, never the
        data), store it there and copy it to ``replicas - 1`` other nodes; register the dataset.
        ``pool``: as for :meth:`put`."""
        if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
            raise InvalidArgument(
                f"must be a whole number of at least 1, got {num_shards!r}", field="num_shards"
            )
        return cls._store(
            name, num_shards, replicas, client, replace, cpus, timeout, labels, fn=fn, pool=pool
        )

    @classmethod
    def _store(
        cls,
        name: str,
        num_shards: int,
        replicas: int,
        client: Client | None,
        replace: bool,
        cpus: float | str,
        timeout: float,
        labels: Mapping[str, str] | None,
        *,
        values: builtins.list[Any] | None = None,
        fn: Callable[[int], Any] | None = None,
        pool: Pool | None = None,
    ) -> Dataset:
        c = client or (pool.client if pool is not None else default_client())
        _shards.check_dataset_name(name)
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 8:
            raise InvalidArgument(f"must be between 1 and 8, got {replicas!r}", field="replicas")
        if num_shards > 4096:
            raise InvalidArgument(f"at most 4096 shards, got {num_shards}", field="shards")
        try:
            old = c.dataset(name)
        except NotFound:
            old = None
        if old is not None:
            if not replace:
                raise FailedPrecondition(
                    f"dataset {name!r} exists ({old.num_shards} shards); pass replace=True or delete it first",
                    field="name",
                )
            cls(old, c).delete(pool=pool)
        own = pool is None
        if pool is None:
            ready = _ready_nodes(c)
            if ready < replicas:
                raise FailedPrecondition(
                    f"replicas={replicas} needs {replicas} distinct nodes; the federation has {ready} ready",
                    field="replicas",
                )
            want = min(num_shards * replicas, ready, MAX_WRITERS)
            pool = Pool(c, want, cpus=cpus, distinct_nodes=True, name=f"dsdk-store-{name}"[:63], retries=0)
        try:
            if own:
                try:
                    pool.wait_ready(pool.size, timeout=min(timeout, 30.0))
                except DomainOSError:
                    pool.wait_ready(replicas, timeout=timeout)  # the nodes that could take one will do
            # One writer per node (a given pool may have several workers on a node).
            by_node = {w.node_id: w for w in sorted(pool.workers, key=lambda w: w.task_index, reverse=True)}
            writers = _interleave(list(by_node.values()))
            if len(writers) < replicas:
                raise FailedPrecondition(
                    f"replicas={replicas} needs workers on {replicas} distinct nodes; the pool has them on "
                    f"{len(writers)}",
                    field="replicas",
                )
            placed = pool.run_async(
                _store_all(pool, name, num_shards, replicas, writers, values, fn), timeout + 60
            )
            info = DatasetInfo(
                name=name,
                num_shards=num_shards,
                replicas=replicas,
                job_id=pool.job_id,
                labels=dict(labels or {}),
                shards=tuple(
                    ShardInfo(
                        k,
                        placed[k][0],
                        tuple(ShardReplica(w.node_id, w.subdomain_id, w.region) for w in placed[k][1]),
                    )
                    for k in range(num_shards)
                ),
            )
            registered = c.register_dataset(info)
        except BaseException:
            # Nothing half-written: whatever was stored is removed before the error goes up.
            for w in pool.workers:
                try:
                    pool.request(w, {"op": "drop_dataset", "dataset": name}, timeout=30)
                except DomainOSError as exc:
                    log.warning(
                        "dataset %s: could not remove a partial copy on node %s: %s", name, w.node_id, exc
                    )
            raise
        finally:
            if own:
                set_last_stats(pool.close())
        if not own:
            set_last_stats(pool.stats())
            pool.refresh_shards([name])
        log.info("dataset %s: %d shards x %d copies stored (job %s)", name, num_shards, replicas, pool.job_id)
        return cls(registered, c)

    def delete(self, *, timeout: float = 60.0, pool: Pool | None = None) -> builtins.list[str]:
        """Remove every copy from the nodes, then the registry record; returns the nodes that
        could not be reached (their copies stay until removed by hand). ``pool``: its workers
        remove the copies on their nodes; a job is started only for the other nodes."""
        nodes = sorted({(r.subdomain_id, r.node_id) for s in self.shards for r in s.replicas})
        unreached: list[str] = []
        if pool is not None:
            done: set[str] = set()
            for w in pool.workers:
                if w.node_id in {n for _, n in nodes} and w.node_id not in done:
                    pool.request(w, {"op": "drop_dataset", "dataset": self.name}, timeout=60)
                    done.add(w.node_id)
            nodes = [(sd, n) for sd, n in nodes if n not in done]
        if nodes:
            pool = Pool(
                self.client,
                len(nodes),
                cpus="100m",
                affinity=[f"{sd}/{n}" for sd, n in nodes],
                soft=False,
                name=f"dsdk-delete-{self.name}"[:63],
                retries=0,
            )
            try:
                try:
                    pool.wait_ready(timeout=timeout)
                except DomainOSError as exc:
                    log.warning("dataset %s: not every node holding it answered: %s", self.name, exc)
                reached = set()
                for w in pool.workers:
                    pool.request(w, {"op": "drop_dataset", "dataset": self.name}, timeout=60)
                    reached.add(w.node_id)
                unreached = [n for _, n in nodes if n not in reached]
            finally:
                pool.close()
        self.client.delete_dataset_record(self.name)
        return unreached

    # -- computing on it -------------------------------------------------------------------------

    def pool(self, *, workers: int | None = None, timeout: float = 120.0, **options: Any) -> Pool:
        """A pool with one worker on each of a set of nodes that together hold every shard (a
        cover, then more holders up to ``workers``), ready; for jobs that keep state on their
        workers across many calls (training). :meth:`assign` says which shards each reads."""
        plan = DatasetMap(self, _identity, workers, {}, timeout)._plan()
        pool = Pool(
            self.client,
            len(plan),
            affinity=[f"{sd}/{n}" for sd, n in plan],
            soft=True,
            datasets=[self.name],
            name=options.pop("name", f"dsdk-{self.name}")[:63],
            **options,
        )
        try:
            pool.wait_ready(timeout=timeout)
        except BaseException:
            pool.close()
            raise
        return pool

    def assign(self, workers: Sequence[WorkerInfo]) -> dict[int, builtins.list[int]]:
        """Each shard to one worker holding a copy (balanced): task index -> its shards.
        FailedPrecondition names the shards no worker holds."""
        load: dict[int, list[int]] = {w.task_index: [] for w in workers}
        missing = []
        for s in self.shards:
            nodes = {r.node_id for r in s.replicas}
            options = [w for w in workers if w.node_id in nodes and w.holds(self.name, s.shard)]
            if not options:
                missing.append(s.shard)
                continue
            best = min(options, key=lambda w: (len(load[w.task_index]), w.task_index))
            load[best.task_index].append(s.shard)
        if missing:
            raise FailedPrecondition(f"dataset {self.name}: no worker holds shards {missing[:10]}")
        return load

    def map(
        self,
        fn: Callable[[Any], Any],
        *,
        workers: int | None = None,
        cpus: float | str = 1,
        gpus: float = 0,
        memory: str | int | None = None,
        timeout: float = 600.0,
        pool: Pool | None = None,
    ) -> DatasetMap:
        """``fn(shard)`` on every shard, on a node holding it. Lazy: call :meth:`DatasetMap.reduce`
        or :meth:`DatasetMap.collect`. ``pool``: run on this pool's workers on nodes holding
        shards (a job is started only for shards no such worker holds)."""
        if not callable(fn):
            raise InvalidArgument(f"expected a function, got {type(fn).__name__}", field="fn")
        return DatasetMap(
            self, fn, workers, {"cpus": cpus, "gpus": gpus, "memory": memory}, timeout, pool=pool
        )


def _fold(fn: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    def fold(*values: Any) -> Any:
        return functools.reduce(fn, values)

    fold.__qualname__ = f"fold({getattr(fn, '__qualname__', 'fn')})"
    return fold


async def _store_all(
    pool: Pool,
    name: str,
    num_shards: int,
    replicas: int,
    writers: list[WorkerInfo],
    values: list[Any] | None,
    fn: Callable[[int], Any] | None,
) -> dict[int, tuple[int, list[WorkerInfo]]]:
    """Store every shard on its primary writer and copy it to ``replicas - 1`` others."""
    import asyncio

    n = len(writers)
    fid = 0
    if fn is not None:
        for w in writers:
            fid = await pool.adefine(w, fn)
    limit = asyncio.Semaphore(PARALLEL_STORES)
    out: dict[int, tuple[int, list[WorkerInfo]]] = {}

    async def one(k: int) -> None:
        async with limit:
            primary = writers[k % n]
            msg: dict[str, Any] = {"op": "store", "dataset": name, "shard": k}
            if fn is not None:
                msg.update(fid=fid, args=(k,))
            else:
                assert values is not None
                msg["value"] = values[k]
            size = (await pool.arequest(primary, msg))["size"]
            holders = [primary]
            for j in range(1, replicas):
                other = writers[(k + j) % n]
                await pool.arequest(
                    primary,
                    {
                        "op": "replicate",
                        "dataset": name,
                        "shard": k,
                        "to": other.address,
                        "place": (other.node_id, other.subdomain_id, other.region),
                    },
                )
                holders.append(other)
            out[k] = (size, holders)

    await asyncio.gather(*(one(k) for k in range(num_shards)))
    return out


class DatasetMap:
    """``fn`` mapped over a dataset's shards, run where they are when asked for a result."""

    def __init__(
        self,
        dataset: Dataset,
        fn: Callable[[Any], Any],
        workers: int | None,
        resources: dict[str, Any],
        timeout: float,
        *,
        pool: Pool | None = None,
    ) -> None:
        self.dataset = dataset
        self.fn = fn
        self.max_workers = workers
        self.resources = {k: v for k, v in resources.items() if v is not None}
        self.timeout = timeout
        #: Statistics of the last run (its pools' data planes together).
        self.stats: JobStats | None = None
        self._pools: list[Pool] = []
        self._tried_nodes: set[str] = set()
        #: Names of the objects this run keeps on workers start with it (freed at the end).
        self.tag = f"run-{os.urandom(4).hex()}"
        self._base: JobStats | None = None
        # Shared by this map's pools: their workers exchange partial results.
        self._secret = pool.secret if pool is not None else _wire.new_secret()
        #: A pool the caller owns (used, never closed here).
        self._given = pool

    # -- workers where the data is --------------------------------------------------------------------

    def _plan(self) -> list[tuple[str, str]]:
        """Nodes to run on: a cover of every shard first (most shards first), then more holders."""
        holders: dict[tuple[str, str], set[int]] = {}
        for s in self.dataset.shards:
            for r in s.replicas:
                holders.setdefault((r.subdomain_id, r.node_id), set()).add(s.shard)
        uncovered = {s.shard for s in self.dataset.shards}
        order: list[tuple[str, str]] = []
        while uncovered:
            best = max(holders, key=lambda n: (len(holders[n] & uncovered), n[1]))
            if not holders[best] & uncovered:
                break
            order.append(best)
            uncovered -= holders[best]
        order += sorted(n for n in holders if n not in order)
        limit = self.max_workers or MAX_MAP_WORKERS
        return order[: max(limit, 1)]

    def _start(self, nodes: Sequence[tuple[str, str]], *, soft: bool) -> Pool:
        pool = Pool(
            self.dataset.client,
            len(nodes),
            affinity=[f"{sd}/{n}" for sd, n in nodes],
            soft=soft,
            datasets=[self.dataset.name],
            name=f"dsdk-map-{self.dataset.name}"[:63],
            retries=0,
            secret=self._secret,
            **self.resources,
        )
        self._pools.append(pool)
        self._tried_nodes.update(n for _, n in nodes)
        return pool

    def key(self, name: str) -> str:
        """The name of an object this run keeps on a worker."""
        return f"{self.tag}/{name}"

    def start(self) -> list[tuple[Pool, WorkerInfo]]:
        """Start the workers on the dataset's holders (once) and wait for them; returns them."""
        if not self._pools and self._given is not None:
            self._pools.append(self._given)
            self._given.refresh_shards([self.dataset.name])
            self._base = self._given.stats()
            self._tried_nodes.update(w.node_id for w in self._given.workers)
        if not self._pools:
            first = self._start(self._plan(), soft=True)
            try:
                first.wait_ready(timeout=min(self.timeout, 60.0))
            except DomainOSError as exc:
                log.warning(
                    "dataset %s: not every map worker started (%s); going on with those that did",
                    self.dataset.name,
                    exc,
                )
        return self._workers()

    def _workers(self) -> list[tuple[Pool, WorkerInfo]]:
        return [(p, w) for p in self._pools for w in p.workers]

    def _eligible(self, shard: int) -> list[tuple[Pool, WorkerInfo]]:
        nodes = {r.node_id for r in self.dataset.holders(shard)}
        name = self.dataset.name
        return [(p, w) for p, w in self._workers() if w.node_id in nodes and w.holds(name, shard)]

    # -- running -------------------------------------------------------------------------------------

    def _run_shards(self, keep: bool) -> dict[int, tuple[Pool, WorkerInfo, Any]]:
        """Run ``fn`` on every shard where a copy is; shard -> (pool, worker, result or summary)."""
        name = self.dataset.name
        deadline = time.monotonic() + self.timeout
        self.start()
        pending = set(range(self.dataset.num_shards))
        running: dict[concurrent.futures.Future[Any], tuple[int, Pool, WorkerInfo]] = {}
        done: dict[int, tuple[Pool, WorkerInfo, Any]] = {}
        load: dict[str, int] = {}
        while pending or running:
            for shard in sorted(pending):
                options = self._eligible(shard)
                if not options:
                    continue
                pool, worker = min(options, key=lambda pw: load.get(pw[1].address, 0))
                key = self.key(f"map/{shard}") if keep else ""
                fut = pool.call(
                    self.fn, ShardArg(name, shard), keep=key, worker=worker, retries=0, what=f"shard {shard}"
                )
                running[fut] = (shard, pool, worker)
                load[worker.address] = load.get(worker.address, 0) + 1
                pending.discard(shard)
            stuck = sorted(s for s in pending if not self._eligible(s))
            if stuck:
                self._rescue(stuck, deadline)
            if not running:
                if time.monotonic() > deadline:
                    raise FailedPrecondition(
                        f"dataset {name}: shards {stuck[:10]} found no worker within {self.timeout:g}s"
                    )
                time.sleep(0.1)
                continue
            finished, _ = concurrent.futures.wait(
                list(running), timeout=0.5, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for fut in finished:
                shard, pool, worker = running.pop(fut)
                load[worker.address] -= 1
                try:
                    done[shard] = (pool, worker, fut.result())
                except WorkerLost as exc:
                    log.warning(
                        "dataset %s: shard %d lost with its worker (%s); running it on another copy",
                        name,
                        shard,
                        exc,
                    )
                    pending.add(shard)
                except RemoteError:
                    raise
            if time.monotonic() > deadline:
                raise FailedPrecondition(
                    f"dataset {name}: map did not finish within {self.timeout:g}s ({len(done)} of {self.dataset.num_shards} shards)"
                )
        return done

    def _rescue(self, shards: Sequence[int], deadline: float) -> None:
        """Start workers (pinned, hard) on nodes holding copies of ``shards`` that no worker covers;
        FailedPrecondition when no node holding a copy is left to try."""
        starting = any(len(p.workers) < p.size and not p._closed for p in self._pools[1:])
        wanted: list[tuple[str, str]] = []
        hopeless: list[int] = []
        for shard in shards:
            nodes = [
                (r.subdomain_id, r.node_id)
                for r in self.dataset.holders(shard)
                if r.node_id not in self._tried_nodes and (r.subdomain_id, r.node_id) not in wanted
            ]
            if nodes:
                wanted.append(nodes[0])
            elif not starting:
                hopeless.append(shard)
        if hopeless:
            where = {s: [r.node_id for r in self.dataset.holders(s)] for s in hopeless[:5]}
            raise FailedPrecondition(
                f"dataset {self.dataset.name}: no live node holds shards {hopeless[:10]} (copies were on {where}); "
                "no result is computed from part of a dataset"
            )
        if wanted:
            log.info(
                "dataset %s: starting workers on %s for shards without one",
                self.dataset.name,
                [n for _, n in wanted],
            )
            pool = self._start(wanted, soft=False)
            try:
                pool.wait_ready(timeout=max(1.0, min(30.0, deadline - time.monotonic())))
            except DomainOSError as exc:
                log.warning("dataset %s: rescue workers did not start: %s", self.dataset.name, exc)

    def _finish(self) -> None:
        from ._types import JobStats

        totals: dict[str, int] = {}

        def add(stats: JobStats | None, sign: int = 1) -> None:
            for k, v in stats.__dict__.items() if stats is not None else ():
                if isinstance(v, int):
                    totals[k] = totals.get(k, 0) + sign * v

        for pool in self._pools:
            if pool is self._given:  # the caller's: free what this run kept, count only its part
                for w in pool.workers:
                    with contextlib.suppress(DomainOSError):
                        pool.request(w, {"op": "free_prefix", "prefix": self.tag + "/"}, timeout=30)
                add(pool.stats())
                add(self._base, -1)
            else:
                add(pool.close())
        self.stats = JobStats(**totals)
        set_last_stats(self.stats)
        self._pools = []
        self._tried_nodes = set()

    def collect(self) -> list[Any]:
        """Every shard's result, in shard order (each result crosses to the client)."""
        try:
            done = self._run_shards(keep=False)
            return [done[s][2] for s in range(self.dataset.num_shards)]
        finally:
            self._finish()

    def reduce(self, fn: Callable[[Any, Any], Any], *, attempts: int = 3) -> Any:
        """Combine the shards' results with ``fn`` (associative and commutative): on each worker
        first, then inside each sub-domain, then across sub-domains; only the final value
        reaches the client. A worker lost on the way costs a recomputation, never a partial result."""
        fold = _fold(fn)
        try:
            for attempt in range(attempts):
                done = self._run_shards(keep=True)
                try:
                    return self._tree(done, fold)
                except WorkerLost as exc:
                    if attempt + 1 == attempts:
                        raise
                    log.warning(
                        "dataset %s: a worker was lost while reducing (%s); recomputing",
                        self.dataset.name,
                        exc,
                    )
            raise AssertionError("unreachable")
        finally:
            self._finish()

    def _tree(self, done: Mapping[int, tuple[Pool, WorkerInfo, Any]], fold: Callable[..., Any]) -> Any:
        # 1. on each worker: its shards' results -> one partial
        per_worker: dict[str, tuple[Pool, WorkerInfo, list[str]]] = {}
        for shard, (pool, worker, _) in done.items():
            per_worker.setdefault(worker.address, (pool, worker, []))[2].append(self.key(f"map/{shard}"))
        partial = self.key("red/node")
        futs = [
            pool.call(
                fold, *[ObjArg(k) for k in keys], keep=partial, worker=w, retries=0, what="a node's reduction"
            )
            for pool, w, keys in per_worker.values()
        ]
        gather(futs)
        # 2. inside each sub-domain: onto the worker with the most shards
        by_sd: dict[str, list[tuple[Pool, WorkerInfo, int]]] = {}
        for pool, w, keys in per_worker.values():
            by_sd.setdefault(w.subdomain_id, []).append((pool, w, len(keys)))
        heads: list[tuple[Pool, WorkerInfo]] = []
        step = self.key("red/subdomain")
        for members in by_sd.values():
            members.sort(key=lambda m: (-m[2], m[1].task_index))
            pool, head, _ = members[0]
            names = [partial]
            for i, (other_pool, other, _) in enumerate(members[1:]):
                as_key = f"{partial}/{i}"
                other_pool.push(other, [partial], head, [as_key])
                names.append(as_key)
            gather(
                [
                    pool.call(
                        fold,
                        *[ObjArg(k) for k in names],
                        keep=step,
                        worker=head,
                        retries=0,
                        what="a sub-domain's reduction",
                    )
                ]
            )
            heads.append((pool, head))
        # 3. across sub-domains: onto the head of the largest
        pool, root = heads[0]
        names = [step]
        for i, (other_pool, other) in enumerate(heads[1:]):
            as_key = f"{step}/{i}"
            other_pool.push(other, [step], root, [as_key])
            names.append(as_key)
        final = self.key("red/final")
        gather(
            [
                pool.call(
                    fold,
                    *[ObjArg(k) for k in names],
                    keep=final,
                    worker=root,
                    retries=0,
                    what="the final reduction",
                )
            ]
        )
        (value,) = pool.fetch(root, [final])
        return value


def _identity(x: Any) -> Any:
    return x


def read_shard(dataset: str, shard: int) -> Any:
    """Inside a task: shard ``shard`` of ``dataset`` from this node's storage (mapped, read-only);
    NotFound when this node holds no copy."""
    from ._context import context

    ctx = context()
    if not ctx.datasets_dir:
        raise FailedPrecondition(f"node {ctx.node_id} gives its tasks no datasets directory")
    return _shards.read_shard(ctx.datasets_dir, dataset, shard)


def ship_module(*modules: Any) -> None:
    """Ship these modules' code with the functions that use them (cloudpickle by value), for
    modules the nodes do not have installed (a script's helpers, a notebook's)."""
    import cloudpickle

    for m in modules:
        cloudpickle.register_pickle_by_value(m)
