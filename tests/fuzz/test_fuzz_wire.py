"""Bytes that are not a valid message at all: random bytes, valid messages truncated or with bytes
flipped, strings that are not UTF-8 (which no protobuf library lets a client build, but any
client can send). Every method must answer with a clear status -- INVALID_ARGUMENT naming the
message, not UNKNOWN "Unexpected DecodeError" -- and change nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from fuzz_harness import EXPECTED_CODES, LoopThread, MasterRig, Outcome, SubdomainRig, inventory, summary
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from domainos.api.v1 import agent_pb2, common_pb2, master_pb2, subdomain_pb2

pytestmark = pytest.mark.timeout(300)

FUZZ = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DEEP = settings(FUZZ, max_examples=300, derandomize=False)

CONTROL = [m.name for m in master_pb2.DESCRIPTOR.services_by_name["DomainControl"].methods]
NOT_UTF8 = b"\xff\xfe\xc0\x80\xed\xa0\x80"  # invalid bytes, an overlong NUL, a surrogate

_VALID = master_pb2.SubmitJobRequest(
    spec=master_pb2.JobSpec(
        name="fz",
        replicas=1,
        command=["python3", "-c", "pass"],
        resources=common_pb2.Resources(cpu_millis=500, memory_bytes=2**28),
    ),
    request_id="wire-1",
).SerializeToString()


def _corrupt(valid: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes; ``valid`` truncated, with a byte flipped, or with a string made not UTF-8."""
    flip = st.builds(
        lambda i, b: valid[: i % len(valid)] + bytes([b]) + valid[i % len(valid) + 1 :],
        st.integers(0, 10_000),
        st.integers(0, 255),
    )
    return st.one_of(
        st.binary(min_size=1, max_size=64),
        st.integers(1, len(valid) - 1).map(lambda n: valid[:n]),
        flip,
        st.just(b"\x0a" + bytes([len(NOT_UTF8)]) + NOT_UTF8),  # field 1, a string of bad UTF-8
        st.just(valid.replace(b"fz", b"\xff\xfe", 1)),
    )


def _raw(channel: grpc.Channel, path: str, streaming: bool) -> object:
    ident = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}
    return channel.stream_stream(path, **ident) if streaming else channel.unary_unary(path, **ident)


def _call(method: object, payload: list[bytes], streaming: bool, metadata: object) -> Outcome:
    try:
        if streaming:
            for _ in method(iter(payload), timeout=5, metadata=metadata):  # type: ignore[operator]
                pass
        else:
            method(payload[0], timeout=5, metadata=metadata)  # type: ignore[operator]
    except grpc.RpcError as exc:
        return Outcome(exc.code(), exc.details() or "")
    return Outcome(grpc.StatusCode.OK, "")


def _check(outcome: Outcome, what: str) -> None:
    event(f"{outcome.code.name}: {outcome.details[:40]}")
    assert outcome.code in EXPECTED_CODES, f"{what} answered {outcome.describe()}"
    if outcome.code != grpc.StatusCode.OK:
        assert outcome.details, f"{what}: {outcome.code.name} without a message"


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[LoopThread, MasterRig, SubdomainRig]]:
    loop = LoopThread()
    try:
        master = loop.call(MasterRig.start(pause_scheduler=True), 60, "master start")
        subdomain = loop.call(SubdomainRig.start(), 60, "sub-domain start")
        yield loop, master, subdomain
        loop.call(subdomain.close(), 60)
        loop.call(master.close(), 60)
    finally:
        loop.close()


def check_control(servers: tuple[LoopThread, MasterRig, SubdomainRig], method: str, payload: bytes) -> None:
    loop, master, _ = servers
    before = loop.call(master.snapshot())
    with grpc.insecure_channel(master.address) as channel:
        outcome = _call(
            _raw(channel, f"/domainos.api.v1.DomainControl/{method}", False),
            [payload],
            False,
            master.metadata,
        )
    _check(outcome, method)
    if outcome.code != grpc.StatusCode.OK:
        assert loop.call(master.snapshot()) == before, f"{method} failed ({outcome.describe()}) but wrote"
    loop.call(master.alive())


def check_streams(servers: tuple[LoopThread, MasterRig, SubdomainRig], payload: list[bytes]) -> None:
    loop, master, subdomain = servers
    before = master.running_tasks()
    with grpc.insecure_channel(master.address) as channel:
        path = "/domainos.api.v1.SubDomainGateway/Connect"
        _check(_call(_raw(channel, path, True), payload, True, None), "SubDomainGateway.Connect")
    with grpc.insecure_channel(subdomain.address) as channel:
        path = "/domainos.api.v1.AgentGateway/Connect"
        _check(_call(_raw(channel, path, True), payload, True, None), "AgentGateway.Connect")

    async def check() -> None:
        assert master.running_tasks() == before and not master.good.ended.is_set()
        subdomain.check()

    loop.call(check())
    loop.call(master.alive())


@pytest.mark.parametrize("method", CONTROL)
@FUZZ
@given(payload=_corrupt(_VALID))
def test_corrupt_requests_are_invalid_argument(
    servers: tuple[LoopThread, MasterRig, SubdomainRig], method: str, payload: bytes
) -> None:
    check_control(servers, method, payload)


_HELLO = subdomain_pb2.SubDomainMessage(
    hello=subdomain_pb2.Hello(subdomain_id="fz-w", region="east", incarnation="i", summary=summary())
).SerializeToString()
_REGISTER = agent_pb2.AgentMessage(
    register=agent_pb2.Register(inventory=inventory("fz-w"), incarnation="i")
).SerializeToString()
# Oneof members this version does not know (a newer peer's): field 15, empty and with a payload.
_UNKNOWN_MEMBER = st.sampled_from([b"\x7a\x00", b"\x7a\x03abc", _HELLO + b"\x7a\x00"])
# A valid first message (either stream's: each refuses the other's), then corrupt ones.
_STREAMS = st.builds(
    lambda first, rest: [first, *rest],
    st.one_of(st.sampled_from([_HELLO, _REGISTER]), _UNKNOWN_MEMBER, _corrupt(_HELLO), _corrupt(_REGISTER)),
    st.lists(st.one_of(_UNKNOWN_MEMBER, _corrupt(_HELLO), _corrupt(_REGISTER)), max_size=3),
)


@FUZZ
@given(payload=_STREAMS)
def test_corrupt_stream_messages_end_only_their_stream(
    servers: tuple[LoopThread, MasterRig, SubdomainRig], payload: list[bytes]
) -> None:
    check_streams(servers, payload)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("method", CONTROL)
@DEEP
@given(payload=_corrupt(_VALID))
def test_corrupt_requests_deep(
    servers: tuple[LoopThread, MasterRig, SubdomainRig], method: str, payload: bytes
) -> None:
    check_control(servers, method, payload)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@DEEP
@given(payload=_STREAMS)
def test_corrupt_stream_messages_deep(
    servers: tuple[LoopThread, MasterRig, SubdomainRig], payload: list[bytes]
) -> None:
    check_streams(servers, payload)
