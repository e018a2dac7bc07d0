"""The goodput simulation (``bench/_goodput_model.py``, ``bench/goodput.py``): its accounting adds up,
it drives the real job table (a lost task requeues the whole gang, a spent budget fails the job, a
drain spends no retry), and Young/Daly are computed right. Small clusters, so it stays fast."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import sys
from typing import Any

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(ROOT))

from bench import goodput  # noqa: E402
from bench._goodput_model import (  # noqa: E402
    OVERHEADS,
    Checkpointing,
    Cluster,
    Drain,
    Failures,
    Injected,
    Phase,
    Restart,
    Scenario,
    Simulation,
    daly_interval,
    first_order_overhead,
    simulate,
    training_spec,
    young_interval,
)
from master_domain._jobs import JobState, TaskState  # noqa: E402

pytestmark = pytest.mark.timeout(120)

N = 32
HBM = "GPU HBM3 memory"  # detected by the process dying, node swapped, reported LOST
HOST = "host maintenance (unplanned)"  # detected by the node's failure detector
BUG = "software bug"  # the process exits non-zero, same node, reported FAILED


def scenario(
    *,
    mttf_s: float = 3600.0,
    blocking_s: float = 2.0,
    persist_s: float = 5.0,
    load_s: float = 3.0,
    interval_s: float | None = None,
    days: float = 2.0,
    drain: bool = False,
    restart: Restart | None = None,
    **cluster: Any,
) -> Scenario:
    return Scenario(
        name="test",
        failures=Failures("test", job_mttf_s=mttf_s),
        checkpointing=Checkpointing("ck", blocking_s, persist_s, load_s, interval_s),
        restart=restart or Restart(),
        cluster=dataclasses.replace(Cluster(nodes=N, spares=4, repair_s=6 * 3600), **cluster),
        drain=Drain(enabled=drain),
        days=days,
    )


def total(res: object) -> float:
    assert hasattr(res, "productive_s") and hasattr(res, "overheads")
    return float(res.productive_s + sum(res.overheads.values()))


# -- accounting --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sc",
    [
        scenario(),
        scenario(drain=True),
        scenario(persist_s=0.0, blocking_s=20.0),  # synchronous
        scenario(mttf_s=300.0, spares=1, repair_s=4 * 3600.0),  # failures pile up; spares run out
        scenario(mttf_s=900.0, drain=True, persist_s=60.0, retry_on_lost=3, retry_on_exit=3),
    ],
    ids=["async", "drain", "sync", "storm", "drain-budget"],
)
def test_productive_plus_every_overhead_is_the_wall_time(sc: Scenario) -> None:
    sim = Simulation(sc, seed=3, validate=True)  # the job table's invariants after every event
    res = sim.run()
    assert res.wall_s == sc.wall_s
    assert total(res) == pytest.approx(res.wall_s, rel=1e-9)
    assert all(v >= 0 for v in res.overheads.values()) and set(res.overheads) == set(OVERHEADS)
    assert 0.0 < res.ratio < 1.0
    assert res.faults > 0 and res.interruptions + res.drains > 0
    res.check()


def test_the_storm_exercises_spare_waits_and_resubmissions() -> None:
    res = simulate(scenario(mttf_s=600.0, spares=4, repair_s=3600.0, retry_on_lost=5), seed=1)
    assert res.spare_waits > 0 and res.overheads["spare_wait"] > 0
    assert res.resubmissions > 0 and res.overheads["resubmit"] > 0
    assert res.table["jobs_submitted"] == res.resubmissions + 1
    assert "after 5 retries" in res.table["job_failures"][0]


@pytest.mark.parametrize(("blocking_s", "persist_s"), [(20.0, 0.0), (2.0, 30.0)])
def test_without_failures_the_ratio_is_one_minus_the_checkpoint_overhead(
    blocking_s: float, persist_s: float
) -> None:
    sc = scenario(blocking_s=blocking_s, persist_s=persist_s, interval_s=60.0, days=1.0)
    res = Simulation(sc, random_failures=False).run()
    res.check()
    assert res.faults == 0 and res.interruptions == 0
    assert res.ratio == pytest.approx(1.0 - res.overheads["checkpoint"] / res.wall_s, rel=1e-12)
    assert res.ratio == pytest.approx(60.0 / (60.0 + blocking_s), abs=1e-3)
    assert all(v == 0 for k, v in res.overheads.items() if k != "checkpoint")


def test_lost_work_per_failure_is_bounded_by_the_interval_and_the_persist_time() -> None:
    sc = scenario(mttf_s=600.0, blocking_s=1.0, persist_s=10.0, days=3.0, spares=64)
    res = simulate(sc, seed=5)
    assert res.interruptions > 50
    assert 0 < res.lost_max_s <= res.interval_s + sc.checkpointing.persist_s + 1e-9
    assert res.overheads["lost_work"] <= res.interruptions * (res.interval_s + sc.checkpointing.persist_s)


# -- the real job table --------------------------------------------------------------------------------


def test_one_lost_task_requeues_the_whole_gang_in_the_job_table() -> None:
    sc = scenario(restart=Restart(detect_process_s=0.0))  # detected at the instant it fails
    sim = Simulation(sc, random_failures=False, inject=[Injected(1000.0, HBM, task=5)], validate=True)
    sim.run(999.0)
    job = sim.job
    assert job is not None and job.state == JobState.RUNNING
    before = job.tasks[0].attempt
    failed_node = sim.assign[5]
    assert all(t.state is TaskState.RUNNING and t.attempt == before for t in job.tasks)

    sim.run(1000.1)  # failed, detected, reported LOST; the gang's reservation is in flight
    assert sim.phase is Phase.RESCHEDULE
    assert sim.stops_sent == N - 1  # every other task of the gang was told to stop
    assert all(t.state is TaskState.PENDING for t in job.tasks)
    assert len({t.attempt for t in job.tasks}) == 1 and job.tasks[0].attempt > before
    assert [t.lost_retries for t in job.tasks] == [1 if t.index == 5 else 0 for t in job.tasks]
    assert f"gang of job {job.job_id} requeued: task 5" in job.tasks[0].message
    assert job.state.value == "PENDING" and sim.table.gang_waiting(job)
    assert job.tasks[0].attempt == before + 2  # requeued as a new attempt, then StartGang's fresh one

    sim.run(1200.0)  # placed again with a spare in place of the failed node, and training
    assert sim.phase in (Phase.TRAIN, Phase.CHECKPOINT, Phase.CHECKPOINT_WAIT)
    assert all(t.state is TaskState.RUNNING for t in job.tasks)
    assert sim.assign[5].startswith("spare-") and failed_node in sim.in_repair
    assert [t.node_id for t in job.tasks] == sim.assign
    assert sim.table.placed_total == 2 * N
    assert sim.interruptions == 1 and sim.requeues == 1


def test_a_spent_retry_budget_fails_the_job_and_the_resubmitted_one_resumes_from_its_checkpoint() -> None:
    sc = scenario(retry_on_lost=1)
    sim = Simulation(
        sc, random_failures=False, inject=[Injected(1000.0, HBM, task=1), Injected(5000.0, HBM, task=2)]
    )
    sim.run(4990.0)
    assert sim.job is not None and sim.job.job_id == "j-1" and sim.requeues == 1
    res = sim.run(6000.0)
    assert res.resubmissions == 1 and sim.table.get("j-1") is None  # FAILED, stopped, retired
    assert "task 2 was lost" in sim.job_failures[0] and "after 1 retries" in sim.job_failures[0]
    job = sim.job
    assert job is not None and job.job_id == "j-2" and job.state is JobState.RUNNING
    # Restarted from the latest complete checkpoint, not from the beginning.
    assert sim.committed > 4000.0 * 0.9 and sim.progress >= sim.committed
    assert res.overheads["resubmit"] == pytest.approx(sc.restart.resubmit_s)


def test_a_failed_process_spends_the_exit_budget_and_keeps_its_node() -> None:
    sim = Simulation(scenario(), random_failures=False, inject=[Injected(1000.0, BUG, task=4)], validate=True)
    node = sim.assign[4]
    sim.run(1200.0)
    job = sim.job
    assert job is not None
    assert [t.exit_retries for t in job.tasks] == [1 if t.index == 4 else 0 for t in job.tasks]
    assert sum(t.lost_retries for t in job.tasks) == 0
    assert sim.assign[4] == node and not sim.in_repair  # a software fault: the same node again


def test_a_signalled_failure_is_drained_with_no_lost_work_and_no_retry_spent() -> None:
    inject = [Injected(20_000.0, HBM, task=3, signalled=True)]
    drained = Simulation(scenario(drain=True), random_failures=False, inject=inject, validate=True)
    res = drained.run()
    res.check()
    assert res.drains == 1 and res.faults_avoided == 1 and res.interruptions == 0
    assert res.overheads["lost_work"] == 0 and res.overheads["detection"] == 0
    assert drained.table.preempted_total == N  # the real Preempt: the whole gang, whole
    job = drained.job
    assert job is not None and sum(t.lost_retries + t.exit_retries for t in job.tasks) == 0
    assert drained.assign[3].startswith("spare-")

    undrained = Simulation(scenario(drain=False), random_failures=False, inject=inject).run()
    assert undrained.drains == 0 and undrained.interruptions == 1
    assert undrained.overheads["lost_work"] > 0 and undrained.overheads["detection"] > 0
    assert res.ratio > undrained.ratio


def test_a_node_dying_during_the_reservation_fails_that_try_whole_and_it_is_retried() -> None:
    # The host of task 2 dies first (detected 2-4.3 s later); task 1's process dies a second later
    # and is detected at once; the 10 s reservation that follows includes task 2's node.
    sc = scenario(restart=Restart(detect_process_s=0.0, reservation_base_s=10.0))
    inject = [Injected(999.0, HOST, task=2), Injected(1000.0, HBM, task=1)]
    sim = Simulation(sc, random_failures=False, inject=inject, validate=True)
    res = sim.run(1100.0)
    assert res.gang_retries == 1 and res.interruptions == 1 and res.requeues == 1
    job = sim.job
    assert job is not None and all(t.state is TaskState.RUNNING for t in job.tasks)
    assert sum(t.lost_retries for t in job.tasks) == 1  # a failed reservation spends no retry
    assert sim.assign[1].startswith("spare-") and sim.assign[2].startswith("spare-")
    # The first try ran until the host's death was detected (2-4.3 s after 999), then the back-off
    # and a whole second reservation.
    first_try = res.overheads["rescheduling"] - sc.restart.gang_retry_s - sc.restart.reservation_s(N)
    assert 1.0 <= first_try <= 3.3


def test_without_spares_the_gang_waits_for_the_repair() -> None:
    sc = scenario(spares=0, repair_s=3600.0, restart=Restart(detect_process_s=0.0))
    sim = Simulation(sc, random_failures=False, inject=[Injected(1000.0, HBM, task=0)])
    node = sim.assign[0]
    res = sim.run(6000.0)
    assert res.spare_waits == 1 and res.overheads["spare_wait"] == pytest.approx(3600.0)
    assert sim.assign[0] == node  # back from repair, placed again
    assert sim.job is not None and sim.job.message == ""


# -- checkpoint interval -----------------------------------------------------------------------------


def test_young_and_daly_intervals() -> None:
    assert young_interval(2.0, 3600.0) == pytest.approx(120.0)
    x = 2.0 / 7200.0
    assert daly_interval(2.0, 3600.0) == pytest.approx(120.0 * (1 + math.sqrt(x) / 3 + x / 9) - 2.0)
    assert daly_interval(10.0, 4.0) == 4.0  # C >= 2M: checkpoint once per MTTF
    # Young's interval minimises the first-order overhead (when C << M).
    c, m = 0.5, 10_000.0
    grid = [young_interval(c, m) * f for f in (0.5, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 2.0)]
    best = min(grid, key=lambda t: first_order_overhead(t, c, m, 0.0))
    assert best == pytest.approx(young_interval(c, m), rel=0.06)


def test_the_interval_is_youngs_in_whole_steps_for_the_failures_that_lose_work() -> None:
    plain = scenario(mttf_s=10_000.0, blocking_s=0.5)
    assert plain.interval_s == 6.0 * round(young_interval(0.5, 10_000.0) / 6.0)
    drained = dataclasses.replace(plain, drain=Drain(enabled=True))
    assert drained.lossy_mttf_s > plain.lossy_mttf_s
    assert drained.interval_s > plain.interval_s and drained.interval_s % 6.0 == 0
    assert scenario(interval_s=42.0).interval_s == 42.0


def test_the_simulated_job_is_a_training_gang_of_every_task() -> None:
    spec = training_spec(Cluster())
    assert spec.replicas == 2048 and spec.is_gang and spec.gang_min == 2048
    assert spec.resources.gpus == 8 and spec.retry.on_lost == 100


# -- determinism and the benchmark -------------------------------------------------------------------


def test_a_seed_gives_the_same_run_and_drain_sees_the_same_failures() -> None:
    sc = scenario(mttf_s=1800.0)
    a, b, c = simulate(sc, 11), simulate(sc, 11), simulate(sc, 12)
    assert a.as_dict() == b.as_dict()
    assert a.as_dict() != c.as_dict()
    d = simulate(dataclasses.replace(sc, drain=Drain(enabled=True)), 11)
    assert d.faults == a.faults  # paired: the same failures, some of them drained
    assert d.drains > 0 and d.interruptions < a.interruptions


def test_the_simulation_agrees_with_the_first_order_estimate() -> None:
    sc = dataclasses.replace(
        goodput.scenarios(goodput.SMOKE)[0], cluster=dataclasses.replace(goodput.CLUSTER, nodes=64), days=30.0
    )
    sims = [simulate(sc, seed).ratio for seed in range(3)]
    est = goodput.estimate(sc)["ratio"]
    assert sorted(sims)[1] == pytest.approx(est, abs=0.003)


def test_the_smoke_benchmark_writes_its_table(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = goodput.run(smoke=True, out=tmp_path, jobs=1)
    data = json.loads((tmp_path / "goodput-smoke.json").read_text())
    assert data["smoke"] is True and len(data["scenarios"]) == 4
    for s in data["scenarios"]:
        assert 0.9 < s["median"]["ratio"] < 1.0
        assert s["interval"]["used_s"] > 0 and s["restart_path_s"]["total_after_detection"] > 0
    assert results["table"] == data["table"]
    out = capsys.readouterr().out
    assert "ETTR" in out and "llama3/in-memory/fast-restart/drain" in out and "wrote" in out
