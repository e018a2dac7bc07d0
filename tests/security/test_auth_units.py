"""The pure parts of authentication: token format and hashing, expiry and revocation, the RBAC
table, who may see which job, the rate limiter (fake clock) and the audit log's ids and pruning."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domainos.api.v1 import master_pb2
from domainos.clock import FakeClock
from domainos.errors import InvalidArgument, PermissionDenied, ResourceExhausted, Unauthenticated
from domainos.ratelimit import RateLimiter
from domainos.store import AsyncStore, open_store
from master_domain._audit import AUDIT_PREFIX, AuditLog, new_entry_id
from master_domain._auth import (
    MUTATING,
    POLICY,
    Principal,
    Role,
    TokenRecord,
    authorize,
    bearer_token,
    check_token_id,
    hash_secret,
    new_token,
    parse_token,
)

# -- tokens ------------------------------------------------------------------------------------------


def test_new_tokens_have_the_documented_shape_and_are_unique() -> None:
    seen = set()
    for _ in range(200):
        token_id, token = new_token()
        parsed = parse_token(token)
        assert parsed.token_id == token_id and len(token_id) == 12 and int(token_id, 16) >= 0
        assert token == f"dos_{token_id}_{parsed.secret}" and len(parsed.secret) == 43
        seen.add(parsed.secret)
    assert len(seen) == 200


@pytest.mark.parametrize(
    "text",
    [
        "",
        "dos_",
        "Bearer dos_0123456789ab_" + "a" * 43,
        "dos_0123456789AB_" + "a" * 43,  # upper-case hex
        "dos_0123456789ab-" + "a" * 43,
        "dos_0123456789ab_" + "a" * 42,
        "dos_0123456789ab_" + "a" * 44,
        "dos_0123456789ab_" + "a" * 42 + "!",
        "dox_0123456789ab_" + "a" * 43,
    ],
)
def test_malformed_tokens_are_unauthenticated_and_not_echoed(text: str) -> None:
    with pytest.raises(Unauthenticated, match="malformed token") as exc:
        parse_token(text)
    assert text[17:] not in str(exc.value) or not text[17:]


@given(st.text(max_size=80))
def test_parse_token_never_crashes(text: str) -> None:
    with contextlib.suppress(Unauthenticated):
        parse_token(text)


def test_bearer_metadata() -> None:
    assert bearer_token([("user-agent", "x")]) is None
    assert bearer_token(None) is None
    assert bearer_token([("authorization", "Bearer dos_x")]) == "dos_x"
    assert bearer_token([("Authorization", b"bearer  dos_y ")]) == "dos_y"
    for bad in ("Basic abc", "Bearer", "dos_x", "Bearer   "):
        with pytest.raises(Unauthenticated, match=r"must be 'Bearer dos_\.\.\.'"):
            bearer_token([("authorization", bad)])


def test_records_store_a_salted_hash_and_compare_it() -> None:
    rec, token = TokenRecord.mint(Role.USER, "acme", now=100.0, created_by="token:x", ttl_s=60)
    secret = parse_token(token).secret
    assert rec.hash == hash_secret(secret, rec.salt) and secret not in json.dumps(rec.to_dict())
    assert rec.matches(secret) and not rec.matches(secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    again, token2 = TokenRecord.mint(Role.USER, "acme", now=100.0, created_by="x")
    assert again.salt != rec.salt and token2 != token
    assert TokenRecord.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec
    assert rec.expires_at == 160.0 and rec.usable(159.9) and not rec.usable(160.0)
    rec.check(159.0)
    with pytest.raises(Unauthenticated, match=rf"token {rec.token_id} expired at 1970-01-01 00:02:40 UTC"):
        rec.check(160.0)
    gone = rec.revoked(120.0)
    assert gone.revoked(130.0) is gone  # revoking twice keeps the first time
    with pytest.raises(Unauthenticated, match=r"was revoked at 1970-01-01 00:02:00 UTC"):
        gone.check(121.0)
    forever, _ = TokenRecord.mint(Role.ADMIN, "", now=100.0, created_by="x")
    assert forever.expires_at == 0 and forever.usable(1e12)
    info = forever.to_proto()
    assert info.role == master_pb2.ROLE_ADMIN and not hasattr(info, "hash")


def test_role_protobuf_names() -> None:
    assert [Role.from_proto(v) for v in (0, 1, 2, 3, 99)] == [None, Role.USER, Role.ADMIN, Role.JOB, None]
    assert all(Role.from_proto(r.to_proto()) is r for r in Role)


def test_token_ids_are_checked() -> None:
    assert check_token_id("0123456789ab") == "0123456789ab"
    for bad in ("", "0123456789AB", "0123456789a", "../../etc", "0123456789abc"):
        with pytest.raises(InvalidArgument, match="token_id"):
            check_token_id(bad)


# -- RBAC ---------------------------------------------------------------------------------------------


def test_every_domaincontrol_method_is_in_the_policy() -> None:
    methods = {m.name for m in master_pb2.DESCRIPTOR.services_by_name["DomainControl"].methods}
    assert set(POLICY) == methods
    assert methods >= MUTATING


@pytest.mark.parametrize("method", sorted(POLICY))
def test_rbac_table(method: str) -> None:
    admin_only = {
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
    authorize(Principal(Role.ADMIN), method)
    for role in (Role.USER, Role.JOB):
        if method == "ListQuotas" and role is Role.JOB:  # people only (a user: its own tenant's)
            with pytest.raises(PermissionDenied) as exc:
                authorize(Principal(role, "acme", "0123456789ab"), method)
            assert str(exc.value) == "role job cannot call ListQuotas; it needs user or admin"
        elif method in admin_only:
            with pytest.raises(PermissionDenied) as exc:
                authorize(Principal(role, "acme", "0123456789ab"), method)
            assert str(exc.value) == f"role {role.value} cannot call {method}; it needs admin"
        else:
            authorize(Principal(role, "acme", "0123456789ab"), method)


def test_an_unknown_method_is_refused_to_everyone() -> None:
    with pytest.raises(PermissionDenied, match="not in the access policy"):
        authorize(Principal(Role.ADMIN), "DropEverything")


def test_who_sees_which_job() -> None:
    admin = Principal(Role.ADMIN, token_id="0123456789ab")
    alice = Principal(Role.USER, "a", "aaaaaaaaaaaa")
    job = Principal(Role.JOB, "a", "bbbbbbbbbbbb", job_id="j-1")
    assert admin.can_see_job("b", "j-9")
    assert alice.can_see_job("a", "j-9") and not alice.can_see_job("b", "j-9")
    assert job.can_see_job("a", "j-1") and not job.can_see_job("a", "j-2")
    assert job.can_see_job("a", "j-3", created_by="token:bbbbbbbbbbbb")  # a job it started
    assert not job.can_see_job("b", "j-1")
    assert alice.name == "token:aaaaaaaaaaaa"
    assert Principal(Role.USER, cert_role="client", cert_id="x").name == "cert:client/x"


# -- rate limits --------------------------------------------------------------------------------------


def test_token_bucket_with_a_fake_clock() -> None:
    clock = FakeClock()
    limiter = RateLimiter(200, 400, clock=clock)
    assert [limiter.check("p") for _ in range(400)] == [0.0] * 400
    assert limiter.check("p") == pytest.approx(0.005)
    assert limiter.check("q") == 0.0  # each principal has its own bucket
    with pytest.raises(ResourceExhausted) as exc:
        limiter.admit("p")
    assert str(exc.value) == "rate limit exceeded for p: 200 requests/s (burst 400); retry in 0.01 s"
    clock.advance(0.5)  # refills 100
    assert [limiter.check("p") for _ in range(100)] == [0.0] * 100
    assert limiter.check("p") > 0
    clock.advance(3600)
    assert sum(limiter.check("p") == 0.0 for _ in range(500)) == 400  # never more than the burst


def test_rate_limiter_map_is_bounded_lru() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1, 1, clock=clock, max_keys=3)
    for key in "abc":
        assert limiter.check(key) == 0.0
    assert limiter.check("a") > 0  # a is now the most recently used
    assert limiter.check("d") == 0.0  # evicts b, the least recently used
    assert len(limiter) == 3
    assert limiter.check("a") > 0  # a was kept: still limited
    assert limiter.check("b") == 0.0  # b was forgotten: a full bucket again
    assert RateLimiter(0, 1, clock=clock).check("x") == 0.0  # rate 0: unlimited


# -- audit log ------------------------------------------------------------------------------------------


def test_entry_ids_sort_newest_first() -> None:
    ids = [new_entry_id(t) for t in (1.0, 2.0, 2.000001, 1_700_000_000.5)]
    assert sorted(ids) == list(reversed(ids))


def test_audit_pruning_keeps_the_newest_and_reads_page_by_page() -> None:
    async def body() -> None:
        clock = FakeClock(1000.0)
        store = AsyncStore(open_store("memory://"))
        asked: list[int] = []

        def spawn(coro: Any, name: str) -> None:
            asked.append(log.count)  # when a pass would start; the test runs it itself below
            coro.close()

        log = AuditLog(store, clock, max_entries=250, spawn=spawn)
        await log.load()
        for i in range(300):
            clock.advance(1)
            await log.write(
                log.entry(
                    principal="token:x",
                    tenant="",
                    role="admin",
                    method="CreateTenant",
                    target=f"t{i}",
                    request_id="",
                    code="OK",
                    message="m" * 1000,
                    peer="ipv4:127.0.0.1:1",
                )
            )
        assert asked[0] == 276  # the threshold: max + 10%
        assert await log.prune() == 50
        assert log.count == await store.count(AUDIT_PREFIX) == 250
        entries, token = await log.read(100, "", 0.0)
        assert [e.target for e in entries[:3]] == ["t299", "t298", "t297"] and len(entries) == 100
        assert len(entries[0].message) == 500  # bounded
        rest, token2 = await log.read(1000, token, 0.0)
        assert len(rest) == 150 and rest[-1].target == "t50" and token2 == ""
        recent, _ = await log.read(0, "", 1000.0 + 291)
        assert [e.target for e in recent] == [f"t{i}" for i in range(299, 289, -1)]
        with pytest.raises(InvalidArgument, match="since"):
            await log.read(10, "", float("nan"))
        await store.close()

    asyncio.run(body())
