"""``PlaceTasks``: a batch of placements in one master message, over real gRPC on loopback."""

from __future__ import annotations

import pytest
from subdomain_helpers import async_test, await_for
from test_subdomain_grpc import agent, connected, fake_master, place_cmd, running

import sub_domain._manager as manager_module
from domainos.api.v1 import common_pb2, subdomain_pb2

S = common_pb2


@pytest.fixture(autouse=True)
def fast_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager_module, "TICK_INTERVAL_S", 0.02)


@async_test()
async def test_place_tasks_places_each_in_order_and_acks_only_the_refused() -> None:
    async with fake_master() as master, running(master.address) as mgr:
        await connected(mgr)
        async with agent(mgr.listen_address, "g1", gpus=4) as a:
            await a.connect()
            await await_for(lambda: mgr.nodes_ready == 1)
            good = [place_cmd(f"j-{i}", gpus=1, cmd_id=f"p-{i}")["place_task"] for i in range(3)]
            bad = subdomain_pb2.PlaceTask(command_id="bad-1", spec=S.TaskSpec(job_id=""))
            batch = subdomain_pb2.PlaceTasks(tasks=[good[0], bad, good[1], good[2]])
            await master.send(place_tasks=batch)

            def assigned() -> dict[str, common_pb2.TaskStatus]:
                return {
                    t.job_id: t
                    for m in master.received
                    if m.WhichOneof("body") == "task_updates"
                    for t in m.task_updates.tasks
                    if t.state == S.TASK_STATE_ASSIGNED
                }

            await await_for(lambda: len(assigned()) == 3, what="three ASSIGNED statuses")
            assert {j: (t.node_id, len(t.gpu_indexes)) for j, t in assigned().items()} == {
                f"j-{i}": ("g1", 1) for i in range(3)
            }
            starts = [await a.next("start_task") for _ in range(3)]
            assert [s.spec.job_id for s in starts] == ["j-0", "j-1", "j-2"]  # in the batch's order
            assert sorted(i for s in starts for i in s.gpu_indexes) == [0, 1, 2]  # one GPU each
            assert mgr.tasks.placements == 3
            assert mgr._store is not None
            for i in range(3):  # each placement is stored (written before its StartTask)
                assert await mgr._store.get(f"/domainos/subdomains/sd-1/tasks/j-{i}/0") is not None
            # The refused one is answered with a CommandAck; the others by their statuses only.
            await await_for(lambda: any(m.WhichOneof("body") == "ack" for m in master.received))
            acks = [m.ack for m in master.received if m.WhichOneof("body") == "ack"]
            assert [(x.command_id, x.ok) for x in acks] == [("bad-1", False)]
            assert "spec.job_id" in acks[0].error
            assert mgr.connected_to_master


@async_test()
async def test_a_repeated_place_tasks_places_nothing_twice() -> None:
    async with fake_master() as master, running(master.address) as mgr:
        await connected(mgr)
        async with agent(mgr.listen_address, "g1", gpus=4) as a:
            await a.connect()
            await await_for(lambda: mgr.nodes_ready == 1)
            batch = subdomain_pb2.PlaceTasks(
                tasks=[place_cmd(f"j-{i}", gpus=2, cmd_id=f"p-{i}")["place_task"] for i in range(2)]
            )
            await master.send(place_tasks=batch)
            await await_for(lambda: mgr.tasks.placements == 2)
            await master.send(place_tasks=batch)  # a retry: idempotent by task ref
            await master.send(place_task=place_cmd("j-x", gpus=1, cmd_id="p-x")["place_task"])
            rejected = await master.task_state("j-x", S.TASK_STATE_REJECTED)  # after the retry
            assert "gpus=1" in rejected.message  # the node's 4 GPUs are held once, not twice
            assert mgr.tasks.placements == 2 and len(mgr.tasks) == 2
            starts = [await a.next("start_task") for _ in range(2)]
            assert sorted(i for s in starts for i in s.gpu_indexes) == [0, 1, 2, 3]
