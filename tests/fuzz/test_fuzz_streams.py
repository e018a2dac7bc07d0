"""Hostile peers on the two long-lived streams: ``SubDomainGateway.Connect`` (the master side) and
``AgentGateway.Connect`` (the sub-domain side).

Each example opens a stream to a real server, writes a random sequence of messages (a first message
that is not a Hello/Register, garbage fields, ids of other peers, huge inventories, negative
resources, updates for unknown or foreign tasks), half-closes it and reads until the server ends
it. The stream must end in time with OK or a clear status; afterwards the server's invariants hold
(``validate()`` of the job table, the node registry and the task table), the hostile peer is no
longer connected, and the well-behaved peer connected beside it is untouched.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from fuzz_harness import (
    CALL_DEADLINE_S,
    EXPECTED_CODES,
    LoopThread,
    MasterRig,
    Outcome,
    SubdomainRig,
    inventory,
    poll,
    stream,
    summary,
    unary,
)
from fuzz_proto import messages, mutated, oneof_messages, texts
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from domainos.api.v1 import agent_pb2, common_pb2, master_pb2, subdomain_pb2

pytestmark = pytest.mark.timeout(300)

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    # The servers live across examples: a shrunk replay would run against the state the failing
    # example left behind, so report the failing example as generated.
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
DEEP = settings(FUZZ, max_examples=600, derandomize=False)

#: Hostile streams use one incarnation so that their later reports are not ignored outright.
INC = "inc-fuzz"
_TASK_STATES = st.sampled_from([v.number for v in common_pb2.TaskState.DESCRIPTOR.values])


def _sequences(first: st.SearchStrategy[Any], rest: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.builds(lambda a, b: [a, *b], first, st.lists(rest, max_size=6))


# -- the master's SubDomainGateway ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def master_rig() -> Iterator[tuple[LoopThread, MasterRig]]:
    loop = LoopThread()
    try:
        rig = loop.call(MasterRig.start(pause_scheduler=False), 60, "master start")
        yield loop, rig
        loop.call(rig.close(), 60, "master shutdown")
    finally:
        loop.close()


#: Ids a hostile sub-domain may claim; ``good-1`` is the connected well-behaved one.
HOSTILE_SDS = ("fz-a", "fz-b")


def _master_sequences(rig: MasterRig) -> st.SearchStrategy[list[Any]]:
    running = rig.jobs["running"]
    hints: dict[str, st.SearchStrategy[Any]] = {
        "subdomain_id": st.sampled_from([*HOSTILE_SDS, MasterRig.GOOD]),
        "region": st.sampled_from(["east", "fz"]),
        "incarnation": st.just(INC),
        "job_id": st.sampled_from([running, rig.jobs["done"], "j-unknown"]),
        "task_index": st.integers(-1, 3),
        "attempt": st.integers(-1, 3),
        "TaskStatus.state": _TASK_STATES,
        "request_id": st.sampled_from(["1", "2", "r-1"]),
        "command_id": st.one_of(st.just(f"place:{running}:0:0"), texts()),
    }
    hello = st.sampled_from([*HOSTILE_SDS, MasterRig.GOOD]).flatmap(
        lambda sd: mutated(_hello(sd, running), hints=hints)
    )
    first = st.one_of(
        hello,
        st.sampled_from(HOSTILE_SDS).map(lambda sd: _hello(sd, running)),
        oneof_messages(subdomain_pb2.SubDomainMessage, "hello", hints=hints),
        messages(subdomain_pb2.SubDomainMessage, hints=hints),
    )
    updates = st.builds(_updates, st.sampled_from([running, rig.jobs["done"], "j-unknown"]), _TASK_STATES)
    later = st.one_of(
        updates.flatmap(lambda msg: mutated(msg, hints=hints)),
        messages(subdomain_pb2.SubDomainMessage, hints=hints),
        st.sampled_from(HOSTILE_SDS).map(lambda sd: _hello(sd, running)),
    )
    return _sequences(first, later)


def _hello(sd: str, job_id: str) -> subdomain_pb2.SubDomainMessage:
    """A valid Hello; it claims a task of the good sub-domain's job, as a confused peer might."""
    task = common_pb2.TaskStatus(
        job_id=job_id, task_index=0, attempt=0, state=common_pb2.TASK_STATE_RUNNING, node_id=f"{sd}-n1"
    )
    return subdomain_pb2.SubDomainMessage(
        hello=subdomain_pb2.Hello(
            subdomain_id=sd,
            region="east",
            incarnation=INC,
            address=f"{sd}.local:7100",
            max_nodes=10,
            tasks=[task],
            summary=summary(nodes=1),
        )
    )


def _updates(job_id: str, state: int) -> subdomain_pb2.SubDomainMessage:
    status = common_pb2.TaskStatus(job_id=job_id, task_index=0, attempt=0, state=state, node_id="fz-n1")
    return subdomain_pb2.SubDomainMessage(
        task_updates=subdomain_pb2.TaskUpdates(incarnation=INC, seq=1, tasks=[status])
    )


_master_strategy: list[st.SearchStrategy[list[Any]]] = []


async def _check_master(rig: MasterRig, before: list[tuple[int, int, str, str]], outcome: Outcome) -> None:
    def hostile_gone() -> bool:
        return not any(rec.connected for rec in rig.master._registry if rec.subdomain_id != MasterRig.GOOD)

    await poll(hostile_gone, what="hostile sub-domains detached")
    assert not rig.good.ended.is_set(), f"the good sub-domain's stream ended: {rig.good.error}"
    rec = rig.master._registry.get(MasterRig.GOOD)
    assert rec is not None and rec.connected, "the good sub-domain is no longer connected"
    assert rig.running_tasks() == before, "a hostile stream changed the good sub-domain's tasks"
    await rig.alive()


def _probe_client_api(loop: LoopThread, rig: MasterRig, found: list[str]) -> Callable[[Any], None]:
    """While a hostile stream is open: the client API still answers every caller (its summaries
    feed ClusterInfo's totals and ListDomains)."""

    def attached_or_ended(call: Any) -> bool:
        async def attached() -> bool:
            return any(r.connected for r in rig.master._registry if r.subdomain_id != MasterRig.GOOD)

        return call.done() or loop.call(attached(), what="registry")

    def probe(call: Any) -> None:
        deadline = time.monotonic() + CALL_DEADLINE_S
        while not attached_or_ended(call) and time.monotonic() < deadline:
            time.sleep(0.005)  # polling a condition in gRPC's sending thread, with a deadline
        for name, request in (
            ("GetClusterInfo", master_pb2.GetClusterInfoRequest()),
            ("ListDomains", master_pb2.ListDomainsRequest()),
            ("ListJobs", master_pb2.ListJobsRequest()),
        ):
            outcome = unary(getattr(rig.client, name), request, rig.metadata)
            if outcome.code != grpc.StatusCode.OK:
                found.append(f"{name} while a hostile sub-domain is connected: {outcome.describe()}")

    return probe


def check_master_stream(loop: LoopThread, rig: MasterRig, sequence: list[Any]) -> None:
    before = rig.running_tasks()
    found: list[str] = []
    outcome = stream(rig.gateway.Connect, sequence, rig.metadata, _probe_client_api(loop, rig, found))
    event(f"{outcome.code.name}: {outcome.details[:60]}")
    assert outcome.code in EXPECTED_CODES, f"SubDomainGateway.Connect ended with {outcome.describe()}"
    if outcome.code.value[0] != 0:
        assert outcome.details, f"{outcome.code.name} without a message"
    assert not found, found
    loop.call(_check_master(rig, before, outcome), CALL_DEADLINE_S * 2, "master invariants")


@FUZZ
@given(data=st.data())
def test_hostile_subdomain_streams(master_rig: tuple[LoopThread, MasterRig], data: st.DataObject) -> None:
    loop, rig = master_rig
    if not _master_strategy:
        _master_strategy.append(_master_sequences(rig))
    check_master_stream(loop, rig, data.draw(_master_strategy[0], label="messages"))


@pytest.mark.slow
@pytest.mark.timeout(1800)
@DEEP
@given(data=st.data())
def test_hostile_subdomain_streams_deep(
    master_rig: tuple[LoopThread, MasterRig], data: st.DataObject
) -> None:
    loop, rig = master_rig
    if not _master_strategy:
        _master_strategy.append(_master_sequences(rig))
    check_master_stream(loop, rig, data.draw(_master_strategy[0], label="messages"))


# -- the sub-domain's AgentGateway ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def subdomain_rig() -> Iterator[tuple[LoopThread, SubdomainRig]]:
    loop = LoopThread()
    try:
        rig = loop.call(SubdomainRig.start(), 60, "sub-domain start")
        yield loop, rig
        loop.call(rig.close(), 60, "sub-domain shutdown")
    finally:
        loop.close()


HOSTILE_NODES = ("fz-n1", "fz-n2")

_AGENT_HINTS: dict[str, st.SearchStrategy[Any]] = {
    "node_id": st.sampled_from([*HOSTILE_NODES, SubdomainRig.GOOD_NODE]),
    "incarnation": st.just(INC),
    "job_id": st.sampled_from([SubdomainRig.GOOD_JOB, "j-unknown"]),
    "task_index": st.integers(-1, 2),
    "attempt": st.integers(-1, 2),
    "TaskStatus.state": _TASK_STATES,
    "command_id": st.sampled_from(["place-good", "c1", ""]),
    "request_id": st.sampled_from(["1", "l-1"]),
    # Measurements are summed into the sub-domain's aggregates: the values that break sums.
    "GpuUsage.power_w": st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 1e308, 300.0]),
    "Resources.memory_bytes": st.sampled_from([2**62, 2**63 - 1, 64 * 2**40]),
    "Resources.cpu_millis": st.sampled_from([2**62, 2**63 - 1, 4096 * 1000]),
}


def _register(node_id: str) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(
        register=agent_pb2.Register(
            inventory=inventory(node_id),
            incarnation=INC,
            usage=common_pb2.NodeUsage(cpu_percent=5.0, gpus=[common_pb2.GpuUsage(index=0, power_w=250.0)]),
            health=common_pb2.NodeHealth(status=common_pb2.HEALTH_STATUS_HEALTHY),
        )
    )


def _report(job_id: str, state: int) -> agent_pb2.AgentMessage:
    status = common_pb2.TaskStatus(job_id=job_id, task_index=0, attempt=0, state=state, node_id="fz-n1")
    usage = common_pb2.NodeUsage(
        cpu_percent=5.0, gpus=[common_pb2.GpuUsage(index=0, utilization_percent=50.0, power_w=250.0)]
    )
    report = agent_pb2.AgentReport(incarnation=INC, seq=1, tasks=[status], usage=usage)
    return agent_pb2.AgentMessage(report=report)


_MUTATED_REGISTER = st.sampled_from([*HOSTILE_NODES, SubdomainRig.GOOD_NODE]).flatmap(
    lambda node: mutated(_register(node), hints=_AGENT_HINTS)
)
# Hypothesis leans towards the first branches of one_of: the likeliest to get in come first.
_AGENT_FIRST = st.one_of(
    _MUTATED_REGISTER,
    st.sampled_from(HOSTILE_NODES).map(_register),
    oneof_messages(agent_pb2.AgentMessage, "register", hints=_AGENT_HINTS),
    messages(agent_pb2.AgentMessage, hints=_AGENT_HINTS),
)
_AGENT_NEXT = st.one_of(
    st.builds(_report, st.sampled_from([SubdomainRig.GOOD_JOB, "j-unknown"]), _TASK_STATES).flatmap(
        lambda msg: mutated(msg, hints=_AGENT_HINTS)
    ),
    messages(agent_pb2.AgentMessage, hints=_AGENT_HINTS),
    st.sampled_from(HOSTILE_NODES).map(_register),
)
AGENT_SEQUENCES = _sequences(_AGENT_FIRST, _AGENT_NEXT)


async def _check_subdomain(rig: SubdomainRig) -> None:
    def hostile_gone() -> bool:
        return all(rig.manager.node_state(n) in (None, "suspect", "dead") for n in HOSTILE_NODES) and all(
            node.node_id == SubdomainRig.GOOD_NODE or node.conn_token is None for node in rig.manager.registry
        )

    await poll(hostile_gone, what="hostile agents disconnected")
    rig.check()


def check_agent_stream(loop: LoopThread, rig: SubdomainRig, sequence: list[Any]) -> None:
    outcome = stream(rig.gateway.Connect, sequence)
    event(f"{outcome.code.name}: {outcome.details[:60]}")
    assert outcome.code in EXPECTED_CODES, f"AgentGateway.Connect ended with {outcome.describe()}"
    if outcome.code.value[0] != 0:
        assert outcome.details, f"{outcome.code.name} without a message"
    loop.call(_check_subdomain(rig), CALL_DEADLINE_S * 2, "sub-domain invariants")


@FUZZ
@given(sequence=AGENT_SEQUENCES)
def test_hostile_agent_streams(subdomain_rig: tuple[LoopThread, SubdomainRig], sequence: list[Any]) -> None:
    loop, rig = subdomain_rig
    check_agent_stream(loop, rig, sequence)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@DEEP
@given(sequence=AGENT_SEQUENCES)
def test_hostile_agent_streams_deep(
    subdomain_rig: tuple[LoopThread, SubdomainRig], sequence: list[Any]
) -> None:
    loop, rig = subdomain_rig
    check_agent_stream(loop, rig, sequence)
