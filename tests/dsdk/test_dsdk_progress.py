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
