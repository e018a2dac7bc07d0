"""Gangs through the live master over real gRPC: fake sub-domains that hold reservations with the
pure sub-domain side (:class:`SubdomainReservations`) and start the tasks at the commit."""

from __future__ import annotations

import asyncio
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from master_helpers import FakeSubdomain, run, wait_async, wait_for
from test_master_grpc import JS, Cluster, cluster

from domainos.api.v1 import common_pb2, subdomain_pb2, subdomain_pb2_grpc
from domainos.clock import SystemClock
from domainos.resources import Resources
from domainos.rpc import create_channel
from master_domain._sched import _reserve

pytestmark = pytest.mark.timeout(60)

MODEL = "H100"


class GangFake(FakeSubdomain):
    """A fake sub-domain that answers ReserveTasks / Commit / Release like a real one would.

    Holds are packed on ``nodes`` nodes of the summary's shape by the pure sub-domain state
    machine; a commit starts the held tasks (ASSIGNED, RUNNING, then the behaviour's end).
    ``refuse`` refuses every Reserve (a stale summary: a mis-dispatch).
    """

    def __init__(
        self, *args: Any, refuse: bool = False, answer: bool = True, commit_delay: float = 0.0, **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self.refuse = refuse
        self.answer = answer
        self.commit_delay = commit_delay  # a slow part: its Commit is answered this much later
        self.book = _reserve.SubdomainReservations(self.id, SystemClock())
        node = self.summary.largest_node
        for i in range(self.summary.nodes_ready):
            self.book.handle(
                _reserve.SetNode(
                    f"{self.id}-n-{i}",
                    Resources(node.cpu_millis, node.memory_bytes, node.gpus, node.gpu_model),
                )
            )
        self.reserved: dict[str, list[common_pb2.TaskSpec]] = {}
        self.released: list[str] = []
        self.applied = 0
        self.summary_seq = 0
        self.quiet = False  # refuse every Reserve and send no summary after it

    async def reply(self, rid: str, outcome: Any, reason: str = "", expired: bool = False) -> None:
        await self.send(
            subdomain_pb2.SubDomainMessage(
                reservation=subdomain_pb2.ReservationReply(
                    reservation_id=rid, outcome=outcome, reason=reason, expired=expired
                )
            )
        )

    async def _handle(self, cmd: subdomain_pb2.MasterCommand) -> None:
        kind = cmd.WhichOneof("body")
        if kind == "reserve":
            r = cmd.reserve
            self.reserved[r.reservation_id] = list(r.tasks)
            if not self.answer:
                return
            self.applied += len(r.tasks)  # held or refused: the next summary reflects them
            if self.quiet:
                await self.reply(r.reservation_id, subdomain_pb2.RESERVATION_OUTCOME_REFUSED, "no room")
                return  # and no summary follows
            if self.refuse:
                await self.reply(
                    r.reservation_id, subdomain_pb2.RESERVATION_OUTCOME_REFUSED, "no room (stale)"
                )
            else:
                demand = _reserve.Demand(tuple(Resources.from_proto(t.resources) for t in r.tasks))
                for answer in self.book.handle(
                    _reserve.Reserve(r.reservation_id, self.id, demand, 0.0, r.hold_s)
                ):
                    await self._answer(answer)
            # Like a real sub-domain, a summary follows (this fake's capacity numbers stay as
            # declared; what matters to the master is that they reflect the reservation).
            self.summary_seq += 1
            await self.send(
                subdomain_pb2.SubDomainMessage(
                    summary=subdomain_pb2.SummaryReport(
                        incarnation=self.incarnation,
                        seq=self.summary_seq,
                        summary=self.summary,
                        placements_applied=self.applied,
                    )
                )
            )
        elif kind == "commit":
            if self.commit_delay:
                await asyncio.sleep(self.commit_delay)
            for answer in self.book.handle(_reserve.Commit(cmd.commit.reservation_id, self.id)):
                await self._answer(answer)
        elif kind == "release":
            self.released.append(cmd.release.reservation_id)
            self.book.handle(_reserve.Release(cmd.release.reservation_id, self.id, cmd.release.reason))
        else:
            await super()._handle(cmd)

    async def connect(self, tasks: list[common_pb2.TaskStatus] | None = None) -> None:
        """Hello with the tasks and the reservations held and committed (what a restart resyncs)."""
        self._channel = create_channel(self.address)
        self._call = subdomain_pb2_grpc.SubDomainGatewayStub(self._channel).Connect()
        self.ended = asyncio.Event()
        held = [subdomain_pb2.ReservationState(reservation_id=rid) for rid in self.book.held()]
        held += [
            subdomain_pb2.ReservationState(reservation_id=rid, committed=True)
            for rid in self.book.committed()
        ]
        await self._call.write(
            subdomain_pb2.SubDomainMessage(
                hello=subdomain_pb2.Hello(
                    subdomain_id=self.id,
                    region=self.region,
                    incarnation=self.incarnation,
                    max_nodes=100,
                    tasks=list(self.running.values()) if tasks is None else tasks,
                    summary=self.summary,
                    reservations=held,
                )
            )
        )
        self._reader = asyncio.create_task(self._read())

    async def _answer(self, answer: object) -> None:
        if isinstance(answer, _reserve.Accepted):
            await self.reply(answer.reservation_id, subdomain_pb2.RESERVATION_OUTCOME_ACCEPTED)
        elif isinstance(answer, _reserve.Refused):
            await self.reply(
                answer.reservation_id,
                subdomain_pb2.RESERVATION_OUTCOME_REFUSED,
                answer.reason,
                answer.expired,
            )
        elif isinstance(answer, _reserve.Committed):
            await self.reply(answer.reservation_id, subdomain_pb2.RESERVATION_OUTCOME_COMMITTED)
            for spec in self.reserved.get(answer.reservation_id, []):
                self.placed.append(spec)
                await self.report(self.status(spec, common_pb2.TASK_STATE_ASSIGNED))
                await self.report(self.status(spec, common_pb2.TASK_STATE_RUNNING))
                if self.behaviour == "succeed":
                    await self.report(self.status(spec, common_pb2.TASK_STATE_SUCCEEDED))


async def gang_fake(c: Cluster, sd: str, region: str = "east", **kw: Any) -> GangFake:
    fake = GangFake(c.address, sd, region, **kw)
    c.fakes.append(fake)
    await fake.connect()
    await wait_for(lambda: fake.welcome is not None, what=f"{sd} welcomed")
    return fake


async def submit_gang(c: Cluster, replicas: int, gpus: int, **kw: Any) -> JS.Job:
    spec = JS.JobSpec(
        name="g",
        replicas=replicas,
        command=["python3", "-c", "pass"],
        resources=common_pb2.Resources(cpu_millis=1000, memory_bytes=2**30, gpus=gpus, gpu_model=MODEL),
        **kw,
    )
    job: JS.Job = (await c.api.SubmitJob(JS.SubmitJobRequest(spec=spec))).job
    return job


async def explain(c: Cluster, job_id: str) -> str:
    return str((await c.api.ExplainJob(JS.ExplainJobRequest(job_id=job_id))).text)


def test_a_gang_split_over_two_sub_domains_is_reserved_committed_and_runs_whole() -> None:
    async def body() -> None:
        async with cluster(metrics_listen="127.0.0.1:0") as c:
            a = await gang_fake(c, "east-1", nodes=1, cpus=8, gpus=4, model=MODEL)
            b = await gang_fake(c, "east-2", nodes=1, cpus=8, gpus=4, model=MODEL)
            job = await submit_gang(c, 4, 2, gang=JS.GangPolicy(min=4, timeout_s=20))
            done = await c.wait_state(job.job_id, JS.JOB_STATE_SUCCEEDED)
            assert sorted(t.subdomain_id for t in done.tasks) == ["east-1", "east-1", "east-2", "east-2"]
            assert len({t.attempt for t in done.tasks}) == 1
            # Every task went out in a reservation (never a PlaceTask), carrying its reservation id.
            for fake in (a, b):
                assert not [m for m in fake.commands if m.WhichOneof("body") in ("place_task", "place_tasks")]
                assert all(s.reservation_id.endswith(fake.id) for s in fake.placed)
            # The finished gang's allocations are released.
            await wait_for(lambda: a.released and b.released, what="releases after success")
            with urllib.request.urlopen(f"http://{c.info['metrics']}/metrics", timeout=5) as resp:
                text = resp.read().decode()
            assert 'domainos_master_reservations_total{outcome="sent"} 2.0' in text
            assert 'domainos_master_reservations_total{outcome="accepted"} 2.0' in text
            assert 'domainos_master_gangs_total{outcome="placed"} 1.0' in text

    run(body())


def test_tasks_of_a_part_that_commits_first_are_not_stopped_while_another_part_commits() -> None:
    # A sub-domain starts (and reports) its part's tasks as soon as it commits; the other part
    # answers its Commit later. The master recorded where every task goes before the first
    # Commit left, so the early reports are its tasks, never "not the current attempt".
    async def body() -> None:
        async with cluster() as c:
            fast = await gang_fake(c, "east-1", nodes=1, cpus=8, gpus=4, model=MODEL, behaviour="run")
            slow = await gang_fake(
                c, "east-2", nodes=1, cpus=8, gpus=4, model=MODEL, behaviour="run", commit_delay=1.0
            )
            job = await submit_gang(c, 4, 2, gang=JS.GangPolicy(min=4, timeout_s=20))
            await wait_for(lambda: len(fast.placed) == 2 and len(slow.placed) == 2, what="both parts started")
            running = await c.wait_state(job.job_id, JS.JOB_STATE_RUNNING)
            assert len({t.attempt for t in running.tasks}) == 1
            await asyncio.sleep(0.5)  # any stop the early reports caused would have been sent
            assert fast.stopped == [] and slow.stopped == []
            assert (await c.job(job.job_id)).state == JS.JOB_STATE_RUNNING

    run(body())


def test_a_gang_with_a_node_selector_is_reserved_only_where_the_labels_are() -> None:
    async def body() -> None:
        async with cluster() as c:
            a = GangFake(c.address, "east-1", "east", nodes=1, cpus=8, gpus=4, model=MODEL)
            b = GangFake(c.address, "east-2", "east", nodes=1, cpus=8, gpus=4, model=MODEL)
            b.summary.label_nodes["zone=b"] = 1
            for fake in (a, b):
                c.fakes.append(fake)
                await fake.connect()
                await wait_for(lambda f=fake: f.welcome is not None, what=f"{fake.id} welcomed")
            job = await submit_gang(c, 2, 2, gang=JS.GangPolicy(min=2), node_selector={"zone": "b"})
            done = await c.wait_state(job.job_id, JS.JOB_STATE_SUCCEEDED)
            assert {t.subdomain_id for t in done.tasks} == {"east-2"}
            assert not [m for m in a.commands if m.WhichOneof("body") == "reserve"]
            # Labels no sub-domain has: the gang waits with the reason, nothing is reserved.
            stuck = await submit_gang(c, 2, 2, gang=JS.GangPolicy(min=2), node_selector={"zone": "c"})

            async def waiting() -> str | None:
                text = await explain(c, stuck.job_id)
                return text if "node_selector zone=c" in text else None

            text = await wait_async(waiting, 10, "the node_selector reason")
            assert "none of the 2 connected sub-domain(s) has ready nodes with every label" in text
            reserves = [m for f in (a, b) for m in f.commands if m.WhichOneof("body") == "reserve"]
            assert len(reserves) == 1  # the first job's only

    run(body())


def test_a_gang_that_fits_nowhere_waits_with_the_numbers_and_nothing_is_reserved() -> None:
    async def body() -> None:
        async with cluster() as c:
            a = await gang_fake(c, "east-1", nodes=1, cpus=8, gpus=4, model=MODEL)
            job = await submit_gang(c, 3, 2, gang=JS.GangPolicy(min=3))

            async def waiting() -> str | None:
                text = await explain(c, job.job_id)
                return text if "room for 2 of 3" in text else None

            text = await wait_async(waiting, 10, "the capacity reason")
            assert "gang: the first 3 of 3 tasks are placed all or nothing" in text
            assert (await c.job(job.job_id)).state == JS.JOB_STATE_PENDING
            assert not [
                m for m in a.commands if m.WhichOneof("body") in ("reserve", "place_task", "place_tasks")
            ]

    run(body())


def test_a_refused_reservation_releases_every_part_and_the_gang_is_tried_again() -> None:
    async def body() -> None:
        async with cluster() as c:
            a = await gang_fake(c, "east-1", nodes=1, cpus=8, gpus=4, model=MODEL, refuse=True)
            b = await gang_fake(c, "east-2", nodes=1, cpus=8, gpus=4, model=MODEL)
            job = await submit_gang(c, 4, 2, gang=JS.GangPolicy(min=4, timeout_s=20))
            await wait_for(lambda: a.reserved and b.released, 10, "the refusal and the release of the rest")
            rid_b = next(iter(b.reserved))
            assert rid_b in b.released and not b.book.held() and not b.book.committed()
            seen = await wait_async(
                lambda: _message(c, job.job_id, "refused the reservation"), 10, "the refusal in the job"
            )
            assert seen
            assert c.master.jobs.misdispatch_total >= 1
            # The summary was stale: the sub-domain has room now. The next try lands.
            a.refuse = False
            done = await c.wait_state(job.job_id, JS.JOB_STATE_SUCCEEDED, timeout=20)
            assert min(t.attempt for t in done.tasks) >= 2

    run(body())


def test_a_sub_domain_that_refused_a_gang_is_not_asked_again_before_its_next_summary() -> None:
    async def body() -> None:
        async with cluster() as c:
            a = await gang_fake(c, "east-1", nodes=1, cpus=8, gpus=4, model=MODEL)
            await gang_fake(c, "east-2", nodes=1, cpus=8, gpus=4, model=MODEL)
            a.quiet = True
            job = await submit_gang(c, 4, 2, gang=JS.GangPolicy(min=4, timeout_s=20))

            def reserves(f: GangFake) -> int:
                return len([m for m in f.commands if m.WhichOneof("body") == "reserve"])

            await wait_for(lambda: reserves(a) == 1, 10, "the first reservation at east-1")
            await asyncio.sleep(4.0)  # more than GANG_RETRY_S: a retry would have gone out
            assert reserves(a) == 1, "asked again with nothing new to go on"
            text = await explain(c, job.job_id)
            assert "waiting for new summaries from east-1" in text
            # A new summary (room now): the gang is tried again and lands.
            a.quiet = False
            a.summary_seq += 1
            await a.send(
                subdomain_pb2.SubDomainMessage(
                    summary=subdomain_pb2.SummaryReport(
                        incarnation=a.incarnation,
                        seq=a.summary_seq,
                        summary=a.summary,
                        placements_applied=a.applied,
                    )
                )
            )
            done = await c.wait_state(job.job_id, JS.JOB_STATE_SUCCEEDED, timeout=20)
            assert reserves(a) == 2 and len({t.attempt for t in done.tasks}) == 1

    run(body())


async def _message(c: Cluster, job_id: str, needle: str) -> bool:
    return needle in (await c.job(job_id)).message


def test_cancel_while_reserving_releases_the_holds() -> None:
    async def body() -> None:
        async with cluster() as c:
            a = await gang_fake(c, "east-1", nodes=1, cpus=8, gpus=4, model=MODEL)
            b = await gang_fake(c, "east-2", nodes=1, cpus=8, gpus=4, model=MODEL, behaviour="silent")
            b.book = _reserve.SubdomainReservations("east-2", SystemClock())  # answers nothing
            b.refuse = False

            async def never(cmd: subdomain_pb2.MasterCommand) -> None:
                if cmd.WhichOneof("body") == "release":
                    b.released.append(cmd.release.reservation_id)

            b._handle = never  # type: ignore[method-assign]
            job = await submit_gang(c, 4, 2, gang=JS.GangPolicy(min=4, timeout_s=20))
            await wait_for(lambda: a.book.held(), 10, "east-1 holding its part")
            await c.api.CancelJob(JS.CancelJobRequest(job_id=job.job_id))
            await wait_for(lambda: not a.book.held() and b.released, 10, "both parts released")
            assert (await c.job(job.job_id)).state == JS.JOB_STATE_CANCELLED

    run(body())


def test_a_running_gang_task_that_fails_requeues_the_whole_gang() -> None:
    async def body() -> None:
        async with cluster() as c:
            a = await gang_fake(c, "east-1", nodes=2, cpus=8, gpus=4, model=MODEL, behaviour="run")
            job = await submit_gang(
                c, 2, 4, gang=JS.GangPolicy(min=2), retry=JS.RetryPolicy(on_exit=1, on_lost=0), has_retry=True
            )
            await c.wait_state(job.job_id, JS.JOB_STATE_RUNNING)
            first = a.placed[0]
            await a.report(a.status(first, common_pb2.TASK_STATE_FAILED, exit_code=3))
            await wait_for(
                lambda: any(r.task_index != first.task_index for r in a.stopped), 10, "the sibling stopped"
            )

            async def again() -> JS.Job | None:
                j = await c.job(job.job_id)
                ok = j.state == JS.JOB_STATE_RUNNING and all(t.attempt > first.attempt for t in j.tasks)
                return j if ok else None

            j = await wait_async(again, 20, "the gang running again as a new attempt")
            assert len({t.attempt for t in j.tasks}) == 1

    run(body())


def _welcomed(fake: FakeSubdomain) -> bool:
    return fake.welcome is not None


def test_a_restarted_master_releases_the_holds_of_a_gang_it_never_committed(tmp_path: Path) -> None:
    """Reserving gangs are not durable; their attempt is. After a restart the held part is released
    (resync), the gang is planned again as a new attempt and placed once."""
    url = f"sqlite:///{tmp_path}/master.db"

    async def body() -> None:
        async with cluster(store=url) as c:
            a = await gang_fake(c, "east-1", nodes=1, cpus=8, gpus=4, model=MODEL, behaviour="run")
            b = await gang_fake(c, "east-2", nodes=1, cpus=8, gpus=4, model=MODEL, answer=False)
            job = await submit_gang(c, 4, 2, gang=JS.GangPolicy(min=4, timeout_s=30))
            await wait_for(lambda: a.book.held() and b.reserved, 10, "east-1 holding, east-2 silent")
            first = a.book.held()[0]
            assert first == f"{job.job_id}/1/east-1"
            await a.close()
            await b.close()
        async with cluster(store=url) as c:
            stored = await c.job(job.job_id)
            assert all(t.state == common_pb2.TASK_STATE_PENDING and t.attempt == 1 for t in stored.tasks)
            b.answer = True
            for fake in (a, b):
                fake.address = c.address
                fake.welcome = None
                c.fakes.append(fake)
                await fake.connect()
                await wait_for(partial(_welcomed, fake), what="welcome after restart")
            await wait_for(lambda: first in a.released, 10, "the old hold released by resync")
            j = await c.wait_state(job.job_id, JS.JOB_STATE_RUNNING, timeout=20)
            assert {t.attempt for t in j.tasks} == {2}
            assert sorted(s.task_index for s in a.placed + b.placed) == [0, 1, 2, 3]  # placed once

    run(body())


def test_a_gang_over_quota_waits_with_the_quota_reason_and_reserves_nothing() -> None:
    async def body() -> None:
        async with cluster() as c:
            a = await gang_fake(c, "east-1", nodes=1, cpus=8, gpus=8, model=MODEL)
            await c.master.set_quota("system", "", "", {f"gpu:{MODEL}": 6})
            job = await submit_gang(c, 4, 2, gang=JS.GangPolicy(min=4))
            wanted = f"quota: tenant system would use 8 of 6 gpu:{MODEL} in all regions"
            await wait_async(lambda: _message(c, job.job_id, wanted), 10, "the quota reason")
            text = await explain(c, job.job_id)
            assert "quota: refused:" in text and "plan: east-1 (east): tasks 0-3" in text, text
            assert not [m for m in a.commands if m.WhichOneof("body") == "reserve"]
            # Raised: the whole gang goes at once.
            await c.master.set_quota("system", "", "", {f"gpu:{MODEL}": 8})
            done = await c.wait_state(job.job_id, JS.JOB_STATE_SUCCEEDED, timeout=20)
            assert len(done.tasks) == 4

    run(body())
