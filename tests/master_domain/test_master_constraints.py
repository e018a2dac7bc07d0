"""Per-task constraints at the master, from summaries only: excluded GPU models, node selectors,
fractional GPU shares (with in-flight accounting), data locality with a bounded wait, and what
admission charges for a share (quota class and power)."""

from __future__ import annotations

import math

import pytest
from master_helpers import GI, summary

from domainos.api.v1 import common_pb2
from domainos.jobspec import JobSpec, Locality
from domainos.resources import Resources
from master_domain._admission import Admission, Admitted, Refused
from master_domain._placement import Choice, NoFit, Placer, Want
from master_domain._sched._power import PowerModel, RegionPower
from master_domain._summary import Summary

pytestmark = pytest.mark.timeout(30)
MI = 2**20


def sm(
    nodes: int = 1,
    cpus: int = 16,
    gpus: int = 0,
    model: str = "",
    *,
    labels: dict[str, int] | None = None,
    datasets: dict[str, list[int]] | None = None,
    shares: list[tuple[str, int, int, int]] = (),  # type: ignore[assignment]
) -> Summary:
    msg = summary(nodes, cpus, gpus, model)
    for k, v in (labels or {}).items():
        msg.label_nodes[k] = v
    for name, shards in (datasets or {}).items():
        msg.datasets.append(common_pb2.DatasetPresence(dataset=name, shards=shards))
    for m, pct, mem, count in shares:
        msg.share_slots.append(
            common_pb2.GpuShareSlot(gpu_model=m, free_percent=pct, free_memory_bytes=mem, count=count)
        )
    return Summary.from_proto(msg)


def req(cpus: float = 1, gpus: int = 0, model: str = "", share: int = 0, share_mem: int = 0) -> Resources:
    return Resources(int(cpus * 1000), GI, gpus, model, share, share_mem)


def want(**kw: object) -> Want:
    return Want(**kw)  # type: ignore[arg-type]


def hetero() -> Placer:
    p = Placer()
    p.update("h100", "west", sm(2, gpus=8, model="H100"), now=0.0)
    p.update("a100", "east", sm(2, gpus=8, model="A100"), now=0.0)
    return p


# -- excluded GPU models -------------------------------------------------------------------------


def test_exclude_gpu_models_skips_their_subdomains_and_names_them_when_nothing_is_left() -> None:
    p = hetero()
    for _ in range(3):
        got = p.choose(req(gpus=4), want=want(exclude_gpu_models=frozenset({"H100"})))
        assert got == Choice("a100", "east") and got.gpu_model == "A100"
        p.commit(got.subdomain_id, req(gpus=4), gpu_model=got.gpu_model)
    # a100 has 16 GPUs: 12 are taken, 4 are left; then none.
    p.commit("a100", req(gpus=4), gpu_model="A100")
    got = p.choose(req(gpus=4), want=want(exclude_gpu_models=frozenset({"H100"})))
    assert got == NoFit(
        "no sub-domain has a node with cpus=1 memory=1Gi gpus=4 free (GPU models H100 excluded)"
    )
    # Without the exclusion the H100s are there.
    assert p.choose(req(gpus=4)) == Choice("h100", "west")


def test_exclusion_does_not_touch_cpu_only_tasks() -> None:
    p = hetero()
    got = p.choose(req(cpus=2), want=want(exclude_gpu_models=frozenset({"H100", "A100"})))
    assert isinstance(got, Choice) and got.gpu_model == ""


def test_exclusion_counts_only_allowed_free_gpus_for_spreading() -> None:
    p = Placer()
    mixed = summary(1, 16, 8, "H100")
    mixed.shapes.append(
        common_pb2.NodeShape(
            gpu_model="A100",
            free_gpus=1,
            count=1,
            best=common_pb2.Resources(cpu_millis=16000, memory_bytes=8 * GI, gpus=1, gpu_model="A100"),
        )
    )
    mixed.free_gpus_by_model["A100"] = 1
    p.update("mixed", "x", Summary.from_proto(mixed), now=0.0)
    p.update("a100", "y", sm(1, gpus=4, model="A100"), now=0.0)
    # "mixed" has 9 free GPUs but only 1 allowed; "a100" has 4 allowed: it has more room.
    got = p.choose(req(gpus=1), want=want(exclude_gpu_models=frozenset({"H100"})))
    assert got == Choice("a100", "y")


# -- node selector -------------------------------------------------------------------------------


def test_node_selector_needs_every_label_in_the_summary() -> None:
    p = Placer()
    p.update("a", "r", sm(4, labels={"zone=a": 4, "disk=ssd": 1}), now=0.0)
    p.update("b", "r", sm(8, labels={"zone=a": 8}), now=0.0)
    sel = want(node_selector=(("disk", "ssd"), ("zone", "a")))
    assert p.choose(req(), want=sel) == Choice("a", "r")
    assert p.choose(req(), want=want(node_selector=(("zone", "a"),))) == Choice("b", "r")
    got = p.choose(req(), want=want(node_selector=(("gpu", "fast"), ("zone", "a"))))
    assert got == NoFit(
        "node_selector gpu=fast,zone=a: none of the 2 sub-domain(s) tried has ready nodes with every "
        "label (a lacks gpu=fast; b lacks gpu=fast)"
    )


def test_node_selector_and_no_room_say_both() -> None:
    p = Placer()
    p.update("a", "r", sm(1, cpus=2, labels={"zone=a": 1}), now=0.0)
    p.update("b", "r", sm(1, cpus=16), now=0.0)
    got = p.choose(req(cpus=4), want=want(node_selector=(("zone", "a"),)))
    assert got == NoFit(
        "no sub-domain has a node with cpus=4 memory=1Gi free (1 of 2 sub-domain(s) lack "
        "node_selector labels zone=a)"
    )


# -- fractional shares ---------------------------------------------------------------------------


def test_four_quarter_shares_fill_one_card_and_a_fifth_waits() -> None:
    p = Placer()
    p.update("sd", "r", sm(1, cpus=16, gpus=1, model="T4"), now=0.0)
    quarter = req(share=25)
    for _ in range(4):
        got = p.choose(quarter)
        assert got == Choice("sd", "r") and got.gpu_model == "T4"
        p.commit("sd", quarter, gpu_model=got.gpu_model)
    got = p.choose(quarter)
    assert isinstance(got, NoFit)
    assert got.reason == (
        "no sub-domain has a card with 25% of its compute free (or a whole free GPU) and cpus=1 memory=1Gi"
    )
    # The next summary shows the card fully used (no share slot): still nothing.
    full = summary(1, 16, 1, "T4")
    full.free_gpus_by_model["T4"] = 0
    full.shapes[0].best.gpus = 0
    full.shapes[0].free_gpus = 0
    p.update("sd", "r", Summary.from_proto(full), now=1.0, applied=4)
    assert isinstance(p.choose(quarter), NoFit)


def test_share_slots_best_fit_model_and_memory() -> None:
    p = Placer()
    p.update(
        "sd",
        "r",
        sm(1, gpus=0, shares=[("A100", 60, 20 * GI, 1), ("A100", 30, 4 * GI, 1), ("H100", 30, 40 * GI, 1)]),
        now=0.0,
    )
    # Best fit: the fullest card that still has 30% (and the memory).
    got = p.choose(req(share=30, share_mem=8 * GI))
    assert got == Choice("sd", "r") and got.gpu_model == "H100"
    got = p.choose(req(share=30, share_mem=8 * GI), want=want(exclude_gpu_models=frozenset({"H100"})))
    assert got.gpu_model == "A100"  # type: ignore[union-attr]
    assert isinstance(p.choose(req(share=70)), NoFit)
    assert isinstance(p.choose(req(share=30, model="V100")), NoFit)


def test_share_prefers_a_partly_used_card_to_a_whole_free_one() -> None:
    p = Placer()
    s = summary(1, 16, 1, "L4")
    s.share_slots.append(common_pb2.GpuShareSlot(gpu_model="L4", free_percent=50, count=1))
    p.update("sd", "r", Summary.from_proto(s), now=0.0)
    half = req(share=50)
    for _ in range(3):  # 50% of the used card, then the free card twice
        got = p.choose(half)
        assert isinstance(got, Choice)
        p.commit("sd", half, gpu_model=got.gpu_model)
    assert isinstance(p.choose(half), NoFit)


def test_rounded_down_share_slots_are_tried_last_not_never() -> None:
    """Summaries round a card's free percent down to 10%: 25% free is reported as 20%. A 25% share
    goes to a whole free card first, and else to that card (the sub-domain knows the exact room)."""
    p = Placer()
    s = summary(1, 16, 1, "L4")
    s.share_slots.append(
        common_pb2.GpuShareSlot(gpu_model="L4", free_percent=20, free_memory_bytes=GI, count=1)
    )
    p.update("sd", "r", Summary.from_proto(s), now=0.0)
    quarter = req(share=25)
    assert p.slot_model("sd", quarter) == "L4"
    p.commit("sd", quarter, gpu_model="L4")  # took the whole free card (certain room)
    view_free = p.free_now("sd")
    assert view_free is not None and view_free[0].gpus == 0
    got = p.choose(quarter)  # the 75% left on the split card
    assert isinstance(got, Choice)
    p.commit("sd", quarter, gpu_model="L4")
    p.commit("sd", quarter, gpu_model="L4")
    p.commit("sd", quarter, gpu_model="L4")  # the split card is full; the 20% slot is all that is left
    got = p.choose(quarter)
    assert got == Choice("sd", "r")  # maybe: the sub-domain answers
    p.commit("sd", quarter, gpu_model="L4")
    assert isinstance(p.choose(quarter), NoFit)  # nothing left even rounded


# -- locality ------------------------------------------------------------------------------------


def test_locality_only_holders_until_the_wait_is_over_then_any_saying_so() -> None:
    p = Placer()
    p.update("near", "r", sm(1, cpus=2, datasets={"imagenet": [0, 1, 2]}), now=0.0)
    p.update("far", "r", sm(4, cpus=16), now=0.0)
    early = want(dataset="imagenet", shard=1, locality_until=100.0, locality_wait_s=30.0, now=90.0)
    got = p.choose(req(), want=early)
    assert got == Choice("near", "r") and got.why == "locality: holds shard 1 of dataset imagenet"
    p.commit("near", req())
    p.commit("near", req())  # near is full now
    got = p.choose(req(), want=early)
    assert got == NoFit(
        "locality: 1 sub-domain(s) hold shard 1 of dataset imagenet but none has a node with cpus=1 "
        "memory=1Gi free; any sub-domain will do in 10s (locality wait 30s)"
    )
    late = want(dataset="imagenet", shard=1, locality_until=100.0, locality_wait_s=30.0, now=100.5)
    got = p.choose(req(), want=late)
    assert isinstance(got, Choice) and got == Choice("far", "r")
    assert "the 30s locality wait is over" in got.why
    nobody = want(dataset="imagenet", shard=7, locality_until=100.0, locality_wait_s=30.0, now=95.0)
    got = p.choose(req(), want=nobody)
    assert got == NoFit(
        "locality: no connected sub-domain holds shard 7 of dataset imagenet; any sub-domain will do "
        "in 5s (locality wait 30s)"
    )


def test_want_for_task_from_the_spec() -> None:
    spec = JobSpec(command=("x",), replicas=3, locality=Locality("ds", (5, 6, 7), 20.0))
    w = Want.for_task(spec, 2, created_at=1000.0, now=1005.0)
    assert w is not None and (w.dataset, w.shard, w.locality_until, w.strict) == ("ds", 7, 1020.0, True)
    assert Want.for_task(JobSpec(command=("x",)), 0, 0.0, 0.0) is None
    w = Want.for_task(JobSpec(command=("x",), exclude_gpu_models=("H100",)), 0, 0.0, 0.0)
    assert w is not None and w.excluded("H100") and not w.excluded("A100") and not w.strict


# -- admission: shares charge their own class and TDP x share ------------------------------------


def test_admission_charges_a_share_as_gpu_share_percent_and_tdp_fraction() -> None:
    adm = Admission([RegionPower("r", 10.0)], power_model=PowerModel({"T4": 70}))
    p = Placer()
    p.update("sd", "r", sm(1, gpus=1, model="T4"), now=0.0)
    got = adm.decide("acme", req(share=25), p.choose, p.slot_model)
    assert isinstance(got, Admitted)
    assert got.gpu_model == "T4"
    assert got.demand == {"cpu": 1000, "memory": GI, "gpu-share:T4": 25}
    assert got.watts == math.ceil(70 * 25 / 100)
    # A quota on shares refuses with numbers.
    adm.put_quota(adm.quotas.set_quota("acme", {"gpu-share:*": 20}))
    refused = adm.decide("acme", req(share=25), p.choose, p.slot_model)
    assert isinstance(refused, Refused) and refused.kind == "quota"
    assert "gpu-share:*" in refused.reason and "20%" in refused.reason


# -- in-process master over real gRPC --------------------------------------------------------------


def test_master_places_by_constraints_and_sends_them_in_place_task() -> None:
    """Two fake sub-domains (H100, A100): ``exclude_gpu_models: [H100]`` goes to the A100 one, and
    the PlaceTask's TaskSpec carries the task's constraints (its shard, the submit time)."""
    from master_helpers import FakeSubdomain, run, wait_for

    from domainos.api.v1 import master_pb2
    from master_domain import MasterConfig, MasterDomain

    async def body() -> None:
        cfg = MasterConfig(listen="127.0.0.1:0", metrics_listen="", store="memory://", insecure=True)
        master = MasterDomain(cfg)
        await master.start()
        fakes = [
            FakeSubdomain(master.address, "h", "r", behaviour="run", gpus=8, model="H100", cpus=16),
            FakeSubdomain(master.address, "a", "r", behaviour="run", gpus=8, model="A100", cpus=16),
        ]
        try:
            for f in fakes:
                await f.connect()
                await wait_for(lambda f=f: f.welcome is not None)  # type: ignore[misc]
            spec = master_pb2.JobSpec(
                name="t",
                command=["true"],
                replicas=2,
                resources=common_pb2.Resources(cpu_millis=1000, memory_bytes=GI, gpus=2),
                exclude_gpu_models=["H100"],
                locality=master_pb2.Locality(dataset="ds", shards=[4, 5], wait_s=0),
            )
            job, _ = await master.submit(spec, "")
            await wait_for(lambda: len(fakes[1].placed) == 2, 10, "both tasks placed on the A100 sub-domain")
            assert not fakes[0].placed
            placed = sorted(fakes[1].placed, key=lambda s: s.task_index)
            got = [
                (s.placement.dataset, s.placement.shard, list(s.placement.exclude_gpu_models)) for s in placed
            ]
            assert got == [("ds", 4, ["H100"]), ("ds", 5, ["H100"])]
            assert placed[0].placement.submitted_at == pytest.approx(job.created_at)
        finally:
            for f in fakes:
                await f.close()
            await master.shutdown()

    run(body())


# -- node affinity ---------------------------------------------------------------------------------


def test_affinity_sends_a_task_to_its_nodes_sub_domain() -> None:
    p = Placer()
    p.update("big", "west", sm(4, cpus=64), now=0.0)
    p.update("small", "east", sm(1, cpus=4), now=0.0)
    c = p.choose(req(1), want=want(subdomain="small", node="n9", node_soft=False))
    assert c == Choice("small", "east") and c.why == "affinity: node n9"  # not the roomiest


def test_hard_affinity_waits_for_its_sub_domain() -> None:
    p = Placer()
    p.update("big", "west", sm(4, cpus=64), now=0.0)
    gone = p.choose(req(1), want=want(subdomain="away", node="n1", node_soft=False))
    assert gone == NoFit(
        "affinity: task pinned to node n1, but sub-domain away (of node n1) is not connected"
    )
    p.update("small", "east", sm(1, cpus=4), now=0.0)
    full = p.choose(req(8), want=want(subdomain="small", node="n1", node_soft=False))
    assert isinstance(full, NoFit) and full.reason.startswith(
        "affinity: task pinned to node n1, but sub-domain small (of node n1) has no a node with cpus=8"
    )


def test_soft_affinity_falls_back_and_says_why() -> None:
    p = Placer()
    p.update("big", "west", sm(4, cpus=64), now=0.0)
    c = p.choose(req(1), want=want(subdomain="away", node="n1", node_soft=True))
    assert c == Choice("big", "west")
    assert c.why == "affinity is soft and sub-domain away (of node n1) is not connected"


def test_want_for_task_reads_the_affinity_of_each_task() -> None:
    from domainos.jobspec import parse_spec

    spec = parse_spec(
        {"command": ["x"], "replicas": 2, "affinity": {"nodes": ["sd-a/n1", "sd-b/n2"], "soft": False}}
    )
    w1 = Want.for_task(spec, 1, 0.0, 0.0)
    assert w1 is not None and (w1.subdomain, w1.node, w1.node_soft) == ("sd-b", "n2", False)
