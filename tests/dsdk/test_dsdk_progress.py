"""A task's progress file: written by ``dsdk.report_progress`` / ``note_checkpoint``, read by the agent."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import dsdk
from dsdk import _taskprogress
from dsdk.errors import InvalidArgument
from node_agent._progress import ProgressFile, parse


def test_progress_is_written_throttled_and_read_back_by_the_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "progress.json"
    monkeypatch.setenv(_taskprogress.PROGRESS_ENV, str(path))
    monkeypatch.setattr(_taskprogress, "_last_write", 0.0)
    fresh = {"step": 0, "total_steps": 0, "step_at": 0.0, "checkpoint_step": -1, "checkpoint_at": 0.0}
    monkeypatch.setattr(_taskprogress, "_state", fresh)  # this process's earlier tests wrote some
    reader = ProgressFile(path)
    assert reader.poll() is None  # nothing yet
    assert dsdk.report_progress(10, 100)
    first = reader.poll()
    assert first is not None and (first.step, first.total_steps, first.checkpoint_step) == (10, 100, -1)
    assert reader.poll() is None  # unchanged: no read
    assert not dsdk.report_progress(11, 100)  # within the interval: kept, not written
    dsdk.note_checkpoint(11, saved_at=1234.5)  # a checkpoint is written at once, with the latest step
    got = reader.poll()
    assert got is not None and (got.step, got.checkpoint_step, got.checkpoint_at) == (11, 11, 1234.5)
    assert dsdk.report_progress(12, force=True)
    got = reader.poll()
    assert got is not None and got.step == 12 and got.checkpoint_step == 11


def test_outside_a_task_it_is_a_no_op_and_bad_steps_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_taskprogress.PROGRESS_ENV, raising=False)
    assert not dsdk.report_progress(1, force=True)
    with pytest.raises(InvalidArgument, match="step: must be a whole number >= 0"):
        dsdk.report_progress(-1)
    with pytest.raises(InvalidArgument, match="total"):
        dsdk.report_progress(1, total=1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [b"[]", b"{", b'{"step": -3}', b'{"step": "many"}', b'{"step_at": "now"}', b'{"checkpoint_at": -1}'],
)
def test_a_mangled_file_is_ignored(tmp_path: Path, text: bytes) -> None:
    with pytest.raises(ValueError):
        parse(text)
    path = tmp_path / "progress.json"
    path.write_bytes(text)
    assert ProgressFile(path).poll() is None


def test_an_oversize_file_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "progress.json"
    path.write_text(json.dumps({"step": 1, "pad": "x" * 5000}))
    assert ProgressFile(path).poll() is None
    os.unlink(path)
    assert ProgressFile(path).poll() is None


def test_a_tasks_own_checkpoint_is_recorded_in_its_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dsdk.checkpoint import Checkpointer

    path = tmp_path / "progress.json"
    fresh = {"step": 0, "total_steps": 0, "step_at": 0.0, "checkpoint_step": -1, "checkpoint_at": 0.0}
    monkeypatch.setattr(_taskprogress, "_state", fresh)
    env = {
        _taskprogress.PROGRESS_ENV: str(path),
        "DOMAINOS_CHECKPOINT_DIR": str(tmp_path / "ck"),
        "DOMAINOS_JOB_ID": "j-1",
        "DOMAINOS_TASK_INDEX": "2",
        "DOMAINOS_TASK_ATTEMPT": "0",
        "DOMAINOS_MASTER": "127.0.0.1:1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "ck").mkdir()
    ck = Checkpointer(fsync=False)
    ck.save(3, {"w": [1, 2, 3]})
    got = ProgressFile(path).poll()
    assert got is not None and got.checkpoint_step == 3 and got.checkpoint_at > 0
    # Someone else's checkpoints (another task's, a driver's) are not this task's progress.
    Checkpointer(job_id="other", task=0, fsync=False).save(9, 1)
    assert json.loads(path.read_text())["checkpoint_step"] == 3
