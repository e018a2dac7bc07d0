"""One regular test per bug the fuzz tests found, so each stays fixed even when a fuzz run's
examples do not happen to reach it again."""

from __future__ import annotations

import math
from collections.abc import Iterator

import grpc
import pytest
from fuzz_harness import (
    LoopThread,
    MasterRig,
    ScriptedAgent,
    SubdomainRig,
    inventory,
    poll,
    poll_async,
    stream,
    summary,
    unary,
)

from domainos.api.v1 import agent_pb2, common_pb2, master_pb2, subdomain_pb2
from domainos.errors import MAX_MESSAGE_CHARS, InvalidArgument, NotFound, clip
from domainos.model import NodeInventory, NodeUsage
from domainos.rpc import MAX_STATUS_DETAILS_BYTES, status_details
from master_domain._summary import MAX_NODES, Summary

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def master() -> Iterator[tuple[LoopThread, MasterRig]]:
    loop = LoopThread()
    try:
        rig = loop.call(MasterRig.start(pause_scheduler=True), 60, "master start")
        yield loop, rig
        loop.call(rig.close(), 60, "master shutdown")
    finally:
        loop.close()


@pytest.fixture
def subdomain() -> Iterator[tuple[LoopThread, SubdomainRig]]:
    loop = LoopThread()
    try:
        rig = loop.call(SubdomainRig.start(), 60, "sub-domain start")
        yield loop, rig
        loop.call(rig.close(), 60, "sub-domain shutdown")
    finally:
        loop.close()


# -- 1. an error quoting a huge value lost its status in transport --------------------------------------


def _wire_size(text: str) -> int:
    return sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in text.encode())


@pytest.mark.parametrize("unit", ["x", "💥", "日本語", "\x01"])
def test_error_quoting_a_huge_value_keeps_its_status(master: tuple[LoopThread, MasterRig], unit: str) -> None:
    """Found by the DomainControl fuzz: ListNodes(subdomain_id=<20 kB>) answered RESOURCE_EXHAUSTED
    "Stream removed (received metadata size exceeds hard limit)": the NOT_FOUND message quoted the id
    whole, and the client dropped the oversize trailer."""
    _loop, rig = master
    huge = unit * 100_000
    for method, request, code, start, end in (
        (
            "ListNodes",
            master_pb2.ListNodesRequest(subdomain_id=huge),
            "NOT_FOUND",
            "subdomain_id: ",
            "is not known",
        ),
        ("GetJob", master_pb2.GetJobRequest(job_id=huge), "NOT_FOUND", "job_id: job ", "not found"),
        (
            "SubmitJob",
            master_pb2.SubmitJobRequest(spec=master_pb2.JobSpec(name=huge)),
            "INVALID_ARGUMENT",
            "name: ",
            "letters, digits, '-', '_' or '.'",
        ),
    ):
        for _ in range(5):  # past the soft limit, clients drop trailers at random
            outcome = unary(getattr(rig.client, method), request, rig.metadata)
            assert outcome.code.name == code, (method, outcome.describe())
            assert outcome.details.startswith(start) and outcome.details.endswith(end), outcome.details
            assert _wire_size(outcome.details) <= MAX_STATUS_DETAILS_BYTES


def test_clip_keeps_start_and_end_and_says_how_much_was_cut() -> None:
    assert clip("short") == "short"
    text = "field: '" + "x" * 5000 + "' is not valid"
    out = clip(text)
    assert len(out) <= MAX_MESSAGE_CHARS + 40
    assert out.startswith("field: 'xxx") and out.endswith("' is not valid")
    assert "characters cut]" in out
    err = NotFound("job " + "y" * 10_000 + " not found", field="job_id")
    assert len(str(err)) < MAX_MESSAGE_CHARS + 100 and str(err).endswith(" not found")
    wide = status_details("💥" * 5000 + " the end")
    assert _wire_size(wide) <= MAX_STATUS_DETAILS_BYTES and wide.endswith(" the end")
    assert status_details("plain") == "plain"


# -- 2. a sub-domain's summary broke GetClusterInfo for every caller --------------------------------------


def test_summary_with_out_of_range_counts_is_refused_and_cluster_info_keeps_working(
    master: tuple[LoopThread, MasterRig],
) -> None:
    """Found by the SubDomainGateway fuzz: a Hello whose summary said nodes_ready=2**31-1 was
    welcomed, and GetClusterInfo (int32 sums) failed with INTERNAL while it stayed connected."""
    _loop, rig = master
    hostile = summary()
    hostile.nodes_total = hostile.nodes_ready = 2**31 - 1
    hello = subdomain_pb2.SubDomainMessage(
        hello=subdomain_pb2.Hello(subdomain_id="fz-a", region="east", incarnation="i", summary=hostile)
    )
    outcome = stream(rig.gateway.Connect, [hello])
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome.describe()
    assert outcome.details == f"hello.summary.nodes_total: must be between 0 and {MAX_NODES}, got {2**31 - 1}"
    assert rig.master._registry.get("fz-a") is None
    info = unary(rig.client.GetClusterInfo, master_pb2.GetClusterInfoRequest(), rig.metadata)
    assert info.code == grpc.StatusCode.OK, info.describe()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda s: setattr(s, "nodes_ready", -1), "summary.nodes_ready"),
        (lambda s: setattr(s.capacity, "cpu_millis", -1000), "summary.capacity.cpu_millis"),
        (lambda s: setattr(s.largest_node, "memory_bytes", -1), "summary.largest_node.memory_bytes"),
        (lambda s: setattr(s.shapes[0], "count", -3), "summary.shapes[0].count"),
        (lambda s: setattr(s.shapes[0].best, "gpus", -1), "summary.shapes[0].best.gpus"),
        (lambda s: s.gpus_by_model.update({"H100": -8}), "summary.gpus_by_model['H100']"),
        (lambda s: setattr(s, "power_draw_w", math.nan), "summary.power_draw_w"),
        (lambda s: setattr(s, "power_draw_w", -math.inf), "summary.power_draw_w"),
        (lambda s: setattr(s, "max_nodes", MAX_NODES + 1), "summary.max_nodes"),
    ],
)
def test_summary_from_proto_refuses_values_no_sub_domain_can_have(change: object, field: str) -> None:
    msg = summary()
    change(msg)  # type: ignore[operator]
    with pytest.raises(InvalidArgument) as info:
        Summary.from_proto(msg)
    assert info.value.field == field
    Summary.from_proto(summary())  # a real one passes


def test_a_bad_summary_report_is_ignored_and_the_stream_stays(master: tuple[LoopThread, MasterRig]) -> None:
    loop, rig = master
    bad, good = summary(), summary()
    bad.power_draw_w = math.nan
    good.power_draw_w = 10.0

    async def send() -> None:
        for seq, s in ((1, bad), (2, good)):
            report = subdomain_pb2.SummaryReport(incarnation=rig.good.incarnation, seq=seq, summary=s)
            await rig.good._call.write(subdomain_pb2.SubDomainMessage(summary=report))

    loop.call(send())

    async def applied() -> bool:
        rec = rig.master._registry.get(MasterRig.GOOD)
        return rec is not None and rec.summary.power_draw_w == 10.0

    loop.call(poll_async(applied, what="the good summary after the bad one"))
    info = unary(rig.client.GetClusterInfo, master_pb2.GetClusterInfoRequest(), rig.metadata)
    assert info.code == grpc.StatusCode.OK, info.describe()
    assert not rig.good.ended.is_set()


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"max_nodes": -1}, f"hello.max_nodes: must be between 0 and {MAX_NODES}, got -1"),
        ({"address": "a" * 300}, "hello.address: must be at most 255 characters, got 300"),
        ({"incarnation": "i" * 200}, "hello.incarnation: must be at most 128 characters, got 200"),
    ],
)
def test_hello_fields_kept_in_the_registry_are_bounded(
    master: tuple[LoopThread, MasterRig], fields: dict[str, object], error: str
) -> None:
    """A Hello is kept (registry, store, ListDomains) after its stream ends: a few megabyte-long
    addresses would have made ListDomains larger than any client accepts, for good."""
    _loop, rig = master
    hello = subdomain_pb2.Hello(subdomain_id="fz-a", region="east", incarnation="i", summary=summary())
    for name, value in fields.items():
        setattr(hello, name, value)
    outcome = stream(rig.gateway.Connect, [subdomain_pb2.SubDomainMessage(hello=hello)])
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome.describe()
    assert outcome.details == error


# -- 3. one agent's NaN GPU power poisoned its sub-domain for good --------------------------------------


def _register_with_power(node_id: str, power: float) -> agent_pb2.AgentMessage:
    usage = common_pb2.NodeUsage(cpu_percent=1.0, gpus=[common_pb2.GpuUsage(index=0, power_w=power)])
    return agent_pb2.AgentMessage(
        register=agent_pb2.Register(inventory=inventory(node_id), incarnation="i", usage=usage)
    )


@pytest.mark.parametrize("power", [math.nan, math.inf, -5.0])
def test_register_with_a_broken_power_reading_is_refused(
    subdomain: tuple[LoopThread, SubdomainRig], power: float
) -> None:
    """Found by the AgentGateway fuzz: the sub-domain summed the reading into its power aggregate,
    which stayed NaN after the node left (registry.validate(): "aggregates drifted"), and every
    later summary() raised ValueError -- the sub-domain could no longer say Hello to its master."""
    loop, rig = subdomain
    outcome = stream(rig.gateway.Connect, [_register_with_power("fz-p", power)])
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome.describe()
    assert outcome.details.startswith("register.usage.gpus[0].power_w: must be a finite number between 0 and")

    async def check() -> None:
        rig.check()

    loop.call(check())


def test_report_with_a_broken_reading_keeps_the_node_and_drops_only_the_usage(
    subdomain: tuple[LoopThread, SubdomainRig],
) -> None:
    loop, rig = subdomain
    bad = common_pb2.NodeUsage(cpu_percent=math.nan, gpus=[common_pb2.GpuUsage(index=0, power_w=math.inf)])
    good_usage = common_pb2.NodeUsage(cpu_percent=7.0)

    async def body() -> None:
        agent = ScriptedAgent(rig.address, "fz-r")
        await agent.connect()
        try:
            for seq, usage in ((1, bad), (2, good_usage)):
                report = agent_pb2.AgentReport(incarnation=agent.incarnation, seq=seq, usage=usage)
                await agent._call.write(agent_pb2.AgentMessage(report=report))
            node = rig.manager.registry.get("fz-r")
            assert node is not None
            await poll(lambda: node.usage.cpu_percent == 7.0, what="the good usage applied")
            assert rig.manager.node_state("fz-r") == "ready" and not agent.ended.is_set()
            rig.check()
        finally:
            await agent.close()

    loop.call(body())


def test_node_usage_from_proto_validates_readings() -> None:
    for usage, field in (
        (common_pb2.NodeUsage(cpu_percent=math.nan), "usage.cpu_percent"),
        (common_pb2.NodeUsage(load1=-1.0), "usage.load1"),
        (common_pb2.NodeUsage(memory_used_bytes=-1), "usage.memory_used_bytes"),
        (
            common_pb2.NodeUsage(gpus=[common_pb2.GpuUsage(), common_pb2.GpuUsage(power_w=1e9)]),
            "usage.gpus[1].power_w",
        ),
        (
            common_pb2.NodeUsage(gpus=[common_pb2.GpuUsage(temperature_c=math.inf)]),
            "usage.gpus[0].temperature_c",
        ),
    ):
        with pytest.raises(InvalidArgument) as info:
            NodeUsage.from_proto(usage)
        assert info.value.field == field
    ok = common_pb2.NodeUsage(cpu_percent=50.0, gpus=[common_pb2.GpuUsage(power_w=700.0, temperature_c=65.0)])
    assert NodeUsage.from_proto(ok).power_w == 700.0


# -- 4. agents claiming huge machines overflowed their sub-domain's summary -----------------------------


def test_inventory_beyond_one_machine_is_refused() -> None:
    """Found probing what the AgentGateway fuzz suggested: two agents with allocatable memory 2**62
    made the sub-domain's capacity total overflow int64, and summary().to_proto() raised."""
    inv = inventory("fz-big")
    inv.allocatable.memory_bytes = 2**62
    with pytest.raises(InvalidArgument) as info:
        NodeInventory.from_proto(inv)
    assert info.value.field == "inventory.allocatable"
    assert "at most cpus=4096 memory=64Ti gpus=1024" in str(info.value)


def test_largest_allowed_nodes_still_sum_into_a_summary(subdomain: tuple[LoopThread, SubdomainRig]) -> None:
    loop, rig = subdomain

    async def body() -> None:
        agents = []
        try:
            for i in range(3):
                agent = ScriptedAgent(rig.address, f"huge-{i}")
                agent.inventory.allocatable.cpu_millis = 4096 * 1000
                agent.inventory.allocatable.memory_bytes = 64 * 2**40
                await agent.connect()
                agents.append(agent)
            rig.check()  # summary().to_proto() and the master's Summary.from_proto accept it
            assert rig.manager.summary().capacity.memory_bytes >= 3 * 64 * 2**40
        finally:
            for agent in agents:
                await agent.close()

    loop.call(body())


# -- 5. bytes that do not parse were answered UNKNOWN "Unexpected DecodeError" ---------------------------

_BAD_UTF8 = (
    b"\x0a\x02\xff\xfe"  # field 1 (job_id / the oneof's first member) holding bytes that are not UTF-8
)


def _raw_stream(address: str, path: str, payload: list[bytes]) -> grpc.RpcError | None:
    with grpc.insecure_channel(address) as channel:
        call = channel.stream_stream(path, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        try:
            for _ in call(iter(payload), timeout=5):
                pass
        except grpc.RpcError as exc:
            return exc
    return None


def test_unparsable_request_is_invalid_argument(master: tuple[LoopThread, MasterRig]) -> None:
    """Found probing the wire below the fuzz tests' protobuf library: a GetJobRequest whose job_id
    is not UTF-8 got UNKNOWN ("Unexpected <class DecodeError>"), from gRPC itself."""
    loop, rig = master
    with grpc.insecure_channel(rig.address) as channel:
        call = channel.unary_unary(
            "/domainos.api.v1.DomainControl/GetJob",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.RpcError) as info:
            call(_BAD_UTF8, timeout=5, metadata=rig.metadata)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == (
        "the request is not a valid message: Error parsing message with type "
        "'domainos.api.v1.GetJobRequest': String field had bad UTF-8"
    )
    loop.call(rig.alive())


@pytest.mark.parametrize("later", [False, True])
def test_unparsable_stream_message_ends_the_stream_with_invalid_argument(
    master: tuple[LoopThread, MasterRig], subdomain: tuple[LoopThread, SubdomainRig], later: bool
) -> None:
    mloop, rig = master
    loop, sd = subdomain
    hello = subdomain_pb2.SubDomainMessage(
        hello=subdomain_pb2.Hello(subdomain_id="fz-a", region="east", incarnation="i", summary=summary())
    )
    register = agent_pb2.AgentMessage(
        register=agent_pb2.Register(inventory=inventory("fz-n"), incarnation="i")
    )
    for address, path, first in (
        (rig.address, "/domainos.api.v1.SubDomainGateway/Connect", hello),
        (sd.address, "/domainos.api.v1.AgentGateway/Connect", register),
    ):
        payload = [first.SerializeToString(), _BAD_UTF8] if later else [_BAD_UTF8]
        err = _raw_stream(address, path, payload)
        assert err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT, (path, err)
        assert (err.details() or "").startswith("the request is not a valid message: "), err.details()

    def detached() -> bool:
        rec = rig.master._registry.get("fz-a")
        return rec is None or not rec.connected

    mloop.call(poll(detached, what="fz-a detached"))
    assert not rig.good.ended.is_set()

    async def check() -> None:
        await poll(lambda: sd.manager.node_state("fz-n") in (None, "suspect", "dead"), what="fz-n gone")
        sd.check()

    loop.call(check())
