"""Dataset shards on a node's local storage (:mod:`dsdk._shards`): what is written is read back,
mapped and read-only; replacement is atomic; the node's listing sees only complete shards."""

from __future__ import annotations

import mmap
import os
import pathlib
from typing import Any

import numpy as np
import pytest

from dsdk import _shards
from dsdk.errors import InvalidArgument, NotFound

pytestmark = pytest.mark.timeout(60)


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


def _files(path: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _leftovers(ds_dir: pathlib.Path) -> list[str]:
    return [n for n in os.listdir(ds_dir) if ".old-" in n or ".tmp-" in n]


def test_numpy_shard_reads_back_equal_read_only_and_mapped(tmp_path: pathlib.Path) -> None:
    base = str(tmp_path)
    arr = np.arange(1_000_000, dtype=np.float32).reshape(1000, 1000)
    size = _shards.write_shard(base, "corpus", 3, arr)
    assert size >= arr.nbytes
    files = sorted(os.listdir(tmp_path / "corpus" / "3"))
    assert files == ["buffer-0", _shards.OBJECT_FILE]
    assert (tmp_path / "corpus" / "3" / "buffer-0").stat().st_size == arr.nbytes  # stored as it is

    got = _shards.read_shard(base, "corpus", 3)
    assert got.dtype == arr.dtype and got.shape == arr.shape
    assert np.array_equal(got, arr)
    assert got.flags.writeable is False
    with pytest.raises(ValueError, match="read-only"):
        got[0, 0] = 1.0
    assert isinstance(_owner(got), mmap.mmap)  # mapped from the file, not copied into the process


def test_several_arrays_and_a_strided_one_in_one_shard(tmp_path: pathlib.Path) -> None:
    base = str(tmp_path)
    grid = np.arange(400, dtype=np.int64).reshape(20, 20)
    value = {
        "x": np.linspace(0, 1, 5000),
        "labels": np.arange(5000, dtype=np.uint8),
        "strided": grid[::2, ::3],
        "fortran": np.asfortranarray(grid),
        "empty": np.zeros((0, 3), dtype=np.float64),
        "meta": {"source": "unit", "rows": 5000},
    }
    _shards.write_shard(base, "mixed", 0, value)
    got = _shards.read_shard(base, "mixed", 0)
    assert set(got) == set(value)
    for k in ("x", "labels", "strided", "fortran", "empty"):
        assert got[k].dtype == value[k].dtype, k
        assert np.array_equal(got[k], value[k]), k
    assert got["meta"] == {"source": "unit", "rows": 5000}
    assert not got["x"].flags.writeable


def test_plain_python_objects_round_trip(tmp_path: pathlib.Path) -> None:
    base = str(tmp_path)
    value = {"words": ["a", "b", "ç"], "n": 3, "nested": (1, 2.5, None), "blob": b"\x00\x01" * 10}
    _shards.write_shard(base, "objs", 0, value)
    _shards.write_shard(base, "objs", 1, "just a string")
    _shards.write_shard(base, "objs", 2, bytearray(b"mutable bytes"))
    assert _shards.read_shard(base, "objs", 0) == value
    assert _shards.read_shard(base, "objs", 1) == "just a string"
    assert bytes(_shards.read_shard(base, "objs", 2)) == b"mutable bytes"


def test_replacing_a_shard_reads_the_new_value_and_leaves_nothing_behind(tmp_path: pathlib.Path) -> None:
    base = str(tmp_path)
    first = np.full(10_000, 1.0)
    _shards.write_shard(base, "ds", 0, first)
    held = _shards.read_shard(base, "ds", 0)  # a reader still mapping the old shard
    for i in range(2, 5):
        _shards.write_shard(base, "ds", 0, np.full(10_000, float(i)))
        assert np.array_equal(_shards.read_shard(base, "ds", 0), np.full(10_000, float(i)))
    _shards.write_shard(base, "ds", 0, {"now": "an object"})
    assert _shards.read_shard(base, "ds", 0) == {"now": "an object"}
    # No array buffer left from earlier versions (the new shard has no buffers).
    assert sorted(os.listdir(tmp_path / "ds" / "0")) == [_shards.OBJECT_FILE]
    assert _leftovers(tmp_path / "ds") == []
    assert sorted(os.listdir(tmp_path / "ds")) == ["0"]
    assert np.array_equal(held, first)  # the old mapping keeps its data after the replacement


def test_local_shards_lists_complete_shards_with_sizes_only(tmp_path: pathlib.Path) -> None:
    base = str(tmp_path)
    sizes = {
        i: _shards.write_shard(base, "ds", i, np.arange(1000 * (i + 1), dtype=np.int32)) for i in range(3)
    }
    ds = tmp_path / "ds"
    # A shard being written, a shard directory with no object file, and unrelated names.
    (ds / ".7.tmp-abc123").mkdir()
    (ds / ".7.tmp-abc123" / _shards.OBJECT_FILE).write_bytes(b"partial")
    (ds / "8").mkdir()
    (ds / "8" / "buffer-0").write_bytes(b"no object file yet")
    (ds / "notes").mkdir()
    (ds / "notes" / _shards.OBJECT_FILE).write_bytes(b"x")
    (ds / "4.old-deadbeef").mkdir()
    (ds / "4.old-deadbeef" / _shards.OBJECT_FILE).write_bytes(b"x")
    (ds / "README").write_text("not a shard")

    listed = _shards.local_shards(base, "ds")
    assert listed == sizes  # the stored size, as write_shard reported it
    assert listed[2] > listed[1] > listed[0] >= 4000
    for shard, size in listed.items():
        assert size == sum(p.stat().st_size for p in (ds / str(shard)).iterdir())
    assert _shards.local_shards(base, "absent") == {}


def test_read_shard_of_a_missing_shard_names_it(tmp_path: pathlib.Path) -> None:
    base = str(tmp_path)
    with pytest.raises(NotFound, match="shard 5 of dataset corpus is not on this node") as info:
        _shards.read_shard(base, "corpus", 5)
    assert info.value.field == "shard"
    _shards.write_shard(base, "corpus", 0, [1, 2])
    with pytest.raises(NotFound, match="shard 1 of dataset corpus"):
        _shards.read_shard(base, "corpus", 1)
    with pytest.raises(NotFound, match="shard 9 of dataset corpus"):
        _shards.read_shard_bytes(base, "corpus", 9)


@pytest.mark.parametrize(
    "name", ["", ".hidden", "-dash", "a/b", "../escape", "with space", "x" * 64, "é", 5, None]
)
def test_invalid_dataset_names_are_refused_with_the_field(tmp_path: pathlib.Path, name: Any) -> None:
    base = str(tmp_path)
    with pytest.raises(InvalidArgument, match="is not a valid dataset name") as info:
        _shards.write_shard(base, name, 0, 1)
    assert info.value.field == "name"
    with pytest.raises(InvalidArgument) as info:
        _shards.check_dataset_name(name, "dataset")
    assert info.value.field == "dataset"
    for fn in (_shards.read_shard, _shards.read_shard_bytes):
        with pytest.raises(InvalidArgument):
            fn(base, name, 0)
    with pytest.raises(InvalidArgument):
        _shards.local_shards(base, name)
    with pytest.raises(InvalidArgument):
        _shards.delete_dataset(base, name)
    assert os.listdir(tmp_path) == []  # nothing was written anywhere


@pytest.mark.parametrize("name", ["a", "corpus", "Image-Net_2012.v2", "0", "x" * 63])
def test_valid_dataset_names(name: str) -> None:
    assert _shards.check_dataset_name(name) == name


def test_stored_form_copies_a_shard_exactly(tmp_path: pathlib.Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    value = {"a": np.arange(50_000, dtype=np.float64), "b": np.arange(7, dtype=np.int16), "tag": "t"}
    size = _shards.write_shard(str(src), "ds", 4, value)
    header, buffers = _shards.read_shard_bytes(str(src), "ds", 4)
    assert len(buffers) == 2
    assert len(header) + sum(len(b) for b in buffers) == size
    copied = _shards.write_shard_bytes(str(dst), "ds", 4, header, buffers)
    assert copied == size
    assert _files(dst / "ds" / "4") == _files(src / "ds" / "4")
    got = _shards.read_shard(str(dst), "ds", 4)
    assert np.array_equal(got["a"], value["a"]) and np.array_equal(got["b"], value["b"])
    assert got["tag"] == "t"
    assert _shards.local_shards(str(dst), "ds") == {4: size}
    # Writing the stored form over an existing shard replaces it atomically too.
    _shards.write_shard(str(dst), "ds", 5, "old")
    h2, b2 = _shards.read_shard_bytes(str(src), "ds", 4)
    _shards.write_shard_bytes(str(dst), "ds", 5, h2, b2)
    assert np.array_equal(_shards.read_shard(str(dst), "ds", 5)["a"], value["a"])
    assert _leftovers(dst / "ds") == []


def test_delete_dataset_counts_and_removes(tmp_path: pathlib.Path) -> None:
    base = str(tmp_path)
    for i in range(4):
        _shards.write_shard(base, "gone", i, i)
    _shards.write_shard(base, "kept", 0, "stays")
    assert _shards.delete_dataset(base, "gone") == 4
    assert not (tmp_path / "gone").exists()
    assert _shards.local_shards(base, "gone") == {}
    assert _shards.read_shard(base, "kept", 0) == "stays"
    assert _shards.delete_dataset(base, "gone") == 0
    assert _shards.delete_dataset(base, "never-existed") == 0


def test_a_failed_write_leaves_no_partial_shard(tmp_path: pathlib.Path) -> None:
    base = str(tmp_path)

    class Unpicklable:
        def __reduce__(self) -> Any:
            raise TypeError("refuses to be pickled")

    _shards.write_shard(base, "ds", 0, "good")
    with pytest.raises(TypeError, match="refuses to be pickled"):
        _shards.write_shard(base, "ds", 0, Unpicklable())
    assert _shards.read_shard(base, "ds", 0) == "good"
    assert sorted(os.listdir(tmp_path / "ds")) == ["0"]


def test_a_trailing_newline_is_not_a_valid_dataset_name(tmp_path: pathlib.Path) -> None:
    with pytest.raises(InvalidArgument):
        _shards.check_dataset_name("corpus\n")
