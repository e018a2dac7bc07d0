"""The gRPC servicers: translate requests, call the master, translate answers.

``SubDomainGateway.Connect`` is the master side of ``subdomain.proto``; ``DomainControl`` is the
client API of ``master.proto``. Domain errors become status codes in one place
(:func:`domainos.rpc.rpc_method` / :func:`domainos.rpc.abort_with`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from domainos.api.v1 import master_pb2, master_pb2_grpc, subdomain_pb2, subdomain_pb2_grpc
from domainos.errors import DomainOSError, InvalidArgument
from domainos.rpc import abort_with, rpc_method
from master_domain._convert import job_state_from_proto, job_to_proto
from master_domain._jobs import JobState
from master_domain._registry import Session

if TYPE_CHECKING:
    from master_domain._master import MasterDomain

log = logging.getLogger(__name__)


class SubDomainGatewayServicer(subdomain_pb2_grpc.SubDomainGatewayServicer):  # type: ignore[misc]
    """One long-lived stream per sub-domain: reports in, commands out."""

    def __init__(self, master: MasterDomain) -> None:
        self._master = master

    async def Connect(
        self,
        request_iterator: AsyncIterator[subdomain_pb2.SubDomainMessage],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        messages = aiter(request_iterator)
        try:
            first = await anext(messages)
        except StopAsyncIteration:
            return
        if first.WhichOneof("body") != "hello":
            await abort_with(
                context,
                InvalidArgument("the first message on a SubDomainGateway stream must be a Hello"),
            )
        try:
            session = await self._master.attach(first.hello, context.peer())
        except DomainOSError as err:
            log.warning("refusing sub-domain %r: %s", first.hello.subdomain_id, err)
            await abort_with(context, err)
        reader = asyncio.create_task(
            self._read(session, messages), name=f"subdomain-reader-{session.subdomain_id}"
        )
        self._master.track(reader)
        try:
            while True:
                command = await session.next()
                if command is None:
                    break
                await context.write(command)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await self._master.detach(session)
        if session.overflowed:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, session.close_reason)

    async def _read(self, session: Session, messages: AsyncIterator[subdomain_pb2.SubDomainMessage]) -> None:
        try:
            async for msg in messages:
                try:
                    await self._master.on_message(session, msg)
                except DomainOSError as err:
                    log.warning("bad message from sub-domain %s: %s", session.subdomain_id, err)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the stream broke: the writer ends too
            log.info("stream from sub-domain %s ended: %s", session.subdomain_id, exc)
        finally:
            session.close()


class DomainControlServicer(master_pb2_grpc.DomainControlServicer):  # type: ignore[misc]
    """The client API (domainctl, the DSDK)."""

    def __init__(self, master: MasterDomain) -> None:
        self._master = master

    @rpc_method
    async def SubmitJob(
        self, request: master_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> master_pb2.SubmitJobResponse:
        job, duplicate = await self._master.submit(request.spec, request.request_id)
        return master_pb2.SubmitJobResponse(job=job_to_proto(job), duplicate=duplicate)

    @rpc_method
    async def GetJob(
        self, request: master_pb2.GetJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> master_pb2.Job:
        return job_to_proto(await self._master.get_job(request.job_id))

    @rpc_method
    async def ListJobs(
        self, request: master_pb2.ListJobsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> master_pb2.ListJobsResponse:
        states: list[JobState] = []
        for value in request.states:
            state = job_state_from_proto(value)
            if state is None:
                raise InvalidArgument(f"unknown job state {value}", field="states")
            states.append(state)
        jobs, token = await self._master.list_jobs(states, request.limit, request.page_token)
        return master_pb2.ListJobsResponse(
            jobs=[job_to_proto(j, with_tasks=False) for j in jobs], next_page_token=token
        )

    @rpc_method
    async def CancelJob(
        self, request: master_pb2.CancelJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> master_pb2.Job:
        return job_to_proto(await self._master.cancel_job(request.job_id, request.reason))

    @rpc_method
    async def ReadLogs(
        self, request: master_pb2.ReadLogsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> master_pb2.ReadLogsResponse:
        logs = await self._master.read_logs(
            request.job_id, request.task_index, request.stream, request.offset, request.max_bytes
        )
        return master_pb2.ReadLogsResponse(logs=logs)

    @rpc_method
    async def ListDomains(
        self, request: master_pb2.ListDomainsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> master_pb2.ListDomainsResponse:
        return self._master.list_domains()

    @rpc_method
    async def ListNodes(
        self, request: master_pb2.ListNodesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> master_pb2.ListNodesResponse:
        nodes, unreachable = await self._master.list_nodes(request.subdomain_id, request.page_size)
        return master_pb2.ListNodesResponse(nodes=nodes, unreachable=unreachable)

    @rpc_method
    async def GetClusterInfo(
        self, request: master_pb2.GetClusterInfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> master_pb2.ClusterInfo:
        return self._master.cluster_info()
