"""Messages larger than ``domainos.rpc.MAX_MESSAGE_BYTES`` on every service: RESOURCE_EXHAUSTED,
nothing written, the server and its well-behaved peers unaffected.

The DomainOS client refuses to send such a message itself; these tests use a raw channel
without a send limit, as a hostile client would.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from fuzz_harness import LoopThread, MasterRig, SubdomainRig, inventory, stream, unary

from domainos.api.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    common_pb2,
    master_pb2,
    master_pb2_grpc,
    subdomain_pb2,
    subdomain_pb2_grpc,
)
from domainos.rpc import MAX_MESSAGE_BYTES, create_sync_channel

pytestmark = pytest.mark.timeout(120)

OVER = MAX_MESSAGE_BYTES + 1024
UNDER = MAX_MESSAGE_BYTES - 64 * 1024


def _raw_channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=[("grpc.max_send_message_length", -1)])


@pytest.fixture(scope="module")
def master() -> Iterator[tuple[LoopThread, MasterRig]]:
    loop = LoopThread()
    try:
        rig = loop.call(MasterRig.start(pause_scheduler=True), 60, "master start")
        yield loop, rig
        loop.call(rig.close(), 60, "master shutdown")
    finally:
        loop.close()


@pytest.fixture(scope="module")
def subdomain() -> Iterator[tuple[LoopThread, SubdomainRig]]:
    loop = LoopThread()
    try:
        rig = loop.call(SubdomainRig.start(), 60, "sub-domain start")
        yield loop, rig
        loop.call(rig.close(), 60, "sub-domain shutdown")
    finally:
        loop.close()


def _submit(size: int) -> master_pb2.SubmitJobRequest:
    spec = master_pb2.JobSpec(
        name="big",
        replicas=1,
        command=["python3", "-c", "pass"],
        env={"BIG": "x" * size},
        resources=common_pb2.Resources(cpu_millis=500, memory_bytes=2**28),
    )
    return master_pb2.SubmitJobRequest(spec=spec, request_id="big-1")


def test_oversize_client_request_is_resource_exhausted_and_writes_nothing(
    master: tuple[LoopThread, MasterRig],
) -> None:
    loop, rig = master
    before = loop.call(rig.snapshot())
    with _raw_channel(rig.address) as channel:
        api = master_pb2_grpc.DomainControlStub(channel)
        request = _submit(OVER)
        assert request.ByteSize() > MAX_MESSAGE_BYTES
        outcome = unary(api.SubmitJob, request, rig.metadata)
    assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED, outcome.describe()
    assert str(MAX_MESSAGE_BYTES) in outcome.details, outcome.details
    assert loop.call(rig.snapshot()) == before
    loop.call(rig.alive())


def test_the_domainos_client_refuses_to_send_an_oversize_request(
    master: tuple[LoopThread, MasterRig],
) -> None:
    loop, rig = master
    with create_sync_channel(rig.address) as channel:
        outcome = unary(master_pb2_grpc.DomainControlStub(channel).SubmitJob, _submit(OVER), rig.metadata)
    assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED, outcome.describe()
    loop.call(rig.alive())


def test_a_request_just_under_the_limit_gets_a_precise_refusal(master: tuple[LoopThread, MasterRig]) -> None:
    """Past the transport limit's check, the spec's own limits speak: which field, what is allowed."""
    loop, rig = master
    before = loop.call(rig.snapshot())
    request = _submit(UNDER - 1024)
    assert request.ByteSize() < MAX_MESSAGE_BYTES
    outcome = unary(rig.client.SubmitJob, request, rig.metadata)
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome.describe()
    assert outcome.details.startswith("env:") and "KiB" in outcome.details, outcome.details
    assert loop.call(rig.snapshot()) == before


def _hello(sd: str, padding: int) -> subdomain_pb2.SubDomainMessage:
    return subdomain_pb2.SubDomainMessage(
        hello=subdomain_pb2.Hello(subdomain_id=sd, region="east", incarnation="i", address="x" * padding)
    )


def test_oversize_subdomain_message_ends_only_its_stream(master: tuple[LoopThread, MasterRig]) -> None:
    loop, rig = master
    before = rig.running_tasks()
    with _raw_channel(rig.address) as channel:
        gateway = subdomain_pb2_grpc.SubDomainGatewayStub(channel)
        outcome = stream(gateway.Connect, [_hello("fz-big", OVER)])
    assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED, outcome.describe()
    assert not rig.good.ended.is_set()
    assert rig.running_tasks() == before
    assert rig.master._registry.get("fz-big") is None
    loop.call(rig.alive())


def _register(node_id: str, padding: int) -> Any:
    inv = inventory(node_id)
    inv.hostname = "h" * padding
    return agent_pb2.AgentMessage(register=agent_pb2.Register(inventory=inv, incarnation="i"))


def test_oversize_agent_message_ends_only_its_stream(subdomain: tuple[LoopThread, SubdomainRig]) -> None:
    loop, rig = subdomain
    with _raw_channel(rig.address) as channel:
        gateway = agent_pb2_grpc.AgentGatewayStub(channel)
        outcome = stream(gateway.Connect, [_register("fz-big", OVER)])
    assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED, outcome.describe()
    assert rig.manager.node_state("fz-big") is None

    async def check() -> None:
        rig.check()

    loop.call(check())
