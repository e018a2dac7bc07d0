"""Configuration, the command line, and the daemon as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

import psutil
import pytest
from nodeagent_helpers import FakeSubDomain, run, serve, spec_proto, start_cmd, until

from domainos import config as dconfig
from domainos.errors import ConfigError
from domainos.model import TaskRef, TaskState
from domainos.topology import SimInventory
from node_agent import AgentConfig
from node_agent.__main__ import main

REPO = Path(__file__).resolve().parents[2]


def test_defaults_fill_in_from_the_machine() -> None:
    cfg = AgentConfig(subdomains=["127.0.0.1:7100"], insecure=True)
    cfg.validate()
    assert cfg.node_id == socket.gethostname()
    assert cfg.state_dir == os.path.expanduser(f"~/.domainos/agent/{cfg.node_id}")
    assert cfg.inventory is None and not cfg.simulated
    assert (cfg.report_interval_s, cfg.full_sync_interval_s, cfg.stop_grace_s) == (1.0, 5.0, 5.0)
    assert cfg.metrics_listen == "127.0.0.1:0" and cfg.stop_tasks_on_shutdown
    sim = AgentConfig(subdomains=["127.0.0.1:7100"], simulated=True)
    assert sim.inventory == SimInventory()


def test_yaml_with_flags_overriding(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(
        "node_id: n1\n"
        "subdomains: ['10.0.0.1:7100', '10.0.0.2:7100']\n"
        "simulated: true\n"
        "inventory: {cpus: 16, memory: 64Gi, gpus: 8, gpu_model: H100}\n"
        "labels: {rack: r1}\n"
        "insecure: true\n"
    )
    cfg = dconfig.load(AgentConfig, str(path), {"subdomains": ["127.0.0.1:9"], "log_format": "text"})
    assert cfg.subdomains == ["127.0.0.1:9"] and cfg.log_format == "text"
    assert cfg.inventory == SimInventory(cpus=16, memory="64Gi", gpus=8, gpu_model="H100")
    assert cfg.state_dir.endswith("/.domainos/agent/n1")


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({}, "subdomains: at least one sub-domain address"),
        ({"subdomains": ["localhost"]}, "subdomains[0]: expected HOST:PORT"),
        ({"subdomains": ["h:0"]}, "port 0 cannot be dialled"),
        ({"subdomains": ["h:1"], "metrics_listen": "nope"}, "metrics_listen: expected HOST:PORT"),
        ({"subdomains": ["h:1"], "inventory": SimInventory()}, "only declared for simulated agents"),
        ({"subdomains": ["h:1"], "log_format": "xml"}, "log_format: expected one of json, text"),
        ({"subdomains": ["h:1"], "report_interval_s": 0}, "report_interval_s: must be greater than 0"),
        ({"subdomains": ["h:1"], "node_id": "a b"}, "not a valid node id"),
    ],
)
def test_validation_names_the_field(fields: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        AgentConfig(**fields).validate()  # type: ignore[arg-type]
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--config", "/nonexistent/agent.yaml"], "file not found: /nonexistent/agent.yaml"),
        ([], "subdomains: at least one sub-domain address (HOST:PORT) is required"),
        (["--subdomain", "no-port"], "subdomains[0]: expected HOST:PORT"),
        (["--subdomain", "h:1", "--set", "bogus=1"], "unknown field bogus"),
        (["--subdomain", "h:1", "--set", "novalue"], "--set expects KEY=VALUE"),
        (["--subdomain", "h:1", "--set", "log_level=loud"], "log_level: expected one of debug, info"),
        (["--subdomain", "h:1", "--set", "inventory.cpus=2"], "only declared for simulated agents"),
    ],
)
def test_main_config_errors_exit_2(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err, err
    assert "Traceback" not in err


def test_main_bad_yaml_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("subdomains: [h:1\n")
    assert main(["--config", str(path)]) == 2
    assert "malformed YAML" in capsys.readouterr().err


def test_daemon_process_registers_and_stops_its_tasks_on_sigterm(tmp_path: Path) -> None:
    """``python -m node_agent`` as a real process: ready file, registration, SIGTERM -> exit 0,
    and no task process left behind."""

    async def main_() -> None:
        fake = FakeSubDomain("sd-e2e")
        server, port = await serve(fake)
        ready = tmp_path / "ready.json"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "node_agent",
            "--node-id",
            "e2e-1",
            "--subdomain",
            f"127.0.0.1:{port}",
            "--simulated",
            "--state-dir",
            str(tmp_path / "state"),
            "--metrics-listen",
            "",
            "--log-format",
            "text",
            "--ready-file",
            str(ready),
            "--set",
            "stop_grace_s=2",
            "--insecure",
            cwd=str(REPO),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await until(ready.exists, timeout=20, what="ready file")
            facts = json.loads(ready.read_text())
            assert facts["node_id"] == "e2e-1" and facts["metrics"] == ""
            assert facts["state_dir"] == str(tmp_path / "state") and facts["pid"] == proc.pid
            await until(lambda: fake.conns, timeout=20, what="registration")
            conn = fake.conn
            assert conn.register.inventory.simulated
            ref = TaskRef("job-e2e", 0, 0)
            conn.send(start_cmd("c-1", spec_proto("job-e2e", command=("sleep", "60"))))
            await until(lambda: TaskState.RUNNING in conn.task_states(ref), what="task running")
            task_pid = conn.last_status(ref).pid
            proc.send_signal(signal.SIGTERM)
            rc = await asyncio.wait_for(proc.wait(), 20)
            assert proc.stderr is not None
            stderr = (await proc.stderr.read()).decode()
            assert rc == 0, stderr
            assert "Traceback" not in stderr
            assert (
                not psutil.pid_exists(task_pid) or psutil.Process(task_pid).status() == psutil.STATUS_ZOMBIE
            )
            assert conn.task_states(ref)[-1] == TaskState.CANCELLED
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await server.stop(None)

    run(main_(), timeout=60)
