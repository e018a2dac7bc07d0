"""Task checkpoints (:mod:`dsdk.checkpoint`): what a task saves, a later attempt of the task finds;
a crash never leaves a checkpoint that ``latest()`` returns; arrays come back mapped, read-only."""

from __future__ import annotations

import errno
import logging
import mmap
import os
import pathlib
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import numpy as np
import pytest

from domainos.clock import FakeClock
from dsdk import _shards, checkpoint
from dsdk.checkpoint import Checkpoint, Checkpointer
from dsdk.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, Unavailable

pytestmark = pytest.mark.timeout(120)

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _task_env(root: pathlib.Path, job: str = "j-abc", task: int = 3, attempt: int = 0) -> dict[str, str]:
    return {
        "DOMAINOS_CHECKPOINT_DIR": str(root),
        "DOMAINOS_JOB_ID": job,
        "DOMAINOS_TASK_INDEX": str(task),
        "DOMAINOS_TASK_ATTEMPT": str(attempt),
    }


def _owner(arr: Any) -> Any:
    """The object at the end of an array's ``base`` chain (through memoryviews)."""
    obj = arr
    for _ in range(20):
        if isinstance(obj, np.ndarray):
            if obj.base is None:
                return obj
            obj = obj.base
        elif isinstance(obj, memoryview):
            obj = obj.obj
        else:
            return obj
    return obj


def _ck(tmp_path: pathlib.Path, **kw: Any) -> Checkpointer:
    kw.setdefault("job_id", "j-1")
    kw.setdefault("task", 0)
    return Checkpointer(tmp_path, **kw)


# -- save / latest / keep ------------------------------------------------------------------------


def test_latest_is_none_before_any_save_and_the_newest_after(tmp_path: pathlib.Path) -> None:
    clock = FakeClock(1_700_000_000.0)
    env = _task_env(tmp_path, attempt=2)
    ck = Checkpointer(clock=clock, environ=env)
    assert ck.latest() is None
    for step in (0, 10, 20, 30):
        clock.advance(60)
        path = ck.save(step, {"step": step, "loss": 1.0 / (step + 1)})
        assert path == str(tmp_path / "j-abc" / "3" / "default" / str(step))
    got = ck.latest()
    assert isinstance(got, Checkpoint)
    assert got.step == 30 and got.state == {"step": 30, "loss": 1.0 / 31}
    assert got.attempt == 2 and got.saved_at == 1_700_000_000.0 + 240
    assert got.path == str(tmp_path / "j-abc" / "3" / "default" / "30")
    # keep=2 (the default): only the two newest remain on disk, nothing else.
    assert sorted(os.listdir(ck.directory)) == ["20", "30"]
    assert ck.steps() == [20, 30]
    assert ck.load(20).state["step"] == 20
    with pytest.raises(NotFound, match="no checkpoint of step 10"):
        ck.load(10)


def test_keep_and_names_are_separate_series(tmp_path: pathlib.Path) -> None:
    a = _ck(tmp_path, name="model", keep=3)
    b = _ck(tmp_path, name="data-loader", keep=1)
    for step in range(5):
        a.save(step, ("model", step))
        b.save(step, ("loader", step))
    assert a.steps() == [2, 3, 4] and b.steps() == [4]
    assert a.latest() == Checkpoint(4, ("model", 4), a.load(4).saved_at, 0, a.step_dir(4))
    latest_b = b.latest()
    assert latest_b is not None and latest_b.state == ("loader", 4)


def test_root_comes_from_the_environment_and_the_task_from_its_context(tmp_path: pathlib.Path) -> None:
    env = _task_env(tmp_path / "ckpt", job="j-0123456789abcdef", task=7, attempt=1)
    ck = Checkpointer(name="opt", environ=env)
    assert (ck.job_id, ck.task, ck.attempt) == ("j-0123456789abcdef", 7, 1)
    ck.save(5, b"x")
    assert (tmp_path / "ckpt" / "j-0123456789abcdef" / "7" / "opt" / "5" / checkpoint.MARKER).is_file()


def test_missing_root_says_what_to_set(tmp_path: pathlib.Path) -> None:
    env = _task_env(tmp_path)
    del env["DOMAINOS_CHECKPOINT_DIR"]
    with pytest.raises(FailedPrecondition) as info:
        Checkpointer(environ=env)
    text = str(info.value)
    assert "DOMAINOS_CHECKPOINT_DIR is not set" in text and "Checkpointer(root=...)" in text
    # Outside a task, without job_id/task: says so, and how to name them.
    with pytest.raises(FailedPrecondition, match=r"DOMAINOS_JOB_ID is not set.*job_id=\.\.\., task=\.\.\."):
        Checkpointer(tmp_path, environ={})


@pytest.mark.parametrize(
    ("kwargs", "fld", "text"),
    [
        ({"name": "../etc"}, "name", "not a valid checkpoint name"),
        ({"name": ""}, "name", "not a valid checkpoint name"),
        ({"job_id": "a/b"}, "job_id", "not a valid job id"),
        ({"task": -1}, "task", "must be >= 0"),
        ({"task": True}, "task", "must be an int"),
        ({"keep": 0}, "keep", "keep must be an int >= 1"),
    ],
)
def test_bad_arguments_are_refused_naming_the_field(
    tmp_path: pathlib.Path, kwargs: dict[str, Any], fld: str, text: str
) -> None:
    with pytest.raises(InvalidArgument, match=text) as info:
        _ck(tmp_path, **kwargs)
    assert info.value.field == fld


def test_steps_must_be_ints_that_go_forward(tmp_path: pathlib.Path) -> None:
    ck = _ck(tmp_path)
    with pytest.raises(InvalidArgument, match="step must be >= 0, got -1") as info:
        ck.save(-1, 0)
    assert info.value.field == "step"
    with pytest.raises(InvalidArgument, match="must be an int, got float"):
        ck.save(1.5, 0)  # type: ignore[arg-type]
    ck.save(10, 0)
    with pytest.raises(InvalidArgument, match="step 10 is not after step 10"):
        ck.save(10, 0)
    with pytest.raises(InvalidArgument, match="step 7 is not after step 10"):
        ck.save_async(7, 0)
    # Another Checkpointer of the same task sees the steps on disk too.
    other = _ck(tmp_path)
    with pytest.raises(InvalidArgument, match="step 9 is not after step 10"):
        other.save(9, 0)
    other.save(11, 0)
    assert other.steps() == [10, 11]


def test_a_state_that_cannot_be_pickled_is_refused_at_the_call(tmp_path: pathlib.Path) -> None:
    ck = _ck(tmp_path)
    lock = threading.Lock()
    with pytest.raises(InvalidArgument, match="cannot be pickled") as info:
        ck.save_async(1, {"lock": lock})
    assert info.value.field == "state"
    with pytest.raises(InvalidArgument, match="cannot be pickled"):
        ck.save(1, {"lock": lock})
    ck.save(1, {"ok": True})  # the refused saves used no step
    assert ck.steps() == [1]


# -- arrays ----------------------------------------------------------------------------------------


def test_numpy_arrays_round_trip_mapped_read_only(tmp_path: pathlib.Path) -> None:
    ck = _ck(tmp_path)
    weights = np.arange(250_000, dtype=np.float32).reshape(500, 500)
    state: dict[str, Any] = {
        "weights": weights,
        "fortran": np.asfortranarray(weights[:100, :200]),
        "strided": weights[::2, ::3],  # not contiguous
        "ints": np.arange(10, dtype=np.int64),
        "empty": np.zeros(0),
        "raw": bytearray(b"abc" * 1000),
        "meta": {"lr": 3e-4, "tokens": 123_456_789},
    }
    ck.save(0, state)
    got = ck.latest()
    assert got is not None
    for key in ("weights", "fortran", "strided", "ints", "empty"):
        assert got.state[key].dtype == state[key].dtype and got.state[key].shape == state[key].shape, key
        assert np.array_equal(got.state[key], state[key]), key
    assert got.state["fortran"].flags.f_contiguous
    assert bytes(got.state["raw"]) == b"abc" * 1000 and got.state["meta"] == state["meta"]
    w = got.state["weights"]
    assert w.flags.writeable is False
    with pytest.raises(ValueError, match="read-only"):
        w[0, 0] = 1.0
    assert isinstance(_owner(w), mmap.mmap)  # mapped from the checkpoint's file, not copied in
    assert (tmp_path / "j-1" / "0" / "default" / "0" / "buffer-0").stat().st_size == weights.nbytes


# -- atomicity -------------------------------------------------------------------------------------


def test_leftovers_of_crashed_writes_are_ignored_and_cleaned_up(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    ck = _ck(tmp_path)
    ck.save(10, {"step": 10})
    d = pathlib.Path(ck.directory)
    # A write that died before its rename: a temporary directory with part of a checkpoint.
    (d / ".20.tmp-0123456789ab").mkdir()
    (d / ".20.tmp-0123456789ab" / "object.pkl").write_bytes(b"\x80\x05partial")
    # One that died after the rename, before its commit marker.
    (d / "30").mkdir()
    (d / "30" / "object.pkl").write_bytes(b"\x80\x05partial")
    # One whose file was truncated after it was committed (the marker gives the size).
    ck.save(40, {"big": np.ones(1000)})
    with open(d / "40" / "buffer-0", "r+b") as f:
        f.truncate(100)
    with caplog.at_level(logging.WARNING, logger="dsdk._checkpoint"):
        got = ck.latest()
    assert got is not None and got.step == 10 and got.state == {"step": 10}
    assert any("40" in r.getMessage() and "buffer-0 has 100 bytes" in r.getMessage() for r in caplog.records)
    # The task resumes from step 10: the corrupt 40 neither blocks step 20 nor stays.
    ck.save(20, {"step": 20})
    assert ck.steps() == [10, 20] and "40" not in os.listdir(d)
    # A later save removes what the crashed writes of older steps left.
    ck.save(50, {"step": 50})
    assert sorted(os.listdir(d)) == ["20", "50"]
    latest = ck.latest()
    assert latest is not None and latest.step == 50


def test_a_process_killed_while_writing_leaves_the_previous_checkpoint(tmp_path: pathlib.Path) -> None:
    """A real crash at the worst moment: the files are written and renamed into place, and the
    process dies (os._exit at its first fsync) before the commit marker exists."""
    script = textwrap.dedent(
        """
        import os, sys
        import numpy as np
        from dsdk.checkpoint import Checkpointer
        ck = Checkpointer(sys.argv[1], job_id="j-1", task=0)
        ck.save(1, {"w": np.full(1 << 20, 1.0)})
        os.fsync = lambda fd: os._exit(9)      # the node "crashes" while the next one is written
        ck.save(2, {"w": np.full(1 << 20, 2.0)})
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 9, proc.stderr
    ck = _ck(tmp_path)
    assert os.path.isdir(ck.step_dir(2))  # there, but not committed
    got = ck.latest()
    assert got is not None and got.step == 1 and float(got.state["w"][0]) == 1.0


# -- a rescheduled attempt -------------------------------------------------------------------------

_TRAIN = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from dsdk import checkpoint
    crash_at = int(sys.argv[1])
    ck = checkpoint.Checkpointer()   # root, job and task from the environment the agent gives
    restored = ck.latest()
    if restored is None:
        start, w = 0, np.zeros(4)
        print("fresh start", flush=True)
    else:
        start, w = restored.step + 1, np.array(restored.state["w"])
        print(f"resumed from step {restored.step} saved by attempt {restored.attempt}", flush=True)
    for step in range(start, 100):
        w += step                                   # the "training"
        if step == crash_at:
            os._exit(137)                           # the node dies mid-run
        if step % 10 == 0:
            ck.save(step, {"w": w, "step": step})
    ck.wait()
    print("finished", float(w.sum()), flush=True)
    """
)


def test_a_rescheduled_attempt_resumes_from_what_the_first_one_saved(tmp_path: pathlib.Path) -> None:
    def attempt(n: int, crash_at: int) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **_task_env(tmp_path, job="j-train", task=5, attempt=n)}
        return subprocess.run(
            [sys.executable, "-c", _TRAIN, str(crash_at)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    first = attempt(0, crash_at=57)
    assert first.returncode == 137, first.stderr
    assert first.stdout.splitlines() == ["fresh start"]
    second = attempt(1, crash_at=-1)
    assert second.returncode == 0, second.stderr
    lines = second.stdout.splitlines()
    assert lines[0] == "resumed from step 50 saved by attempt 0"
    # The result is the one an uninterrupted run gets: sum over steps of 4 * step.
    assert lines[1] == f"finished {float(4 * sum(range(100)))}"
    ck = Checkpointer(tmp_path, job_id="j-train", task=5)
    latest = ck.latest()
    assert latest is not None and (latest.step, latest.attempt) == (90, 1)
    assert ck.steps() == [80, 90]
    # Another task index of the same job has its own checkpoints (none here).
    assert Checkpointer(tmp_path, job_id="j-train", task=4).latest() is None


# -- save_async --------------------------------------------------------------------------------------


def _slow_storage(monkeypatch: pytest.MonkeyPatch, delay: float) -> list[int]:
    """Make every write take ``delay`` seconds longer (slow shared storage); returns the steps written."""
    written: list[int] = []
    real = _shards.write_shard_bytes

    def slow(base: str, dataset: str, shard: int, header: bytes, buffers: list[Any]) -> int:
        time.sleep(delay)
        written.append(shard)
        return int(real(base, dataset, shard, header, buffers))

    monkeypatch.setattr(_shards, "write_shard_bytes", slow)
    return written


def test_save_async_blocks_only_for_the_snapshot(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = _slow_storage(monkeypatch, 2.0)  # shared storage: the write takes >= 2 s
    ck = _ck(tmp_path)
    w = np.ones(8 << 20)  # 64 MiB: the snapshot copies it
    t0 = time.monotonic()
    ck.save_async(1, {"w": w})
    blocked = time.monotonic() - t0
    w[:] = 7.0  # the training goes on changing its state: the snapshot was taken before
    assert blocked < 1.0, f"save_async blocked {blocked:.3f}s while the write takes >= 2 s"
    assert ck.latest() is None  # not committed yet
    ck.wait()
    assert time.monotonic() - t0 >= 2.0 and written == [1]
    got = ck.latest()
    assert got is not None and got.step == 1 and float(got.state["w"].max()) == 1.0
    # A synchronous save of the same state blocks for the whole write.
    t0 = time.monotonic()
    ck.save(2, {"w": w})
    assert time.monotonic() - t0 >= 2.0


def test_one_write_in_flight_at_a_time(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = _slow_storage(monkeypatch, 0.5)
    ck = _ck(tmp_path)
    t0 = time.monotonic()
    ck.save_async(1, "one")
    ck.save_async(2, "two")  # waits for the first write before it snapshots
    assert time.monotonic() - t0 >= 0.5
    assert written == [1] and ck.steps() == [1]
    ck.wait()
    assert written == [1, 2] and ck.steps() == [1, 2]


def test_concurrent_saves_from_threads_never_interleave(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = _slow_storage(monkeypatch, 0.05)
    ck = _ck(tmp_path, keep=100)
    refused: list[int] = []
    other: list[BaseException] = []

    def saver(step: int) -> None:
        try:
            ck.save_async(step, np.full(1000, step))
        except InvalidArgument:
            refused.append(step)  # a higher step was saved first: steps go forward
        except BaseException as exc:
            other.append(exc)

    threads = [threading.Thread(target=saver, args=(s,)) for s in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ck.wait()
    assert not other
    assert sorted(written + refused) == list(range(1, 9))
    assert written == sorted(written)  # committed in order, one at a time
    assert ck.steps() == written
    for step in written:  # every committed one is whole
        assert np.array_equal(ck.load(step).state, np.full(1000, step))
    assert all(n.isdigit() for n in os.listdir(ck.directory))  # no leftovers


def test_a_failed_background_write_is_raised_by_the_next_call(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ck = _ck(tmp_path)
    ck.save(1, "fine")
    real = _shards.write_shard_bytes

    def full(*args: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_shards, "write_shard_bytes", full)
    ck.save_async(2, "lost")  # returns: the write happens later
    with pytest.raises(ResourceExhausted, match=r"checkpoint step 2 could not be written .*No space left"):
        ck.save_async(3, "next")

    # Raised once; step 2 was never committed, so it may be saved again.
    def broken(*args: Any) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(_shards, "write_shard_bytes", broken)
    ck.save_async(2, "again")
    with pytest.raises(Unavailable, match=r"checkpoint step 2 could not be written .*Input/output error"):
        ck.wait()
    ck.wait()  # nothing left to raise
    monkeypatch.setattr(_shards, "write_shard_bytes", real)
    ck.save(2, "saved")
    latest = ck.latest()
    assert latest is not None and (latest.step, latest.state) == (2, "saved")
    assert ck.steps() == [1, 2]


def test_the_context_manager_flushes(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _slow_storage(monkeypatch, 0.3)
    with _ck(tmp_path) as ck:
        ck.save_async(1, "x")
    assert ck.steps() == [1]
