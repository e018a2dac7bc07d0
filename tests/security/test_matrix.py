"""Every ``DomainControl`` method x every kind of caller, against a master running mutual TLS.

Callers: no client certificate, a certificate from another CA, an agent's certificate (with an
admin token, so only the certificate is wrong), tenant A's user, tenant B's user, a job-scoped
credential of one of tenant A's jobs, an admin, a revoked token and no token at all. Each cell is
one test asserting OK or the exact status code; every denied mutating call must leave the store
as it was and -- when the master got to see the call -- add one audit entry with that code.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import grpc.aio
import pytest
from auth_helpers import Api, LoopThread, M, code_of, master_config, until

from domainos.api.v1 import master_pb2
from domainos.config import TLSConfig
from domainos.rpc import create_channel
from domainos.security import CertFiles, Identity, init_ca, issue_files
from master_domain import MasterDomain

pytestmark = pytest.mark.timeout(120)

OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
UNAUTH = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
NOT_FOUND = grpc.StatusCode.NOT_FOUND

METHODS = [m.name for m in master_pb2.DESCRIPTOR.services_by_name["DomainControl"].methods]
ADMIN_ONLY = {
    "ListNodes",
    "AdminNode",
    "CreateTenant",
    "ListTenants",
    "CreateToken",
    "ListTokens",
    "RevokeToken",
    "ReadAudit",
    "SetQuota",
    "DeleteQuota",
}
#: Methods for admins and users (a user: its own tenant), not for job credentials.
PEOPLE_ONLY = {"ListQuotas"}
MUTATING = {
    "SubmitJob",
    "AdminNode",
    "CancelJob",
    "CreateTenant",
    "CreateToken",
    "RevokeToken",
    "SetQuota",
    "DeleteQuota",
    "PutDataset",
    "DeleteDataset",
}
#: Methods that act on one of tenant A's jobs (not the job credential's own).
ON_A_JOB = {
    "GetJob",
    "CancelJob",
    "ReadLogs",
    "ExplainJob",
    "PublishEndpoint",
    "ListEndpoints",
    "ReportJobStats",
}
#: Methods that act on one of tenant A's datasets (a job credential of tenant A may).
ON_A_DATASET = {"GetDataset", "DeleteDataset"}
CALLERS = [
    "no-client-cert",
    "foreign-ca-cert",
    "agent-cert",
    "user-a",
    "user-b",
    "job-of-a",
    "admin",
    "revoked-token",
    "no-token",
]


def expected(caller: str, method: str) -> grpc.StatusCode:
    if caller in ("no-client-cert", "foreign-ca-cert"):
        return UNAVAILABLE  # the TLS handshake refuses it: the call never reaches the master
    if caller == "agent-cert":
        return DENIED
    if caller in ("revoked-token", "no-token"):
        return UNAUTH
    if caller == "admin":
        return NOT_FOUND if method == "AdminNode" else OK  # this master has no sub-domain (no node)
    if method in ADMIN_ONLY or (caller == "job-of-a" and method in PEOPLE_ONLY):
        return DENIED
    if caller in ("user-b", "job-of-a") and method in ON_A_JOB:
        return NOT_FOUND  # exactly as for a job that does not exist
    if caller == "user-b" and method in ON_A_DATASET:
        return NOT_FOUND  # exactly as for a dataset that does not exist
    return OK


class World:
    """The master (mutual TLS), its tenants, tokens, a job of tenant A and a channel per caller."""

    def __init__(self, tmp: pathlib.Path) -> None:
        pki, other = tmp / "pki", tmp / "other-ca"
        init_ca(pki)
        init_ca(other)
        server = issue_files(pki, Identity("master", "m1"))
        self.client_files = issue_files(pki, Identity("client", "alice"))
        self.agent_files = issue_files(pki, Identity("agent", "node-1"))
        # Signed by another CA, but trusting ours: our master must refuse it.
        foreign = dataclasses.replace(
            issue_files(other, Identity("client", "mallory")), ca=self.client_files.ca
        )
        self.loop = LoopThread()
        self.master = MasterDomain(
            master_config(tmp, tls=TLSConfig(server.ca, server.cert, server.key), rate_limit_per_s=0)
        )
        self.loop.call(self.master.start())
        self.address = self.master.address
        self.admin_token = (tmp / "admin.token").read_text().strip()
        self.channels: dict[str, grpc.aio.Channel] = {}
        self.tokens: dict[str, str | None] = {}
        self.loop.call(self._setup(foreign))

    async def _setup(self, foreign: CertFiles) -> None:
        ca = pathlib.Path(self.client_files.ca).read_bytes()
        admin = self.stub(create_channel(self.address, self.client_files), self.admin_token)
        for name in ("a", "b"):
            await admin.CreateTenant(M.CreateTenantRequest(name=name))

        async def token(tenant: str) -> str:
            resp = await admin.CreateToken(M.CreateTokenRequest(tenant=tenant, role=M.ROLE_USER))
            return str(resp.token)

        user_a, user_b, revoked = await token("a"), await token("b"), await token("a")
        await admin.RevokeToken(M.RevokeTokenRequest(token_id=revoked[4:16]))
        # Tenant A's long-lived job: no sub-domain, so it stays pending (and its credential valid).
        self.job_a = (await admin.SubmitJob(M.SubmitJobRequest(spec=self.spec("a")))).job.job_id
        worker = (await admin.SubmitJob(M.SubmitJobRequest(spec=self.spec("a")))).job.job_id
        self.worker = worker
        job_token = self.master.jobs.get(worker).token  # type: ignore[union-attr]
        plain = grpc.ssl_channel_credentials(root_certificates=ca)  # no client certificate
        self.channels = {
            "no-client-cert": grpc.aio.secure_channel(self.address, plain),
            "foreign-ca-cert": create_channel(self.address, foreign),
            "agent-cert": create_channel(self.address, self.agent_files),
        }
        self.tokens = {
            "no-client-cert": self.admin_token,
            "foreign-ca-cert": self.admin_token,
            "agent-cert": self.admin_token,
            "user-a": user_a,
            "user-b": user_b,
            "job-of-a": job_token,
            "admin": self.admin_token,
            "revoked-token": revoked,
            "no-token": None,
        }
        for caller in CALLERS:
            self.channels.setdefault(caller, create_channel(self.address, self.client_files))

    @staticmethod
    def spec(tenant: str) -> M.JobSpec:
        return M.JobSpec(command=["python3", "-c", "pass"], tenant=tenant)

    @staticmethod
    def stub(channel: grpc.aio.Channel, token: str | None) -> Api:
        return Api(channel, token)

    def api(self, caller: str) -> Any:
        return self.stub(self.channels[caller], self.tokens[caller])

    @property
    def admin(self) -> Any:
        return self.api("admin")

    async def fresh_job_of_a(self) -> str:
        """A job of tenant A for calls that change it (CancelJob)."""
        resp = await self.admin.SubmitJob(M.SubmitJobRequest(spec=self.spec("a")))
        return str(resp.job.job_id)

    async def dataset_of_a(self, name: str) -> str:
        """A dataset of tenant A (registered by the admin)."""
        shard = M.DatasetShardInfo(
            shard=0, size_bytes=10, replicas=[M.ShardReplica(node_id="n1", subdomain_id="sd1")]
        )
        ds = M.Dataset(name=name, tenant="a", num_shards=1, replicas=1, shards=[shard])
        await self.admin.PutDataset(M.PutDatasetRequest(dataset=ds, replace=True))
        return name

    async def request(self, method: str, caller: str) -> Any:
        """A valid request for ``method`` (one the admin would be allowed)."""
        job = self.job_a
        if method == "CancelJob":
            job = await self.fresh_job_of_a()
        tenant = {"user-b": "b"}.get(caller, "a")
        n = len(await self.master.store.range("/domainos/master/tenants/"))
        builders: dict[str, Callable[[], Any]] = {
            "SubmitJob": lambda: M.SubmitJobRequest(spec=self.spec(tenant if caller != "admin" else "b")),
            "GetJob": lambda: M.GetJobRequest(job_id=job),
            "ListJobs": lambda: M.ListJobsRequest(),
            "CancelJob": lambda: M.CancelJobRequest(job_id=job, reason="matrix"),
            "ReadLogs": lambda: M.ReadLogsRequest(job_id=job, task_index=-1),
            "ListDomains": lambda: M.ListDomainsRequest(),
            "ListNodes": lambda: M.ListNodesRequest(),
            "AdminNode": lambda: M.AdminNodeRequest(node_id="n-matrix", action=1, reason="matrix"),
            "GetClusterInfo": lambda: M.GetClusterInfoRequest(),
            "WhoAmI": lambda: M.WhoAmIRequest(),
            "CreateTenant": lambda: M.CreateTenantRequest(name=f"t{n}-{caller}"),
            "ListTenants": lambda: M.ListTenantsRequest(),
            "CreateToken": lambda: M.CreateTokenRequest(tenant="a", role=M.ROLE_USER),
            "ListTokens": lambda: M.ListTokensRequest(),
            "RevokeToken": lambda: None,
            "ReadAudit": lambda: M.ReadAuditRequest(),
            "SetQuota": lambda: M.SetQuotaRequest(tenant="a", region="*", limits={"cpu": 4000}),
            "DeleteQuota": lambda: M.DeleteQuotaRequest(tenant="b", region="east"),
            "ListQuotas": lambda: M.ListQuotasRequest(tenant="" if caller == "admin" else tenant),
            "ExplainJob": lambda: M.ExplainJobRequest(job_id=job),
            "PublishEndpoint": lambda: M.PublishEndpointRequest(
                job_id=job, endpoint=M.Endpoint(task_index=0, attempt=0, address="127.0.0.1:5000")
            ),
            "ListEndpoints": lambda: M.ListEndpointsRequest(job_id=job),
            "ReportJobStats": lambda: M.ReportJobStatsRequest(job_id=job, stats=M.JobStats(calls=3)),
            "PutDataset": lambda: M.PutDatasetRequest(
                dataset=M.Dataset(
                    name=f"ds{n}-{caller}",
                    num_shards=1,
                    replicas=1,
                    shards=[
                        M.DatasetShardInfo(
                            shard=0, replicas=[M.ShardReplica(node_id="n1", subdomain_id="sd1")]
                        )
                    ],
                )
            ),
            "GetDataset": lambda: M.GetDatasetRequest(name=self.shared_dataset),
            "ListDatasets": lambda: M.ListDatasetsRequest(),
            "DeleteDataset": lambda: M.DeleteDatasetRequest(name=dataset),
        }
        if method == "GetDataset" and not getattr(self, "shared_dataset", ""):
            self.shared_dataset = await self.dataset_of_a("shared-of-a")
        dataset = await self.dataset_of_a(f"del-{caller}-{n}") if method == "DeleteDataset" else ""
        if method == "DeleteQuota":  # something to delete (before the store snapshot is taken)
            await self.admin.SetQuota(M.SetQuotaRequest(tenant="b", region="east", limits={"cpu": 1000}))
        if method == "RevokeToken":
            made = await self.admin.CreateToken(M.CreateTokenRequest(tenant="a", role=M.ROLE_USER))
            return M.RevokeTokenRequest(token_id=made.info.token_id)
        return builders[method]()

    async def snapshot(self) -> dict[str, bytes]:
        return {
            kv.key: kv.value
            for kv in await self.master.store.range("/")
            if not kv.key.startswith("/domainos/master/audit/")
        }

    async def audit(self) -> list[M.AuditEntry]:
        return list((await self.admin.ReadAudit(M.ReadAuditRequest(limit=1000))).entries)

    async def settle(self) -> None:
        """Wait until no job credential is still being revoked (a cancel retires its job)."""

        async def quiet() -> bool:
            for kv in await self.master.store.range("/domainos/master/tokens/"):
                rec = json.loads(kv.value)
                if (
                    rec["role"] == "job"
                    and not rec["revoked_at"]
                    and not self.master.job_active(rec["job_id"])
                ):
                    return False
            return True

        await until(quiet, what="finished jobs' credentials revoked")

    def close(self) -> None:
        async def close() -> None:
            for channel in self.channels.values():
                await channel.close()
            await self.master.shutdown()

        try:
            self.loop.call(close())
        finally:
            self.loop.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("matrix"))
    try:
        yield w
    finally:
        w.close()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("caller", CALLERS)
def test_matrix(world: World, caller: str, method: str) -> None:
    want = expected(caller, method)

    async def cell() -> None:
        request = await world.request(method, caller)
        await world.settle()
        before = await world.snapshot()
        audited = len(await world.audit())
        code, details = await code_of(getattr(world.api(caller), method)(request, timeout=10))
        assert code == want, f"{caller} x {method}: {code.name} ({details}), expected {want.name}"
        after_audit = await world.audit()
        if code != OK:
            if method in MUTATING:
                await world.settle()
                assert await world.snapshot() == before, f"{caller} x {method} changed the store"
            if method in MUTATING and code != UNAVAILABLE:
                assert len(after_audit) == audited + 1 and after_audit[0].method == method
                assert after_audit[0].code == code.name and after_audit[0].message == details
            else:
                assert len(after_audit) == audited
        elif method in MUTATING:
            assert len(after_audit) == audited + 1 and after_audit[0].code == "OK"
            assert after_audit[0].method == method and after_audit[0].peer.startswith("ipv4:127.0.0.1:")
            assert after_audit[0].cert == "client/alice"
        messages = {
            ("agent-cert", "GetClusterInfo"): "a agent certificate (agent/node-1) cannot call this; "
            "it needs a client certificate",
            ("no-token", "ListJobs"): "no token: run `domainctl login` (or set DOMAINOS_TOKEN)",
            ("user-a", "ListNodes"): "role user cannot call ListNodes; it needs admin",
            ("job-of-a", "ReadAudit"): "role job cannot call ReadAudit; it needs admin",
            ("user-b", "GetJob"): f"job_id: job {world.job_a} not found",
            ("job-of-a", "CancelJob"): "job_id: job ",
        }
        if (caller, method) in messages:
            assert details.startswith(messages[caller, method])
        if caller == "revoked-token":
            assert details.startswith(f"token {world.tokens[caller][4:16]} was revoked at")  # type: ignore[index]
        if code == OK and method == "ListJobs":
            resp = await getattr(world.api(caller), method)(request)
            ids = {j.job_id for j in resp.jobs}
            assert (world.job_a in ids) == (caller in ("admin", "user-a"))
        if code == OK and method == "ListQuotas":
            resp = await getattr(world.api(caller), method)(request)
            assert {q.tenant for q in resp.quotas} <= ({"a", "b"} if caller == "admin" else {request.tenant})
        if code == OK and method == "WhoAmI":
            me = await world.api(caller).WhoAmI(request)
            assert (me.cert_role, me.cert_id) == ("client", "alice")

    world.loop.call(cell(), timeout=60)


def test_the_job_credential_reaches_its_own_job(world: World) -> None:
    async def body() -> None:
        me = world.api("job-of-a")
        assert (await me.GetJob(M.GetJobRequest(job_id=world.worker))).job_id == world.worker
        who = await me.WhoAmI(M.WhoAmIRequest())
        assert (who.role, who.tenant, who.job_id) == (M.ROLE_JOB, "a", world.worker)

    world.loop.call(body())


def test_a_user_cannot_list_another_tenants_quotas(world: World) -> None:
    async def body() -> None:
        await world.admin.SetQuota(M.SetQuotaRequest(tenant="b", limits={"gpu:*": 2}))
        code, details = await code_of(world.api("user-a").ListQuotas(M.ListQuotasRequest(tenant="b")))
        assert code == DENIED
        assert "tenant 'a' may list only its own tenant's quotas" in details
        own = await world.api("user-a").ListQuotas(M.ListQuotasRequest())
        assert {q.tenant for q in own.quotas} <= {"a"}

    world.loop.call(body())
