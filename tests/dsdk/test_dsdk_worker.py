"""The DSDK worker (:mod:`dsdk._worker`) served in-process and driven over the real data plane.

Each worker is a real :class:`Worker` on its own asyncio loop in a thread of its own, listening on
loopback with a datasets directory under ``tmp_path``; ``_publish`` records the address instead of
telling a master. The tests speak the worker's protocol as a driver would (``_wire.connect`` with the
job's secret, then ``hello``, ``def``, ``calls``, ...) and check what comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import pathlib
import pickle
import socket
import struct
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle
import numpy as np
import pytest

from dsdk import _shards, _wire
from dsdk import _worker as worker_module
from dsdk._context import TaskContext
from dsdk._worker import ObjArg, ShardArg, Worker
from dsdk.errors import FailedPrecondition

pytestmark = pytest.mark.timeout(60)

KEY = _wire.secret_key(_wire.new_secret())
WORKER_FILE = worker_module.__file__

#: Gates a function can wait on inside a worker (module-level: cloudpickle ships such functions by
#: reference, and the in-process worker finds this very dict).
GATES: dict[str, threading.Event] = {}


def wait_at_gate(name: str) -> str:
    GATES[name].wait(10)
    return name


# -- in-process workers ---------------------------------------------------------------------------


class RecordingWorker(Worker):
    """A worker that records the address it would publish instead of telling a master."""

    def __init__(self, ctx: TaskContext, key: bytes, **kwargs: Any) -> None:
        super().__init__(ctx, key, **kwargs)
        # A worker process counts its traffic process-wide (one worker per process); here several
        # workers share one process, so each gets counters of its own.
        self.traffic = _wire.Traffic()
        self.published: list[str] = []
        self.ready = threading.Event()
        self.publish_error: Exception | None = None

    def _publish(self) -> None:
        if self.publish_error is not None:
            raise self.publish_error
        self.published.append(self.address)
        self.ready.set()


class RunningWorker:
    """A :class:`RecordingWorker` whose ``run()`` runs on its own loop in its own thread."""

    def __init__(self, worker: RecordingWorker) -> None:
        self.worker = worker
        self.code: int | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name=f"worker-{worker.ctx.node_id}", daemon=True)

    def _main(self) -> None:
        try:
            self.code = asyncio.run(self.worker.run())
        except BaseException as exc:
            self.error = exc

    def start(self, timeout: float = 10.0) -> RunningWorker:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.worker.ready.is_set() and self.thread.is_alive():
            assert time.monotonic() < deadline, "the worker did not start serving"
            self.worker.ready.wait(0.05)
        return self

    @property
    def address(self) -> str:
        return self.worker.address

    @property
    def place(self) -> tuple[str, str, str]:
        p = self.worker.place
        return (p.node, p.subdomain, p.region)

    def stop(self, timeout: float = 10.0) -> None:
        loop = self.worker._loop
        if loop is not None and self.thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(self.worker._stop.set)
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the worker's thread did not end"


def _refused(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((host, int(port))) == errno.ECONNREFUSED


@pytest.fixture
def workers(tmp_path: pathlib.Path) -> Iterator[Callable[..., RunningWorker]]:
    """``workers(node, subdomain, region, idle_s=..., datasets=True)`` starts one more worker."""
    started: list[RunningWorker] = []
    count = itertools.count()

    def start(
        node: str | None = None,
        subdomain: str = "sd-1",
        region: str = "east",
        *,
        idle_s: float = 60.0,
        datasets: bool = True,
        begin: bool = True,
        publish_error: Exception | None = None,
    ) -> RunningWorker:
        i = next(count)
        ctx = TaskContext(
            job_id="job-worker-test",
            task_index=i,
            attempt=0,
            replicas=4,
            node_id=node or f"node-{i}",
            subdomain_id=subdomain,
            region=region,
            node_host="127.0.0.1",
            datasets_dir=str(tmp_path / f"data-{i}") if datasets else "",
        )
        w = RecordingWorker(ctx, KEY, idle_s=idle_s)
        w.publish_error = publish_error
        rw = RunningWorker(w)
        started.append(rw)
        return rw.start() if begin else rw

    yield start
    for gate in GATES.values():
        gate.set()
    for rw in started:
        if rw.thread.ident is not None:
            rw.stop()
    for rw in started:
        assert rw.error is None, rw.error
        if rw.worker.address:
            assert _refused(rw.worker.address), f"port of {rw.worker.address} still open"
    GATES.clear()


def _datasets_dir(rw: RunningWorker) -> pathlib.Path:
    return pathlib.Path(rw.worker.ctx.datasets_dir)


# -- a driver speaking the worker protocol ------------------------------------------------------------


class Driver:
    """One data-plane connection to a worker, used like the DSDK driver uses it."""

    def __init__(self, conn: _wire.Connection) -> None:
        self.conn = conn
        self._rids = itertools.count(1)
        self._cids = itertools.count(1)
        self._fids = itertools.count(1)
        self.replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.results: dict[int, tuple[bool, Any]] = {}
        self.arrival: list[int] = []
        self.ended: BaseException | None = None
        self.reader = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, address: str, key: bytes = KEY) -> Driver:
        return cls(await _wire.connect(address, key, local=_wire.Place()))

    async def _read(self) -> None:
        try:
            while True:
                msg = await self.conn.recv()
                if msg["op"] == "reply":
                    fut = self.replies.pop(msg["rid"], None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                elif msg["op"] == "results":
                    for cid, ok, payload in msg["results"]:
                        self.results[cid] = (ok, payload)
                        self.arrival.append(cid)
        except _wire.WireError as exc:
            self.ended = exc
            for fut in self.replies.values():
                if not fut.done():
                    fut.set_exception(exc)

    async def send(self, op: str, **fields: Any) -> None:
        await self.conn.send({"op": op, **fields})

    def start_request(self, op: str, **fields: Any) -> asyncio.Future[dict[str, Any]]:
        rid = next(self._rids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.replies[rid] = fut
        _wire.spawn(self.conn.send({"op": op, "rid": rid, **fields}))
        return fut

    async def request(self, op: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        return await asyncio.wait_for(self.start_request(op, **fields), timeout)

    async def value(self, op: str, **fields: Any) -> Any:
        reply = await self.request(op, **fields)
        assert reply["ok"], reply["error"]
        return reply["value"]

    async def hello(self, datasets: tuple[str, ...] = ()) -> dict[str, Any]:
        value: dict[str, Any] = await self.value("hello", place=("", "", ""), datasets=list(datasets))
        return value

    async def define(self, fn: Callable[..., Any] | bytes) -> int:
        fid = next(self._fids)
        blob = fn if isinstance(fn, bytes) else cloudpickle.dumps(fn)
        await self.send("def", fid=fid, fn=blob)
        return fid

    async def calls(self, fid: int, items: list[tuple[tuple[Any, ...], dict[str, Any], str]]) -> list[int]:
        cids = [next(self._cids) for _ in items]
        await self.send(
            "calls", calls=[(c, fid, a, k, keep) for c, (a, k, keep) in zip(cids, items, strict=True)]
        )
        return cids

    async def outcomes(self, cids: list[int], timeout: float = 10.0) -> list[tuple[bool, Any]]:
        deadline = time.monotonic() + timeout
        while not all(c in self.results for c in cids):
            if self.ended is not None:
                raise AssertionError(f"the worker hung up: {self.ended}")
            if time.monotonic() > deadline:
                missing = [c for c in cids if c not in self.results]
                raise AssertionError(f"{len(missing)} of {len(cids)} results missing after {timeout}s")
            await asyncio.sleep(0.005)
        return [self.results[c] for c in cids]

    async def results_of(self, cids: list[int], timeout: float = 10.0) -> list[Any]:
        out = []
        for ok, payload in await self.outcomes(cids, timeout):
            assert ok, payload
            out.append(payload)
        return out

    async def call(self, fn: Callable[..., Any], *args: Any, keep: str = "", **kwargs: Any) -> Any:
        fid = await self.define(fn)
        (cid,) = await self.calls(fid, [(args, kwargs, keep)])
        ((ok, payload),) = await self.outcomes([cid])
        assert ok, payload
        return payload

    async def close(self) -> None:
        self.conn.close()
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)


def run(coro: Any, timeout: float = 30.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(cond: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.005)


# -- hello, functions, calls -----------------------------------------------------------------------


def test_hello_reports_the_place_and_the_local_shards_asked_about(
    workers: Callable[..., RunningWorker],
) -> None:
    w = workers("node-a", "sd-west-1", "west")
    base = str(_datasets_dir(w))
    sizes = {s: _shards.write_shard(base, "corpus", s, np.arange(100 * (s + 1))) for s in (0, 2)}
    _shards.write_shard(base, "other", 0, "not asked about")
    assert w.worker.published == [w.address]
    assert w.address.startswith("127.0.0.1:")

    async def scenario() -> dict[str, Any]:
        d = await Driver.connect(w.address)
        try:
            return await d.hello(("corpus", "absent"))
        finally:
            await d.close()

    hello = run(scenario())
    assert hello["node"] == "node-a"
    assert hello["subdomain"] == "sd-west-1"
    assert hello["region"] == "west"
    assert hello["task_index"] == 0 and hello["attempt"] == 0
    assert hello["address"] == w.address
    assert hello["pid"] == os.getpid()
    assert hello["shards"] == {"corpus": sizes, "absent": {}}
    assert hello["gpus"] == []


def test_calls_run_shipped_lambdas_and_results_come_back_in_order(
    workers: Callable[..., RunningWorker],
) -> None:
    w = workers()

    async def scenario() -> tuple[list[Any], list[int], list[int], list[Any], dict[str, Any]]:
        d = await Driver.connect(w.address)
        try:
            await d.hello()
            offset = 1000
            fid = await d.define(lambda x, scale=1: (x + offset) * scale)
            items = [((i,), {"scale": 2} if i % 2 else {}, "") for i in range(600)]
            cids = await d.calls(fid, items)
            values = await d.results_of(cids)
            strings = await d.results_of(
                await d.calls(await d.define(lambda s: s.upper()), [(("ab",), {}, "")])
            )
            return values, cids, list(d.arrival), strings, await d.value("stats")
        finally:
            await d.close()

    values, cids, arrival, strings, stats = run(scenario())
    assert values == [(i + 1000) * (2 if i % 2 else 1) for i in range(600)]
    assert arrival[: len(cids)] == cids  # answered in the order they were sent
    assert strings == ["AB"]
    assert stats["calls"] == 601 and stats["local_calls"] == 0
    assert w.worker.calls == 601


def _users_function(x: int) -> float:
    return _users_helper(x)


def _users_helper(x: int) -> float:
    return 1 / x


def test_an_exception_comes_back_with_the_users_traceback_only(workers: Callable[..., RunningWorker]) -> None:
    w = workers()

    def compute(x: int) -> float:  # shipped by value: its code travels with it
        if x == 3:
            raise ValueError(f"bad input {x}")
        return x * 2.0

    async def scenario() -> list[tuple[bool, Any]]:
        d = await Driver.connect(w.address)
        try:
            await d.hello()
            fid = await d.define(compute)
            outs = await d.outcomes(await d.calls(fid, [((i,), {}, "") for i in range(5)]))
            by_ref = await d.define(_users_function)
            outs += await d.outcomes(await d.calls(by_ref, [((0,), {}, "")]))
            return outs
        finally:
            await d.close()

    outs = run(scenario())
    assert [o[0] for o in outs] == [True, True, True, False, True, False]
    assert [o[1] for o in outs if o[0]] == [0.0, 2.0, 4.0, 8.0]
    name, message, tb = outs[3][1]
    assert (name, message) == ("ValueError", "bad input 3")
    assert "in compute" in tb
    assert tb.startswith("Traceback (most recent call last):")
    assert "_run_calls" not in tb and WORKER_FILE not in tb
    name, message, tb = outs[5][1]
    assert name == "ZeroDivisionError"
    assert "in _users_function" in tb and "in _users_helper" in tb
    assert "_run_calls" not in tb and WORKER_FILE not in tb


def _unloadable_function() -> Any:
    """A function cloudpickle ships by reference to a module the worker cannot import."""
    name = "dsdk_test_module_not_on_the_nodes"
    mod = types.ModuleType(name)
    exec("def step(x):\n    return x + 1\n", mod.__dict__)
    sys.modules[name] = mod
    try:
        blob = cloudpickle.dumps(mod.step)
    finally:
        del sys.modules[name]
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(blob)
    return blob


def test_a_function_that_cannot_be_loaded_names_ship_module(workers: Callable[..., RunningWorker]) -> None:
    w = workers("node-x")
    blob = _unloadable_function()

    async def scenario() -> tuple[list[tuple[bool, Any]], list[Any]]:
        d = await Driver.connect(w.address)
        try:
            await d.hello()
            fid = await d.define(blob)
            outs = await d.outcomes(await d.calls(fid, [((1,), {}, "")]))
            fine = await d.results_of(await d.calls(await d.define(lambda: "still serving"), [((), {}, "")]))
            return outs, fine
        finally:
            await d.close()

    outs, fine = run(scenario())
    ((ok, (name, message, _)),) = outs
    assert not ok and name == "FailedPrecondition"
    assert "cannot load the function on node node-x" in message
    assert "ModuleNotFoundError" in message and "dsdk_test_module_not_on_the_nodes" in message
    assert "dsdk.ship_module" in message
    assert fine == ["still serving"]


def test_repeated_calls_of_an_unloadable_function_give_the_same_short_error(
    workers: Callable[..., RunningWorker],
) -> None:
    w = workers()
    blob = _unloadable_function()

    async def scenario() -> list[tuple[bool, Any]]:
        d = await Driver.connect(w.address)
        try:
            await d.hello()
            fid = await d.define(blob)
            return await d.outcomes(await d.calls(fid, [((i,), {}, "") for i in range(50)]))
        finally:
            await d.close()

    outs = run(scenario())
    tracebacks = [payload[2] for _, payload in outs]
    assert tracebacks[-1].count("_run_calls") <= 1, tracebacks[-1]
    assert all(tb == tracebacks[0] for tb in tracebacks)


def test_a_result_that_cannot_be_pickled_fails_only_that_call(workers: Callable[..., RunningWorker]) -> None:
    w = workers()

    async def scenario() -> list[tuple[bool, Any]]:
        d = await Driver.connect(w.address)
        try:
            await d.hello()
            fid = await d.define(lambda i: threading.Lock() if i == 1 else i)
            return await d.outcomes(await d.calls(fid, [((i,), {}, "") for i in range(3)]), timeout=3)
        finally:
            await d.close()

    outs = run(scenario())
    assert outs[0] == (True, 0) and outs[2] == (True, 2)
    assert outs[1][0] is False and "pickle" in outs[1][1][1]


# -- data: shards, kept objects -------------------------------------------------------------------------


def test_shard_arguments_are_read_at_the_worker_and_counted_as_local_calls(
    workers: Callable[..., RunningWorker],
) -> None:
    w = workers("node-data")
    data = np.arange(10_000, dtype=np.int64)
    _shards.write_shard(str(_datasets_dir(w)), "corpus", 1, data)

    async def scenario() -> tuple[list[tuple[bool, Any]], dict[str, Any]]:
        d = await Driver.connect(w.address)
        try:
            await d.hello()
            fid = await d.define(lambda a, extra=0: (int(a.sum()) + extra, bool(a.flags.writeable)))
            outs = await d.outcomes(
                await d.calls(
                    fid,
                    [
                        ((ShardArg("corpus", 1),), {}, ""),
                        ((ShardArg("corpus", 1),), {"extra": 5}, ""),
                        ((data[:10],), {}, ""),  # sent along: not local
                        ((ShardArg("corpus", 9),), {}, ""),  # not on this node
                    ],
                )
            )
            return outs, await d.value("stats")
        finally:
            await d.close()

    outs, stats = run(scenario())
    total = int(data.sum())
    assert outs[0] == (True, (total, False))  # mapped read-only from the node's storage
    assert outs[1] == (True, (total + 5, False))
    assert outs[2] == (True, (45, True))
    ok, (name, message, _) = outs[3]
    assert not ok and name == "NotFound"
    assert "shard 9 of dataset corpus is not on this node" in message
    assert stats["calls"] == 4
    assert stats["local_calls"] == 2


def test_shard_argument_on_a_node_without_a_datasets_dir(workers: Callable[..., RunningWorker]) -> None:
    w = workers("node-bare", datasets=False)

    async def scenario() -> tuple[list[tuple[bool, Any]], dict[str, Any]]:
        d = await Driver.connect(w.address)
        try:
            await d.hello(("corpus",))
            fid = await d.define(lambda a: a)
            outs = await d.outcomes(await d.calls(fid, [((ShardArg("corpus", 0),), {}, "")]))
            return outs, await d.request("store", dataset="ds", shard=0, value=1)
        finally:
            await d.close()

    outs, store = run(scenario())
    ((ok, (name, message, _)),) = outs
    assert not ok and name == "FailedPrecondition"
    assert "node node-bare has no datasets directory" in message
    assert not store["ok"]
    assert store["error"][0] == "FailedPrecondition"
    assert "gives its tasks no datasets directory" in store["error"][1]


def test_kept_objects_get_free_rename_split_and_object_arguments(
    workers: Callable[..., RunningWorker],
) -> None:
    w = workers()

    async def scenario() -> dict[str, Any]:
        d = await Driver.connect(w.address)
        out: dict[str, Any] = {}
        try:
            await d.hello()
            out["summary"] = await d.call(lambda n: np.ones(n), 100, keep="ones")
            out["str_summary"] = await d.call(lambda: "hello", keep="greeting")
            out["obj_summary"] = await d.call(lambda: {"a": 1}, keep="mapping")
            out["get"] = await d.value("get", keys=["ones", "greeting"])
            out["used"] = await d.call(
                lambda a, b, k=None: float(a.sum()) + len(b) + len(k),
                ObjArg("ones"),
                ObjArg("greeting"),
                k=ObjArg("greeting"),
            )
            out["as_list"] = await d.call(
                lambda xs: [type(x).__name__ for x in xs], [ObjArg("ones"), ObjArg("greeting")]
            )
            out["rename"] = await d.value("rename", pairs=[("ones", "renamed")])
            out["old_name"] = await d.request("get", keys=["ones"])
            out["new_name"] = await d.value("get", keys=["renamed"])
            await d.call(lambda: {"x": 1, "y": [2], "3": "three"}, keep="parts")
            out["split"] = await d.request("split", key="parts", prefix="p")
            out["pieces"] = await d.value("get", keys=["p/x", "p/y", "p/3"])
            out["parts_gone"] = await d.request("get", keys=["parts"])
            await d.send("free", keys=["renamed", "never-there"])
            out["freed"] = await d.request("get", keys=["renamed"])
            fid = await d.define(lambda a: a)
            out["missing_arg"] = await d.outcomes(await d.calls(fid, [((ObjArg("renamed"),), {}, "")]))
            out["unknown"] = await d.request("frobnicate")
            out["objects"] = sorted(w.worker.objects)
            return out
        finally:
            await d.close()

    out = run(scenario())
    assert out["summary"] == {"type": "ndarray", "nbytes": 800}
    assert out["str_summary"] == {"type": "str", "nbytes": 5}
    assert out["obj_summary"] == {"type": "dict", "nbytes": -1}
    ones, greeting = out["get"]
    assert np.array_equal(ones, np.ones(100)) and greeting == "hello"
    assert out["used"] == 110.0
    assert out["as_list"] == ["ndarray", "str"]
    assert out["rename"] == 1
    assert not out["old_name"]["ok"]
    assert out["old_name"]["error"][:2] == ("KeyError", "no object 'ones' on this worker")
    assert np.array_equal(out["new_name"][0], np.ones(100))
    assert out["split"]["ok"]
    assert out["split"]["value"] == ["3", "x", "y"]
    assert out["pieces"] == [1, [2], "three"]
    assert not out["parts_gone"]["ok"]
    assert not out["freed"]["ok"] and "no object 'renamed'" in out["freed"]["error"][1]
    ((ok, (name, message, _)),) = out["missing_arg"]
    assert not ok and name == "FailedPrecondition" and "object 'renamed' is not on worker" in message
    assert out["unknown"]["error"][:2] == ("ValueError", "unknown operation 'frobnicate'")
    assert out["objects"] == ["greeting", "mapping", "p/3", "p/x", "p/y"]


def test_a_failing_operation_is_answered_and_the_connection_stays(
    workers: Callable[..., RunningWorker],
) -> None:
    w = workers()

    async def scenario() -> tuple[dict[str, Any], Any]:
        d = await Driver.connect(w.address)
        try:
            await d.hello()
            await d.call(lambda: [1, 2, 3], keep="a-list")
            reply = await d.request("split", key="a-list", prefix="p")
            return reply, await d.call(lambda: "still connected")
        finally:
            await d.close()

    reply, after = run(scenario())
    assert not reply["ok"]
    assert after == "still connected"


PLACES = {
    "intra_node": (("node-a", "sd-1", "east"), ("node-a", "sd-1", "east")),
    "inter_node": (("node-a", "sd-1", "east"), ("node-b", "sd-1", "east")),
    "inter_subdomain": (("node-a", "sd-1", "east"), ("node-c", "sd-2", "east")),
    "inter_region": (("node-a", "sd-1", "east"), ("node-d", "sd-9", "west")),
}


@pytest.mark.parametrize("cat", list(PLACES))
def test_push_moves_an_object_worker_to_worker_counted_by_the_sender(
    workers: Callable[..., RunningWorker], cat: str
) -> None:
    src_place, dst_place = PLACES[cat]
    a = workers(*src_place)
    b = workers(*dst_place)
    payload = np.arange(2**17, dtype=np.float64)  # 1 MiB

    async def scenario() -> dict[str, Any]:
        da = await Driver.connect(a.address)
        db = await Driver.connect(b.address)
        out: dict[str, Any] = {}
        try:
            await da.hello()
            await db.hello()
            await da.call(lambda: np.arange(2**17, dtype=np.float64), keep="x")
            await da.call(lambda: "small", keep="s")
            before = await da.value("stats")
            out["pushed"] = await da.value(
                "push", keys=["x"], **{"as": ["y"]}, to=b.address, place=b.place, drop=True
            )
            out["kept"] = await da.value(
                "push", keys=["s"], **{"as": ["s2"]}, to=b.address, place=b.place, drop=False
            )
            out["at_b"] = await db.value("get", keys=["y", "s2"])
            out["dropped"] = await da.request("get", keys=["x"])
            out["still"] = await da.value("get", keys=["s"])
            out["a_before"], out["a"] = before, await da.value("stats")
            out["b"] = await db.value("stats")
            out["bad"] = await da.request("push", keys=["nope"], **{"as": ["z"]}, to=b.address, place=b.place)
            return out
        finally:
            await da.close()
            await db.close()

    out = run(scenario())
    assert out["pushed"] == 1 and out["kept"] == 1
    y, s2 = out["at_b"]
    assert np.array_equal(y, payload) and s2 == "small"
    assert not out["dropped"]["ok"] and out["still"] == ["small"]
    sent = out["a"]["bytes"]
    assert payload.nbytes <= sent[cat] < payload.nbytes + 16 * 1024
    assert out["a_before"]["bytes"][cat] == 0
    for other in ("intra_node", "inter_node", "inter_subdomain", "inter_region"):
        if other != cat:
            assert sent[other] == 0, (other, sent)
    # The receiver only answered (its hello and put replies), counted in the same category.
    assert 0 < out["b"]["bytes"][cat] < 4096
    assert out["b"]["bytes"]["client"] > payload.nbytes  # it sent the object on to the driver
    assert not out["bad"]["ok"] and out["bad"]["error"][0] == "KeyError"


def test_store_replicate_and_drop_datasets(workers: Callable[..., RunningWorker]) -> None:
    a = workers("node-a", "sd-1", "east")
    b = workers("node-b", "sd-2", "west")
    arr = np.arange(200_000, dtype=np.float32)

    async def scenario() -> dict[str, Any]:
        da = await Driver.connect(a.address)
        out: dict[str, Any] = {}
        try:
            await da.hello()
            out["value"] = await da.value("store", dataset="ds", shard=0, value=arr)
            await da.call(lambda: {"kept": np.arange(10)}, keep="k")
            out["key"] = await da.value("store", dataset="ds", shard=1, key="k")
            fid = await da.define(lambda n, fill: np.full(n, fill))
            out["fn"] = await da.value("store", dataset="ds", shard=2, fid=fid, args=(1000, 7))
            out["missing_key"] = await da.request("store", dataset="ds", shard=3, key="nope")
            out["bad_name"] = await da.request("store", dataset="../up", shard=3, value=1)
            out["calls"] = (await da.value("stats"))["calls"]
            out["hello"] = (await da.hello(("ds",)))["shards"]
            out["replicated"] = await da.value(
                "replicate", dataset="ds", shard=0, to=b.address, place=b.place
            )
            out["replicate_missing"] = await da.request(
                "replicate", dataset="ds", shard=42, to=b.address, place=b.place
            )
            out["a_bytes"] = (await da.value("stats"))["bytes"]
            out["dropped"] = await da.value("drop_dataset", dataset="ds")
            out["dropped_again"] = await da.value("drop_dataset", dataset="ds")
            return out
        finally:
            await da.close()

    out = run(scenario())
    a_dir, b_dir = _datasets_dir(a), _datasets_dir(b)
    assert out["value"]["node"] == "node-a" and out["value"]["size"] >= arr.nbytes
    assert out["key"]["node"] == "node-a" and out["fn"]["node"] == "node-a"
    assert not out["missing_key"]["ok"] and out["missing_key"]["error"][0] == "KeyError"
    assert not out["bad_name"]["ok"] and out["bad_name"]["error"][0] == "InvalidArgument"
    assert out["calls"] == 2  # the kept object's call and the function that made shard 2
    assert out["hello"] == {"ds": {0: out["value"]["size"], 1: out["key"]["size"], 2: out["fn"]["size"]}}
    assert out["replicated"] == {"size": out["value"]["size"], "node": "node-b"}
    assert not out["replicate_missing"]["ok"] and out["replicate_missing"]["error"][0] == "NotFound"
    assert arr.nbytes <= out["a_bytes"]["inter_region"] < arr.nbytes + 16 * 1024  # a sent it to b
    # b holds a byte-for-byte copy; a dropped its three shards.
    copy = b_dir / "ds" / "0"
    assert sorted(p.name for p in copy.iterdir()) == ["buffer-0", _shards.OBJECT_FILE]
    assert np.array_equal(_shards.read_shard(str(b_dir), "ds", 0), arr)
    assert out["dropped"] == 3 and out["dropped_again"] == 0
    assert not (a_dir / "ds").exists()
    assert _shards.local_shards(str(b_dir), "ds") == {0: out["value"]["size"]}


def test_replicated_shard_files_are_identical(workers: Callable[..., RunningWorker]) -> None:
    a = workers("node-a")
    b = workers("node-b")
    value = {
        "x": np.random.default_rng(1).standard_normal(5000),
        "y": np.arange(9, dtype=np.int8),
        "t": "tag",
    }

    async def scenario() -> None:
        da = await Driver.connect(a.address)
        try:
            await da.hello()
            await da.value("store", dataset="copy", shard=7, value=value)
            await da.value("replicate", dataset="copy", shard=7, to=b.address, place=b.place)
        finally:
            await da.close()

    run(scenario())
    src, dst = _datasets_dir(a) / "copy" / "7", _datasets_dir(b) / "copy" / "7"
    names = sorted(p.name for p in src.iterdir())
    assert names == sorted(p.name for p in dst.iterdir()) == ["buffer-0", "buffer-1", _shards.OBJECT_FILE]
    for name in names:
        assert (src / name).read_bytes() == (dst / name).read_bytes(), name


def test_losing_one_peer_does_not_fail_requests_to_another(workers: Callable[..., RunningWorker]) -> None:
    a = workers("node-a")
    b = workers("node-b")
    c = workers("node-c")
    GATES["c-busy"] = threading.Event()

    async def scenario() -> dict[str, Any]:
        da = await Driver.connect(a.address)
        dc = await Driver.connect(c.address)
        try:
            await da.hello()
            await dc.hello()
            # c's executor is busy: a's store_raw request to c waits there, pending at a.
            await dc.calls(await dc.define(wait_at_gate), [(("c-busy",), {}, "")])
            await da.value("store", dataset="ds", shard=0, value=np.arange(1000))
            replicate = da.start_request("replicate", dataset="ds", shard=0, to=c.address, place=c.place)
            await until(lambda: a.worker._pending, what="a's request to c is pending")
            await da.call(lambda: "x", keep="x")
            await da.value("push", keys=["x"], **{"as": ["x"]}, to=b.address, place=b.place)
            await asyncio.to_thread(b.stop)  # peer b goes away; c is fine
            await until(lambda: a.worker._peers[b.address].closed, what="a noticed b is gone")
            GATES["c-busy"].set()
            return await asyncio.wait_for(replicate, 10)
        finally:
            await da.close()
            await dc.close()

    reply = run(scenario())
    assert reply["ok"], reply["error"]
    assert reply["value"]["node"] == "node-c"


# -- lifecycle ------------------------------------------------------------------------------------------


def test_stats_count_calls_and_bytes_to_the_client(workers: Callable[..., RunningWorker]) -> None:
    w = workers()

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        d = await Driver.connect(w.address)
        try:
            await d.hello()
            first = await d.value("stats")
            fid = await d.define(lambda n: np.zeros(n))
            await d.results_of(await d.calls(fid, [((50_000,), {}, "")] * 4))
            return first, await d.value("stats")
        finally:
            await d.close()

    first, later = run(scenario())
    assert first["calls"] == 0 and first["local_calls"] == 0
    assert set(first["bytes"]) == set(_wire.CATEGORIES)
    assert later["calls"] == 4
    sent = later["bytes"]["client"] - first["bytes"]["client"]
    assert 4 * 400_000 <= sent < 4 * 400_000 + 16 * 1024
    assert later["bytes"]["inter_node"] == later["bytes"]["inter_region"] == 0


def test_exit_ends_run_with_zero_and_closes_the_port(workers: Callable[..., RunningWorker]) -> None:
    w = workers()

    async def scenario() -> dict[str, Any]:
        d = await Driver.connect(w.address)
        try:
            await d.hello()
            await d.call(lambda: 1)
            stats: dict[str, Any] = await d.value("exit")
            await until(lambda: d.ended is not None, what="the worker hangs up")
            return stats
        finally:
            await d.close()

    stats = run(scenario())
    assert stats["calls"] == 1
    w.thread.join(10)
    assert not w.thread.is_alive()
    assert w.code == 0
    assert _refused(w.address)


def test_a_worker_that_never_gets_a_driver_idles_out(workers: Callable[..., RunningWorker]) -> None:
    w = workers(idle_s=0.2)
    w.thread.join(10)
    assert not w.thread.is_alive(), "the idle worker is still running"
    assert w.code == 0
    assert _refused(w.address)


def test_a_connected_driver_keeps_the_worker_and_leaving_lets_it_idle_out(
    workers: Callable[..., RunningWorker],
) -> None:
    w = workers(idle_s=0.3)

    async def scenario() -> float:
        d = await Driver.connect(w.address)
        await d.hello()
        # Several idle periods and watchdog rounds pass with the driver connected.
        deadline = time.monotonic() + 2.2
        while time.monotonic() < deadline:
            assert w.thread.is_alive()
            await d.value("stats")
            await asyncio.sleep(0.1)
        await d.close()
        return time.monotonic()

    left = run(scenario())
    w.thread.join(10)
    assert not w.thread.is_alive() and w.code == 0
    assert time.monotonic() - left < 5


def test_run_returns_3_when_the_endpoint_cannot_be_published(workers: Callable[..., RunningWorker]) -> None:
    w = workers(begin=False, publish_error=FailedPrecondition("master unreachable"))
    w.thread.start()
    w.thread.join(10)
    assert not w.thread.is_alive()
    assert w.code == 3
    assert w.worker.published == []
    assert _refused(w.address)


def test_a_peer_without_the_secret_is_refused_and_its_bytes_never_loaded(
    workers: Callable[..., RunningWorker], tmp_path: pathlib.Path
) -> None:
    w = workers()
    marker = tmp_path / "pwned"

    class Marker:
        def __reduce__(self) -> Any:
            return open, (str(marker), "w")

    header = pickle.dumps({"op": "def", "fid": 1, "fn": Marker()}, protocol=5)
    frame = struct.pack("!II", 0, len(header)) + header
    host, _, port = w.address.rpartition(":")

    async def scenario() -> tuple[BaseException | None, Any]:
        loop = asyncio.get_running_loop()
        raw = socket.socket()
        raw.setblocking(False)
        await loop.sock_connect(raw, (host, int(port)))
        try:
            await loop.sock_sendall(raw, frame * 3)
            got = b""
            try:
                while chunk := await asyncio.wait_for(loop.sock_recv(raw, 4096), 5):
                    got += chunk
            except ConnectionResetError:
                pass
            # The worker's hello (and at most a refusal the size of a proof), then it hung up.
            assert len(got) <= 21 + 32
        finally:
            raw.close()
        wrong: BaseException | None = None
        try:
            conn = await _wire.connect(w.address, _wire.secret_key(_wire.new_secret()))
            conn.close()
        except _wire.WireError as exc:
            wrong = exc
        d = await Driver.connect(w.address)  # and the worker still serves its job
        try:
            await d.hello()
            return wrong, await d.call(lambda: "ok")
        finally:
            await d.close()

    wrong, ok = run(scenario())
    assert not marker.exists()
    assert isinstance(wrong, _wire.WireError)
    assert ok == "ok"
    assert w.worker.functions.keys() == {1}  # only the authenticated driver's function
