"""Injected GPU faults: the simulated hardware, its fault file, the ``inject`` command, the fleet
simulator against a real sub-domain, and a real ``python -m node_agent`` process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nodeagent_helpers import FakeSubDomain, run, serve, until

from domainos.errors import InvalidArgument
from domainos.model import HealthStatus, NodeHealth
from domainos.topology import SimInventory
from node_agent.__main__ import main
from node_agent._hardware import (
    FAULT_FILE,
    FAULT_FILE_APPLIED,
    FAULT_FILE_REJECTED,
    GpuFault,
    SimulatedHardware,
    parse_faults,
    worse_xid,
    write_faults,
)
from node_agent._sim import Fleet
from sub_domain import SubDomainConfig, SubDomainManager
from sub_domain import _manager as manager_module

REPO = Path(__file__).resolve().parents[2]
FELL_OFF = "gpu0: xid 79 (GPU has fallen off the bus)"
INV = SimInventory(cpus=16, memory="64Gi", gpus=4, gpu_model="H100-SXM-80GB")


def sim(data_dir: Path | None = None) -> SimulatedHardware:
    return SimulatedHardware("sim-h", INV, data_dir=str(data_dir) if data_dir else None)


def health(hw: SimulatedHardware) -> NodeHealth:
    return hw.health(hw.sample([]))


# ----------------------------------------------------------------------------- simulated hardware


def test_worst_xid_rule() -> None:
    assert worse_xid(0, 13) == 13
    assert worse_xid(13, 31) == 31  # other, then other: the latest
    assert worse_xid(31, 94) == 94  # warning beats other
    assert worse_xid(94, 13) == 94
    assert worse_xid(94, 63) == 63  # warning, then warning: the latest
    assert worse_xid(63, 79) == 79  # critical beats warning
    assert worse_xid(79, 94) == 79 and worse_xid(79, 999) == 79
    assert worse_xid(79, 48) == 48  # critical, then critical: the latest


def test_injected_critical_xid_makes_the_node_unhealthy() -> None:
    hw = sim()
    assert health(hw) == NodeHealth(HealthStatus.HEALTHY, ())
    hw.inject(0, xid=79)
    usage = hw.sample([])
    g0 = usage.gpus[0]
    assert (g0.last_xid, g0.xid_count) == (79, 1)
    assert all(g.xid_count == 0 for g in usage.gpus[1:])
    h = hw.health(usage)
    assert h.status is HealthStatus.UNHEALTHY and h.conditions == (FELL_OFF,)
    # A later warning does not hide the critical one; both are counted.
    hw.inject(0, xid=94)
    assert (hw.sample([]).gpus[0].last_xid, hw.sample([]).gpus[0].xid_count) == (79, 2)
    # ECC counts add up; uncorrectable ones are critical on their own.
    hw.inject(2, ecc_corrected=5)
    hw.inject(2, ecc_corrected=5, ecc_uncorrected=1)
    g2 = hw.sample([]).gpus[2]
    assert (g2.ecc_corrected, g2.ecc_uncorrected) == (10, 1)
    assert health(hw).conditions == (FELL_OFF, "gpu2: 1 uncorrectable (double-bit) ECC errors")
    assert set(hw.faults) == {0, 2}
    hw.clear_faults(0)
    assert health(hw).conditions == ("gpu2: 1 uncorrectable (double-bit) ECC errors",)
    hw.clear_faults()
    assert health(hw) == NodeHealth(HealthStatus.HEALTHY, ()) and hw.faults == {}


def test_warning_xid_heat_and_throttling_make_the_node_degraded() -> None:
    hw = sim()
    hw.inject(1, xid=94)
    assert health(hw) == NodeHealth(HealthStatus.DEGRADED, ("gpu1: xid 94 (contained ECC error)",))
    hw.clear_faults()
    hw.inject(3, temperature_c=95)
    assert health(hw) == NodeHealth(HealthStatus.DEGRADED, ("gpu3: temperature 95 C > 90 C",))
    # The override stays through later injections into the same GPU, until cleared.
    hw.inject(3, throttle_reasons=0x40)
    usage = hw.sample([])
    assert usage.gpus[3].temperature_c == 95.0 and usage.gpus[3].throttle_reasons == 0x40
    assert hw.health(usage).conditions == (
        "gpu3: temperature 95 C > 90 C",
        "gpu3: throttled (hw thermal slowdown)",
    )
    hw.inject(3, throttle_reasons=0)
    hw.inject(3, xid=13)  # an application's Xid: counted, says nothing about the node
    assert hw.sample([]).gpus[3].xid_count == 1
    assert health(hw).conditions == ("gpu3: temperature 95 C > 90 C",)
    hw.clear_faults(3)
    assert hw.sample([]).gpus[3].temperature_c == SimulatedHardware.IDLE_TEMPERATURE_C


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"gpu": 4, "xid": 79}, "gpu: node sim-h has no GPU 4 (GPU indexes: 0 to 3)"),
        ({"gpu": -1, "xid": 79}, "gpu: must be a GPU index"),
        ({"gpu": 0, "xid": 0}, "xid: must be an NVIDIA Xid number, e.g. 79 (1 to 2147483647), got 0"),
        ({"gpu": 0, "ecc_uncorrected": -2}, "ecc_uncorrected: must be a count of errors to add"),
        ({"gpu": 0, "temperature_c": float("nan")}, "temperature_c: must be degrees C from -50 to 200"),
        ({"gpu": 0, "throttle_reasons": 2**64}, "throttle_reasons: must be an NVML reasons bitmask"),
    ],
)
def test_bad_injections_name_the_field(kwargs: dict[str, Any], needle: str) -> None:
    hw = sim()
    gpu = kwargs.pop("gpu")
    with pytest.raises(InvalidArgument) as info:
        hw.inject(gpu, **kwargs)
    assert needle in str(info.value)
    assert hw.faults == {}
    with pytest.raises(InvalidArgument, match="has no GPU 0 \\(GPU indexes: none: it has no GPUs\\)"):
        SimulatedHardware("cpu-only", SimInventory()).inject(0, xid=79)


# ----------------------------------------------------------------------------- the fault file


def test_fault_file_is_applied_once_and_only_stat_is_paid_when_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hw = sim(tmp_path)
    path = tmp_path / FAULT_FILE
    assert hw.fault_file == str(path)
    seen: list[str] = []
    real_stat, real_replace = os.stat, os.replace

    def stat(p: Any, *a: Any, **kw: Any) -> Any:
        seen.append(f"stat {p}")
        return real_stat(p, *a, **kw)

    def replace(src: Any, dst: Any) -> None:
        seen.append(f"replace {src}")
        real_replace(src, dst)

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(os, "replace", replace)
    hw.sample([])
    hw.sample([])
    assert seen == [f"stat {path}"] * 2  # absent: one stat per sample, nothing else
    monkeypatch.undo()

    write_faults(tmp_path, [GpuFault(0, xid=79), GpuFault(1, ecc_corrected=3, temperature_c=93.5)])
    assert json.loads(path.read_text()) == [
        {"gpu": 0, "xid": 79},
        {"gpu": 1, "temperature_c": 93.5, "ecc_corrected": 3},
    ]
    usage = hw.sample([])
    assert not path.exists() and (tmp_path / FAULT_FILE_APPLIED).exists()
    assert (usage.gpus[0].last_xid, usage.gpus[0].xid_count) == (79, 1)
    assert (usage.gpus[1].ecc_corrected, usage.gpus[1].temperature_c) == (3, 93.5)
    assert hw.health(usage).status is HealthStatus.UNHEALTHY and FELL_OFF in hw.health(usage).conditions
    # Applied once: later samples do not add it again.
    for _ in range(3):
        assert hw.sample([]).gpus[0].xid_count == 1
    # A clear through the file.
    write_faults(tmp_path, [GpuFault(None, clear=True)])
    assert health(hw) == NodeHealth(HealthStatus.HEALTHY, ())


def test_writes_before_a_sample_are_merged_never_applied_twice(tmp_path: Path) -> None:
    hw = sim(tmp_path)
    write_faults(tmp_path, [GpuFault(0, xid=13)])
    write_faults(tmp_path, [GpuFault(0, xid=79)])
    write_faults(tmp_path, [GpuFault(0, ecc_uncorrected=1)])
    assert len(json.loads((tmp_path / FAULT_FILE).read_text())) == 3
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary files left
    hw.sample([])
    g0 = hw.sample([]).gpus[0]
    assert (g0.last_xid, g0.xid_count, g0.ecc_uncorrected) == (79, 2, 1)


def test_a_bad_fault_file_is_rejected_and_a_bad_entry_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="node_agent._hardware")
    hw = sim(tmp_path)
    path = tmp_path / FAULT_FILE
    path.write_text('[{"gpu": 0, "xid": "79"}]')
    assert health(hw).status is HealthStatus.HEALTHY
    assert not path.exists() and (tmp_path / FAULT_FILE_REJECTED).exists()
    assert "[0].xid: must be an NVIDIA Xid number" in caplog.text
    path.write_text("{not json")
    assert health(hw).status is HealthStatus.HEALTHY and not path.exists()
    # A GPU this node does not have: that entry is skipped, the rest applies.
    path.write_text('[{"gpu": 9, "xid": 79}, {"gpu": 0, "xid": 79}]')
    assert health(hw).conditions == (FELL_OFF,)
    assert "[0] skipped: gpu: node sim-h has no GPU 9" in caplog.text


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"gpu": 0}, "faults: must be a list of fault objects, got dict"),
        ([7], "[0]: must be an object, got int"),
        ([{"gpu": 0, "xid": 79, "bogus": 1}], "[0]: unknown key(s) 'bogus'; known: gpu, xid,"),
        ([{"xid": 79}], "[0].gpu: is required"),
        ([{"gpu": True, "xid": 79}], "[0].gpu: must be a GPU index"),
        ([{"gpu": 0, "clear": "yes"}], "[0].clear: must be true or false"),
        ([{"gpu": 0}, {"gpu": 1, "temperature_c": 900}], "[1].temperature_c: must be degrees C"),
    ],
)
def test_fault_file_format_errors_name_the_entry(data: Any, needle: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_faults(data)
    assert needle in str(info.value)


# ----------------------------------------------------------------------------- the inject command


def test_inject_command_writes_the_fault_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    assert main(["inject", "--data-dir", str(data), "--gpu", "0", "--xid", "79"]) == 0
    assert "queued {'gpu': 0, 'xid': 79}" in capsys.readouterr().out
    argv = ["--gpu", "2", "--ecc-uncorrected", "1", "--ecc-corrected", "4", "--temperature", "95"]
    assert main(["inject", "--data-dir", str(data), *argv, "--throttle", "0x40"]) == 0
    assert main(["inject", "--data-dir", str(data), "--clear"]) == 0
    assert main(["inject", "--data-dir", str(data), "--gpu", "1", "--clear", "--xid", "94"]) == 0
    assert json.loads((data / FAULT_FILE).read_text()) == [
        {"gpu": 0, "xid": 79},
        {"gpu": 2, "temperature_c": 95.0, "throttle_reasons": 64, "ecc_corrected": 4, "ecc_uncorrected": 1},
        {"clear": True},
        {"gpu": 1, "clear": True, "xid": 94},
    ]
    hw = sim(data)
    assert health(hw) == NodeHealth(HealthStatus.DEGRADED, ("gpu1: xid 94 (contained ECC error)",))
    # --state-dir: its default data_dir, created when missing.
    state = tmp_path / "state"
    state.mkdir()
    assert main(["inject", "--state-dir", str(state), "--gpu", "3", "--xid", "48"]) == 0
    assert json.loads((state / "data" / FAULT_FILE).read_text()) == [{"gpu": 3, "xid": 48}]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--gpu", "0", "--xid", "79"], "one of the arguments --data-dir --state-dir is required"),
        (["--gpu", "0", "--xid", "0"], "argument --xid: must be an NVIDIA Xid number, e.g. 79 (1 to"),
        (["--gpu", "0", "--xid", "abc"], "argument --xid: must be an NVIDIA Xid number, e.g. 79 (1 to"),
        (["--gpu", "-1", "--xid", "79"], "argument --gpu: must be a GPU index (0 to"),
        (["--gpu", "0", "--ecc-uncorrected", "-3"], "argument --ecc-uncorrected: must be a count of errors"),
        (["--gpu", "0", "--temperature", "nan"], "argument --temperature: must be degrees C from -50 to 200"),
        (["--gpu", "0", "--temperature", "hot"], "argument --temperature: must be degrees C from -50 to 200"),
        (["--gpu", "0", "--throttle", "0xZZ"], "argument --throttle: must be an NVML clocks-event reasons"),
        (["--gpu", "0"], "nothing to inject: give --xid, --ecc-corrected, --ecc-uncorrected, --temperature"),
        (["--xid", "79"], "--gpu is required to inject a fault (only --clear goes without it"),
        (["--clear", "--xid", "79"], "--gpu is required to inject a fault"),
        (["--gpu", "0", "--xid", "79", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_inject_command_bad_input_exits_2(
    tmp_path: Path, argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    where = [] if "required" in needle and "--data-dir" in needle else ["--data-dir", str(tmp_path)]
    assert main(["inject", *where, *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err, err
    assert not (tmp_path / FAULT_FILE).exists()


def test_inject_command_missing_directory_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    assert main(["inject", "--data-dir", str(missing), "--gpu", "0", "--xid", "79"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --data-dir: no such directory: {missing}") and "--state-dir" in err
    assert main(["inject", "--state-dir", str(missing), "--gpu", "0", "--xid", "79"]) == 2
    assert f"error: --state-dir: no such directory: {missing}" in capsys.readouterr().err
    assert not missing.exists()


# ----------------------------------------------------------------------------- the fleet simulator


@pytest.fixture
def fast_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager_module, "TICK_INTERVAL_S", 0.02)


@contextlib.asynccontextmanager
async def subdomain() -> AsyncIterator[SubDomainManager]:
    mgr = SubDomainManager(
        SubDomainConfig(
            id="sd-health",
            region="east",
            listen="127.0.0.1:0",
            metrics_listen="",
            report_interval_s=0.1,
            full_sync_interval_s=0.5,
            heartbeat_interval_s=0.3,
            silent_after_s=1.0,
            probe_timeout_s=0.5,
            dead_after_s=0.5,
            insecure=True,
        )
    )
    await mgr.start()
    try:
        yield mgr
    finally:
        await mgr.shutdown()


def test_fleet_inject_reaches_the_subdomain(fast_ticks: None) -> None:
    def node_health(mgr: SubDomainManager, node_id: str) -> NodeHealth | None:
        node = mgr.registry.get(node_id)
        return node.health if node is not None else None

    async def body() -> None:
        async with subdomain() as mgr, Fleet([mgr.listen_address], 4, "h100x8", seed=5) as fleet:
            await until(lambda: mgr.nodes_ready == 4, what="4 ready nodes")
            await until(lambda: fleet.stats().connected == 4, what="4 agents registered")
            ids = sorted(fleet.agents)
            assert all(fleet.agents[n].health.status is HealthStatus.HEALTHY for n in ids)

            # Checked on every node first: nothing is applied when one is wrong.
            with pytest.raises(InvalidArgument, match="no simulated node 'nope'"):
                fleet.inject([ids[0], "nope"], gpu=0, xid=79)
            with pytest.raises(InvalidArgument, match="has no GPU 8"):
                fleet.inject(ids[:2], gpu=8, xid=79)
            with pytest.raises(InvalidArgument, match="nothing to inject"):
                fleet.inject(ids[:1], gpu=0)
            assert all(not fleet.agents[n].hardware.faults for n in ids)

            fleet.inject([ids[1]], gpu=0, xid=79)
            fleet.inject([ids[2]], gpu=5, temperature_c=96.0)

            def unhealthy() -> bool:
                h = node_health(mgr, ids[1])
                return h is not None and h.status is HealthStatus.UNHEALTHY

            await until(unhealthy, timeout=5, what=f"{ids[1]} unhealthy at the sub-domain")
            h1 = node_health(mgr, ids[1])
            assert h1 is not None and FELL_OFF in h1.conditions
            await until(
                lambda: (
                    node_health(mgr, ids[2])
                    == NodeHealth(HealthStatus.DEGRADED, ("gpu5: temperature 96 C > 90 C",))
                ),
                timeout=5,
                what=f"{ids[2]} degraded at the sub-domain",
            )
            h0, h3 = node_health(mgr, ids[0]), node_health(mgr, ids[3])
            assert h0 is not None and h0.status is HealthStatus.HEALTHY
            assert h3 is not None and h3.status is HealthStatus.HEALTHY
            # The usage carries the signals too (the next usage report).
            await until(
                lambda: (
                    (u := mgr.registry.get(ids[1]).usage) is not None  # type: ignore[union-attr]
                    and any(g.last_xid == 79 for g in u.gpus)
                ),
                timeout=5,
                what="the xid in the reported usage",
            )

            fleet.clear_faults(ids[1:3])
            await until(
                lambda: all(
                    (h := node_health(mgr, n)) is not None and h.status is HealthStatus.HEALTHY for n in ids
                ),
                timeout=5,
                what="every node healthy again",
            )

    run(body(), timeout=60)


# ----------------------------------------------------------------------------- a real agent process


@pytest.mark.e2e
def test_inject_into_a_running_simulated_agent(tmp_path: Path) -> None:
    """``python -m node_agent inject`` against ``python -m node_agent --simulated`` (as ``domainctl
    up`` starts them): the agent applies the file at its next sample and reports UNHEALTHY."""

    async def body() -> None:
        fake = FakeSubDomain("sd-inject")
        server, port = await serve(fake)
        state = tmp_path / "state"
        ready = tmp_path / "ready.json"
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "node_agent",
            "--node-id",
            "inject-1",
            "--subdomain",
            f"127.0.0.1:{port}",
            "--simulated",
            "--set",
            "inventory.gpus=2",
            "--set",
            "inventory.gpu_model=H100",
            "--state-dir",
            str(state),
            "--metrics-listen",
            "",
            "--log-format",
            "text",
            "--ready-file",
            str(ready),
            "--insecure",
            cwd=str(REPO),
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await until(lambda: fake.conns, timeout=20, what="registration")
            conn = fake.conn
            assert len(conn.register.inventory.gpus) == 2
            assert (
                await asyncio.to_thread(
                    main, ["inject", "--state-dir", str(state), "--gpu", "0", "--xid", "79"]
                )
                == 0
            )

            def reported() -> Any:
                return next(
                    (r.health for r in conn.reports if r.HasField("health") and r.health.status == 3), None
                )

            got = await until(reported, timeout=20, what="an UNHEALTHY report")
            assert list(got.conditions) == [FELL_OFF]
            assert not (state / "data" / FAULT_FILE).exists()
            assert (state / "data" / FAULT_FILE_APPLIED).exists()
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 20)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            await server.stop(None)
        assert proc.stderr is not None
        stderr = (await proc.stderr.read()).decode()
        assert "Traceback" not in stderr, stderr
        assert "injected fault {'gpu': 0, 'xid': 79}" in stderr, stderr

    run(body(), timeout=60)
