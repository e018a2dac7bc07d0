"""dsdk.intra: a DevicePool over this machine's CPU cores (and its GPUs, where there are any).

Every result is checked against numpy's own computation on the same data. Zero-copy is shown by
what a user can observe: workers write into the very memory the caller's parts view, a function
that returns its argument gives back the same memory, and only a few KiB cross the pipes while
MiBs are computed on.
"""

from __future__ import annotations

import functools
import gc
import importlib.util
import mmap
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from dsdk.errors import DomainOSError, FailedPrecondition, InvalidArgument
from dsdk.intra import Device, DevicePool, RemoteTraceback, Sharded, TaskError
from dsdk.intra import _pool as pool_module

pytestmark = pytest.mark.timeout(120)

CORES = sorted(os.sched_getaffinity(0))
SHM = pathlib.Path("/dev/shm")
ROOT = pathlib.Path(__file__).resolve().parents[2]
OPS = {"sum": np.add, "max": np.maximum, "min": np.minimum, "prod": np.multiply}
BIG = 200_000  # float64 elements: 1.6 MB, well past the 64 KiB under which results are pickled


def _refuse_to_load() -> None:
    """Called when an object pickled as ``(_refuse_to_load, ())`` is loaded."""
    raise RuntimeError("this object cannot be loaded here")


def segments() -> set[str]:
    """This process's shared-memory segments (the pool names them dsdk-<pid>-...)."""
    return {p.name for p in SHM.glob(f"dsdk-{os.getpid()}-*")}


@pytest.fixture(scope="module")
def pool() -> Iterator[DevicePool]:
    with DevicePool("cpu") as p:
        yield p


@pytest.fixture
def own_pool() -> Iterator[DevicePool]:
    """A pool of its own, for tests that kill workers or count segments."""
    with DevicePool("cpu") as p:
        yield p


@pytest.fixture(scope="module")
def five() -> Iterator[DevicePool]:
    """Five workers (two or three per core) so that trees and uneven splits have depth."""
    original = pool_module._select
    pool_module._select = lambda available, devices, what: [CORES[i % len(CORES)] for i in range(5)]
    try:
        p = DevicePool("cpu")
    finally:
        pool_module._select = original
    with p:
        yield p


def two_devices(pool: DevicePool) -> None:
    if len(pool) < 2:
        pytest.skip("needs at least two CPU cores")


# -- devices -------------------------------------------------------------------------------------


def test_one_worker_per_core_each_pinned_to_it(pool: DevicePool) -> None:
    assert pool.kind == "cpu"
    assert len(pool) == len(CORES)
    assert [d.index for d in pool.devices] == CORES
    assert all(isinstance(d, Device) and d.kind == "cpu" and d.name for d in pool.devices)
    assert str(pool.devices[0]) == f"cpu:{CORES[0]}"
    affinity = pool.map(lambda: sorted(os.sched_getaffinity(0)))
    assert affinity[:] == [[core] for core in CORES]
    pids = pool.map(os.getpid)[:]
    assert len(set(pids)) == len(CORES) and os.getpid() not in pids
    assert pool.map(lambda: os.environ["OPENBLAS_NUM_THREADS"])[:] == ["1"] * len(CORES)


def test_devices_limits_the_pool() -> None:
    with DevicePool("cpu", devices=1) as pool:
        assert [d.index for d in pool.devices] == CORES[:1]
        assert pool.map(lambda: sorted(os.sched_getaffinity(0)))[:] == [CORES[:1]]
    with DevicePool("cpu", devices=[CORES[-1]]) as pool:
        assert [d.index for d in pool.devices] == [CORES[-1]]
        assert pool.scatter(np.arange(3)).gather().tolist() == [0, 1, 2]


# -- scatter / map / gather match numpy ------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64, np.int32, np.uint8, np.complex128])
@pytest.mark.parametrize("shape", [(7,), (7, 3), (5, 4, 3), (BIG // 4, 4)])
def test_map_matches_numpy(pool: DevicePool, dtype: type, shape: tuple[int, ...]) -> None:
    x = (np.arange(np.prod(shape)) % 97).astype(dtype).reshape(shape)
    parts = pool.scatter(x)
    assert len(parts) == len(pool)
    for part, expected in zip(parts, np.array_split(x, len(pool)), strict=True):
        assert part.dtype == x.dtype
        np.testing.assert_array_equal(part, expected)
    y = pool.map(lambda p: p * 3 + 1, parts)
    np.testing.assert_array_equal(y.gather(), x * 3 + 1)
    np.testing.assert_array_equal(pool.gather(y), x * 3 + 1)
    assert y.gather().dtype == (x * 3 + 1).dtype


def test_uneven_split_seven_rows(pool: DevicePool, five: DevicePool) -> None:
    x = np.arange(21.0).reshape(7, 3)
    for p in (pool, five):
        parts = p.scatter(x)
        assert [part.shape for part in parts] == [a.shape for a in np.array_split(x, len(p))]
        np.testing.assert_array_equal(p.map(np.sqrt, parts).gather(), np.sqrt(x))
    # fewer rows than devices: the last parts are empty
    parts = five.scatter(np.arange(3))
    assert [len(part) for part in parts] == [1, 1, 1, 0, 0]
    assert five.map(lambda p: p + 1, parts).gather().tolist() == [1, 2, 3]


def test_scatter_of_strided_and_fortran_ordered_input(pool: DevicePool) -> None:
    base = np.arange(60.0).reshape(10, 6)
    for x in (base[:, ::2], base[::-1], np.asfortranarray(base), base.T):
        parts = pool.scatter(x)
        np.testing.assert_array_equal(parts.gather(), x)
        np.testing.assert_array_equal(pool.map(lambda p: p * 2, parts).gather(), x * 2)


def test_extra_arguments_broadcast_or_partwise(pool: DevicePool) -> None:
    x = np.random.default_rng(1).random((11, 5))
    parts = pool.scatter(x)
    chunks = np.array_split(x, len(pool))
    vals = pool.map(lambda part, k: float(part.sum()) * k, parts, 3)
    assert vals[:] == pytest.approx([float(c.sum()) * 3 for c in chunks])
    assert isinstance(vals[0], float)
    np.testing.assert_allclose(pool.gather(vals), [float(c.sum()) * 3 for c in chunks])
    # two Sharded arguments go part-wise, together
    np.testing.assert_array_equal(pool.map(np.add, parts, pool.scatter(x * 10)).gather(), x + x * 10)
    # keyword-style closures and a large broadcast array (sent through shared memory, not pickled)
    weights = np.random.default_rng(2).random((5, 30_000))
    before = pool.stats().pipe_bytes_sent
    product = pool.map(lambda part, w, scale=2.0: part @ w * scale, parts, weights)
    np.testing.assert_allclose(product.gather(), x @ weights * 2.0)
    assert pool.stats().pipe_bytes_sent - before < weights.nbytes / 20


def test_map_without_sharded_arguments_runs_once_per_device(pool: DevicePool) -> None:
    assert pool.map(lambda a, b: a + b, 2, 3)[:] == [5] * len(pool)


def test_results_plain_pickle_refuses_come_back_through_cloudpickle(pool: DevicePool) -> None:
    fns = pool.map(lambda k: lambda v: v * k, 4)
    assert [f(2) for f in fns] == [8] * len(pool)


def test_a_result_the_caller_cannot_unpickle_is_a_task_error(pool: DevicePool) -> None:
    class Unloadable:
        def __reduce__(self) -> tuple[object, tuple[()]]:
            return (_refuse_to_load, ())

    with pytest.raises(TaskError, match="cannot be unpickled here"):
        pool.map(lambda: Unloadable())
    assert pool.map(lambda: 1)[:] == [1] * len(pool)


def test_gather_stacks_numbers_and_refuses_other_objects(pool: DevicePool) -> None:
    parts = pool.scatter(np.arange(4.0))
    np.testing.assert_array_equal(
        pool.map(lambda p: p.sum(), parts).gather(),
        [c.sum() for c in np.array_split(np.arange(4.0), len(pool))],
    )
    with pytest.raises(InvalidArgument, match="not an array"):
        pool.map(lambda p: {"n": len(p)}, parts).gather()


# -- reduce ----------------------------------------------------------------------------------------


def test_reduce_matches_numpy(pool: DevicePool, five: DevicePool) -> None:
    x = np.random.default_rng(3).random((23, 4))
    for p in (pool, five):
        sums = p.map(lambda part: part.sum(axis=0), p.scatter(x))
        np.testing.assert_allclose(p.reduce(np.add, sums), x.sum(axis=0))
        np.testing.assert_allclose(
            p.reduce(np.maximum, p.map(lambda a: a.max(axis=0), p.scatter(x))), x.max(axis=0)
        )
        # large per-device results live in shared memory on the way up the tree
        big = np.random.default_rng(4).random((len(p) * 3, BIG // 3))
        rows = p.map(lambda part: part.sum(axis=0), p.scatter(big))
        total = p.reduce(np.add, rows)
        np.testing.assert_allclose(
            total, functools.reduce(np.add, [c.sum(axis=0) for c in np.array_split(big, len(p))])
        )
        np.testing.assert_allclose(p.reduce(lambda a, b: a + b, rows), total)
        assert p.reduce(lambda a, b: a + b, p.map(lambda v: v, 1.5)) == 1.5 * len(p)


def test_reduce_keeps_the_order_of_parts(five: DevicePool) -> None:
    lists = five.map(lambda part: [int(v) for v in part], five.scatter(np.arange(13)))
    assert five.reduce(lambda a, b: a + b, lists) == list(range(13))  # not commutative: order kept
    words = five.map(lambda part: "".join(chr(97 + int(v)) for v in part), five.scatter(np.arange(10)))
    assert five.reduce(lambda a, b: a + b, words) == "abcdefghij"


def test_reduce_returns_a_copy_never_the_callers_part(pool: DevicePool) -> None:
    parts = pool.scatter(np.arange(4.0 * len(pool)))
    first = pool.reduce(lambda a, b: a, parts)
    first[:] = -1
    assert parts[0].min() >= 0


# -- allreduce -------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("per_device", [(6,), (3, 4), (BIG,), (BIG // 50, 50)])
@pytest.mark.parametrize("dtype", [np.float64, np.int64])
def test_allreduce_each_op_matches_numpy(
    pool: DevicePool, op: str, per_device: tuple[int, ...], dtype: type
) -> None:
    rng = np.random.default_rng(5)
    x = rng.integers(1, 4, (len(pool) * per_device[0], *per_device[1:])).astype(dtype)
    parts = pool.scatter(x)
    expected = functools.reduce(OPS[op], np.split(x, len(pool)))
    result = pool.allreduce(parts, op=op)
    assert isinstance(result, Sharded) and len(result) == len(pool)
    for part in result:
        assert part.dtype == expected.dtype
        np.testing.assert_array_equal(part, expected)
    np.testing.assert_array_equal(result.gather(), np.concatenate([expected] * len(pool)))
    np.testing.assert_array_equal(parts.gather(), x)  # the input is not changed
    if len(pool) > 1:
        assert not np.shares_memory(result[0], result[1])


def test_allreduce_over_five_and_of_map_results(five: DevicePool) -> None:
    x = np.random.default_rng(6).random((5 * 1000, 40))
    grads = five.map(lambda part: part.T @ part, five.scatter(x))
    expected = functools.reduce(np.add, [c.T @ c for c in np.split(x, 5)])
    for part in five.allreduce(grads):
        np.testing.assert_allclose(part, expected)
    # non-contiguous parts (views returned by map) reduce by rows
    strided = five.map(
        lambda part: part[:, ::2], five.scatter(np.arange(5 * 4000 * 6.0).reshape(5 * 4000, 6))
    )
    expected = functools.reduce(
        np.add, [c[:, ::2] for c in np.split(np.arange(5 * 4000 * 6.0).reshape(-1, 6), 5)]
    )
    np.testing.assert_array_equal(five.allreduce(strided, op="sum")[4], expected)
    assert five.allreduce(five.map(lambda v: v, 2.0), op="prod")[:] == [32.0] * 5


@pytest.mark.parametrize("per_device", [(6,), (BIG // 50, 50)])
def test_allreduce_in_place_writes_into_the_parts(pool: DevicePool, per_device: tuple[int, ...]) -> None:
    x = np.random.default_rng(11).random((len(pool) * per_device[0], *per_device[1:]))
    grads = pool.map(lambda p: p * 1.0, pool.scatter(x))  # results of a map: arrays the caller owns
    views = list(grads)
    expected = functools.reduce(np.add, np.split(x, len(pool)))
    assert pool.allreduce(grads, op="sum", inplace=True) is grads
    for view in views:
        np.testing.assert_allclose(view, expected)  # the very memory the caller held
    if per_device[0] > 6:
        created = pool.stats().shm_bytes_created
        pool.allreduce(grads, op="max", inplace=True)
        assert pool.stats().shm_bytes_created == created  # nothing allocated


def test_allreduce_in_place_refuses_what_it_cannot_write(pool: DevicePool) -> None:
    with pytest.raises(InvalidArgument, match="needs array parts; part 0 is a float"):
        pool.allreduce(pool.map(lambda: 1.0), inplace=True)
    two_devices(pool)
    ranks = pool.scatter(np.arange(float(len(pool))))
    mixed = pool.map(lambda p: np.zeros(3, np.float32 if p[0] == 0 else np.float64), ranks)
    with pytest.raises(InvalidArgument, match="one dtype"):
        pool.allreduce(mixed, inplace=True)
    shared = np.ones(BIG)
    same = pool.map(lambda w: w, shared)  # every part is a view of the one broadcast segment
    with pytest.raises(InvalidArgument, match="share memory"):
        pool.allreduce(same, inplace=True)
    np.testing.assert_array_equal(pool.allreduce(same)[0], shared * len(pool))


# -- zero copy -------------------------------------------------------------------------------------


def test_parts_are_views_of_one_shared_memory_segment(pool: DevicePool) -> None:
    x = np.arange(1000.0)
    parts = pool.scatter(x)
    bases = {id(p.base) for p in parts}
    assert len(bases) == 1 and isinstance(parts[0].base, mmap.mmap)
    assert not parts[0].flags.owndata and parts[0].flags.writeable
    assert segments(), "the scatter segment is in /dev/shm under dsdk-<pid>-"
    # the workers see views too, of a mapping (not a copy that came through a pipe)
    seen = pool.map(lambda p: (bool(p.flags.owndata), type(p.base).__name__), parts)
    assert seen[:] == [(False, "mmap")] * len(pool)


def test_workers_write_into_the_callers_memory(pool: DevicePool) -> None:
    parts = pool.scatter(np.zeros(BIG))
    views = list(parts)
    pool.map(lambda p, k: p.fill(k), parts, 7.0)
    assert all((v == 7.0).all() for v in views)  # no copy either way


def test_returning_an_argument_returns_the_same_memory(pool: DevicePool) -> None:
    x = np.random.default_rng(7).random(BIG * len(pool))
    parts = pool.scatter(x)
    same = pool.map(lambda p: p, parts)
    halves = pool.map(lambda p: p[::2], parts)
    for i in range(len(pool)):
        assert np.shares_memory(same[i], parts[i])
        assert np.shares_memory(halves[i], parts[i])
    np.testing.assert_array_equal(
        halves.gather(), np.concatenate([c[::2] for c in np.array_split(x, len(pool))])
    )


def test_megabytes_computed_kilobytes_through_pipes(own_pool: DevicePool) -> None:
    x = np.random.default_rng(8).random(4_000_000)  # 32 MB
    parts = own_pool.scatter(x)
    before = own_pool.stats()
    y = own_pool.map(lambda p: np.sqrt(p) * 2, parts)
    quarter = len(x) // 4  # (a closure over x itself would pickle all 32 MB into the function)
    own_pool.allreduce(own_pool.map(lambda p: p[:quarter], y))
    after = own_pool.stats()
    moved = (
        after.pipe_bytes_sent
        + after.pipe_bytes_received
        - before.pipe_bytes_sent
        - before.pipe_bytes_received
    )
    assert moved < 64 * 1024, f"{moved} bytes crossed the pipes"
    assert after.shm_bytes_created - before.shm_bytes_created >= x.nbytes
    np.testing.assert_allclose(y.gather(), np.sqrt(x) * 2)


# -- failures --------------------------------------------------------------------------------------


def test_an_exception_in_fn_is_a_task_error_with_the_remote_traceback(pool: DevicePool) -> None:
    two_devices(pool)
    ranks = pool.scatter(np.arange(len(pool)))

    def explode(part: np.ndarray) -> np.ndarray:
        if part[0] == 1:
            raise KeyError("no such row")
        return part

    with pytest.raises(TaskError) as caught:
        pool.map(explode, ranks)
    error = caught.value
    assert isinstance(error, DomainOSError)
    assert error.rank == 1 and error.device == pool.devices[1] and error.device_index == pool.devices[1].index
    assert error.exc_type == "KeyError"
    assert str(pool.devices[1]) in str(error) and "KeyError" in str(error) and "no such row" in str(error)
    assert 'raise KeyError("no such row")' in error.remote_traceback
    assert "in explode" in error.remote_traceback
    assert isinstance(error.__cause__, RemoteTraceback)
    # a lambda's traceback names this file and shows the failing line
    with pytest.raises(TaskError, match="ZeroDivisionError") as caught:
        pool.map(lambda p: p / 0 if p.dtype.kind == "f" else 1 // 0, ranks)
    assert __file__ in caught.value.remote_traceback and "1 // 0" in caught.value.remote_traceback
    assert "also failed" in str(caught.value)
    with pytest.raises(TaskError, match="TypeError"):
        pool.reduce(lambda a, b: a + "text", pool.map(lambda p: 1, ranks))
    np.testing.assert_array_equal(pool.map(lambda p: p + 1, ranks).gather(), np.arange(len(pool)) + 1)


def test_a_dead_worker_is_a_task_error_and_is_replaced(own_pool: DevicePool) -> None:
    two_devices(own_pool)
    ranks = own_pool.scatter(np.arange(len(own_pool)))
    old = own_pool.map(os.getpid)[:]
    with pytest.raises(TaskError, match="died with exit code 7") as caught:
        own_pool.map(lambda p: os._exit(7) if p[0] == 1 else p, ranks)
    assert caught.value.rank == 1 and caught.value.worker_exit_code == 7
    assert caught.value.device == own_pool.devices[1]
    with pytest.raises(TaskError, match="SIGKILL"):
        own_pool.map(lambda p: os.kill(os.getpid(), signal.SIGKILL) if p[0] == 0 else p, ranks)
    # the pool still works, with fresh workers on the same cores
    x = np.arange(BIG, dtype=np.float64)
    np.testing.assert_array_equal(own_pool.map(lambda p: p * 2, own_pool.scatter(x)).gather(), x * 2)
    new = own_pool.map(os.getpid)[:]
    assert new[0] != old[0] and new[1] != old[1]
    assert own_pool.map(lambda: sorted(os.sched_getaffinity(0)))[:] == [[c] for c in CORES]
    assert own_pool.stats().workers_restarted == 2
    # parts that the dead workers had produced stay readable
    np.testing.assert_array_equal(ranks.gather(), np.arange(len(own_pool)))


def test_an_interrupted_call_leaves_a_working_pool(own_pool: DevicePool) -> None:
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        own_pool.map(lambda: time.sleep(60))  # the busy workers are replaced, not waited for
    timer.join()
    assert own_pool.map(lambda k: k + 1, 1)[:] == [2] * len(own_pool)
    assert own_pool.stats().workers_restarted == len(own_pool)


def test_calls_from_several_threads_are_serialised(pool: DevicePool) -> None:
    x = np.arange(5000.0)
    failures: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for _ in range(5):
                np.testing.assert_array_equal(
                    pool.map(lambda p, m: p * m, pool.scatter(x), k).gather(), x * k
                )
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_no_segment_left_after_close_even_after_errors_and_deaths() -> None:
    before = segments()
    pool = DevicePool("cpu")
    x = np.random.default_rng(9).random(BIG * 2)
    kept = pool.scatter(x)
    outputs = pool.map(lambda p: p * 2, kept)
    last = kept[-1][0]
    with pytest.raises(TaskError):  # one device returns a big result, the other fails
        pool.map(lambda p: p * 3 if p[0] != last else 1 / 0, kept)
    if len(pool) > 1:
        with pytest.raises(TaskError):
            pool.map(lambda p: os._exit(1) if p[0] == last else p + 1, kept)
    assert segments() - before, "parts in use are in /dev/shm while the pool is open"
    leftovers_open = segments() - before
    pool.close()
    pool.close()  # idempotent
    assert segments() - before == set(), f"left behind: {segments() - before}"
    assert leftovers_open
    assert outputs is not None


def test_dropping_a_sharded_unlinks_its_segment(own_pool: DevicePool) -> None:
    base = segments()
    parts = own_pool.scatter(np.ones(BIG))
    doubled = own_pool.map(lambda p: p * 2, parts)
    assert len(segments() - base) == 1 + len(own_pool)
    view = doubled[0]
    del parts, doubled
    gc.collect()
    assert segments() - base == set()
    assert (view == 2).all()  # an array already handed out stays valid after the unlink


def test_idle_workers_unmap_dropped_parts_at_once(
    own_pool: DevicePool, wait_for: Callable[..., None]
) -> None:
    def mapped_mib(pid: int) -> float:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return (
                sum(
                    int(line.split()[1])
                    for line in f
                    if line.startswith("Shared_") or line.startswith("Private_")
                )
                / 1024
            )

    pids = own_pool.map(os.getpid)[:]
    baseline = [mapped_mib(pid) for pid in pids]
    y = own_pool.map(lambda p: np.ones(p.shape[0]), own_pool.scatter(np.zeros(8_000_000)))  # 32 MB each
    assert all(mapped_mib(pid) > b + 20 for pid, b in zip(pids, baseline, strict=True))
    del y
    # no call follows: the pool tells the idle workers by itself
    wait_for(lambda: all(mapped_mib(pid) < b + 20 for pid, b in zip(pids, baseline, strict=True)), timeout=5)


def test_interpreter_exit_prints_no_warning_and_leaves_nothing() -> None:
    script = textwrap.dedent(
        """
        import os, numpy as np
        from dsdk.intra import DevicePool, TaskError
        pool = DevicePool("cpu")
        parts = pool.scatter(np.arange(300_000.0))
        doubled = pool.map(lambda p: p * 2, parts)
        for fn in (lambda p: 1 / 0, lambda p: os._exit(4)):
            try:
                pool.map(fn, parts)
            except TaskError as exc:
                print("failed:", type(exc).__name__)
        assert pool.reduce(np.add, pool.map(np.sum, doubled)) == 2 * np.arange(300_000.0).sum()
        second = DevicePool("cpu")
        kept = second.map(lambda: np.ones(100_000))  # never closed: cleaned up at exit
        print("pid", os.getpid())
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    pid = proc.stdout.split("pid")[-1].strip()
    assert proc.stdout.count("failed: TaskError") == 2
    assert not list(SHM.glob(f"dsdk-{pid}-*"))


# -- bad input -------------------------------------------------------------------------------------


def test_bad_input_is_invalid_argument_naming_what_is_wrong(pool: DevicePool, five: DevicePool) -> None:
    with pytest.raises(InvalidArgument, match="0-d"):
        pool.scatter(np.float64(3.0))
    with pytest.raises(InvalidArgument, match="dtype object"):
        pool.scatter(np.array([object(), object()]))
    with pytest.raises(InvalidArgument, match=f"asked for {len(CORES) + 1} devices"):
        DevicePool("cpu", devices=len(CORES) + 1)
    with pytest.raises(InvalidArgument, match="at least 1"):
        DevicePool("cpu", devices=0)
    with pytest.raises(InvalidArgument, match="device 9999 is not one of"):
        DevicePool("cpu", devices=[9999])
    with pytest.raises(InvalidArgument, match="twice"):
        DevicePool("cpu", devices=[CORES[0], CORES[0]])
    with pytest.raises(InvalidArgument, match="kind must be one of"):
        DevicePool("tpu")
    other = five.scatter(np.arange(10))
    with pytest.raises(InvalidArgument, match="another DevicePool"):
        pool.map(lambda p: p, other)
    with pytest.raises(InvalidArgument, match="another DevicePool"):
        pool.allreduce(other)
    with pytest.raises(InvalidArgument, match="must be a Sharded"):
        pool.reduce(np.add, [1, 2])  # type: ignore[arg-type]
    parts = pool.scatter(np.arange(20.0))
    with pytest.raises(InvalidArgument, match="op must be one of sum, max, min, prod; got 'mean'"):
        pool.allreduce(parts, op="mean")
    with pytest.raises(InvalidArgument, match="callable"):
        pool.map(42, parts)  # type: ignore[arg-type]
    lock = threading.Lock()
    with pytest.raises(InvalidArgument, match="cannot be pickled"):
        pool.map(lambda p: lock, parts)
    if len(pool) > 1:
        with pytest.raises(InvalidArgument, match="one shape"):
            pool.allreduce(pool.scatter(np.arange(2 * len(pool) + 1)))


def test_a_closed_pool_refuses_clearly() -> None:
    pool = DevicePool("cpu", devices=1)
    parts = pool.scatter(np.arange(100_000.0))
    view = parts[0]
    pool.close()
    assert pool.closed and "closed" in repr(pool)
    for call in (
        lambda: pool.scatter(np.arange(3)),
        lambda: pool.map(len, parts),
        lambda: parts[0],
        parts.gather,
    ):
        with pytest.raises(FailedPrecondition, match="closed"):
            call()
    assert view.sum() == np.arange(100_000.0).sum()  # arrays already handed out stay valid


def _cuda_reason() -> str:
    if importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed"
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return "no CUDA device"
    return ""


def test_cuda_where_there_is_none_is_a_failed_precondition() -> None:
    if not _cuda_reason():
        pytest.skip("this machine has CUDA")
    with pytest.raises(FailedPrecondition, match="no CUDA device can be used"):
        DevicePool("cuda")
    with DevicePool(devices=1) as pool:  # auto falls back to the CPU
        assert pool.kind == "cpu"


# -- CUDA ------------------------------------------------------------------------------------------


@pytest.mark.skipif(bool(_cuda_reason()), reason=_cuda_reason() or "CUDA present")
def test_cuda_pool_matches_numpy() -> None:
    import torch

    with DevicePool("cuda") as pool:
        assert pool.kind == "cuda" and len(pool) == torch.cuda.device_count()
        x = np.random.default_rng(10).random((len(pool) * 1000 + 3, 8))
        parts = pool.scatter(x)
        assert [parts.local(i).device for i in range(len(pool))] == [
            torch.device("cuda", d.index) for d in pool.devices
        ]
        np.testing.assert_allclose(pool.map(lambda t: t * 2, parts).gather(), x * 2)
        sums = pool.map(lambda t: t.sum(dim=0), parts)
        np.testing.assert_allclose(pool.reduce(torch.add, sums), x.sum(axis=0))
        for op, ufunc in OPS.items():
            if op == "prod":
                continue
            expected = functools.reduce(ufunc, [c.sum(axis=0) for c in np.array_split(x, len(pool))])
            for part in pool.allreduce(sums, op=op):
                np.testing.assert_allclose(part, expected)
        vals = pool.map(lambda t, k: float(t.sum()) * k, parts, 3)
        assert vals[:] == pytest.approx([float(c.sum()) * 3 for c in np.array_split(x, len(pool))])
        with pytest.raises(TaskError, match="ZeroDivisionError") as caught:
            pool.map(lambda t: 1 / 0, parts)
        assert "1 / 0" in caught.value.remote_traceback
