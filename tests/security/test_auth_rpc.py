"""The master's authentication, tenants, tokens, tenant isolation, job credentials, audit and
rate limits, in process over real gRPC (insecure transport: certificates are in test_matrix.py)."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import stat

import grpc
import grpc.aio
import pytest
from auth_helpers import M, code_of, run, started, until
from master_helpers import FakeSubdomain

from domainos.api.v1 import common_pb2, master_pb2_grpc
from domainos.clock import FakeClock
from domainos.rpc import MAX_MESSAGE_BYTES
from master_domain._audit import AUDIT_PREFIX
from master_domain._tenants import TOKENS_PREFIX

pytestmark = pytest.mark.timeout(60)

NOT_FOUND = grpc.StatusCode.NOT_FOUND
UNAUTH = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED


async def audit(rig: object) -> list[M.AuditEntry]:
    resp = await rig.admin.ReadAudit(M.ReadAuditRequest(limit=1000))  # type: ignore[attr-defined]
    return list(resp.entries)


# -- bootstrap -------------------------------------------------------------------------------------


def test_bootstrap_token_file_is_private_and_never_logged(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = f"sqlite:///{tmp_path}/m.db"

    async def body() -> None:
        async with started(tmp_path, store=store) as rig:
            path = tmp_path / "admin.token"
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            assert rig.admin_token.startswith("dos_")
            me = await rig.admin.WhoAmI(M.WhoAmIRequest())
            assert me.role == M.ROLE_ADMIN and me.tenant == "" and me.token_id == rig.admin_token[4:16]
            first = rig.admin_token
        # A restart on the same store: an admin token exists, so nothing new is minted.
        async with started(tmp_path, store=store) as rig:
            assert rig.admin_token == first
            assert (await rig.admin.WhoAmI(M.WhoAmIRequest())).role == M.ROLE_ADMIN

    run(body())
    secret = (tmp_path / "admin.token").read_text().strip()
    assert secret not in caplog.text
    assert f"created the bootstrap admin token {secret[4:16]}" in caplog.text


def test_bootstrap_again_when_every_admin_token_is_revoked(tmp_path: pathlib.Path) -> None:
    store = f"sqlite:///{tmp_path}/m.db"

    async def body() -> str:
        async with started(tmp_path, store=store) as rig:
            first = rig.admin_token
            await rig.admin.RevokeToken(M.RevokeTokenRequest(token_id=first[4:16]))
        async with started(tmp_path, store=store) as rig:
            assert rig.admin_token != first  # the recovery path: a new one was written
            assert (await rig.admin.WhoAmI(M.WhoAmIRequest())).role == M.ROLE_ADMIN
        return first

    run(body())


# -- authentication ----------------------------------------------------------------------------------


def test_missing_malformed_unknown_wrong_expired_and_revoked_tokens(tmp_path: pathlib.Path) -> None:
    clock = FakeClock(1_700_000_000.0)

    async def body() -> None:
        async with started(tmp_path, clock=clock) as rig:
            req = M.GetClusterInfoRequest()
            code, msg = await code_of(rig.api(None).GetClusterInfo(req))
            assert (code, msg) == (UNAUTH, "no token: run `domainctl login` (or set DOMAINOS_TOKEN)")
            code, msg = await code_of(rig.api("hunter2").GetClusterInfo(req))
            assert code == UNAUTH and msg.startswith("malformed token: expected dos_<12 hex digits>")
            assert "hunter2" not in msg
            forged = "dos_0123456789ab_" + "A" * 43
            code, msg = await code_of(rig.api(forged).GetClusterInfo(req))
            assert code == UNAUTH and msg.startswith("unknown token 0123456789ab: no such token")
            wrong = rig.admin_token[:17] + ("B" if rig.admin_token[17] != "B" else "C") + rig.admin_token[18:]
            code, msg = await code_of(rig.api(wrong).GetClusterInfo(req))
            assert code == UNAUTH and "the secret does not match" in msg
            # A bad authorization header is refused too (never treated as "no token").
            stub = master_pb2_grpc.DomainControlStub(rig.channel)
            code, msg = await code_of(stub.GetClusterInfo(req, metadata=(("authorization", "Basic x"),)))
            assert code == UNAUTH and "must be 'Bearer dos_...'" in msg

            await rig.tenant("acme")
            short = await rig.user("acme", ttl_seconds=3600)
            assert (await short.WhoAmI(M.WhoAmIRequest())).tenant == "acme"
            clock.advance(3601)
            await until(lambda: True)  # the token cache lives 1 s of *monotonic* time: the fake one
            code, msg = await code_of(short.GetClusterInfo(req))
            assert code == UNAUTH
            assert msg.startswith(f"token {short.token[4:16]} expired at 2023-11-14 23:13:20 UTC")

            victim = await rig.user("acme")
            await victim.WhoAmI(M.WhoAmIRequest())
            await rig.admin.RevokeToken(M.RevokeTokenRequest(token_id=victim.token[4:16]))
            code, msg = await code_of(victim.ListJobs(M.ListJobsRequest()))
            assert code == UNAUTH
            assert msg.startswith(f"token {victim.token[4:16]} was revoked at 2023-11-14 23:13:21 UTC")

    run(body())


def test_a_user_calling_an_admin_method_is_permission_denied(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with started(tmp_path) as rig:
            await rig.tenant("acme")
            user = await rig.user("acme")
            code, msg = await code_of(user.ListNodes(M.ListNodesRequest()))
            assert (code, msg) == (DENIED, "role user cannot call ListNodes; it needs admin")
            for method, req in (
                ("CreateTenant", M.CreateTenantRequest(name="evil")),
                ("ListTenants", M.ListTenantsRequest()),
                ("CreateToken", M.CreateTokenRequest(tenant="acme", role=M.ROLE_ADMIN)),
                ("ListTokens", M.ListTokensRequest()),
                ("RevokeToken", M.RevokeTokenRequest(token_id=rig.admin_token[4:16])),
                ("ReadAudit", M.ReadAuditRequest()),
            ):
                code, msg = await code_of(getattr(user, method)(req))
                assert (code, msg) == (DENIED, f"role user cannot call {method}; it needs admin")
            assert await rig.master.directory.tenant("evil") is None
            # ... and the mutating ones were audited as denied, naming the caller.
            entries = await audit(rig)
            denied = [e for e in entries if e.code == "PERMISSION_DENIED"]
            assert {e.method for e in denied} == {"CreateTenant", "CreateToken", "RevokeToken"}
            assert all(e.principal == f"token:{user.token[4:16]}" and e.tenant == "acme" for e in denied)
            assert all(e.role == M.ROLE_USER and e.peer.startswith("ipv4:127.0.0.1:") for e in denied)
            # A user may read the federation and itself.
            assert (await user.WhoAmI(M.WhoAmIRequest())).role == M.ROLE_USER
            await user.ListDomains(M.ListDomainsRequest())
            await user.GetClusterInfo(M.GetClusterInfoRequest())

    run(body())


# -- tenants and tokens -----------------------------------------------------------------------------


def test_tenants_create_list_duplicate_and_bad_names(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with started(tmp_path) as rig:
            t = await rig.admin.CreateTenant(M.CreateTenantRequest(name="acme", labels={"team": "ml"}))
            assert t.name == "acme" and t.created_by == f"token:{rig.admin_token[4:16]}"
            assert dict(t.labels) == {"team": "ml"}
            again = await rig.admin.CreateTenant(M.CreateTenantRequest(name="acme2", request_id="r-1"))
            retry = await rig.admin.CreateTenant(M.CreateTenantRequest(name="acme2", request_id="r-1"))
            assert retry.created_at == again.created_at
            code, msg = await code_of(rig.admin.CreateTenant(M.CreateTenantRequest(name="acme")))
            assert (code, msg) == (grpc.StatusCode.ALREADY_EXISTS, "name: tenant 'acme' already exists")
            code, msg = await code_of(rig.admin.CreateTenant(M.CreateTenantRequest(name="Bad Name")))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and msg.startswith(
                "name: 'Bad Name' is not a valid"
            )
            names = [t.name for t in (await rig.admin.ListTenants(M.ListTenantsRequest())).tenants]
            assert names == ["acme", "acme2", "system"]
            entries = await audit(rig)
            assert [(e.method, e.target, e.code) for e in entries] == [
                ("CreateTenant", "Bad Name", "INVALID_ARGUMENT"),
                ("CreateTenant", "acme", "ALREADY_EXISTS"),
                ("CreateTenant", "acme2", "OK"),  # the retry: it changed nothing, and says so
                ("CreateTenant", "acme2", "OK"),
                ("CreateTenant", "acme", "OK"),
            ]

    run(body())


def test_tokens_create_list_revoke_and_what_is_stored(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with started(tmp_path) as rig:
            code, msg = await code_of(
                rig.admin.CreateToken(M.CreateTokenRequest(tenant="nope", role=M.ROLE_USER))
            )
            assert (code, msg) == (
                NOT_FOUND,
                "tenant: tenant 'nope' does not exist; create it with `domainctl tenant create nope`",
            )
            await rig.tenant("acme")
            resp = await rig.admin.CreateToken(
                M.CreateTokenRequest(
                    tenant="acme", role=M.ROLE_USER, ttl_seconds=86400, description="ci", request_id="t-1"
                )
            )
            info, token = resp.info, resp.token
            assert token.startswith(f"dos_{info.token_id}_") and len(token) == 4 + 12 + 1 + 43
            assert (info.tenant, info.role, info.description) == ("acme", M.ROLE_USER, "ci")
            assert info.expires_at == pytest.approx(info.created_at + 86400)
            # Stored hashed: neither the token nor its secret is anywhere in the store.
            raw = {kv.key: kv.value for kv in await rig.master.store.range("/")}
            assert all(token[17:].encode() not in v for v in raw.values())
            record = json.loads(raw[TOKENS_PREFIX + info.token_id])
            assert set(record) >= {"salt", "hash", "tenant", "role", "expires_at", "revoked_at"}
            # A retry of the same request cannot show the secret again: it says so.
            code, msg = await code_of(
                rig.admin.CreateToken(M.CreateTokenRequest(tenant="acme", role=M.ROLE_USER, request_id="t-1"))
            )
            assert code == grpc.StatusCode.ALREADY_EXISTS and f"already created token {info.token_id}" in msg
            for bad, field in (
                (M.CreateTokenRequest(tenant="acme", role=M.ROLE_ADMIN), "tenant"),
                (M.CreateTokenRequest(tenant="acme", role=M.ROLE_JOB), "role"),
                (M.CreateTokenRequest(tenant="acme"), "role"),
                (M.CreateTokenRequest(role=M.ROLE_USER), "tenant"),
                (M.CreateTokenRequest(tenant="acme", role=M.ROLE_USER, ttl_seconds=-1), "ttl_seconds"),
                (
                    M.CreateTokenRequest(tenant="acme", role=M.ROLE_USER, ttl_seconds=float("nan")),
                    "ttl_seconds",
                ),
                (M.CreateTokenRequest(tenant="acme", role=M.ROLE_USER, description="x" * 300), "description"),
            ):
                code, msg = await code_of(rig.admin.CreateToken(bad))
                assert code == grpc.StatusCode.INVALID_ARGUMENT and msg.startswith(f"{field}: "), msg
            admin2 = await rig.admin.CreateToken(M.CreateTokenRequest(role=M.ROLE_ADMIN))
            listed = (await rig.admin.ListTokens(M.ListTokensRequest())).tokens
            assert [t.token_id for t in listed] == [
                rig.admin_token[4:16],
                info.token_id,
                admin2.info.token_id,
            ]
            only = (await rig.admin.ListTokens(M.ListTokensRequest(tenant="acme"))).tokens
            assert [t.token_id for t in only] == [info.token_id]
            code, _ = await code_of(rig.admin.ListTokens(M.ListTokensRequest(tenant="ghost")))
            assert code == NOT_FOUND

            revoked = await rig.admin.RevokeToken(M.RevokeTokenRequest(token_id=info.token_id))
            assert revoked.revoked_at > 0
            again = await rig.admin.RevokeToken(M.RevokeTokenRequest(token_id=info.token_id))
            assert again.revoked_at == revoked.revoked_at  # idempotent
            code, msg = await code_of(rig.admin.RevokeToken(M.RevokeTokenRequest(token_id="0123456789ab")))
            assert (code, msg) == (NOT_FOUND, "token_id: token 0123456789ab does not exist")
            code, msg = await code_of(rig.admin.RevokeToken(M.RevokeTokenRequest(token_id="zz")))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            listed = (await rig.admin.ListTokens(M.ListTokensRequest(tenant="acme"))).tokens
            assert listed == []
            listed = (
                await rig.admin.ListTokens(M.ListTokensRequest(tenant="acme", include_revoked=True))
            ).tokens
            assert [t.token_id for t in listed] == [info.token_id]
            code, _ = await code_of(rig.api(token).WhoAmI(M.WhoAmIRequest()))
            assert code == UNAUTH

    run(body())


# -- tenant isolation -------------------------------------------------------------------------------


def test_tenants_see_only_their_own_jobs(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with started(tmp_path) as rig:
            await rig.tenant("a")
            await rig.tenant("b")
            alice, bob = await rig.user("a"), await rig.user("b")
            job = await rig.submit(alice, "mine")
            assert job.spec.tenant == "a"
            missing = await code_of(bob.GetJob(M.GetJobRequest(job_id="j-0000000000000-none")))
            assert missing == (NOT_FOUND, "job_id: job j-0000000000000-none not found")
            theirs = await code_of(bob.GetJob(M.GetJobRequest(job_id=job.job_id)))
            assert theirs == (NOT_FOUND, f"job_id: job {job.job_id} not found")
            before = await rig.snapshot()
            for call in (
                bob.CancelJob(M.CancelJobRequest(job_id=job.job_id)),
                bob.ReadLogs(M.ReadLogsRequest(job_id=job.job_id, task_index=-1)),
            ):
                assert await code_of(call) == (NOT_FOUND, f"job_id: job {job.job_id} not found")
            assert await rig.snapshot() == before  # the denied cancel changed nothing
            assert (await alice.GetJob(M.GetJobRequest(job_id=job.job_id))).job_id == job.job_id
            assert [j.job_id for j in (await bob.ListJobs(M.ListJobsRequest())).jobs] == []
            assert [j.job_id for j in (await alice.ListJobs(M.ListJobsRequest())).jobs] == [job.job_id]
            code, msg = await code_of(rig.submit(alice, tenant="b"))
            assert (
                code == DENIED
                and msg.startswith("tenant: token:")
                and "cannot submit jobs for tenant 'b'" in msg
            )
            assert (await rig.submit(alice, tenant="a")).spec.tenant == "a"
            # A request id someone else used does not hand over their job.
            spec = M.JobSpec(command=["true"])
            mine = await alice.SubmitJob(M.SubmitJobRequest(spec=spec, request_id="shared-1"))
            code, msg = await code_of(bob.SubmitJob(M.SubmitJobRequest(spec=spec, request_id="shared-1")))
            assert code == grpc.StatusCode.ALREADY_EXISTS and mine.job.job_id not in msg
            again = await alice.SubmitJob(M.SubmitJobRequest(spec=spec, request_id="shared-1"))
            assert again.duplicate and again.job.job_id == mine.job.job_id
            # Admins see everything and submit anywhere that exists (default: system).
            assert len((await rig.admin.ListJobs(M.ListJobsRequest())).jobs) == 3
            assert (await rig.submit(rig.admin)).spec.tenant == "system"
            assert (await rig.submit(rig.admin, tenant="b")).spec.tenant == "b"
            code, msg = await code_of(rig.submit(rig.admin, tenant="zeta"))
            assert (code, msg) == (
                NOT_FOUND,
                "tenant: tenant 'zeta' does not exist; create it with `domainctl tenant create zeta`",
            )
            entries = await audit(rig)
            cancel = next(e for e in entries if e.method == "CancelJob")
            assert (cancel.code, cancel.target, cancel.tenant) == ("NOT_FOUND", job.job_id, "b")

    run(body())


def test_old_jobs_without_a_tenant_belong_to_system(tmp_path: pathlib.Path) -> None:
    store = f"sqlite:///{tmp_path}/m.db"

    async def body() -> None:
        async with started(tmp_path, store=store) as rig:
            job = await rig.submit(rig.admin)
            key = f"/domainos/master/jobs/{job.job_id}"
            record = json.loads((await rig.master.store.get(key)).value)  # type: ignore[union-attr]
            record["spec"]["tenant"] = ""  # as written before tenants existed
            for k in ("created_by", "token", "token_id"):
                record.pop(k)
            await rig.master.store.put(key, json.dumps(record).encode())
        async with started(tmp_path, store=store) as rig:
            await rig.tenant("a")
            alice = await rig.user("a")
            assert await code_of(alice.GetJob(M.GetJobRequest(job_id=job.job_id))) == (
                NOT_FOUND,
                f"job_id: job {job.job_id} not found",
            )
            await rig.admin.GetJob(M.GetJobRequest(job_id=job.job_id))
            system = await rig.user("system")
            assert [j.job_id for j in (await system.ListJobs(M.ListJobsRequest())).jobs] == [job.job_id]

    run(body())


# -- job-scoped credentials ---------------------------------------------------------------------------


def test_tasks_get_a_job_scoped_token_that_dies_with_the_job(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with started(tmp_path) as rig:
            await rig.tenant("a")
            alice = await rig.user("a")
            other = await rig.submit(alice, "other")  # pending: no sub-domain yet
            fake = FakeSubdomain(rig.address, "east-1", behaviour="run")
            await fake.connect()
            try:
                job = await rig.submit(alice, "worker")
                spec = await until(
                    lambda: next((p for p in fake.placed if p.job_id == job.job_id), None), what="placed"
                )
                token = dict(spec.env)["DOMAINOS_TOKEN"]
                assert token.startswith("dos_") and token not in (alice.token, rig.admin_token)
                assert rig.admin_token not in str(fake.placed)
                me = await rig.api(token).WhoAmI(M.WhoAmIRequest())
                assert (me.role, me.tenant, me.job_id) == (M.ROLE_JOB, "a", job.job_id)
                task = rig.api(token)
                assert (await task.GetJob(M.GetJobRequest(job_id=job.job_id))).job_id == job.job_id
                assert await code_of(task.GetJob(M.GetJobRequest(job_id=other.job_id))) == (
                    NOT_FOUND,
                    f"job_id: job {other.job_id} not found",
                )
                assert [j.job_id for j in (await task.ListJobs(M.ListJobsRequest())).jobs] == [job.job_id]
                code, _ = await code_of(task.ListNodes(M.ListNodesRequest()))
                assert code == DENIED
                child = await rig.submit(task, "child")  # a job may start jobs in its tenant ...
                assert child.spec.tenant == "a"
                assert (await task.GetJob(M.GetJobRequest(job_id=child.job_id))).job_id == child.job_id
                code, _ = await code_of(rig.submit(task, "escape", tenant="b"))
                assert code == DENIED  # ... and nowhere else
                code, msg = await code_of(rig.submit(alice, env={"DOMAINOS_TOKEN": rig.admin_token}))
                assert code == grpc.StatusCode.INVALID_ARGUMENT and msg.startswith(
                    "env.DOMAINOS_TOKEN: is reserved"
                )
                code, msg = await code_of(rig.submit(rig.admin, env={"MY_TOKEN": f"x={rig.admin_token}"}))
                assert code == grpc.StatusCode.INVALID_ARGUMENT
                assert (
                    msg
                    == "env.MY_TOKEN: holds a DomainOS token; tasks get a credential of their own in DOMAINOS_TOKEN"
                )

                await alice.CancelJob(M.CancelJobRequest(job_id=job.job_id))
                await until(lambda: not rig.master.job_active(job.job_id), what="job retired")
                code, msg = await code_of(task.WhoAmI(M.WhoAmIRequest()))
                assert code == UNAUTH and ("which has finished" in msg or "was revoked" in msg)

                async def revoked() -> bool:
                    rec = await rig.master.directory.token(token[4:16])
                    return rec is not None and rec.revoked_at > 0

                await until(revoked, what="job token revoked")
                kv = await rig.master.store.get(f"/domainos/master/jobs/{job.job_id}")
                assert kv is not None and token.encode() not in kv.value  # dropped once finished
            finally:
                await fake.close()

    run(body())


def test_job_token_survives_a_master_restart(tmp_path: pathlib.Path) -> None:
    store = f"sqlite:///{tmp_path}/m.db"

    async def body() -> None:
        async with started(tmp_path, store=store) as rig:
            job = await rig.submit(rig.admin)  # no sub-domain: stays pending
        async with started(tmp_path, store=store) as rig:
            fake = FakeSubdomain(rig.address, "east-1", behaviour="run")
            await fake.connect()
            try:
                spec = await until(lambda: fake.placed[0] if fake.placed else None, what="placed")
                assert spec.job_id == job.job_id
                me = await rig.api(dict(spec.env)["DOMAINOS_TOKEN"]).WhoAmI(M.WhoAmIRequest())
                assert me.job_id == job.job_id and me.tenant == "system"
            finally:
                await fake.close()

    run(body())


# -- audit ------------------------------------------------------------------------------------------------


def test_read_audit_newest_first_pages_and_since(tmp_path: pathlib.Path) -> None:
    clock = FakeClock(1_700_000_000.0)

    async def body() -> None:
        async with started(tmp_path, clock=clock) as rig:
            for i in range(5):
                await rig.admin.CreateTenant(M.CreateTenantRequest(name=f"t{i}", request_id=f"r{i}"))
                clock.advance(10)
            code, _ = await code_of(rig.api(None).CreateTenant(M.CreateTenantRequest(name="anon")))
            assert code == UNAUTH
            first = await rig.admin.ReadAudit(M.ReadAuditRequest(limit=2))
            assert [e.target for e in first.entries] == ["anon", "t4"]
            assert first.entries[0].principal == "anonymous" and first.entries[0].code == "UNAUTHENTICATED"
            assert first.entries[1].request_id == "r4" and first.entries[1].method == "CreateTenant"
            second = await rig.admin.ReadAudit(M.ReadAuditRequest(limit=2, page_token=first.next_page_token))
            assert [e.target for e in second.entries] == ["t3", "t2"]
            since = await rig.admin.ReadAudit(M.ReadAuditRequest(since=1_700_000_020.0))
            assert [e.target for e in since.entries] == ["anon", "t4", "t3", "t2"]
            assert since.next_page_token == ""
            code, msg = await code_of(rig.admin.ReadAudit(M.ReadAuditRequest(page_token="nope")))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and msg.startswith("page_token:")
            code, _ = await code_of(rig.admin.ReadAudit(M.ReadAuditRequest(limit=-1)))
            assert code == grpc.StatusCode.INVALID_ARGUMENT

    run(body())


def test_audit_retention_is_bounded(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with started(tmp_path, audit_max_entries=10) as rig:
            for i in range(30):
                await rig.admin.CreateTenant(M.CreateTenantRequest(name=f"t{i}"))
            await until(lambda: rig.master.audit.count <= 11, what="pruned")
            keys = await rig.keys(AUDIT_PREFIX)
            assert 10 <= len(keys) <= 11
            newest = (await rig.admin.ReadAudit(M.ReadAuditRequest(limit=3))).entries
            assert [e.target for e in newest] == ["t29", "t28", "t27"]

    run(body())


# -- rate limits and message size -------------------------------------------------------------------------


def test_rate_limit_per_principal(tmp_path: pathlib.Path) -> None:
    clock = FakeClock()

    async def body() -> None:
        async with started(tmp_path, clock=clock, rate_limit_per_s=2, rate_limit_burst=3) as rig:
            await rig.tenant("a")  # 1
            user = await rig.user("a")  # 2
            await rig.admin.WhoAmI(M.WhoAmIRequest())  # 3: the admin's burst is spent
            code, msg = await code_of(rig.admin.WhoAmI(M.WhoAmIRequest()))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert msg == (
                f"rate limit exceeded for token:{rig.admin_token[4:16]}: 2 requests/s (burst 3); retry in 0.50 s"
            )
            await user.WhoAmI(M.WhoAmIRequest())  # another principal has its own bucket
            clock.advance(0.5)
            await rig.admin.WhoAmI(M.WhoAmIRequest())
            # Callers without a valid token are limited by address (here: all of us on 127.0.0.1).
            anon = rig.api(None)
            codes = [(await code_of(anon.WhoAmI(M.WhoAmIRequest())))[0] for _ in range(4)]
            assert codes == [UNAUTH] * 3 + [grpc.StatusCode.RESOURCE_EXHAUSTED]

    run(body())


def test_requests_over_the_message_limit_are_refused(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with started(tmp_path) as rig:
            # A plain channel with no send limit of its own, so the master's limit is what refuses.
            async with grpc.aio.insecure_channel(rig.address) as channel:
                stub = master_pb2_grpc.DomainControlStub(channel)
                spec = M.JobSpec(command=["true"], env={"BIG": "x" * (MAX_MESSAGE_BYTES + 1024)})
                code, msg = await code_of(
                    stub.SubmitJob(
                        M.SubmitJobRequest(spec=spec),
                        metadata=(("authorization", f"Bearer {rig.admin_token}"),),
                        timeout=10,
                    )
                )
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, msg
            assert await rig.keys("/domainos/master/jobs/") == []
            info = await rig.admin.GetClusterInfo(M.GetClusterInfoRequest())  # still serving
            assert info.master_id

    run(body())


def test_logs_of_ones_own_job(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        async with started(tmp_path) as rig:
            await rig.tenant("a")
            alice = await rig.user("a")
            fake = FakeSubdomain(rig.address, "east-1", behaviour="succeed")
            await fake.connect()
            try:
                job = await rig.submit(alice)

                async def done() -> bool:
                    got = await alice.GetJob(M.GetJobRequest(job_id=job.job_id))
                    return bool(got.state == M.JOB_STATE_SUCCEEDED)

                await until(done, what="job succeeded")
                logs = await alice.ReadLogs(M.ReadLogsRequest(job_id=job.job_id, task_index=-1))
                assert logs.logs[0].chunk.data.startswith(f"log of {job.job_id}/0".encode())
            finally:
                await fake.close()
            assert common_pb2  # the stub module stays imported for the fake

    run(body())
