"""Laxcus's three compute models, expressed with the DSDK's pools and datasets.

* **CONDUCT** (:func:`conduct`): ``init`` at the client -> ``from_`` at the data (every shard, on a
  node holding it, emits ``(key, value)`` pairs) -> ``balance`` (pairs are partitioned by key and
  each partition sent, worker to worker, to the worker that owns it) -> ``to`` at the workers
  (for each key, its values -> a result; several ``to`` stages repartition between them) ->
  ``put`` at the client (the final ``{key: result}``). Distributed map-reduce with locality.
* **ESTABLISH** (:func:`establish`): ``scan`` each shard where it is into records -> ``sift``
  gives each record its new shard -> records move to the new shard's owner -> ``rise`` builds the
  new shard there, stored and copied like any shard: a dataset rebuilt into a new one without the
  data passing through the client.
* **CONTACT** (:func:`contact`): ``fork`` at the client splits a small job into pieces ->
  ``distant`` runs each piece on a worker -> ``merge`` combines the results on one worker ->
  ``near`` finishes at the client.

Only keyed results cross between nodes in CONDUCT and ESTABLISH, partitions go straight from the
worker that made them to the worker that needs them, and the client sees the final answer only.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

from . import _shards
from ._datasets import Dataset, DatasetMap, default_client, set_last_stats
from ._driver import Pool, WorkerInfo, gather
from ._types import DatasetInfo, JobStats, ShardInfo, ShardReplica
from ._worker import ObjArg
from .errors import InvalidArgument

log = logging.getLogger(__name__)

Pairs = list[tuple[Hashable, Any]]


def _stable_hash(key: Hashable) -> int:
    """The same on every node (Python's ``hash`` of a str is salted per process)."""
    if isinstance(key, int):
        return key
    return zlib.crc32(repr(key).encode())


def _emit(
    fn: Callable[..., Iterable[tuple[Hashable, Any]]],
    parts: int,
    balance: Callable[[Hashable], int] | None,
    combine: Callable[[Hashable, list[Any]], Any] | None,
    extra: tuple[Any, ...],
) -> Callable[[Any], dict[int, Pairs]]:
    """At the data: ``fn(shard, *extra)`` -> pairs, combined per key (optionally), bucketed by partition."""

    def emit(shard: Any) -> dict[int, Pairs]:
        pairs = fn(shard, *extra)
        if combine is not None:
            grouped: dict[Hashable, list[Any]] = {}
            for k, v in pairs:
                grouped.setdefault(k, []).append(v)
            pairs = [(k, combine(k, vs)) for k, vs in grouped.items()]
        buckets: dict[int, Pairs] = {p: [] for p in range(parts)}
        for k, v in pairs:
            p = (balance(k) if balance is not None else _stable_hash(k)) % parts
            buckets[p].append((k, v))
        return buckets

    return emit


def _merge_buckets(*bucket_maps: dict[int, Pairs]) -> dict[int, Pairs]:
    out: dict[int, Pairs] = {}
    for m in bucket_maps:
        for p, pairs in m.items():
            out.setdefault(p, []).extend(pairs)
    return out


def _stage(
    to: Callable[[Hashable, list[Any]], Any],
    parts: int,
    balance: Callable[[Hashable], int] | None,
    last: bool,
) -> Callable[..., Any]:
    """At a partition's owner: group the pairs by key, ``to(key, values)`` for each; bucketed
    again for the next stage unless ``last``."""

    def stage(*inputs: Pairs) -> Any:
        grouped: dict[Hashable, list[Any]] = {}
        for pairs in inputs:
            for k, v in pairs:
                grouped.setdefault(k, []).append(v)
        out = [(k, to(k, vs)) for k, vs in grouped.items()]
        if last:
            return out
        buckets: dict[int, Pairs] = {p: [] for p in range(parts)}
        for k, v in out:
            buckets[(balance(k) if balance is not None else _stable_hash(k)) % parts].append((k, v))
        return buckets

    return stage


def _merge_per_worker(
    job: DatasetMap, done: Mapping[int, tuple[Pool, WorkerInfo, Any]], name: str
) -> list[tuple[Pool, WorkerInfo, str]]:
    """On each worker, its shards' kept bucket maps merged into one object ``name`` (no data moves)."""
    per_worker: dict[str, tuple[Pool, WorkerInfo, list[str]]] = {}
    for shard, (pool, w, _) in done.items():
        per_worker.setdefault(w.address, (pool, w, []))[2].append(job.key(f"map/{shard}"))
    key = job.key(name)
    futs = [
        pool.call(_merge_buckets, *[ObjArg(k) for k in keys], keep=key, worker=w, retries=0)
        for pool, w, keys in per_worker.values()
    ]
    gather(futs)
    return [(pool, w, key) for pool, w, _ in per_worker.values()]


def _shuffle(
    located: Sequence[tuple[Pool, WorkerInfo, str]], owners: Sequence[tuple[Pool, WorkerInfo]], tag: str
) -> dict[int, list[str]]:
    """Each worker's ``key`` (a {partition: pairs} map) is split and every partition sent to its
    owner, worker to worker (renamed in place when the owner is the same worker); returns
    partition -> the keys that arrived at its owner."""
    arrived: dict[int, list[str]] = {}
    for pool, w, key in located:
        # Names carry the worker's address: workers of different pools share task indexes.
        parts = pool.request(w, {"op": "split", "key": key, "prefix": f"{tag}/{w.address}"})
        for p in parts:
            _opool, owner = owners[p % len(owners)]
            name = f"{tag}/in/{p}/{w.address}"
            src = f"{tag}/{w.address}/{p}"
            if owner.address == w.address:
                pool.request(w, {"op": "rename", "pairs": [(src, name)]})
            else:
                pool.push(w, [src], owner, [name])
            arrived.setdefault(p, []).append(name)
    return arrived


def _shard_key(k: Hashable) -> int:
    assert isinstance(k, int)
    return k


def _identity(x: Any) -> Any:
    return x


def conduct(
    dataset: Dataset,
    *,
    from_: Callable[..., Iterable[tuple[Hashable, Any]]],
    to: Callable[[Hashable, list[Any]], Any] | Sequence[Callable[[Hashable, list[Any]], Any]],
    init: Callable[[], Any] | None = None,
    put: Callable[[dict[Hashable, Any]], Any] | None = None,
    balance: Callable[[Hashable], int] | None = None,
    partitions: int | None = None,
    combine: bool = True,
    workers: int | None = None,
    cpus: float | str = 1,
) -> Any:
    """CONDUCT over ``dataset`` (see the module docstring).

    ``from_(shard, params)`` (``params`` = ``init()``, omitted without ``init``) returns
    ``(key, value)`` pairs; ``to`` (one function or a list: the repeatable stages) maps
    ``(key, values)`` to a result; ``combine`` applies the first ``to`` on each node before the
    shuffle (right for associative aggregations such as counts); ``balance(key)`` picks a key's
    partition (default: a stable hash); ``put({key: result})`` runs at the client (default:
    the mapping itself is returned). Returns ``put``'s value.
    """
    stages = [to] if callable(to) else list(to)
    if not stages:
        raise InvalidArgument("at least one to-stage is required", field="to")
    params = (init(),) if init is not None else ()
    job = DatasetMap(dataset, _identity, workers, {"cpus": cpus}, 600.0)
    try:
        # 1. from, at the data: emit and bucket (one kept map per shard)
        pools_workers = _start_map(job)
        nparts = partitions or max(1, len(pools_workers))
        job.fn = _emit(from_, nparts, balance, stages[0] if combine else None, params)
        done = job._run_shards(keep=True)
        owners = [
            (p, w) for p, w in pools_workers if any(w.address == d[1].address for d in done.values())
        ] or pools_workers
        located = _merge_per_worker(job, done, "conduct/b0")
        # 2. balance and to-stages at the owners
        results: list[tuple[Hashable, Any]] = []
        for i, fn in enumerate(stages):
            last = i == len(stages) - 1
            arrived = _shuffle(located, owners, job.key(f"conduct/s{i}"))
            step = _stage(fn, nparts, balance, last)
            futs, located = [], []
            for p, keys in arrived.items():
                opool, owner = owners[p % len(owners)]
                out = job.key(f"conduct/o{i}/{p}")
                futs.append(opool.call(step, *[ObjArg(k) for k in keys], keep=out, worker=owner, retries=0))
                located.append((opool, owner, out))
            gather(futs)
            if last:
                for opool, owner, out in located:
                    results.extend(opool.fetch(owner, [out])[0])
        final = dict(results)
        return put(final) if put is not None else final
    finally:
        job._finish()


def _start_map(job: DatasetMap) -> list[tuple[Pool, WorkerInfo]]:
    return job.start()


def establish(
    dataset: Dataset,
    name: str,
    *,
    scan: Callable[[Any], Iterable[Any]],
    sift: Callable[[Any], int],
    rise: Callable[[list[Any]], Any],
    num_shards: int,
    replicas: int = 2,
    cpus: float | str = 1,
    workers: int | None = None,
    replace: bool = False,
) -> Dataset:
    """ESTABLISH: rebuild ``dataset`` into a new dataset ``name`` of ``num_shards`` shards.

    ``scan(shard)`` yields records (at the data); ``sift(record)`` is the record's new shard
    (``0 <= sift(record) < num_shards``); ``rise(records)`` builds a new shard from its records,
    on the worker that owns it, where it is stored and copied to ``replicas - 1`` other workers.
    """
    _shards.check_dataset_name(name)
    if num_shards < 1:
        raise InvalidArgument(f"must be at least 1, got {num_shards}", field="num_shards")
    client = dataset.client
    if not replace:
        try:
            client.dataset(name)
        except Exception:
            pass
        else:
            raise InvalidArgument(f"dataset {name!r} exists; pass replace=True", field="name")
    job = DatasetMap(dataset, _identity, workers, {"cpus": cpus}, 600.0)
    try:
        pools_workers = _start_map(job)
        distinct = {w.node_id for _, w in pools_workers}
        if len(distinct) < replicas:
            raise InvalidArgument(
                f"replicas={replicas} needs workers on {replicas} nodes; this dataset's holders give {len(distinct)}",
                field="replicas",
            )

        def records(shard: Any) -> list[tuple[int, Any]]:
            out = []
            for rec in scan(shard):
                k = int(sift(rec))
                if not 0 <= k < num_shards:
                    raise ValueError(f"sift gave shard {k} for a record; allowed 0..{num_shards - 1}")
                out.append((k, rec))
            return out

        job.fn = _emit(records, num_shards, _shard_key, None, ())
        done = job._run_shards(keep=True)
        located = _merge_per_worker(job, done, "establish/b")
        owners = pools_workers
        arrived = _shuffle(located, owners, job.key("establish/s"))

        def build(*inputs: Pairs) -> Any:
            recs = [v for pairs in inputs for _, v in pairs]
            return rise(recs)

        placed: dict[int, tuple[int, list[WorkerInfo]]] = {}
        for k in range(num_shards):
            opool, owner = owners[k % len(owners)]
            keys = arrived.get(k, [])
            opool.call(
                build, *[ObjArg(x) for x in keys], keep=job.key(f"establish/new/{k}"), worker=owner, retries=0
            ).result()
            size = opool.request(
                owner, {"op": "store", "dataset": name, "shard": k, "key": job.key(f"establish/new/{k}")}
            )["size"]
            holders = [owner]
            others = [
                (p, w)
                for p, w in owners
                if w.node_id != owner.node_id and w.node_id not in {h.node_id for h in holders}
            ]
            others.sort(key=lambda pw: (pw[1].subdomain_id == owner.subdomain_id, pw[1].task_index))
            for _p, w in others[: replicas - 1]:
                opool.request(
                    owner,
                    {
                        "op": "replicate",
                        "dataset": name,
                        "shard": k,
                        "to": w.address,
                        "place": (w.node_id, w.subdomain_id, w.region),
                    },
                )
                holders.append(w)
            placed[k] = (size, holders)
        info = DatasetInfo(
            name=name,
            num_shards=num_shards,
            replicas=replicas,
            job_id=pools_workers[0][0].job_id,
            shards=tuple(
                ShardInfo(
                    k,
                    placed[k][0],
                    tuple(ShardReplica(w.node_id, w.subdomain_id, w.region) for w in placed[k][1]),
                )
                for k in range(num_shards)
            ),
        )
        registered = client.register_dataset(info, replace=replace)
        return Dataset(registered, client)
    finally:
        job._finish()


def contact(
    fork: Callable[[], Sequence[Any]],
    distant: Callable[[Any], Any],
    merge: Callable[[list[Any]], Any],
    near: Callable[[Any], Any] | None = None,
    *,
    workers: int = 2,
    client: Any = None,
    cpus: float | str = 1,
) -> Any:
    """CONTACT for small jobs: ``fork()`` at the client gives the pieces; ``distant(piece)`` runs
    on the workers; ``merge(results)`` on one worker (results move worker to worker, not through
    the client); ``near(merged)`` at the client. Returns ``near``'s value (or the merged one)."""
    c = client or default_client()
    pieces = list(fork())
    if not pieces:
        raise InvalidArgument("fork() gave no pieces", field="fork")
    with Pool(c, max(1, min(workers, len(pieces))), cpus=cpus, name="dsdk-contact") as pool:
        pool.wait_ready(timeout=120)
        ws = pool.workers
        futs = [
            pool.call(distant, piece, keep=f"contact/r/{i}", worker=ws[i % len(ws)], retries=0)
            for i, piece in enumerate(pieces)
        ]
        gather(futs)
        head = ws[0]
        names = []
        for i in range(len(pieces)):
            w = ws[i % len(ws)]
            if w.address != head.address:
                pool.push(w, [f"contact/r/{i}"], head, [f"contact/in/{i}"])
                names.append(f"contact/in/{i}")
            else:
                names.append(f"contact/r/{i}")

        def merged(*results: Any) -> Any:
            return merge(list(results))

        pool.call(merged, *[ObjArg(n) for n in names], keep="contact/merged", worker=head, retries=0).result()
        (value,) = pool.fetch(head, ["contact/merged"])
        stats: JobStats | None = pool.close()
    set_last_stats(stats)
    return near(value) if near is not None else value


__all__ = ["conduct", "contact", "establish"]
