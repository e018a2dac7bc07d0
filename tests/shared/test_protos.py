"""Generated code must match proto/: regenerate into a temp dir and compare byte for byte."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_generated_code_has_not_drifted(tmp_path: pathlib.Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)], check=True
    )

    def generated(root: pathlib.Path) -> list[pathlib.Path]:
        # Source files only: bytecode caches (__pycache__) come and go with imports.
        return sorted(
            p.relative_to(root)
            for p in (root / "domainos").rglob("*_pb2*.py*")
            if p.suffix in (".py", ".pyi") and "__pycache__" not in p.parts
        )

    fresh = generated(tmp_path)
    committed = generated(ROOT)
    assert fresh == committed, "the set of generated files differs: run `make gen-protos`"
    for rel in fresh:
        assert (tmp_path / rel).read_bytes() == (ROOT / rel).read_bytes(), (
            f"{rel} differs from what proto/ generates: run `make gen-protos` and commit"
        )


def test_generated_code_imports_under_project_name() -> None:
    from domainos.api.v1 import agent_pb2, master_pb2_grpc, subdomain_pb2

    assert agent_pb2.DESCRIPTOR.package == "domainos.api.v1"
    assert subdomain_pb2.DESCRIPTOR.package == "domainos.api.v1"
    assert hasattr(master_pb2_grpc, "DomainControlStub")
