"""`domainctl up`/`down`/`status` with stand-in daemons (tests/cli/fake_daemon_cli.py).

The real daemons are exercised by tests/e2e/test_local_federation.py.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

import psutil  # type: ignore[import-untyped,unused-ignore]
import pytest
import yaml
from fake_master_dsdk import wait_for

from domainctl import _local
from domainctl.__main__ import main
from domainos.topology import load_topology


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _gone(pids: list[int]) -> bool:
    return not any(_local.is_alive(p) for p in pids)


# -- pure parts -------------------------------------------------------------------------------


def test_configs_for_the_daemons(tmp_path: pathlib.Path) -> None:
    topo_file = tmp_path / "topo.yaml"
    topo_file.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "regions": [
                    {
                        "name": "east",
                        "subdomains": [{"id": "east-1", "max_nodes": 5, "agents": [{"count": 1}]}],
                    },
                    {
                        "name": "west",
                        "subdomains": [
                            {
                                "id": "west-1",
                                "agents": [
                                    {
                                        "count": 2,
                                        "simulated": True,
                                        "labels": {"rack": "r1"},
                                        "inventory": {
                                            "cpus": 16,
                                            "memory": "64Gi",
                                            "gpus": 8,
                                            "gpu_model": "H100",
                                        },
                                    }
                                ],
                            }
                        ],
                    },
                ],
            }
        )
    )
    topo = load_topology(str(topo_file))
    paths = _local.Paths(tmp_path / "home")
    assert _local.expected_agents(topo) == {"east-1": 1, "west-1": 2}

    master = _local.master_config(paths, None)
    assert master["listen"] == "127.0.0.1:0" and master["metrics_listen"] == "127.0.0.1:0"
    assert master["store"] == f"sqlite://{(tmp_path / 'home' / 'local' / 'master.db').resolve()}"
    assert _local.master_config(paths, "etcd://127.0.0.1:2379")["store"] == "etcd://127.0.0.1:2379"

    (region, sd) = topo.subdomains()[0]
    sub = _local.subdomain_config(paths, region.name, sd, "127.0.0.1:7070", None)
    assert sub["id"] == "east-1" and sub["region"] == "east" and sub["master"] == "127.0.0.1:7070"
    assert sub["max_nodes"] == 5 and sub["store"].endswith("/local/subdomain-east-1.db")

    plans = topo.agents()
    real = _local.agent_config(paths, plans[0], "127.0.0.1:7101")
    assert real["node_id"] == "east-1-n1" and real["subdomains"] == ["127.0.0.1:7101"]
    assert real["simulated"] is False and "inventory" not in real
    assert real["state_dir"].endswith("/local/agents/east-1-n1")
    sim = _local.agent_config(paths, plans[1], "127.0.0.1:7102")
    assert sim["simulated"] is True and sim["labels"] == {"rack": "r1"}
    assert sim["inventory"]["gpus"] == 8 and sim["inventory"]["gpu_model"] == "H100"


@pytest.mark.parametrize("bad", ["sqlite:///x.db", "etcd://", "etcd://host", "http://h:1"])
def test_store_flag_must_be_an_etcd_url(bad: str) -> None:
    from domainos.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="etcd://HOST:PORT"):
        _local.check_store(bad)
    assert _local.check_store("etcd://127.0.0.1:2379") == "etcd://127.0.0.1:2379"
    assert _local.check_store(None) is None


def test_log_tail(tmp_path: pathlib.Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert _local.log_tail(log, 3) == "line 97\nline 98\nline 99"
    assert _local.log_tail(tmp_path / "missing.log") == ""


# -- down / status with nothing running -------------------------------------------------------


def test_down_and_status_with_nothing_running(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    home = tmp_path / "empty"
    code, out, err = run(capsys, "down", "--home", str(home))
    assert (code, err) == (0, "") and out == f"no local federation is running (home {home.resolve()})\n"
    code, out, _ = run(capsys, "status", "--home", str(home))
    assert code == 0 and out.startswith("no local federation is running")
    code, out, _ = run(capsys, "status", "--home", str(home), "-o", "json")
    assert code == 0 and json.loads(out)["running"] is False


def test_down_removes_a_stale_state_file(capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path) -> None:
    paths = _local.Paths(tmp_path.resolve())
    paths.local.mkdir(parents=True)
    dead = psutil.Popen(["true"])
    dead.wait()
    paths.state.write_text(
        json.dumps(
            {
                "master": "127.0.0.1:1",
                "components": [{"name": "master", "kind": "master", "pid": dead.pid, "create_time": 1.0}],
            }
        )
    )
    code, out, _ = run(capsys, "down", "--home", str(tmp_path))
    assert code == 0 and "stale state file" in out and not paths.state.exists()


def test_up_refuses_when_a_federation_from_that_home_is_running(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    paths = _local.Paths(tmp_path.resolve())
    paths.local.mkdir(parents=True)
    me = psutil.Process()
    paths.state.write_text(
        json.dumps(
            {
                "master": "127.0.0.1:7070",
                "components": [
                    {"name": "master", "kind": "master", "pid": me.pid, "create_time": me.create_time()}
                ],
            }
        )
    )
    code, _out, err = run(capsys, "up", "--detach", "--home", str(tmp_path))
    assert code == 1
    assert "already running" in err and f"`domainctl down --home {tmp_path.resolve()}`" in err
    assert paths.state.exists()  # left alone


def test_up_with_a_bad_topology_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path) -> None:
    topo = tmp_path / "t.yaml"
    topo.write_text("version: 1\nregions:\n  - name: East_1\n")
    code, _out, err = run(capsys, "up", "--topology", str(topo), "--home", str(tmp_path))
    assert code == 2 and err.startswith(f"error: {topo}: regions.name:") and "not a valid name" in err
    code, _out, err = run(capsys, "up", "--store", "sqlite:///x.db", "--home", str(tmp_path))
    assert code == 2 and "--store: expected etcd://HOST:PORT" in err


# -- up / status / domains / down with stand-in daemons ---------------------------------------


@pytest.mark.usefixtures("fake_daemons")
def test_up_status_domains_down(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = (tmp_path / "fed").resolve()
    monkeypatch.setenv("DOMAINOS_HOME", str(home))
    started = time.monotonic()
    code, out, err = run(capsys, "up", "--detach", "--home", str(home), "--timeout", "30")
    print(f"up with stand-in daemons took {time.monotonic() - started:.2f}s")
    assert code == 0, err
    state = json.loads((home / "local" / "cluster.json").read_text())
    assert state["status"] == "running" and state["master"].startswith("127.0.0.1:")
    kinds = [c["kind"] for c in state["components"]]
    assert kinds == ["master", "subdomain", "subdomain", "agent", "agent", "agent", "agent"]
    names = [c["name"] for c in state["components"]]
    assert names[:3] == ["master", "subdomain-east-1", "subdomain-west-1"] and "agent-west-1-n2" in names
    assert all(pathlib.Path(c["log"]).is_file() for c in state["components"])
    assert state["topology"]["regions"] == {"east": ["east-1"], "west": ["west-1"]}
    assert f"master:      {state['master']}" in out and "7 (1 master, 2 sub-domains, 4 agents)" in out
    assert "http://127.0.0.1:2/metrics" in out
    cfg = yaml.safe_load((home / "local" / "config" / "agent-east-1-n1.yaml").read_text())
    sub_ready = json.loads((home / "local" / "run" / "subdomain-east-1.json").read_text())
    assert cfg["subdomains"] == [sub_ready["listen"]]
    pids = [c["pid"] for c in state["components"]]
    tasks = [json.loads((home / "local" / "run" / f"{n}.json").read_text())["task_pid"] for n in names[3:]]
    assert all(_local.is_alive(p) for p in pids + tasks)

    code, out, _ = run(capsys, "status")
    assert code == 0 and "7/7 processes running" in out and out.count("running") >= 8

    code, out, _ = run(capsys, "domains")  # found through cluster.json, no flags
    assert code == 0 and "east-1" in out and "2/2 ready" in out

    code, _out, err = run(capsys, "up", "--detach")
    assert code == 1 and "already running" in err and "domainctl down" in err

    code, out, _ = run(capsys, "down", "--timeout", "5")
    assert code == 0 and out == "stopped the local federation: 7 components\n"
    assert not (home / "local" / "cluster.json").exists()
    wait_for(lambda: _gone(pids + tasks), timeout=10)  # the agents' leftover tasks too
    code, out, _ = run(capsys, "down")
    assert code == 0 and out.startswith("no local federation is running")


@pytest.mark.usefixtures("fake_daemons")
def test_a_daemon_exiting_during_startup_fails_up_and_stops_the_rest(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = (tmp_path / "crash").resolve()
    monkeypatch.setenv("FAKE_DAEMON_CRASH", "east-1-n2")
    seen: list[int] = []
    real_spawn = _local.Launcher._spawn

    def spawn(self: _local.Launcher, *a: object, **kw: object) -> _local.Component:
        comp = real_spawn(self, *a, **kw)  # type: ignore[arg-type]
        seen.append(comp.pid)
        return comp

    monkeypatch.setattr(_local.Launcher, "_spawn", spawn)
    code, _out, err = run(
        capsys, "up", "--detach", "--home", str(home), "--timeout", "30", "--topology", _small(tmp_path)
    )
    assert code == 1
    assert "error: agent-east-1-n2 exited during startup (exit status 1)" in err
    assert "fake agent east-1-n2: crashing on purpose" in err  # the tail of its log
    assert len(seen) == 4
    wait_for(lambda: _gone(seen), timeout=10)
    assert not (home / "local" / "cluster.json").exists()
    assert (home / "local" / "logs" / "agent-east-1-n2.log").exists()


@pytest.mark.usefixtures("fake_daemons")
def test_readiness_timeout_names_the_component(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = (tmp_path / "slow").resolve()
    # The stand-in master counts an agent only once its ready file exists; hide one agent's file.
    real_wait = _local.Launcher._wait_ready

    def wait_ready(self: _local.Launcher, comps: list[_local.Component]) -> None:
        real_wait(self, comps)
        for c in comps:
            if c.name == "agent-east-1-n2":
                os.replace(c.ready_file, c.ready_file + ".hidden")

    monkeypatch.setattr(_local.Launcher, "_wait_ready", wait_ready)
    code, _out, err = run(
        capsys, "up", "--detach", "--home", str(home), "--timeout", "4", "--topology", _small(tmp_path)
    )
    assert code == 1
    assert "is not ready in sub-domain east-1 after 4s: 1/2 agents ready" in err
    assert "fake daemon starting" in err  # the log tail


def _small(tmp_path: pathlib.Path) -> str:
    """One region, one sub-domain, two agents: fewer processes on a 2-core machine."""
    path = tmp_path / "small.yaml"
    path.write_text(
        "version: 1\nregions:\n  - name: east\n    subdomains:\n      - id: east-1\n        agents: [{count: 2}]\n"
    )
    return str(path)


@pytest.mark.usefixtures("fake_daemons")
def test_foreground_up_ends_cleanly_when_down_runs_elsewhere(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    import io
    import threading

    home = (tmp_path / "fg").resolve()
    launcher = _local.Launcher(_local.Paths(home), load_topology(_small(tmp_path)), timeout=30)
    state = launcher.start()
    assert state["status"] == "running" and len(state["components"]) == 4
    out, err = io.StringIO(), io.StringIO()
    result: list[int] = []
    fg = threading.Thread(target=lambda: result.append(launcher.foreground(out, err)))
    fg.start()  # off the main thread: no signal handlers, it ends when its components do
    code, stdout, _ = run(capsys, "down", "--home", str(home))
    assert code == 0 and "4 components" in stdout
    fg.join(timeout=20)
    assert result == [0]
    assert "stopped (domainctl down)" in out.getvalue() and err.getvalue() == ""
