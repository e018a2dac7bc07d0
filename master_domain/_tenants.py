"""Tenants and tokens in the master's store.

* ``/domainos/master/tenants/<name>``: a tenant (name rules: :func:`domainos.topology.check_name`).
* ``/domainos/master/tokens/<token_id>``: a token record (:class:`~master_domain._auth.TokenRecord`:
  role, tenant, salted hash, creation, expiry, revocation), never its secret.
* ``/domainos/master/token-requests/<request_id>``: which token a ``CreateToken`` request made.

Every write that creates or revokes something goes through one compare-and-swap transaction that
also carries the caller's extra operations (the audit entry), so nothing is half-written.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from domainos.api.v1 import master_pb2
from domainos.clock import Clock
from domainos.errors import AlreadyExists, InvalidArgument, NotFound, Unauthenticated, Unavailable
from domainos.store import AsyncStore, Op, absent, exists, mod_revision_equals, put_op
from domainos.topology import check_name
from master_domain._auth import (
    LOGIN_HINT,
    MAX_DESCRIPTION,
    Role,
    TokenRecord,
    check_token_id,
    check_ttl,
    parse_token,
)

log = logging.getLogger(__name__)

TENANTS_PREFIX = "/domainos/master/tenants/"
TOKENS_PREFIX = "/domainos/master/tokens/"
TOKEN_REQUESTS_PREFIX = "/domainos/master/token-requests/"
#: Jobs submitted by admins without a tenant, and job records from before tenants, belong here.
SYSTEM_TENANT = "system"
#: Token records read from the store are reused for this long. Revocations made through this
#: master take effect at once; those made through another master sharing the store within this.
TOKEN_CACHE_S = 1.0
TOKEN_CACHE_SIZE = 10_000
MAX_LABELS = 64
_LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,62}$")
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def tenant_key(name: str) -> str:
    return TENANTS_PREFIX + name


def token_key(token_id: str) -> str:
    return TOKENS_PREFIX + token_id


def _json(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def check_text(value: str, field: str, limit: int) -> str:
    if len(value) > limit:
        raise InvalidArgument(f"too long: at most {limit} characters, got {len(value)}", field=field)
    if any(ord(c) < 32 and c not in "\t" for c in value):
        raise InvalidArgument("must not contain control characters", field=field)
    return value


def check_request_id(request_id: str) -> str:
    if request_id and not _REQUEST_ID_RE.match(request_id):
        raise InvalidArgument("must be 1-128 letters, digits, '.', '_', ':' or '-'", field="request_id")
    return request_id


def check_labels(labels: Mapping[str, str], field: str = "labels") -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"too many: at most {MAX_LABELS}, got {len(labels)}", field=field)
    for key, value in labels.items():
        if not _LABEL_KEY_RE.match(key):
            raise InvalidArgument(
                f"{key[:70]!r} is not a valid label key: 1-63 letters, digits, '-', '_', '.' or '/'",
                field=field,
            )
        check_text(value, f"{field}.{key}", 256)
    return dict(labels)


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    created_at: float
    created_by: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    request_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "labels": dict(self.labels),
            "request_id": self.request_id,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Tenant:
        return cls(
            name=str(data["name"]),
            created_at=float(data.get("created_at", 0.0)),
            created_by=str(data.get("created_by", "")),
            labels=dict(data.get("labels") or {}),
            request_id=str(data.get("request_id", "")),
        )

    def to_proto(self) -> master_pb2.Tenant:
        return master_pb2.Tenant(
            name=self.name, created_at=self.created_at, created_by=self.created_by, labels=dict(self.labels)
        )


def no_such_tenant(name: str, field: str = "tenant") -> NotFound:
    return NotFound(
        f"tenant {name!r} does not exist; create it with `domainctl tenant create {name}`", field=field
    )


class Directory:
    """Tenants and tokens: reads, checked writes, and token verification for every call."""

    def __init__(self, store: AsyncStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        # token id -> (record, mod revision, monotonic time read)
        self._cache: OrderedDict[str, tuple[TokenRecord, int, float]] = OrderedDict()

    # -- tenants ----------------------------------------------------------------------------------

    async def tenant(self, name: str) -> Tenant | None:
        kv = await self._store.get(tenant_key(name))
        return Tenant.from_dict(json.loads(kv.value)) if kv is not None else None

    async def require_tenant(self, name: str, field: str = "tenant") -> Tenant:
        check_name(name, field)
        found = await self.tenant(name)
        if found is None:
            raise no_such_tenant(name, field)
        return found

    async def tenants(self) -> list[Tenant]:
        return [Tenant.from_dict(json.loads(kv.value)) for kv in await self._store.range(TENANTS_PREFIX)]

    async def ensure_tenant(self, name: str, created_by: str) -> None:
        """Create ``name`` unless it exists (the built-in ``system`` tenant)."""
        tenant = Tenant(name, self._clock.time(), created_by)
        key = tenant_key(name)
        await self._store.txn([absent(key)], [put_op(key, _json(tenant.to_dict()))])

    async def create_tenant(
        self,
        name: str,
        *,
        labels: Mapping[str, str],
        request_id: str,
        created_by: str,
        extra_ops: Sequence[Op] = (),
    ) -> tuple[Tenant, bool]:
        """Create a tenant (and ``extra_ops``) in one txn; returns (tenant, created).

        A retry with the request id that created it returns it again (created False); any other
        attempt on an existing name is AlreadyExists.
        """
        check_name(name, "name")
        check_request_id(request_id)
        tenant = Tenant(name, self._clock.time(), created_by, check_labels(labels), request_id)
        key = tenant_key(name)
        result = await self._store.txn([absent(key)], [put_op(key, _json(tenant.to_dict())), *extra_ops])
        if result.succeeded:
            return tenant, True
        existing = await self.tenant(name)
        if existing is not None and request_id and existing.request_id == request_id:
            return existing, False
        raise AlreadyExists(f"tenant {name!r} already exists", field="name")

    # -- tokens -----------------------------------------------------------------------------------

    async def _read_token(self, token_id: str) -> tuple[TokenRecord, int] | None:
        kv = await self._store.get(token_key(token_id))
        if kv is None:
            return None
        return TokenRecord.from_dict(json.loads(kv.value)), kv.mod_revision

    async def token(self, token_id: str) -> TokenRecord | None:
        found = await self._read_token(token_id)
        return found[0] if found is not None else None

    async def authenticate(self, token: str) -> TokenRecord:
        """The record of a presented token, or Unauthenticated saying why not."""
        parsed = parse_token(token)
        now_mono = self._clock.monotonic()
        cached = self._cache.get(parsed.token_id)
        if cached is not None and now_mono - cached[2] < TOKEN_CACHE_S:
            record = cached[0]
        else:
            found = await self._read_token(parsed.token_id)
            if found is None:
                self._cache.pop(parsed.token_id, None)
                raise Unauthenticated(f"unknown token {parsed.token_id}: no such token; {LOGIN_HINT}")
            record = found[0]
            self._remember(record, found[1])
        if not record.matches(parsed.secret):
            raise Unauthenticated(f"invalid token {parsed.token_id}: the secret does not match; {LOGIN_HINT}")
        record.check(self._clock.time())
        return record

    def _remember(self, record: TokenRecord, revision: int) -> None:
        self._cache[record.token_id] = (record, revision, self._clock.monotonic())
        self._cache.move_to_end(record.token_id)
        while len(self._cache) > TOKEN_CACHE_SIZE:
            self._cache.popitem(last=False)

    def token_op(self, record: TokenRecord) -> Op:
        return put_op(token_key(record.token_id), _json(record.to_dict()))

    async def create_token(
        self,
        *,
        role: Role | None,
        tenant: str,
        ttl_s: float,
        description: str,
        request_id: str,
        created_by: str,
        audit: Callable[[TokenRecord], Op] | None = None,
    ) -> tuple[TokenRecord, str]:
        """Mint a user or admin token (and its ``audit`` entry) in one txn; returns (record, token)."""
        if role is None:
            raise InvalidArgument("is required; allowed: ROLE_USER, ROLE_ADMIN", field="role")
        if role is Role.JOB:
            raise InvalidArgument(
                "job tokens are minted by the master for each job; allowed: ROLE_USER, ROLE_ADMIN",
                field="role",
            )
        if not isinstance(ttl_s, float | int) or math.isinf(ttl_s):
            raise InvalidArgument(f"must be a finite number of seconds, got {ttl_s}", field="ttl_seconds")
        check_ttl(float(ttl_s))
        check_text(description, "description", MAX_DESCRIPTION)
        check_request_id(request_id)
        compares = []
        if role is Role.USER:
            if not tenant:
                raise InvalidArgument("is required for a user token", field="tenant")
            await self.require_tenant(tenant)
            compares.append(exists(tenant_key(tenant)))
        elif tenant:
            raise InvalidArgument(
                f"must be empty for an admin token (admins are not bound to a tenant), got {tenant!r}",
                field="tenant",
            )
        record, token = TokenRecord.mint(
            role,
            tenant,
            now=self._clock.time(),
            created_by=created_by,
            ttl_s=float(ttl_s),
            description=description,
        )
        ops: list[Op] = [self.token_op(record)]
        if audit is not None:
            ops.append(audit(record))
        if request_id:
            req_key = TOKEN_REQUESTS_PREFIX + request_id
            compares.append(absent(req_key))
            ops.append(put_op(req_key, _json({"token_id": record.token_id})))
        compares.append(absent(token_key(record.token_id)))
        result = await self._store.txn(compares, ops)
        if not result.succeeded:
            if request_id:
                kv = await self._store.get(TOKEN_REQUESTS_PREFIX + request_id)
                if kv is not None:
                    made = json.loads(kv.value).get("token_id", "?")
                    raise AlreadyExists(
                        f"request {request_id} already created token {made}; its secret was shown "
                        f"only then: revoke it (`domainctl token revoke {made}`) and create another",
                        field="request_id",
                    )
            if role is Role.USER and await self.tenant(tenant) is None:
                raise no_such_tenant(tenant)
            raise Unavailable("the token could not be stored (a concurrent change); retry")
        self._remember(record, result.revision)
        return record, token

    async def tokens(self, tenant: str = "", include_revoked: bool = False) -> list[TokenRecord]:
        """Every token (of ``tenant`` if given), oldest first; revoked ones only when asked."""
        out = []
        for kv in await self._store.range(TOKENS_PREFIX):
            record = TokenRecord.from_dict(json.loads(kv.value))
            if tenant and record.tenant != tenant:
                continue
            if record.revoked_at and not include_revoked:
                continue
            out.append(record)
        out.sort(key=lambda r: (r.created_at, r.token_id))
        return out

    async def revoke(self, token_id: str, *, extra_ops: Sequence[Op] = ()) -> tuple[TokenRecord, bool]:
        """Revoke a token (and ``extra_ops``) in one txn; returns (record, changed).

        Revoking a revoked token changes nothing (idempotent).
        """
        check_token_id(token_id)
        for _ in range(5):
            found = await self._read_token(token_id)
            if found is None:
                raise NotFound(f"token {token_id} does not exist", field="token_id")
            record, revision = found
            if record.revoked_at:
                return record, False
            revoked = record.revoked(self._clock.time())
            result = await self._store.txn(
                [mod_revision_equals(token_key(token_id), revision)],
                [self.token_op(revoked), *extra_ops],
            )
            if result.succeeded:
                self._remember(revoked, result.revision)
                return revoked, True
        raise Unavailable(f"token {token_id} kept changing while being revoked; retry")

    async def has_usable_admin(self) -> bool:
        now = self._clock.time()
        for kv in await self._store.range(TOKENS_PREFIX):
            record = TokenRecord.from_dict(json.loads(kv.value))
            if record.role is Role.ADMIN and record.usable(now):
                return True
        return False

    async def bootstrap(self, path: str) -> str | None:
        """With no usable admin token in the store, mint one and write it to ``path`` (0600).

        Returns the new token's id, or None when an admin token already exists. The secret is
        written to the file only, never logged.
        """
        if await self.has_usable_admin():
            return None
        record, token = TokenRecord.mint(
            Role.ADMIN,
            "",
            now=self._clock.time(),
            created_by="bootstrap",
            description="bootstrap admin token",
        )
        write_secret_file(path, token + "\n")
        result = await self._store.txn([absent(token_key(record.token_id))], [self.token_op(record)])
        if not result.succeeded:
            raise Unavailable("could not store the bootstrap admin token; retry the start")
        return record.token_id


def write_secret_file(path: str, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 (atomically: a reader never sees half of it)."""
    target = pathlib.Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
