"""The master's admission path: quotas, region power budgets and priority order, then explain.

Two tiers: the pure :class:`~master_domain._admission.Admission` over a real Placer (``validate()``
after every step), and an in-process master over real gRPC with fake sub-domains.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from master_helpers import FakeSubdomain, run, summary, wait_async, wait_for

from domainos.api.v1 import common_pb2, master_pb2
from domainos.errors import InvalidArgument, NotFound
from domainos.resources import Resources
from master_domain import MasterConfig, MasterDomain
from master_domain._admission import Admission, Admitted, Refused, allocation_id
from master_domain._jobs import JobState
from master_domain._placement import Placer
from master_domain._sched._power import RegionPower
from master_domain._summary import Summary

pytestmark = pytest.mark.timeout(60)
GI = 2**30


# -- pure ------------------------------------------------------------------------------------------


def placer(*sds: tuple[str, str, int, int, str]) -> Placer:
    """Sub-domains ``(id, region, nodes, gpus per node, model)`` with 16 CPUs per node."""
    p = Placer()
    for sd, region, nodes, gpus, model in sds:
        p.update(sd, region, Summary.from_proto(summary(nodes, 16, gpus, model)), now=0.0)
    return p


def gpu_req(gpus: int, model: str = "") -> Resources:
    return Resources(1000, GI, gpus, model)


def decide(adm: Admission, p: Placer, tenant: str, request: Resources) -> Admitted | Refused:
    out = adm.decide(tenant, request, p.choose, p.slot_model)
    adm.validate()
    return out


def test_quota_refusal_moves_to_the_next_candidate_then_waits_with_numbers() -> None:
    adm = Admission()
    p = placer(("east-1", "east", 4, 8, "H100"), ("west-1", "west", 1, 8, "A100"))
    adm.put_quota(adm.quotas.set_quota("acme", {"gpu:H100": 2}))
    got = decide(adm, p, "acme", gpu_req(4))
    # east-1 has the most room but acme may use only 2 H100s: the A100s of west-1 are next.
    assert isinstance(got, Admitted) and got.subdomain_id == "west-1" and got.gpu_model == "A100"
    assert got.demand == {"cpu": 1000, "memory": GI, "gpu:A100": 4}
    assert "after skipping east-1 (quota)" in got.why
    adm.put_quota(adm.quotas.set_quota("acme", {"gpu:*": 3}))
    got = decide(adm, p, "acme", gpu_req(4))
    assert isinstance(got, Refused) and got.kind == "quota"
    # Both sub-domains are refused by the same quota: said once.
    assert got.reason == (
        "quota: tenant acme would use 4 of 3 gpu:* in all regions (quota */*: 0 in use, 4 requested)"
    )
    # Another tenant is not limited.
    assert isinstance(decide(adm, p, "other", gpu_req(4)), Admitted)


def test_usage_counts_against_the_quota_until_released() -> None:
    adm = Admission()
    p = placer(("east-1", "east", 4, 8, "H100"))
    adm.quotas.set_quota("acme", {"gpu:H100": 4})
    first = decide(adm, p, "acme", gpu_req(3))
    assert isinstance(first, Admitted)
    adm.charge("j1/0/0", "acme", first.region, first.subdomain_id, first.demand, first.watts, first.why)
    adm.validate()
    second = decide(adm, p, "acme", gpu_req(2))
    assert isinstance(second, Refused)
    assert "would use 5 of 4 gpu:H100" in second.reason and "3 in use, 2 requested" in second.reason
    [row] = adm.quota_rows("acme")
    assert row.used == {"gpu:H100": 3}
    adm.release("j1/0/0")
    adm.release("j1/0/0")  # idempotent
    adm.validate()
    assert isinstance(decide(adm, p, "acme", gpu_req(2)), Admitted)
    assert adm.quota_rows("acme")[0].used == {"gpu:H100": 0}


def test_power_over_budget_goes_to_another_region_or_waits_with_kw() -> None:
    adm = Admission([RegionPower("east", 2.0), RegionPower("west", 10.0)])
    p = placer(("east-1", "east", 4, 8, "H100"), ("west-1", "west", 1, 8, "H100"))
    got = decide(adm, p, "acme", gpu_req(4))  # 4 x 700 W = 2.8 kW > east's 2 kW
    assert isinstance(got, Admitted) and got.subdomain_id == "west-1" and got.watts == 2800
    assert "after skipping east-1 (power)" in got.why and "region west 2.8 kW of 10 kW" in got.why
    adm.charge("j1/0/0", "acme", "west", "west-1", got.demand, got.watts, got.why)
    adm.charge("j2/0/0", "acme", "west", "west-1", got.demand, got.watts, got.why)
    adm.charge("j3/0/0", "acme", "west", "west-1", got.demand, got.watts, got.why)
    adm.validate()
    refused = decide(adm, p, "acme", gpu_req(4))
    assert isinstance(refused, Refused) and refused.kind == "power"
    assert "region east: 0 kW in use + 2.8 kW asked > budget 2 kW" in refused.reason
    assert "region west: 8.4 kW in use + 2.8 kW asked > budget 10 kW" in refused.reason
    # CPU-only work draws no GPU power and is never held by the budget.
    assert isinstance(decide(adm, p, "acme", Resources(1000, GI, 0, "")), Admitted)


def test_no_candidate_is_a_capacity_wait_and_regions_without_budget_are_not_capped() -> None:
    adm = Admission([RegionPower("east", float("inf"))])
    p = placer(("east-1", "east", 1, 8, "H100"))
    got = decide(adm, p, "acme", gpu_req(16))
    assert isinstance(got, Refused) and got.kind == "capacity"
    assert got.reason == "no sub-domain has a node with cpus=1 memory=1Gi gpus=16 free"
    assert isinstance(decide(adm, p, "acme", gpu_req(8)), Admitted)
    assert adm.describe_power("east") == "region east: no power budget (not capped)"


def test_a_subdomain_without_a_region_is_charged_under_no_region() -> None:
    adm = Admission()
    p = placer(("east-1", "", 1, 8, "H100"))
    adm.quotas.set_quota("acme", {"gpu:*": 2}, region="no-region")
    got = decide(adm, p, "acme", gpu_req(2))
    assert isinstance(got, Admitted) and got.region == ""
    adm.charge("j/0/0", "acme", got.region, got.subdomain_id, got.demand, got.watts)
    adm.validate()
    refused = decide(adm, p, "acme", gpu_req(1))
    assert isinstance(refused, Refused) and "would use 3 of 2 gpu:* in region no-region" in refused.reason


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["acme", "beta"]), st.integers(1, 8), st.booleans()), max_size=30))
def test_random_workloads_never_exceed_a_quota_or_a_power_budget(
    ops: list[tuple[str, int, bool]],
) -> None:
    adm = Admission([RegionPower("east", 6.0), RegionPower("west", 4.0)])
    p = placer(("east-1", "east", 2, 8, "H100"), ("west-1", "west", 2, 8, "A100"))
    adm.quotas.set_quota("acme", {"gpu:*": 10})
    adm.quotas.set_quota("beta", {"gpu:H100": 4}, region="east")
    live: list[str] = []
    for i, (tenant, gpus, release) in enumerate(ops):
        if release and live:
            adm.release(live.pop(0))
        else:
            got = decide(adm, p, tenant, gpu_req(gpus))
            if isinstance(got, Admitted):
                alloc = allocation_id(f"j{i}", 0, 0)
                adm.charge(alloc, tenant, got.region, got.subdomain_id, got.demand, got.watts, got.why)
                live.append(alloc)
            else:
                assert got.reason and any(ch.isdigit() for ch in got.reason)
        adm.validate()
        assert adm.quotas.used("acme").get("gpu:*", 0) <= 10
        assert adm.quotas.used("beta", "east").get("gpu:H100", 0) <= 4
        assert adm.power.charged_w("east") <= 6000 and adm.power.charged_w("west") <= 4000


def test_queue_order_is_priority_then_share_then_fifo() -> None:
    adm = Admission()
    adm.set_capacity({"cpu": 16_000})
    adm.sync_pending(
        [
            ("a-normal", "acme", "normal", 1.0),
            ("b-normal", "beta", "normal", 2.0),
            ("c-high", "beta", "high", 3.0),
            ("d-low", "acme", "low", 0.0),
            ("e-bad", "acme", "no-such-class", 4.0),  # an old record: the default class
        ]
    )
    adm.validate()
    assert list(adm.order()) == ["c-high", "a-normal", "b-normal", "e-bad", "d-low"]
    # acme holds half the CPUs: beta's normal job goes before acme's older one.
    adm.charge("x/0/0", "acme", "east", "east-1", {"cpu": 8000}, 0)
    adm.validate()
    assert list(adm.order()) == ["c-high", "b-normal", "a-normal", "e-bad", "d-low"]
    assert "1 jobs ahead" in adm.queue_position("b-normal")
    adm.note_wait("b-normal", Refused("capacity", "full"))
    adm.sync_pending([("b-normal", "beta", "normal", 2.0)])
    adm.validate()
    assert list(adm.order()) == ["b-normal"] and adm.queue_position("a-normal") == ""
    adm.sync_pending([])
    assert adm.last_wait("b-normal") is None
    adm.validate()


# -- in-process master -------------------------------------------------------------------------------


def config(**kw: Any) -> MasterConfig:
    base: dict[str, Any] = {"listen": "127.0.0.1:0", "metrics_listen": "", "store": "memory://"}
    base.update(kw)
    base.setdefault("insecure", True)
    return MasterConfig(**base)


TOPOLOGY = """\
version: 1
regions:
  - name: east
    power_budget_kw: 2
    subdomains:
      - id: east-1
  - name: west
    subdomains:
      - id: west-1
"""


class Cluster:
    def __init__(self, master: MasterDomain) -> None:
        self.master = master
        self.address = master.address
        self.fakes: list[FakeSubdomain] = []

    async def subdomain(self, sd: str, region: str = "east", **kw: Any) -> FakeSubdomain:
        fake = FakeSubdomain(self.address, sd, region, **kw)
        self.fakes.append(fake)
        await fake.connect()
        await wait_for(lambda: fake.welcome is not None, what=f"{sd} welcomed")
        return fake

    async def submit(
        self, gpus: int = 0, cpus: int = 1000, tenant: str = "", priority: str = "", rid: str = ""
    ) -> str:
        spec = master_pb2.JobSpec(
            name="t",
            command=["python3", "-c", "pass"],
            resources=common_pb2.Resources(cpu_millis=cpus, memory_bytes=GI, gpus=gpus),
            tenant=tenant,
            priority=priority,
        )
        job, _ = await self.master.submit(spec, rid)
        return job.job_id

    async def state(self, job_id: str, state: JobState, timeout: float = 10.0) -> None:
        async def check() -> bool:
            return (await self.master.get_job(job_id)).state is state

        await wait_async(check, timeout, f"job {job_id} {state.value}")

    async def message(self, job_id: str, text: str) -> str:
        async def check() -> str:
            msg = (await self.master.get_job(job_id)).message
            return msg if text in msg else ""

        return str(await wait_async(check, 5.0, f"job {job_id} message with {text!r}"))

    async def passes(self, n: int = 3) -> None:
        for _ in range(n):
            await self.master.schedule_once()

    async def close(self) -> None:
        for fake in self.fakes:
            await fake.close()
        await self.master.shutdown()


@asynccontextmanager
async def cluster(**kw: Any) -> AsyncIterator[Cluster]:
    master = MasterDomain(config(**kw))
    await master.start()
    c = Cluster(master)
    await master.directory.ensure_tenant("acme", "tests")
    try:
        yield c
    finally:
        await c.close()


def test_over_gpu_quota_waits_never_placed_then_runs_when_raised() -> None:
    async def body() -> None:
        async with cluster() as c:
            fake = await c.subdomain("east-1", behaviour="run", nodes=2, gpus=8, model="H100")
            quota = await c.master.set_quota("acme", "", "", {"gpu:H100": 2})
            assert (quota.region, quota.subdomain) == ("*", "*")
            job = await c.submit(gpus=4, tenant="acme")
            msg = await c.message(job, "waiting:")
            assert "tenant acme would use 4 of 2 gpu:H100 in all regions" in msg
            assert "(quota */*: 0 in use, 4 requested)" in msg
            await c.passes()
            assert fake.placed == [] and (await c.master.get_job(job)).state is JobState.PENDING
            text = await c.master.explain(job)
            assert "why it waits: quota: tenant acme would use 4 of 2 gpu:H100" in text
            assert "queue: job " + job + " is pending with 0 jobs ahead" in text
            assert "quota acme */*: gpu:H100 0 of 2" in text
            # Other tenants are not held by acme's quota.
            free = await c.submit(gpus=1)
            await c.state(free, JobState.RUNNING)
            await c.master.set_quota("acme", "*", "*", {"gpu:H100": 4})
            await c.state(job, JobState.RUNNING)
            assert [p.job_id for p in fake.placed] == [free, job]
            [row] = await c.master.list_quotas("acme")
            assert row.used == {"gpu:H100": 4}
            text = await c.master.explain(job)
            assert "RUNNING on sub-domain east-1 (region east)" in text
            assert "gpu:H100 4 of 4 in */*" in text
            # Finishing the job releases its charge.
            await c.master.cancel_job(job, "done")
            await c.state(job, JobState.CANCELLED)
            assert (await c.master.list_quotas("acme"))[0].used == {"gpu:H100": 0}

    run(body())


def test_quota_api_validates_and_deletes() -> None:
    async def body() -> None:
        async with cluster() as c:
            with pytest.raises(NotFound):
                await c.master.set_quota("nobody", "*", "*", {"gpu:*": 1})
            with pytest.raises(InvalidArgument) as err:
                await c.master.set_quota("acme", "*", "*", {"gpus": 1})
            assert "unknown resource class 'gpus'" in str(err.value)
            with pytest.raises(InvalidArgument):
                await c.master.set_quota("acme", "*", "*", {"cpu": -1})
            await c.master.set_quota("acme", "east", "*", {"cpu": 4000})
            keys = [kv.key for kv in await c.master.store.range("/domainos/master/quotas/")]
            assert keys == ["/domainos/master/quotas/acme/east/*"]
            stored = json.loads((await c.master.store.range("/domainos/master/quotas/"))[0].value)
            assert stored["limits"] == {"cpu": 4000}
            assert [r.quota.region for r in await c.master.list_quotas()] == ["east"]
            assert await c.master.list_quotas("system") == []
            with pytest.raises(NotFound):
                await c.master.delete_quota("acme", "west", "*")
            await c.master.delete_quota("acme", "east", "*")
            assert await c.master.list_quotas() == []
            assert await c.master.store.range("/domainos/master/quotas/") == []

    run(body())


def test_over_region_power_goes_to_the_other_regions_subdomain(tmp_path: Path) -> None:
    topo = tmp_path / "topology.yaml"
    topo.write_text(TOPOLOGY)

    async def body() -> None:
        async with cluster(topology=str(topo)) as c:
            east = await c.subdomain("east-1", "east", behaviour="run", nodes=4, gpus=8, model="H100")
            await c.passes(1)
            west = await c.subdomain("west-1", "west", behaviour="run", nodes=1, gpus=8, model="H100")
            small = await c.submit(gpus=2)  # 1.4 kW: fits east's 2 kW (east has the most room)
            await c.state(small, JobState.RUNNING)
            big = await c.submit(gpus=2)  # 1.4 + 1.4 kW > 2 kW: west
            await c.state(big, JobState.RUNNING)
            assert [p.job_id for p in east.placed] == [small]
            assert [p.job_id for p in west.placed] == [big]
            text = await c.master.explain(big)
            assert "on sub-domain west-1 (region west)" in text and "after skipping east-1 (power)" in text
            assert "region west: no power budget (not capped)" in text
            assert "region east: 1.4 kW in use" in await c.master.explain(small)
            # When no region can take it, the job waits with the numbers.
            await west.close()
            c.fakes.remove(west)
            held = await c.submit(gpus=2)
            msg = await c.message(held, "waiting:")
            assert "power: region east: 1.4 kW in use + 1.4 kW asked > budget 2 kW" in msg
            assert east.placed[-1].job_id == small

    run(body())


def test_high_priority_is_placed_before_earlier_normal_jobs() -> None:
    async def body() -> None:
        async with cluster() as c:
            normal1 = await c.submit(cpus=4000, rid="n1")
            normal2 = await c.submit(cpus=4000, rid="n2")
            high = await c.submit(cpus=4000, priority="high", rid="h")
            await c.passes(1)
            assert "no sub-domain is connected" in (await c.master.get_job(normal1)).message
            fake = await c.subdomain("east-1", behaviour="run", nodes=1, cpus=4)
            await c.state(high, JobState.RUNNING)
            await c.passes()
            assert [p.job_id for p in fake.placed] == [high]
            for job in (normal1, normal2):
                assert (await c.master.get_job(job)).state is JobState.PENDING
            text = await c.master.explain(normal2)
            assert "why it waits: capacity: no sub-domain has a node with cpus=4" in text
            assert "1 jobs ahead" in text and "priority normal=100" in text
            assert "priority high=1000" in await c.master.explain(high)

    run(body())


def test_restart_keeps_quotas_and_usage(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/master.db"

    async def body() -> None:
        async with cluster(store=url) as c:
            fake = await c.subdomain("east-1", behaviour="run", nodes=1, gpus=8, model="H100")
            await c.master.set_quota("acme", "east", "*", {"gpu:H100": 5, "cpu": 64_000})
            running = await c.submit(gpus=3, tenant="acme")
            await c.state(running, JobState.RUNNING)
            await fake.close()
            c.fakes.remove(fake)
        async with cluster(store=url) as c:
            [row] = await c.master.list_quotas("acme")
            assert dict(row.quota.limits) == {"cpu": 64_000, "gpu:H100": 5}
            assert row.used == {"cpu": 1000, "gpu:H100": 3}
            fake.address, fake.welcome = c.address, None
            fake.placed.clear()
            c.fakes.append(fake)
            await fake.connect()
            await wait_for(lambda: fake.welcome is not None, what="welcome after restart")
            await c.state(running, JobState.RUNNING)
            over = await c.submit(gpus=3, tenant="acme")
            msg = await c.message(over, "waiting:")
            assert "would use 6 of 5 gpu:H100 in region east (quota east/*: 3 in use, 3 requested)" in msg
            assert fake.placed == []
            assert "placed before this master started" in await c.master.explain(running)

    run(body())


def test_explain_of_a_finished_job_and_of_an_unknown_one() -> None:
    async def body() -> None:
        async with cluster() as c:
            await c.subdomain("east-1", behaviour="succeed")
            job = await c.submit()
            await c.state(job, JobState.SUCCEEDED)
            text = await c.master.explain(job)
            assert text.startswith(f"job {job} (tenant system, priority normal=100")
            assert "SUCCEEDED" in text and "finished tasks: 1 SUCCEEDED" in text
            with pytest.raises(NotFound):
                await c.master.explain("j-nope")
            assert allocation_id(job, 0, 0) == f"{job}/0/0"

    run(body())
