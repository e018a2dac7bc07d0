"""Hostile requests for every ``DomainControl`` method, sent to a real master over a real channel.

Each request is built from its message descriptor (``fuzz_proto``): huge and unicode strings with
NULs, negative and extreme numbers, NaN and infinities, unknown enum numbers, thousands of
repeated entries -- or is a valid request with a few fields overwritten that way, so that the
state machines behind the first checks get hostile values too. Callers are the admin, a tenant's
user, nobody, and garbage ``authorization`` metadata. Every call must end within its deadline
with OK or a status that says why (never INTERNAL or UNKNOWN), a refused call must leave the
store exactly as it was (audit entries aside: refusals are audited), and the master must keep
answering with a consistent job table.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from fuzz_harness import EXPECTED_CODES, LoopThread, MasterRig, Outcome, unary
from fuzz_proto import messages, mutated, texts
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from domainos.api.v1 import common_pb2, master_pb2, master_pb2_grpc
from domainos.rpc import MAX_MESSAGE_BYTES
from master_domain._service import DomainControlServicer

pytestmark = pytest.mark.timeout(300)

SERVICE = master_pb2.DESCRIPTOR.services_by_name["DomainControl"]
FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    # The servers live across examples: a shrunk replay would run against the state the failing
    # example left behind, so report the failing example as generated.
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
DEEP = settings(FUZZ, max_examples=400, derandomize=False)


def _implemented(name: str) -> bool:
    """The master overrides the generated servicer's UNIMPLEMENTED stub for ``name``."""
    return getattr(DomainControlServicer, name, None) is not getattr(
        master_pb2_grpc.DomainControlServicer, name, None
    )


METHODS = [
    pytest.param(m.name, marks=() if _implemented(m.name) else pytest.mark.skip(reason="not implemented yet"))
    for m in SERVICE.methods
]


@pytest.fixture(scope="module")
def rig() -> Iterator[tuple[LoopThread, MasterRig]]:
    loop = LoopThread()
    try:
        rig = loop.call(MasterRig.start(pause_scheduler=True), 60, "master start")
        yield loop, rig
        loop.call(rig.close(), 60, "master shutdown")
    finally:
        loop.close()


def _templates(rig: MasterRig) -> dict[str, Any]:
    """A valid request per method: mutations of these get past the first checks."""
    m = master_pb2
    spec = m.JobSpec(
        name="fz",
        replicas=1,
        command=["python3", "-c", "pass"],
        resources=common_pb2.Resources(cpu_millis=500, memory_bytes=256 * 2**20),
    )
    victim = rig.tokens.get("victim", ("000000000000", ""))[0]
    return {
        "SubmitJob": m.SubmitJobRequest(spec=spec),
        "GetJob": m.GetJobRequest(job_id=rig.jobs["running"]),
        "CancelJob": m.CancelJobRequest(job_id=rig.jobs.get("pending", rig.jobs["running"])),
        "ReadLogs": m.ReadLogsRequest(job_id=rig.jobs["running"], task_index=0),
        "ListNodes": m.ListNodesRequest(subdomain_id=MasterRig.GOOD),
        "CreateTenant": m.CreateTenantRequest(name="fz-t"),
        "CreateToken": m.CreateTokenRequest(tenant="acme", role=m.ROLE_USER, ttl_seconds=3600),
        "ListTokens": m.ListTokensRequest(tenant="acme"),
        "RevokeToken": m.RevokeTokenRequest(token_id=victim),
        "ReadAudit": m.ReadAuditRequest(limit=5),
    }


def _hints(rig: MasterRig) -> dict[str, st.SearchStrategy[Any]]:
    """Values that get past the first checks: real job ids, a known sub-domain, valid names."""
    ids = [*rig.jobs.values(), "j-0000000000000-nope"]
    return {
        "job_id": st.sampled_from(ids),
        "page_token": st.one_of(st.sampled_from(ids), texts()),
        "subdomain_id": st.sampled_from([MasterRig.GOOD, "nope-1"]),
        "request_id": st.sampled_from(["r-1", "r-2", "seed-running"]),
        "task_index": st.sampled_from([-1, 0, 1, 2]),
        "stream": st.sampled_from(["stdout", "stderr"]),
        "command": st.just(["python3", "-c", "pass"]),
        "tenant": st.sampled_from(["", "acme", "globex"]),
        "name": st.sampled_from(["fz", "acme"]),
        "token_id": st.sampled_from([rig.tokens.get("victim", ("000000000000", ""))[0], "0123456789ab"]),
    }


_PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=120)


def _callers(rig: MasterRig) -> st.SearchStrategy[tuple[str, Any]]:
    """(who, metadata): mostly the admin (the widest reach), also a user, nobody, and garbage."""
    garbage = st.one_of(
        _PRINTABLE.map(lambda t: f"Bearer {t}"),
        _PRINTABLE,
        st.sampled_from(
            ["Bearer", "Bearer ", "bearer dos_", "Basic dXNlcjpwdw==", "Bearer dos_0123456789ab_x"]
        ),
    ).map(lambda value: ("garbage", (("authorization", value),)))
    fixed = {who: st.just((who, rig.caller(who))) for who in ("admin", "user", "anonymous")}
    fixed["garbage"] = garbage
    return st.sampled_from(["admin"] * 5 + ["user"] * 2 + ["anonymous", "garbage"]).flatmap(fixed.__getitem__)


_strategies: dict[str, st.SearchStrategy[Any]] = {}


def _requests(rig: MasterRig, method: str) -> st.SearchStrategy[Any]:
    if method not in _strategies:
        cls = getattr(master_pb2, SERVICE.methods_by_name[method].input_type.name)
        hints = _hints(rig)
        template = _templates(rig).get(method, cls())
        _strategies[method] = st.one_of(mutated(template, hints=hints), messages(cls, hints=hints))
    return _strategies[method]


def check_status(what: str, outcome: Outcome, request_bytes: int) -> None:
    """A status from the server that says why; not a transport failure dressed up as one."""
    assert outcome.code in EXPECTED_CODES, f"{what} answered {outcome.describe()}"
    if outcome.code == grpc.StatusCode.OK:
        return
    assert outcome.details, f"{what}: {outcome.code.name} without a message"
    # The client's own limit on what it sends (the request is too large to leave this process).
    if outcome.details.startswith("CLIENT: Sent message larger than max"):
        assert request_bytes > MAX_MESSAGE_BYTES, outcome.describe()
        return
    assert "Stream removed" not in outcome.details and "metadata size" not in outcome.details, (
        f"{what}: the real status was lost in transport: {outcome.describe()}"
    )


def check_call(loop: LoopThread, rig: MasterRig, method: str, request: Any, caller: tuple[str, Any]) -> None:
    """One hostile call: a clear status in time, nothing written when refused, the master alive."""
    who, metadata = caller
    before = loop.call(rig.snapshot(), what="store snapshot")
    outcome = unary(getattr(rig.client, method), request, metadata)
    event(f"{who}: {outcome.code.name}: {outcome.details[:50]}")
    check_status(f"{method} by {who}", outcome, request.ByteSize())
    if outcome.code != grpc.StatusCode.OK:
        after = loop.call(rig.snapshot(), what="store snapshot")
        changed = sorted({kv.key for kv in before} ^ {kv.key for kv in after}) or [
            b.key for b, a in zip(before, after, strict=True) if b != a
        ]
        assert not changed, f"{method} failed ({outcome.describe()}) but changed the store: {changed[:5]}"
    loop.call(rig.alive(), what="GetClusterInfo after the call")


@pytest.mark.parametrize("method", METHODS)
@FUZZ
@given(data=st.data())
def test_hostile_requests_get_a_clear_status_and_change_nothing(
    rig: tuple[LoopThread, MasterRig], method: str, data: st.DataObject
) -> None:
    loop, master = rig
    request = data.draw(_requests(master, method), label="request")
    check_call(loop, master, method, request, data.draw(_callers(master), label="caller"))


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("method", METHODS)
@DEEP
@given(data=st.data())
def test_hostile_requests_deep(rig: tuple[LoopThread, MasterRig], method: str, data: st.DataObject) -> None:
    loop, master = rig
    request = data.draw(_requests(master, method), label="request")
    check_call(loop, master, method, request, data.draw(_callers(master), label="caller"))


# -- accepted hostile jobs must not poison the scheduler ------------------------------------------------


@pytest.fixture(scope="module")
def live_rig() -> Iterator[tuple[LoopThread, MasterRig]]:
    """A master whose scheduler runs, with a sub-domain that runs every placed task to success."""
    loop = LoopThread()
    try:
        rig = loop.call(MasterRig.start(pause_scheduler=False), 60, "master start")
        yield loop, rig
        loop.call(rig.close(), 60, "master shutdown")
    finally:
        loop.close()


_live_specs: list[st.SearchStrategy[Any]] = []


def _live_requests(rig: MasterRig) -> st.SearchStrategy[Any]:
    if not _live_specs:
        hints = {**_hints(rig), "replicas": st.integers(1, 3)}
        _live_specs.append(mutated(_templates(rig)["SubmitJob"], presence=20, hints=hints))
    return _live_specs[0]


async def _schedule_and_check(rig: MasterRig) -> None:
    await rig.master.schedule_once()  # raises if a job it accepted breaks placement
    rig.master.jobs.validate()


def check_scheduling(loop: LoopThread, rig: MasterRig, data: st.DataObject) -> None:
    request = data.draw(_live_requests(rig), label="request")
    outcome = unary(rig.client.SubmitJob, request, rig.caller("admin"))
    event(f"{outcome.code.name}: {outcome.details[:50]}")
    check_status("SubmitJob", outcome, request.ByteSize())
    loop.call(_schedule_and_check(rig), what="a scheduling pass")
    if outcome.code == grpc.StatusCode.OK:
        job_id = outcome.received[0].job.job_id
        cancel = unary(rig.client.CancelJob, master_pb2.CancelJobRequest(job_id=job_id), rig.caller("admin"))
        assert cancel.code == grpc.StatusCode.OK, cancel.describe()
    loop.call(rig.alive())


@FUZZ
@given(data=st.data())
def test_accepted_hostile_jobs_schedule_cleanly(
    live_rig: tuple[LoopThread, MasterRig], data: st.DataObject
) -> None:
    """Whatever SubmitJob accepts, a scheduling pass handles: no exception, invariants intact."""
    check_scheduling(*live_rig, data)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@DEEP
@given(data=st.data())
def test_accepted_hostile_jobs_schedule_cleanly_deep(
    live_rig: tuple[LoopThread, MasterRig], data: st.DataObject
) -> None:
    check_scheduling(*live_rig, data)
