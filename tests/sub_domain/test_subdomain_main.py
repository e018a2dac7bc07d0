"""Configuration and the ``python -m sub_domain`` entry point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from subdomain_helpers import wait_for

from domainos.config import load
from domainos.errors import ConfigError
from sub_domain import SubDomainConfig
from sub_domain.__main__ import main

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_and_yaml_with_flag_overrides(tmp_path: Path) -> None:
    path = tmp_path / "sd.yaml"
    path.write_text("id: east-1\nregion: east\nmax_nodes: 500\nlisten: 127.0.0.1:0\ninsecure: true\n")
    cfg = load(SubDomainConfig, str(path), {"max_nodes": 20, "master": None})
    assert (cfg.id, cfg.region, cfg.max_nodes, cfg.master) == ("east-1", "east", 20, "")
    assert cfg.store == "memory://" and cfg.silent_after_s == 3.0 and cfg.dead_after_s == 3.0
    assert (cfg.heartbeat_interval_s, cfg.probe_timeout_s) == (2.0, 1.0)
    assert cfg.full_sync_interval_s == 30.0 and cfg.summary_interval_s == 1.0


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("region: east\n", "id"),
        ("id: East_1\nregion: east\n", "id: 'East_1' is not a valid name"),
        ("id: e1\nregion: east\nlisten: nowhere\n", "listen: expected HOST:PORT"),
        ("id: e1\nregion: east\nmax_nodes: 0\n", "max_nodes: must be between 1 and 100000"),
        (
            "id: e1\nregion: east\nsilent_after_s: 2\n",
            "silent_after_s: must be greater than heartbeat_interval_s",
        ),
        ("id: e1\nregion: east\nlog_format: xml\n", "log_format: expected one of json, text"),
        ("id: e1\nregion: east\nbogus: 1\n", "unknown field bogus"),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, yaml_text: str, message: str) -> None:
    path = tmp_path / "sd.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load(SubDomainConfig, str(path))


def test_main_prints_error_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--id", "east-1", "--region", "east", "--listen", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "listen" in err
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "file not found" in capsys.readouterr().err
    assert main(["--id", "east-1", "--region", "east", "--set", "max_nodes=-1"]) == 2
    assert "max_nodes" in capsys.readouterr().err


def test_daemon_writes_ready_file_and_stops_on_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sub_domain",
            "--id",
            "west-1",
            "--region",
            "west",
            "--listen",
            "127.0.0.1:0",
            "--store",
            f"sqlite:///{tmp_path / 'sd.db'}",
            "--log-format",
            "text",
            "--ready-file",
            str(ready),
            "--insecure",
        ],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: ready.exists() or proc.poll() is not None, timeout=20, what="the ready file")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        info = json.loads(ready.read_text())
        assert info["id"] == "west-1" and info["region"] == "west"
        assert info["listen"].startswith("127.0.0.1:") and not info["listen"].endswith(":0")
        assert info["advertise"] == info["listen"] and info["metrics"].startswith("127.0.0.1:")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
