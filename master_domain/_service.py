"""The gRPC servicers: translate requests, call the master, translate answers.

``SubDomainGateway.Connect`` is the master side of ``subdomain.proto``; ``DomainControl`` is the
client API of ``master.proto``. Domain errors become status codes in one place
(:func:`domainos.rpc.rpc_method` / :func:`domainos.rpc.abort_with`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
import grpc.aio

from domainos.api.v1 import common_pb2, master_pb2, master_pb2_grpc, subdomain_pb2, subdomain_pb2_grpc
from domainos.errors import (
    DomainOSError,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from domainos.ratelimit import RateLimiter, stream_limit
from domainos.rpc import abort_with, require_peer, rpc_method
from domainos.store import Op
from master_domain._admission import QuotaRow
from master_domain._audit import AuditEntry
from master_domain._auth import LOGIN_HINT, MUTATING, Principal, Role, authorize, bearer_token, parse_token
from master_domain._auth_tls import check_client_cert
from master_domain._convert import (
    dataset_from_proto,
    dataset_to_proto,
    endpoint_from_proto,
    endpoint_to_proto,
    job_state_from_proto,
    job_state_to_proto,
    job_to_proto,
    stats_from_proto,
    stats_to_proto,
)
from master_domain._jobs import JobState
from master_domain._leader import NotLeader, leader_metadata
from master_domain._registry import Session
from master_domain._sched._quota import Quota
from master_domain._tenants import SYSTEM_TENANT

if TYPE_CHECKING:
    from master_domain._master import MasterDomain

log = logging.getLogger(__name__)


class SubDomainGatewayServicer(subdomain_pb2_grpc.SubDomainGatewayServicer):  # type: ignore[misc]
    """One long-lived stream per sub-domain: reports in, commands out."""

    def __init__(self, master: MasterDomain, messages: RateLimiter | None = None) -> None:
        self._master = master
        self._messages = messages if messages is not None else RateLimiter(0, 1)

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
        if not self._master.is_leader:
            await refuse_follower(self._master, context)
        try:
            # Only a sub-domain certificate naming this very sub-domain may open its stream.
            require_peer(context, "subdomain", first.hello.subdomain_id, secure=self._master.secure)
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
        if session.overflowed or session.limited:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, session.close_reason)

    async def _read(self, session: Session, messages: AsyncIterator[subdomain_pb2.SubDomainMessage]) -> None:
        try:
            async for msg in messages:
                over = stream_limit(
                    self._messages, session.subdomain_id, f"sub-domain {session.subdomain_id}"
                )
                if over is not None:
                    log.warning("closing the stream of sub-domain %s: %s", session.subdomain_id, over)
                    session.limited = True
                    session.close(str(over))
                    return
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


@dataclass
class Call:
    """One ``DomainControl`` request as the gate saw it (reachable from the servicer through
    :func:`current_call`)."""

    method: str
    peer: str
    request_id: str = ""
    #: Set once the caller is authenticated.
    principal: Principal | None = None
    #: The token id presented (even when it did not authenticate), for the audit log.
    claimed: str = ""
    #: The caller's certificate identity (``client/<id>``); empty on an insecure master.
    cert: str = ""
    #: The servicer wrote this call's audit entry in the transaction of its change.
    audited: bool = False

    @property
    def who(self) -> str:
        if self.principal is not None:
            return self.principal.name
        if self.claimed:
            return f"token:{self.claimed}"
        return f"cert:{self.cert}" if self.cert else "anonymous"

    @property
    def rate_key(self) -> str:
        """Whose bucket a request spends: the verified token, else the certificate, else the address."""
        if self.principal is not None and self.principal.token_id:
            return self.principal.name
        if self.cert:
            return f"cert:{self.cert}"
        host = self.peer.rpartition(":")[0] if self.peer.count(":") > 1 else self.peer
        return f"peer:{host}"


_CALL: contextvars.ContextVar[Call] = contextvars.ContextVar("domainos_master_call")
_SERVICE_PREFIX = "/domainos.api.v1.DomainControl/"


async def refuse_follower(master: MasterDomain, context: grpc.aio.ServicerContext[Any, Any]) -> NoReturn:
    """A follower (or a deposed master) answers UNAVAILABLE with the leader's address, which clients
    and sub-domains follow (trailing metadata ``domainos-leader``)."""
    leader = master.leader_hint()
    if leader is not None and leader.address:
        why = f"master {master.config.id} is not the leader; the leader is {leader.id} at {leader.address}"
    else:
        why = f"master {master.config.id} is not the leader and no leader is known yet; retry shortly"
    context.set_trailing_metadata(leader_metadata(leader))
    await abort_with(context, NotLeader(why, leader=leader.address if leader else ""))


def current_call() -> Call:
    """The call being served (set by :class:`DomainControlGate` for the servicer's methods)."""
    return _CALL.get()


def _target(method: str, request: Any, response: Any) -> str:
    """What a mutating call acted on, for the audit log."""
    if method == "SubmitJob":
        if response is not None:
            return str(response.job.job_id)
        return f"tenant {request.spec.tenant}" if request.spec.tenant else ""
    if method == "CreateTenant":
        return str(request.name)
    if method == "CreateToken":
        if response is not None:
            return str(response.info.token_id)
        return f"tenant {request.tenant}" if request.tenant else ""
    if method in ("SetQuota", "DeleteQuota"):
        return f"quota {request.tenant}/{request.region or '*'}/{request.subdomain or '*'}"
    if method == "PutDataset":
        return f"dataset {request.dataset.name}"
    if method == "DeleteDataset":
        return f"dataset {request.name}"
    if method == "AdminNode":
        action = common_pb2.NodeAction.Name(request.action).removeprefix("NODE_ACTION_").lower()
        node = f"{request.subdomain_id}/{request.node_id}" if request.subdomain_id else request.node_id
        return f"{action} node {node}"
    return str(getattr(request, "job_id", "") or getattr(request, "token_id", ""))


# grpcio ships no type information (a stub package may add it): one alias, usable either way.
_Interceptor: Any = grpc.aio.ServerInterceptor


class DomainControlGate(_Interceptor):  # type: ignore[misc]
    """The one door into ``DomainControl``, in front of every method.

    In order: the caller's client certificate (mutual TLS, :func:`check_client_cert`), its
    bearer token (UNAUTHENTICATED when missing, malformed, unknown, expired or revoked), its rate
    limit (RESOURCE_EXHAUSTED), then the RBAC table (:func:`master_domain._auth.authorize`,
    PERMISSION_DENIED). Mutating calls are written to the audit log whatever their outcome (the
    servicer writes successful changes' entries in the change's own transaction). Which *jobs* a
    caller may see is the master's business (tenant isolation: :meth:`MasterDomain.get_job`).
    """

    def __init__(self, master: MasterDomain) -> None:
        self._master = master

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(_SERVICE_PREFIX):
            return handler
        if handler.unary_unary is None:
            return None  # only unary methods are guarded: anything else is UNIMPLEMENTED
        method = details.method[len(_SERVICE_PREFIX) :]
        inner = handler.unary_unary

        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return await self._guard(method, inner, request, context)

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    async def _guard(
        self, method: str, inner: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        master = self._master
        if not master.is_leader:
            await refuse_follower(master, context)
        mutating = method in MUTATING
        call = Call(method, context.peer(), request_id=str(getattr(request, "request_id", "") or ""))
        try:
            call.principal = await self._authenticate(call, context)
        except DomainOSError as err:
            await self._admit(call, context)
            await self._deny(call, err, context, mutating, _target(method, request, None))
        await self._admit(call, context)
        try:
            authorize(call.principal, method)
        except PermissionDenied as err:
            await self._deny(call, err, context, mutating, _target(method, request, None))
        reset = _CALL.set(call)
        try:
            response = await inner(request, context)
        except grpc.aio.AbortError:
            if mutating and not call.audited:
                code = context.code()
                await record(
                    master,
                    call,
                    code=getattr(code, "name", "UNKNOWN"),
                    message=str(context.details() or ""),
                    target=_target(method, request, None),
                )
            raise
        finally:
            _CALL.reset(reset)
        if mutating and not call.audited:
            await record(master, call, code="OK", message="", target=_target(method, request, response))
        return response

    async def _authenticate(self, call: Call, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        cert = check_client_cert(context, self._master.secure)
        call.cert = str(cert) if cert is not None else ""
        token = bearer_token(context.invocation_metadata())
        if token is None:
            raise Unauthenticated(f"no token: {LOGIN_HINT}")
        call.claimed = parse_token(token).token_id
        rec = await self._master.directory.authenticate(token)
        if rec.role is Role.JOB and not self._master.job_active(rec.job_id):
            raise Unauthenticated(
                f"token {rec.token_id} is the credential of job {rec.job_id}, which has finished; "
                f"{LOGIN_HINT}"
            )
        return Principal(
            role=rec.role,
            tenant=rec.tenant,
            token_id=rec.token_id,
            cert_role=cert.role if cert is not None else "",
            cert_id=cert.id if cert is not None else "",
            job_id=rec.job_id,
        )

    async def _admit(self, call: Call, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        # Over the limit: refused without an audit entry -- writing one per refused request would
        # hand a flood the very store writes the limit is there to prevent.
        try:
            self._master.limiter.admit(call.rate_key)
        except ResourceExhausted as err:
            await abort_with(context, err)

    async def _deny(
        self,
        call: Call,
        err: DomainOSError,
        context: grpc.aio.ServicerContext[Any, Any],
        mutating: bool,
        target: str,
    ) -> NoReturn:
        if mutating:
            await record(self._master, call, code=err.code, message=str(err), target=target)
        log.info("refused %s %s from %s (%s): %s", call.method, target, call.who, call.peer, err)
        await abort_with(context, err)


def entry(master: MasterDomain, call: Call, *, code: str, message: str, target: str) -> AuditEntry:
    p = call.principal
    return master.audit.entry(
        principal=call.who,
        tenant=p.tenant if p is not None else "",
        role=p.role.value if p is not None else "",
        method=call.method,
        target=target,
        request_id=call.request_id,
        code=code,
        message=message,
        peer=call.peer,
        cert=call.cert,
    )


async def record(master: MasterDomain, call: Call, *, code: str, message: str, target: str) -> None:
    """Write the audit entry of a call on its own (denied, failed, or changed nothing)."""
    try:
        await master.audit.write(entry(master, call, code=code, message=message, target=target))
    except DomainOSError as exc:  # the answer to the caller stands; the operator must hear of it
        log.error("could not write the audit entry of %s by %s: %s", call.method, call.who, exc)
    call.audited = True


def _ok_op(master: MasterDomain, call: Call, target: str) -> Op:
    """The audit entry of a successful change, to write in the change's own transaction."""
    return master.audit.op(entry(master, call, code="OK", message="", target=target))


def quota_to_proto(quota: Quota, used: Mapping[str, int] | None = None) -> master_pb2.QuotaInfo:
    return master_pb2.QuotaInfo(
        tenant=quota.tenant,
        region=quota.region,
        subdomain=quota.subdomain,
        limits=dict(quota.limits),
        used=dict(used or {}),
    )


def quota_rows_to_proto(rows: Iterable[QuotaRow]) -> list[master_pb2.QuotaInfo]:
    """``MasterDomain.list_quotas`` rows -> one QuotaInfo per quota (limits and usage)."""
    return [quota_to_proto(row.quota, row.used) for row in rows]


def _principal(call: Call) -> Principal:
    assert call.principal is not None  # the gate authenticated it
    return call.principal


class DomainControlServicer(master_pb2_grpc.DomainControlServicer):  # type: ignore[misc]
    """The client API (domainctl, the DSDK). Every method runs behind :class:`DomainControlGate`."""

    def __init__(self, master: MasterDomain) -> None:
        self._master = master

    @rpc_method
    async def SubmitJob(
        self, request: master_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> master_pb2.SubmitJobResponse:
        call = current_call()
        job, duplicate = await self._master.submit(
            request.spec,
            request.request_id,
            principal=_principal(call),
            audit=lambda job: _ok_op(self._master, call, job.job_id),
        )
        call.audited = not duplicate
        return master_pb2.SubmitJobResponse(job=job_to_proto(job), duplicate=duplicate)

    @rpc_method
    async def GetJob(
        self, request: master_pb2.GetJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> master_pb2.Job:
        return job_to_proto(await self._master.get_job(request.job_id, _principal(current_call())))

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
        jobs, token = await self._master.list_jobs(
            states, request.limit, request.page_token, _principal(current_call())
        )
        return master_pb2.ListJobsResponse(
            jobs=[job_to_proto(j, with_tasks=False) for j in jobs], next_page_token=token
        )

    @rpc_method
    async def CancelJob(
        self, request: master_pb2.CancelJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> master_pb2.Job:
        principal = _principal(current_call())
        return job_to_proto(await self._master.cancel_job(request.job_id, request.reason, principal))

    @rpc_method
    async def ReadLogs(
        self, request: master_pb2.ReadLogsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> master_pb2.ReadLogsResponse:
        logs = await self._master.read_logs(
            request.job_id,
            request.task_index,
            request.stream,
            request.offset,
            request.max_bytes,
            _principal(current_call()),
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
    async def AdminNode(
        self, request: master_pb2.AdminNodeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> master_pb2.AdminNodeResponse:
        who = current_call().who
        return await self._master.admin_node(
            request.node_id, request.subdomain_id, request.action, request.reason, request.grace_s, by=who
        )

    @rpc_method
    async def GetClusterInfo(
        self, request: master_pb2.GetClusterInfoRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> master_pb2.ClusterInfo:
        return self._master.cluster_info()

    # -- identity, tenants, tokens, audit ------------------------------------------------------

    @rpc_method
    async def WhoAmI(
        self, request: master_pb2.WhoAmIRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> master_pb2.Principal:
        return _principal(current_call()).to_proto()

    @rpc_method
    async def CreateTenant(
        self, request: master_pb2.CreateTenantRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> master_pb2.Tenant:
        call = current_call()
        tenant, created = await self._master.directory.create_tenant(
            request.name,
            labels=dict(request.labels),
            request_id=request.request_id,
            created_by=_principal(call).name,
            extra_ops=[_ok_op(self._master, call, request.name)],
        )
        if created:
            self._master.audit.added()
            call.audited = True
            log.info("tenant %s created by %s", tenant.name, call.who)
        return tenant.to_proto()

    @rpc_method
    async def ListTenants(
        self, request: master_pb2.ListTenantsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> master_pb2.ListTenantsResponse:
        tenants = await self._master.directory.tenants()
        return master_pb2.ListTenantsResponse(tenants=[t.to_proto() for t in tenants])

    @rpc_method
    async def CreateToken(
        self, request: master_pb2.CreateTokenRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> master_pb2.CreateTokenResponse:
        call = current_call()
        record, token = await self._master.directory.create_token(
            role=Role.from_proto(request.role),
            tenant=request.tenant,
            ttl_s=request.ttl_seconds,
            description=request.description,
            request_id=request.request_id,
            created_by=_principal(call).name,
            audit=lambda rec: _ok_op(self._master, call, rec.token_id),
        )
        self._master.audit.added()
        call.audited = True
        log.info(
            "token %s (role %s, tenant %r) created by %s",
            record.token_id,
            record.role.value,
            record.tenant,
            call.who,
        )
        return master_pb2.CreateTokenResponse(info=record.to_proto(), token=token)

    @rpc_method
    async def ListTokens(
        self, request: master_pb2.ListTokensRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> master_pb2.ListTokensResponse:
        if request.tenant:
            await self._master.directory.require_tenant(request.tenant)
        records = await self._master.directory.tokens(request.tenant, request.include_revoked)
        return master_pb2.ListTokensResponse(tokens=[r.to_proto() for r in records])

    @rpc_method
    async def RevokeToken(
        self, request: master_pb2.RevokeTokenRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> master_pb2.TokenInfo:
        call = current_call()
        record, changed = await self._master.directory.revoke(
            request.token_id, extra_ops=[_ok_op(self._master, call, request.token_id)]
        )
        if changed:
            self._master.audit.added()
            call.audited = True
            log.info("token %s revoked by %s", record.token_id, call.who)
        return record.to_proto()

    @rpc_method
    async def ReadAudit(
        self, request: master_pb2.ReadAuditRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> master_pb2.ReadAuditResponse:
        entries, token = await self._master.audit.read(request.limit, request.page_token, request.since)
        return master_pb2.ReadAuditResponse(entries=[e.to_proto() for e in entries], next_page_token=token)

    # -- scheduling: quotas and explain ---------------------------------------------------------

    @rpc_method
    async def SetQuota(
        self, request: master_pb2.SetQuotaRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> master_pb2.QuotaInfo:
        call = current_call()
        quota = await self._master.set_quota(
            request.tenant, request.region or "*", request.subdomain or "*", dict(request.limits)
        )
        log.info("quota %s %s set to %s by %s", quota.tenant, quota.name, dict(quota.limits), call.who)
        return quota_to_proto(quota)

    @rpc_method
    async def DeleteQuota(
        self, request: master_pb2.DeleteQuotaRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> master_pb2.QuotaInfo:
        call = current_call()
        region, subdomain = request.region or "*", request.subdomain or "*"
        removed = await self._master.delete_quota(request.tenant, region, subdomain)
        log.info("quota %s %s/%s deleted by %s", request.tenant, region, subdomain, call.who)
        if isinstance(removed, Quota):
            return quota_to_proto(removed)
        return master_pb2.QuotaInfo(tenant=request.tenant, region=region, subdomain=subdomain)

    @rpc_method
    async def ListQuotas(
        self, request: master_pb2.ListQuotasRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> master_pb2.ListQuotasResponse:
        principal = _principal(current_call())
        tenant = request.tenant
        if principal.role is not Role.ADMIN:
            if tenant and tenant != principal.tenant:
                raise PermissionDenied(
                    f"a user of tenant {principal.tenant!r} may list only its own tenant's quotas, "
                    f"not {tenant!r}"
                )
            tenant = principal.tenant
        rows = await self._master.list_quotas(tenant)
        return master_pb2.ListQuotasResponse(quotas=quota_rows_to_proto(rows))

    # -- the DSDK's data plane: rendezvous, statistics, datasets --------------------------------

    @rpc_method
    async def PublishEndpoint(
        self, request: master_pb2.PublishEndpointRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> master_pb2.PublishEndpointResponse:
        self._master.publish_endpoint(
            request.job_id, endpoint_from_proto(request.endpoint), _principal(current_call())
        )
        return master_pb2.PublishEndpointResponse()

    @rpc_method
    async def ListEndpoints(
        self, request: master_pb2.ListEndpointsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> master_pb2.ListEndpointsResponse:
        endpoints, state = await self._master.list_endpoints(
            request.job_id,
            kind=request.kind,
            min_count=request.min_count,
            wait_s=request.wait_s,
            principal=_principal(current_call()),
        )
        return master_pb2.ListEndpointsResponse(
            endpoints=[endpoint_to_proto(e) for e in endpoints], state=job_state_to_proto(state)
        )

    @rpc_method
    async def ReportJobStats(
        self, request: master_pb2.ReportJobStatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> master_pb2.JobStats:
        stats = await self._master.report_job_stats(
            request.job_id, stats_from_proto(request.stats), _principal(current_call())
        )
        return stats_to_proto(stats)

    @rpc_method
    async def PutDataset(
        self, request: master_pb2.PutDatasetRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> master_pb2.Dataset:
        call = current_call()
        principal = _principal(call)
        record = dataset_from_proto(request.dataset)
        tenant = None if principal.is_admin else principal.tenant
        if not record.tenant:
            record = dataclasses.replace(record, tenant=principal.tenant or SYSTEM_TENANT)
        record = dataclasses.replace(record, created_at=time.time(), created_by=principal.name)
        stored = await self._master.datasets.put(
            record,
            replace=request.replace,
            tenant=tenant,
            audit=_ok_op(self._master, call, f"dataset {record.name}"),
        )
        if stored is record:
            self._master.audit.added()
            call.audited = True
            log.info(
                "dataset %s registered by %s: %d shards x %d copies, %d bytes",
                record.name,
                call.who,
                record.num_shards,
                record.replicas,
                record.size_bytes,
            )
        return dataset_to_proto(stored)

    @rpc_method
    async def GetDataset(
        self, request: master_pb2.GetDatasetRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> master_pb2.Dataset:
        principal = _principal(current_call())
        record = await self._master.datasets.get(
            request.name, tenant=None if principal.is_admin else principal.tenant
        )
        return dataset_to_proto(record)

    @rpc_method
    async def ListDatasets(
        self, request: master_pb2.ListDatasetsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> master_pb2.ListDatasetsResponse:
        principal = _principal(current_call())
        tenant: str | None = request.tenant or None
        if not principal.is_admin:
            if tenant and tenant != principal.tenant:
                raise PermissionDenied(
                    f"a caller of tenant {principal.tenant!r} may list only its own tenant's datasets, not {tenant!r}"
                )
            tenant = principal.tenant
        records = await self._master.datasets.list(tenant=tenant)
        return master_pb2.ListDatasetsResponse(
            datasets=[dataset_to_proto(r, with_shards=False) for r in records]
        )

    @rpc_method
    async def DeleteDataset(
        self, request: master_pb2.DeleteDatasetRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> master_pb2.Dataset:
        call = current_call()
        principal = _principal(call)
        record = await self._master.datasets.delete(
            request.name,
            tenant=None if principal.is_admin else principal.tenant,
            audit=_ok_op(self._master, call, f"dataset {request.name}"),
        )
        self._master.audit.added()
        call.audited = True
        log.info("dataset %s deleted by %s", record.name, call.who)
        return dataset_to_proto(record)

    @rpc_method
    async def ExplainJob(
        self, request: master_pb2.ExplainJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> master_pb2.ExplainJobResponse:
        # Visibility first: another tenant's job is NOT_FOUND, in GetJob's words.
        principal = _principal(current_call())
        job = await self._master.get_job(request.job_id, principal)
        text = await self._master.explain(job.job_id, principal)
        return master_pb2.ExplainJobResponse(
            job_id=job.job_id,
            text=text,
            state=job_to_proto(job, with_tasks=False).state,
            reasons=[line for line in text.splitlines() if line.strip()],
        )
