"""The entry point and the configuration."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from domainos.api.v1 import master_pb2, master_pb2_grpc
from domainos.config import load
from domainos.errors import ConfigError
from master_domain import MasterConfig
from master_domain.__main__ import main

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_valid() -> None:
    cfg = MasterConfig(insecure=True)
    cfg.validate()
    assert (cfg.id, cfg.listen, cfg.store, cfg.place_timeout_s, cfg.subdomain_lost_grace_s) == (
        "master-1",
        "127.0.0.1:7070",
        "memory://",
        15.0,
        30.0,
    )


@pytest.mark.parametrize(
    ("field", "value", "text"),
    [
        ("listen", "nowhere", "listen: expected HOST:PORT"),
        ("store", "redis://x", "store: unsupported store URL"),
        ("place_timeout_s", 0, "place_timeout_s: must be greater than 0"),
        ("subdomain_lost_grace_s", -1, "subdomain_lost_grace_s: must be between 0 and 86400"),
        ("log_format", "xml", "log_format: unknown format"),
        ("id", "bad id", "id: 'bad id' is not a valid id"),
    ],
)
def test_bad_fields_name_the_field(field: str, value: object, text: str) -> None:
    with pytest.raises(ConfigError, match=text):
        load(MasterConfig, None, {field: value})


def test_file_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "master.yaml"
    path.write_text("id: m-file\nplace_timeout_s: 3\nstore: memory://\ninsecure: true\n")
    cfg = load(MasterConfig, str(path), {"id": "m-flag", "listen": None})
    assert (cfg.id, cfg.place_timeout_s, cfg.listen) == ("m-flag", 3.0, "127.0.0.1:7070")


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (["--listen", "nope"], "error: listen: expected HOST:PORT"),
        (["--set", "bogus=1"], "error: unknown field bogus"),
        (["--config", "/nonexistent/master.yaml"], "error: file not found"),
        (["--set", "max_jobs_listed=0"], "error: max_jobs_listed: must be between 1 and 100000"),
    ],
)
def test_bad_config_exits_2_with_a_message(
    argv: list[str], text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(text) and "Traceback" not in err


def test_daemon_serves_writes_ready_file_and_stops_on_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "master_domain",
            "--id",
            "m-proc",
            "--listen",
            "127.0.0.1:0",
            "--store",
            f"sqlite:///{tmp_path}/master.db",
            "--metrics-listen",
            "",
            "--ready-file",
            str(ready),
            "--log-format",
            "text",
            "--insecure",
            "--set",
            f"bootstrap_token_file={tmp_path}/admin.token",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline, "no ready file"
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        assert info["id"] == "m-proc" and info["store"].startswith("sqlite:///")
        with grpc.insecure_channel(info["listen"]) as channel:
            stub = master_pb2_grpc.DomainControlStub(channel)
            token = (tmp_path / "admin.token").read_text().strip()
            cluster = stub.GetClusterInfo(
                master_pb2.GetClusterInfoRequest(),
                timeout=5,
                metadata=(("authorization", f"Bearer {token}"),),
            )
            assert cluster.master_id == "m-proc"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
