"""A small in-test DomainControl servicer (grpc.aio, port 0) run on a background event loop.

Jobs advance one step per GetJob (PENDING -> RUNNING -> the configured outcome), logs are served
in pages of ``page_bytes``, and any method can be told to fail its next calls with a status code.
Shared by tests/dsdk and tests/cli.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import grpc.aio

from domainos.api.v1 import common_pb2, master_pb2, master_pb2_grpc
from domainos.rpc import bind, create_server

GiB = 2**30


def _summary(nodes: int, simulated: int = 0, gpus: int = 0) -> common_pb2.SubDomainSummary:
    return common_pb2.SubDomainSummary(
        nodes_total=nodes,
        nodes_ready=nodes,
        nodes_simulated=simulated,
        capacity=common_pb2.Resources(cpu_millis=4000 * nodes, memory_bytes=16 * GiB * nodes, gpus=gpus),
        free=common_pb2.Resources(cpu_millis=3500 * nodes, memory_bytes=12 * GiB * nodes, gpus=gpus),
        running_tasks=1,
        max_nodes=10000,
        gpus_by_model={"H100-SXM-80GB": gpus} if gpus else {},
    )


def default_domains() -> master_pb2.ListDomainsResponse:
    return master_pb2.ListDomainsResponse(
        regions=[
            master_pb2.RegionView(
                name="east",
                subdomains=[
                    master_pb2.SubDomainView(
                        subdomain_id="east-1",
                        region="east",
                        address="127.0.0.1:7101",
                        connected=True,
                        summary=_summary(2),
                    )
                ],
            ),
            master_pb2.RegionView(
                name="west",
                subdomains=[
                    master_pb2.SubDomainView(
                        subdomain_id="west-1",
                        region="west",
                        address="127.0.0.1:7102",
                        connected=True,
                        summary=_summary(2, simulated=2, gpus=16),
                    )
                ],
            ),
        ]
    )


def node_view(
    node_id: str, subdomain: str, region: str, *, simulated: bool = False, gpus: int = 0
) -> common_pb2.NodeView:
    inv = common_pb2.NodeInventory(
        node_id=node_id,
        hostname="host-" + node_id,
        simulated=simulated,
        cpu_cores=4,
        memory_bytes=16 * GiB,
        gpus=[common_pb2.GpuDevice(index=i, model="H100-SXM-80GB") for i in range(gpus)],
        allocatable=common_pb2.Resources(
            cpu_millis=4000, memory_bytes=16 * GiB, gpus=gpus, gpu_model="H100-SXM-80GB" if gpus else ""
        ),
    )
    return common_pb2.NodeView(
        inventory=inv,
        usage=common_pb2.NodeUsage(cpu_percent=12.5, memory_used_bytes=2 * GiB),
        health=common_pb2.NodeHealth(status=common_pb2.HEALTH_STATUS_HEALTHY),
        state="ready",
        free=common_pb2.Resources(cpu_millis=3500, memory_bytes=14 * GiB, gpus=gpus),
        running_tasks=1,
        subdomain_id=subdomain,
        region=region,
    )


class FakeMaster(master_pb2_grpc.DomainControlServicer):  # type: ignore[misc]
    """Records calls; scripted failures; jobs that finish after a couple of GetJob calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.submit_request_ids: list[str] = []
        self.fail: dict[str, deque[tuple[grpc.StatusCode, str]]] = defaultdict(deque)
        self.jobs: dict[str, master_pb2.Job] = {}
        self.by_request: dict[str, str] = {}
        self.steps: dict[str, int] = {}
        self.outcome = "SUCCEEDED"  # or "FAILED": task 0 exits with 3
        self.steps_to_finish = 2
        self.logs: dict[tuple[str, int, str], bytes] = {}
        self.page_bytes = 1 << 20
        self.domains = default_domains()
        self.nodes = [
            node_view("east-1-n1", "east-1", "east"),
            node_view("east-1-n2", "east-1", "east"),
            node_view("west-1-n1", "west-1", "west", simulated=True, gpus=8),
        ]
        self.unreachable: list[str] = []
        self.last_list_jobs: master_pb2.ListJobsRequest | None = None
        self.quotas: dict[tuple[str, str, str], master_pb2.QuotaInfo] = {}
        self.last_set_quota: master_pb2.SetQuotaRequest | None = None

    # -- helpers for tests ------------------------------------------------------

    def fail_next(
        self, method: str, code: grpc.StatusCode, details: str = "injected", times: int = 1
    ) -> None:
        for _ in range(times):
            self.fail[method].append((code, details))

    async def _enter(self, method: str, context: Any) -> None:
        self.calls.append(method)
        if self.fail[method]:
            code, details = self.fail[method].popleft()
            await context.abort(code, details)

    def _advance(self, job_id: str) -> master_pb2.Job:
        job = self.jobs[job_id]
        if job.state in (
            master_pb2.JOB_STATE_SUCCEEDED,
            master_pb2.JOB_STATE_FAILED,
            master_pb2.JOB_STATE_CANCELLED,
        ):
            return job
        step = self.steps[job_id] = self.steps.get(job_id, 0) + 1
        now = time.time()
        if step < self.steps_to_finish:
            job.state = master_pb2.JOB_STATE_RUNNING
            for t in job.tasks:
                t.state = common_pb2.TASK_STATE_RUNNING
                t.node_id = f"east-1-n{t.index % 2 + 1}"
                t.subdomain_id = "east-1"
                t.region = "east"
                t.started_at = now
            return job
        failed = self.outcome == "FAILED"
        job.state = master_pb2.JOB_STATE_FAILED if failed else master_pb2.JOB_STATE_SUCCEEDED
        job.finished_at = now
        if failed:
            job.message = "task 0 exited with code 3"
        for t in job.tasks:
            t.finished_at = now
            if failed and t.index == 0:
                t.state = common_pb2.TASK_STATE_FAILED
                t.exit_code = 3
            elif failed:
                t.state = common_pb2.TASK_STATE_CANCELLED
                t.exit_code = 143
            else:
                t.state = common_pb2.TASK_STATE_SUCCEEDED
        return job

    # -- the service ------------------------------------------------------------

    async def SubmitJob(self, request: Any, context: Any) -> Any:
        self.submit_request_ids.append(request.request_id)
        await self._enter("SubmitJob", context)
        if request.request_id in self.by_request:
            return master_pb2.SubmitJobResponse(
                job=self.jobs[self.by_request[request.request_id]], duplicate=True
            )
        job_id = f"j-{len(self.jobs) + 1:04d}"
        replicas = request.spec.replicas or 1
        job = master_pb2.Job(
            job_id=job_id,
            spec=request.spec,
            state=master_pb2.JOB_STATE_PENDING,
            created_at=time.time() - 5,
            request_id=request.request_id,
            tasks=[master_pb2.TaskInfo(index=i, attempt=0) for i in range(replicas)],
        )
        for t in job.tasks:
            t.state = common_pb2.TASK_STATE_PENDING
            self.logs.setdefault((job_id, t.index, "stdout"), f"hello from task {t.index}\n".encode())
            if self.outcome == "FAILED" and t.index == 0:
                self.logs.setdefault((job_id, t.index, "stderr"), b"boom: exiting with 3\n")
        self.jobs[job_id] = job
        self.by_request[request.request_id] = job_id
        return master_pb2.SubmitJobResponse(job=job, duplicate=False)

    async def GetJob(self, request: Any, context: Any) -> Any:
        await self._enter("GetJob", context)
        if request.job_id not in self.jobs:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"job {request.job_id} not found")
        return self._advance(request.job_id)

    async def ListJobs(self, request: Any, context: Any) -> Any:
        await self._enter("ListJobs", context)
        self.last_list_jobs = request
        jobs = sorted(self.jobs.values(), key=lambda j: j.job_id, reverse=True)
        if request.states:
            jobs = [j for j in jobs if j.state in request.states]
        start = int(request.page_token or 0)
        limit = request.limit or 500
        page = jobs[start : start + limit]
        out = []
        for j in page:
            light = master_pb2.Job()
            light.CopyFrom(j)
            del light.tasks[:]
            out.append(light)
        nxt = str(start + limit) if start + limit < len(jobs) else ""
        return master_pb2.ListJobsResponse(jobs=out, next_page_token=nxt)

    async def CancelJob(self, request: Any, context: Any) -> Any:
        await self._enter("CancelJob", context)
        if request.job_id not in self.jobs:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"job {request.job_id} not found")
        job = self.jobs[request.job_id]
        if job.state not in (master_pb2.JOB_STATE_SUCCEEDED, master_pb2.JOB_STATE_FAILED):
            job.state = master_pb2.JOB_STATE_CANCELLED
            job.message = request.reason or "cancelled"
            for t in job.tasks:
                t.state = common_pb2.TASK_STATE_CANCELLED
        return job

    async def ReadLogs(self, request: Any, context: Any) -> Any:
        await self._enter("ReadLogs", context)
        if request.job_id not in self.jobs:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"job {request.job_id} not found")
        job = self.jobs[request.job_id]
        stream = request.stream or "stdout"
        indexes = [t.index for t in job.tasks] if request.task_index < 0 else [request.task_index]
        if request.task_index >= len(job.tasks):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"task_index: job has {len(job.tasks)} tasks"
            )
        out = []
        for i in indexes:
            data = self.logs.get((request.job_id, i, stream), b"")
            cap = min(request.max_bytes or self.page_bytes, self.page_bytes)
            piece = data[request.offset : request.offset + cap]
            chunk = common_pb2.LogChunk(
                data=piece,
                offset=request.offset,
                size=len(data),
                eof=request.offset + len(piece) >= len(data),
            )
            out.append(
                master_pb2.TaskLog(task_index=i, attempt=0, node_id=f"east-1-n{i % 2 + 1}", chunk=chunk)
            )
        return master_pb2.ReadLogsResponse(logs=out)

    async def ListDomains(self, request: Any, context: Any) -> Any:
        await self._enter("ListDomains", context)
        return self.domains

    async def ListNodes(self, request: Any, context: Any) -> Any:
        await self._enter("ListNodes", context)
        nodes = [n for n in self.nodes if not request.subdomain_id or n.subdomain_id == request.subdomain_id]
        return master_pb2.ListNodesResponse(nodes=nodes, unreachable=self.unreachable)

    async def GetClusterInfo(self, request: Any, context: Any) -> Any:
        await self._enter("GetClusterInfo", context)
        return master_pb2.ClusterInfo(
            master_id="master-1",
            version="0.1.0",
            store="memory://",
            started_at=time.time() - 60,
            subdomains_connected=2,
            subdomains_known=2,
            nodes_ready=4,
            jobs_active=0,
        )

    # -- scheduling ---------------------------------------------------------------

    async def SetQuota(self, request: Any, context: Any) -> Any:
        await self._enter("SetQuota", context)
        self.last_set_quota = request
        key = (request.tenant, request.region or "*", request.subdomain or "*")
        info = master_pb2.QuotaInfo(
            tenant=key[0], region=key[1], subdomain=key[2], limits=dict(request.limits)
        )
        self.quotas[key] = info
        return info

    async def DeleteQuota(self, request: Any, context: Any) -> Any:
        await self._enter("DeleteQuota", context)
        key = (request.tenant, request.region or "*", request.subdomain or "*")
        if key not in self.quotas:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"tenant: no quota of {key[0]} in {key[1]}/{key[2]}"
            )
        return self.quotas.pop(key)

    async def ListQuotas(self, request: Any, context: Any) -> Any:
        await self._enter("ListQuotas", context)
        rows = [q for k, q in sorted(self.quotas.items()) if not request.tenant or k[0] == request.tenant]
        return master_pb2.ListQuotasResponse(quotas=rows)

    async def ExplainJob(self, request: Any, context: Any) -> Any:
        await self._enter("ExplainJob", context)
        job = self.jobs.get(request.job_id)
        if job is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"job_id: job {request.job_id} not found")
        text = f"waiting: quota of tenant acme in */*: gpu:* 8 used + 4 requested > 8 (priority {job.spec.priority or 'normal'})"
        return master_pb2.ExplainJobResponse(job_id=job.job_id, text=text, state=job.state, reasons=[text])


class ServerThread:
    """Runs a grpc.aio server on its own event loop thread, so blocking clients can call it."""

    def __init__(self, servicer: master_pb2_grpc.DomainControlServicer) -> None:
        self.servicer = servicer
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-master", daemon=True)
        self.server: grpc.aio.Server | None = None
        self.address = ""

    async def _start(self) -> str:
        self.server = create_server()
        master_pb2_grpc.add_DomainControlServicer_to_server(self.servicer, self.server)
        port = bind(self.server, "127.0.0.1:0")
        await self.server.start()
        return f"127.0.0.1:{port}"

    def start(self) -> str:
        self.thread.start()
        self.address = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=10)
        return self.address

    def stop(self) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@contextmanager
def running_fake_master() -> Iterator[tuple[FakeMaster, str]]:
    fake = FakeMaster()
    server = ServerThread(fake)
    address = server.start()
    try:
        yield fake, address
    finally:
        server.stop()


def wait_for(cond: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``cond()`` until it is truthy (returned) or ``timeout`` passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)
