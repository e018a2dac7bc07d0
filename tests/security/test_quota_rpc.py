"""Quotas, priority and explain through the real master's ``DomainControl`` (in process): the
servicer, the RBAC table, the audit log, the store, and the DSDK on top."""

from __future__ import annotations

import json
import pathlib

import grpc
import pytest
from auth_helpers import M, MasterThread, code_of, run, started

import dsdk
from domainos.errors import InvalidArgument, NotFound, PermissionDenied

pytestmark = pytest.mark.timeout(60)


def test_set_list_delete_quota_is_stored_and_audited(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with started(tmp_path) as rig:
            await rig.tenant("acme")
            info = await rig.admin.SetQuota(
                M.SetQuotaRequest(tenant="acme", region="east", limits={"gpu:H100": 8, "cpu": 16000})
            )
            assert (info.tenant, info.region, info.subdomain) == ("acme", "east", "*")
            assert dict(info.limits) == {"cpu": 16000, "gpu:H100": 8}
            stored = await rig.master.store.get("/domainos/master/quotas/acme/east/*")
            assert stored is not None
            assert json.loads(stored.value)["limits"] == {"cpu": 16000, "gpu:H100": 8}

            listed = await rig.admin.ListQuotas(M.ListQuotasRequest())
            assert [(q.tenant, q.region, q.subdomain, dict(q.limits)) for q in listed.quotas] == [
                ("acme", "east", "*", {"cpu": 16000, "gpu:H100": 8})
            ]
            assert all(v == 0 for v in listed.quotas[0].used.values())

            gone = await rig.admin.DeleteQuota(M.DeleteQuotaRequest(tenant="acme", region="east"))
            assert dict(gone.limits) == {"cpu": 16000, "gpu:H100": 8}
            assert await rig.master.store.get("/domainos/master/quotas/acme/east/*") is None
            assert not (await rig.admin.ListQuotas(M.ListQuotasRequest())).quotas

            audit = (await rig.admin.ReadAudit(M.ReadAuditRequest(limit=10))).entries
            assert [(e.method, e.code, e.target) for e in audit[:2]] == [
                ("DeleteQuota", "OK", "quota acme/east/*"),
                ("SetQuota", "OK", "quota acme/east/*"),
            ]

    run(body())


def test_quota_errors_carry_status_and_field(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with started(tmp_path) as rig:
            await rig.tenant("acme")
            code, details = await code_of(
                rig.admin.SetQuota(M.SetQuotaRequest(tenant="acme", limits={"tpu": 1}))
            )
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "unknown resource class 'tpu'" in details
            code, details = await code_of(
                rig.admin.SetQuota(M.SetQuotaRequest(tenant="ghost", limits={"cpu": 1}))
            )
            assert code == grpc.StatusCode.NOT_FOUND and "ghost" in details
            code, details = await code_of(rig.admin.DeleteQuota(M.DeleteQuotaRequest(tenant="acme")))
            assert code == grpc.StatusCode.NOT_FOUND
            # Refused calls are audited too.
            audit = (await rig.admin.ReadAudit(M.ReadAuditRequest(limit=3))).entries
            assert [(e.method, e.code) for e in audit] == [
                ("DeleteQuota", "NOT_FOUND"),
                ("SetQuota", "NOT_FOUND"),
                ("SetQuota", "INVALID_ARGUMENT"),
            ]

    run(body())


def test_users_see_their_own_tenants_quotas_and_cannot_set_any(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with started(tmp_path) as rig:
            for name in ("a", "b"):
                await rig.tenant(name)
                await rig.admin.SetQuota(M.SetQuotaRequest(tenant=name, limits={"gpu:*": 4}))
            user_a = await rig.user("a")
            mine = await user_a.ListQuotas(M.ListQuotasRequest())
            assert [q.tenant for q in mine.quotas] == ["a"]
            code, details = await code_of(user_a.ListQuotas(M.ListQuotasRequest(tenant="b")))
            assert code == grpc.StatusCode.PERMISSION_DENIED
            assert details == "a user of tenant 'a' may list only its own tenant's quotas, not 'b'"
            code, details = await code_of(
                user_a.SetQuota(M.SetQuotaRequest(tenant="a", limits={"gpu:*": 99}))
            )
            assert code == grpc.StatusCode.PERMISSION_DENIED
            assert details == "role user cannot call SetQuota; it needs admin"

    run(body())


def test_explain_follows_get_job_visibility_and_priority_is_kept(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with started(tmp_path) as rig:
            for name in ("a", "b"):
                await rig.tenant(name)
            user_a, user_b = await rig.user("a"), await rig.user("b")
            job = await rig.submit(user_a, priority="high")
            assert job.spec.priority == "high"
            got = await user_a.GetJob(M.GetJobRequest(job_id=job.job_id))
            assert got.spec.priority == "high"
            why = await user_a.ExplainJob(M.ExplainJobRequest(job_id=job.job_id))
            assert why.job_id == job.job_id and why.state == M.JOB_STATE_PENDING
            assert job.job_id in why.text and "high" in why.text
            assert list(why.reasons) == [line for line in why.text.splitlines() if line.strip()]
            code, details = await code_of(user_b.ExplainJob(M.ExplainJobRequest(job_id=job.job_id)))
            assert code == grpc.StatusCode.NOT_FOUND
            assert details == f"job_id: job {job.job_id} not found"
            code, details = await code_of(rig.submit(user_a, priority="urgent"))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert "priority: unknown priority class 'urgent'; allowed: low|normal|high|system" in details

    run(body())


# -- the DSDK on a real master -----------------------------------------------------------------


@pytest.fixture
def master(tmp_path: pathlib.Path) -> MasterThread:
    m = MasterThread(tmp_path)
    yield m  # type: ignore[misc]
    m.close()


def test_dsdk_quota_and_explain(master: MasterThread) -> None:
    with dsdk.connect(master.address, insecure=True, token=master.admin_token) as admin:
        admin.create_tenant("acme")
        quota = admin.set_quota("acme", {"gpu:*": 8, "memory": 2**30}, region="east")
        assert quota == dsdk.Quota("acme", "east", "*", {"gpu:*": 8, "memory": 2**30}, quota.used)
        assert [q.scope for q in admin.quotas("acme")] == ["east/*"]
        assert admin.quotas("other") == []
        with pytest.raises(InvalidArgument, match="limits: at least one resource class limit is required"):
            admin.set_quota("acme", {})
        with pytest.raises(InvalidArgument, match=r"limits\[gpu:\*\]: expected a whole number >= 0"):
            admin.set_quota("acme", {"gpu:*": -1})
        with pytest.raises(InvalidArgument, match="tenant: is required"):
            admin.set_quota(" ", {"gpu:*": 1})
        job = admin.submit({"command": ["echo"], "priority": "low", "tenant": "acme"})
        assert job.spec is not None and job.spec.priority == "low"
        why = admin.explain(job.job_id)
        assert why.job_id == job.job_id and why.state == "PENDING" and why.text
        with pytest.raises(NotFound):
            admin.explain("j-missing")
        removed = admin.delete_quota("acme", region="east")
        assert removed.limits == {"gpu:*": 8, "memory": 2**30}
        with pytest.raises(NotFound):
            admin.delete_quota("acme", region="east")
        token = admin.create_token(tenant="acme").token
    with dsdk.connect(master.address, insecure=True, token=token) as user:
        with pytest.raises(PermissionDenied, match="needs admin"):
            user.set_quota("acme", {"cpu": 1})
        assert user.quotas() == []
