"""Master high availability in process: replicas on one shared store (a SQLite file), one leader
elected, followers refusing with the leader's address, clients following it, a clean hand-over,
and fencing -- a master whose term ended can no longer write and steps down."""

from __future__ import annotations

import asyncio
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from master_helpers import LoopThread

import dsdk
from domainos.api.v1 import master_pb2
from domainos.rpc import create_channel, error_reason
from domainos.store import ELECTION_PREFIX, SQLiteStore, absent, put_op
from master_domain import MasterDomain
from master_domain._config import MasterConfig
from master_domain._leader import LEADER_KEY, FencedStore, NotLeader

pytestmark = pytest.mark.timeout(120)


def master_config(tmp: pathlib.Path, **kw: Any) -> MasterConfig:
    base: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "metrics_listen": "",
        "bootstrap_token_file": str(tmp / "admin.token"),
        "insecure": True,
    }
    return MasterConfig(**{**base, **kw})


class Replicas:
    """Two (or more) masters on one SQLite file, each served from its own loop thread."""

    def __init__(self, tmp: pathlib.Path, n: int = 2, lease: int = 2) -> None:
        self.db = tmp / "master.db"
        self.loops: list[LoopThread] = []
        self.masters: list[MasterDomain] = []
        for i in range(n):
            loop = LoopThread()
            m = MasterDomain(
                master_config(
                    tmp,
                    id=f"m{i + 1}",
                    store=f"sqlite://{self.db}",
                    leader_lease_s=lease,
                    leader_wait_s=1.0 if i == 0 else 0.3,
                )
            )
            loop.call(m.start())
            self.loops.append(loop)
            self.masters.append(m)
        self.token = (tmp / "admin.token").read_text().strip()

    def addresses(self) -> str:
        return ",".join(m.address for m in self.masters)

    def client(self, address: str | None = None) -> dsdk.Client:
        return dsdk.Client(address or self.addresses(), insecure=True, token=self.token)

    def stop(self, i: int) -> None:
        if not self.masters[i]._stopping:
            self.loops[i].call(self.masters[i].shutdown())

    def close(self) -> None:
        for i in range(len(self.masters)):
            self.stop(i)
        for loop in self.loops:
            loop.close()


@pytest.fixture
def replicas(tmp_path: pathlib.Path) -> Iterator[Replicas]:
    r = Replicas(tmp_path)
    try:
        yield r
    finally:
        r.close()


def until(cond: Any, timeout: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def test_one_leads_and_a_follower_names_it(replicas: Replicas) -> None:
    leader, follower = replicas.masters
    assert (leader.role, follower.role) == ("leader", "follower")

    async def ask() -> grpc.aio.AioRpcError:
        async with create_channel(follower.address) as ch:
            rpc = ch.unary_unary(
                "/domainos.api.v1.DomainControl/GetClusterInfo",
                request_serializer=master_pb2.GetClusterInfoRequest.SerializeToString,
                response_deserializer=master_pb2.ClusterInfo.FromString,
            )
            try:
                await rpc(
                    master_pb2.GetClusterInfoRequest(),
                    metadata=(("authorization", f"Bearer {replicas.token}"),),
                )
            except grpc.aio.AioRpcError as exc:
                return exc
        raise AssertionError("the follower answered")

    exc = until(
        lambda: (
            (e := replicas.loops[1].call(ask())) and dict(e.trailing_metadata() or ()).get(LEADER_KEY) and e
        )
    )
    assert exc.code() == grpc.StatusCode.UNAVAILABLE and error_reason(exc) == "not-leader"
    assert dict(exc.trailing_metadata())[LEADER_KEY] == leader.address
    assert exc.details() == f"master m2 is not the leader; the leader is m1 at {leader.address}"


def test_a_client_given_every_replica_follows_the_leader(replicas: Replicas) -> None:
    leader, follower = replicas.masters
    # The follower first in the list: the client is redirected and the call succeeds.
    with replicas.client(f"{follower.address},{leader.address}") as c:
        assert c.info().master_id == "m1" and c.target == leader.address
        job = c.submit({"command": ["true"]})
        assert c.job(job.job_id).state == "PENDING"  # no sub-domain: it waits, on the leader


def test_a_clean_shutdown_hands_over_at_once_with_every_job(replicas: Replicas) -> None:
    with replicas.client() as c:
        ids = [c.submit({"command": ["true"], "name": f"j{i}"}).job_id for i in range(5)]
        replicas.stop(0)  # resigns the seat: the follower need not wait for the lease to expire
        t0 = time.monotonic()
        until(lambda: replicas.masters[1].is_leader, 10, "the follower takes over")
        assert time.monotonic() - t0 < 3.0
        assert c.info().master_id == "m2"
        assert sorted(j.job_id for j in c.jobs()) == sorted(ids)  # nothing lost


def test_a_master_whose_term_ended_is_fenced_and_steps_down(replicas: Replicas) -> None:
    leader = replicas.masters[0]
    # Another candidate takes the seat behind the leader's back (as after a long pause).
    store = SQLiteStore(str(replicas.db))
    try:
        store.txn([], [put_op(ELECTION_PREFIX + "master", b'{"id":"usurper","address":"x:1"}')])
    finally:
        store.close()
    until(lambda: leader.role == "deposed", 10, "the leader notices and steps down")
    assert leader.ended.is_set() and leader.exit_code == 75

    async def write() -> None:
        assert isinstance(leader.store, FencedStore)
        await leader.store.put("/domainos/master/x", b"1")

    with pytest.raises(NotLeader):
        replicas.loops[0].call(write())
    with replicas.client(leader.address) as c, pytest.raises(dsdk.errors.Unavailable):
        c.info()  # a deposed master serves nobody


def test_fencing_refuses_a_write_without_the_term_and_keeps_txn_semantics(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        db = tmp_path / "f.db"
        fenced = FencedStore(SQLiteStore(str(db)))
        with pytest.raises(NotLeader):
            await fenced.put("/k", b"v")  # not armed: not a leader
        seat = ELECTION_PREFIX + "master"
        result = await asyncio.to_thread(fenced.store.txn, [], [put_op(seat, b"me")])
        fenced.arm(result.revision)
        await fenced.put("/k", b"v1")
        lost = await fenced.txn([absent("/k")], [put_op("/k", b"v2")], [put_op("/other", b"f")])
        assert not lost.succeeded and (await fenced.get("/other")) is not None  # the failure branch ran
        fenced.on_fenced = lambda: calls.append("fenced")
        calls: list[str] = []
        await asyncio.to_thread(fenced.store.txn, [], [put_op(seat, b"someone else")])
        with pytest.raises(NotLeader):
            await fenced.put("/k", b"v3")
        assert calls == ["fenced"] and (await fenced.get("/k")).value == b"v1"  # type: ignore[union-attr]
        await fenced.close()

    asyncio.run(main())
