"""The rendezvous table (pure, one asyncio condition per waited-on job) and the dataset registry
(on the embedded store): validation, stale attempts, waiting, tenant isolation, idempotency."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from domainos.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from domainos.store import AsyncStore, open_store
from master_domain._datasets import DatasetRecord, DatasetRegistry, ShardInfo, ShardReplica
from master_domain._rendezvous import Endpoint, Rendezvous

pytestmark = pytest.mark.timeout(30)


def ep(index: int, attempt: int = 0, address: str = "127.0.0.1:5000", kind: str = "dsdk-worker") -> Endpoint:
    return Endpoint(index, attempt, address, kind)


def test_publish_keeps_the_latest_attempt_per_task_and_kind() -> None:
    async def main() -> None:
        r = Rendezvous()
        r.publish("j", ep(0, 1, "127.0.0.1:1"), replicas=2)
        r.publish("j", ep(0, 2, "127.0.0.1:2"), replicas=2)
        r.publish("j", ep(0, 2, "127.0.0.1:3", kind="collective"), replicas=2)
        with pytest.raises(FailedPrecondition, match="attempt 1 is superseded"):
            r.publish("j", ep(0, 1, "127.0.0.1:9"), replicas=2)
        assert [e.address for e in r.endpoints("j")] == ["127.0.0.1:3", "127.0.0.1:2"]
        assert [e.address for e in r.endpoints("j", "dsdk-worker")] == ["127.0.0.1:2"]
        r.validate()
        r.forget("j")
        assert r.endpoints("j") == [] and len(r) == 0

    asyncio.run(main())


@pytest.mark.parametrize(
    ("endpoint", "field", "words"),
    [
        (ep(2), "endpoint.task_index", "between 0 and 1 (the job has 2 tasks), got 2"),
        (ep(0, address="nowhere"), "endpoint.address", "expected host:port"),
        (ep(0, address="h:99999"), "endpoint.address", "expected host:port"),
        (ep(0, kind="Bad Kind"), "endpoint.kind", "lowercase letters"),
        (Endpoint(0, -1, "h:1"), "endpoint.attempt", "must not be negative"),
    ],
)
def test_a_bad_endpoint_names_its_field(endpoint: Endpoint, field: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        Rendezvous().publish("j", endpoint, replicas=2)
    assert exc.value.field == field and words in exc.value.message


def test_wait_returns_when_enough_are_published_or_on_timeout() -> None:
    async def main() -> None:
        r = Rendezvous()
        waiter = asyncio.create_task(r.wait("j", lambda: len(r.endpoints("j")) >= 2, 10.0))
        await asyncio.sleep(0)
        r.publish("j", ep(0), replicas=2)
        await asyncio.sleep(0.01)
        assert not waiter.done()
        r.publish("j", ep(1), replicas=2)
        await asyncio.wait_for(waiter, 2.0)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await r.wait("k", lambda: False, 0.05)  # nobody publishes: back after the wait
        assert 0.04 <= loop.time() - t0 < 1.0
        # forgetting a job wakes its waiters (their condition then holds or they go on waiting)
        gone = {"j2": False}
        waiter = asyncio.create_task(r.wait("j2", lambda: gone["j2"], 10.0))
        await asyncio.sleep(0)
        gone["j2"] = True
        r.forget("j2")
        await asyncio.wait_for(waiter, 2.0)

    asyncio.run(main())


# -- the dataset registry ---------------------------------------------------------------------------


def record(name: str = "corpus", tenant: str = "a", shards: int = 2, job: str = "job-1") -> DatasetRecord:
    return DatasetRecord(
        name=name,
        tenant=tenant,
        num_shards=shards,
        replicas=2,
        job_id=job,
        shards=tuple(
            ShardInfo(
                i, 100 + i, (ShardReplica("n1", "east-1", "east"), ShardReplica("n2", "west-1", "west"))
            )
            for i in range(shards)
        ),
    )


@pytest.fixture
def registry() -> Iterator[tuple[DatasetRegistry, asyncio.AbstractEventLoop]]:
    loop = asyncio.new_event_loop()
    store = AsyncStore(open_store("memory://"))
    try:
        yield DatasetRegistry(store), loop
    finally:
        loop.run_until_complete(store.close())
        loop.close()


def test_put_get_list_delete(registry: tuple[DatasetRegistry, asyncio.AbstractEventLoop]) -> None:
    reg, loop = registry
    run = loop.run_until_complete
    run(reg.put(record(), replace=False, tenant="a"))
    got = run(reg.get("corpus", tenant="a"))
    assert got.size_bytes == 201 and [r.node_id for r in got.shards[1].replicas] == ["n1", "n2"]
    assert got == run(reg.get("corpus", tenant=None))  # an admin sees every tenant's
    with pytest.raises(NotFound, match="no dataset 'corpus'"):
        run(reg.get("corpus", tenant="b"))  # another tenant: as if it did not exist
    assert [r.name for r in run(reg.list(tenant="a"))] == ["corpus"] and run(reg.list(tenant="b")) == []
    # a retried registration by the same job is answered with the first record
    assert run(reg.put(record(), replace=False, tenant="a")) == got
    with pytest.raises(AlreadyExists, match="delete it first or pass replace"):
        run(reg.put(record(job="job-2"), replace=False, tenant="a"))
    run(reg.put(record(job="job-2", shards=3), replace=True, tenant="a"))
    assert run(reg.get("corpus", tenant="a")).num_shards == 3
    with pytest.raises(AlreadyExists, match="is taken"):
        run(reg.put(record(tenant="b"), replace=True, tenant="b"))  # b cannot overwrite a's
    with pytest.raises(NotFound):
        run(reg.delete("corpus", tenant="b"))
    assert run(reg.delete("corpus", tenant="a")).name == "corpus"
    assert run(reg.list(tenant=None)) == []


def test_put_for_another_tenant_is_refused(
    registry: tuple[DatasetRegistry, asyncio.AbstractEventLoop],
) -> None:
    reg, loop = registry
    with pytest.raises(PermissionDenied, match="for tenant 'a' as tenant 'b'"):
        loop.run_until_complete(reg.put(record(tenant="a"), replace=False, tenant="b"))


@pytest.mark.parametrize(
    ("rec", "field", "words"),
    [
        (DatasetRecord("bad name", num_shards=1), "dataset.name", "not a valid dataset name"),
        (DatasetRecord("d", num_shards=0), "dataset.num_shards", "between 1 and 4096"),
        (
            record(shards=2).__class__("d", num_shards=3, shards=record().shards),
            "dataset.shards",
            "missing [2]",
        ),
        (
            DatasetRecord("d", num_shards=1, shards=(ShardInfo(0, 1, ()),)),
            "dataset.shards[0].replicas",
            "at least one copy",
        ),
        (
            DatasetRecord(
                "d", num_shards=1, shards=(ShardInfo(0, 1, (ShardReplica("n", "s"), ShardReplica("n", "t"))),)
            ),
            "dataset.shards[0].replicas",
            "a node is listed twice",
        ),
        (DatasetRecord("d", num_shards=1, replicas=9), "dataset.replicas", "between 1 and 8"),
    ],
)
def test_a_bad_record_names_its_field(rec: DatasetRecord, field: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        rec.validate()
    assert exc.value.field == field and words in exc.value.message
