"""Who is calling ``DomainControl`` and what they may do: tokens, principals and the RBAC table.

Pure: no I/O, time passed in. The store side (tenants and token records) is
:mod:`master_domain._tenants`; the gRPC door that applies all of this to every call is
:class:`master_domain._service.DomainControlGate`.

A token is ``dos_<token_id>_<secret>``: ``token_id`` is 12 hex digits (public: it names the token
in listings and the audit log), ``secret`` is 32 random bytes in URL-safe base64. The store keeps
only ``SHA-256(salt || secret)`` with a per-token random salt.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, cast

from domainos.api.v1 import master_pb2
from domainos.errors import InvalidArgument, PermissionDenied, Unauthenticated

TOKEN_PREFIX = "dos_"
#: How the CLI tells people to get a token.
LOGIN_HINT = "run `domainctl login` (or set DOMAINOS_TOKEN)"
_TOKEN_ID_RE = re.compile(r"^[0-9a-f]{12}$")
# secrets.token_urlsafe(32): 43 characters of the URL-safe base64 alphabet, no padding.
_SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")
_SALT_BYTES = 16
_TOKEN_IN_TEXT_RE = re.compile(r"dos_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")
#: Longest ``description`` of a token.
MAX_DESCRIPTION = 256
#: Longest token lifetime (ten years); 0 means the token never expires.
MAX_TTL_S = 10 * 365 * 86400.0


class Role(enum.StrEnum):
    """What a token lets its holder do (``master.proto`` ``Role``)."""

    USER = "user"
    ADMIN = "admin"
    JOB = "job"

    def to_proto(self) -> master_pb2.Role:
        return cast("master_pb2.Role", master_pb2.Role.Value(f"ROLE_{self.name}"))

    @classmethod
    def from_proto(cls, value: int) -> Role | None:
        """None for ROLE_UNSPECIFIED or a number this master does not know."""
        try:
            name = master_pb2.Role.Name(value).removeprefix("ROLE_")
        except ValueError:
            return None
        return cls.__members__.get(name)


def format_time(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


# -- tokens -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParsedToken:
    token_id: str
    secret: str


def new_token() -> tuple[str, str]:
    """A fresh ``(token_id, "dos_<token_id>_<secret>")`` from the OS's CSPRNG."""
    token_id = secrets.token_hex(6)
    return token_id, f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"


def parse_token(text: str) -> ParsedToken:
    """Split a presented token; Unauthenticated (never echoing the secret) when malformed."""
    token_id, secret = text[4:16], text[17:]
    if (
        not text.startswith(TOKEN_PREFIX)
        or text[16:17] != "_"
        or not _TOKEN_ID_RE.match(token_id)
        or not _SECRET_RE.match(secret)
    ):
        raise Unauthenticated(
            "malformed token: expected dos_<12 hex digits>_<43 characters>, as printed by "
            f"`domainctl token create`; {LOGIN_HINT}"
        )
    return ParsedToken(token_id, secret)


def contains_token(text: str) -> bool:
    """Whether ``text`` holds something shaped like a DomainOS token."""
    return bool(_TOKEN_IN_TEXT_RE.search(text))


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of an ``authorization: Bearer dos_...`` metadata entry; None when there is none."""
    for key, value in metadata or ():
        if key.lower() != "authorization":
            continue
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated(f"the authorization metadata must be 'Bearer dos_...'; {LOGIN_HINT}")
        return token.strip()
    return None


def check_token_id(token_id: str, field: str = "token_id") -> str:
    if not _TOKEN_ID_RE.match(token_id):
        raise InvalidArgument(
            f"{token_id[:40]!r} is not a token id: 12 lower-case hex digits (the part after dos_)",
            field=field,
        )
    return token_id


def hash_secret(secret: str, salt_hex: str) -> str:
    """SHA-256 of salt || secret.

    The secret has 256 bits of entropy, so nobody can brute-force it from its hash: a slow,
    memory-hard KDF (bcrypt, scrypt, argon2) only protects low-entropy passwords and would cost
    milliseconds on every call. The salt keeps equal secrets from having equal hashes.
    """
    return hashlib.sha256(bytes.fromhex(salt_hex) + secret.encode("ascii")).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A token as stored at ``/domainos/master/tokens/<token_id>`` (never its secret)."""

    token_id: str
    role: Role
    tenant: str
    salt: str
    hash: str
    created_at: float
    created_by: str = ""
    #: Unix seconds; 0 = never.
    expires_at: float = 0.0
    #: Unix seconds; 0 = not revoked.
    revoked_at: float = 0.0
    description: str = ""
    #: For role ``job``: the job whose tasks carry this token.
    job_id: str = ""

    @classmethod
    def mint(
        cls,
        role: Role,
        tenant: str,
        *,
        now: float,
        created_by: str,
        ttl_s: float = 0.0,
        description: str = "",
        job_id: str = "",
    ) -> tuple[TokenRecord, str]:
        """A new record and the token to hand out once (``dos_...``)."""
        token_id, token = new_token()
        salt = secrets.token_hex(_SALT_BYTES)
        record = cls(
            token_id=token_id,
            role=role,
            tenant=tenant,
            salt=salt,
            hash=hash_secret(parse_token(token).secret, salt),
            created_at=now,
            created_by=created_by,
            expires_at=now + ttl_s if ttl_s else 0.0,
            description=description,
            job_id=job_id,
        )
        return record, token

    def matches(self, secret: str) -> bool:
        """Constant-time comparison of the presented secret's hash with the stored one."""
        return hmac.compare_digest(hash_secret(secret, self.salt), self.hash)

    def usable(self, now: float) -> bool:
        return not self.revoked_at and not (self.expires_at and now >= self.expires_at)

    def check(self, now: float) -> None:
        """Unauthenticated when revoked or expired, saying which and when."""
        if self.revoked_at:
            raise Unauthenticated(
                f"token {self.token_id} was revoked at {format_time(self.revoked_at)}; {LOGIN_HINT} "
                "with a valid token"
            )
        if self.expires_at and now >= self.expires_at:
            raise Unauthenticated(
                f"token {self.token_id} expired at {format_time(self.expires_at)}; ask an admin for a "
                f"new one (`domainctl token create`) and {LOGIN_HINT}"
            )

    def revoked(self, now: float) -> TokenRecord:
        return self if self.revoked_at else replace(self, revoked_at=now)

    def to_dict(self) -> dict[str, Any]:
        return {
            "token_id": self.token_id,
            "role": self.role.value,
            "tenant": self.tenant,
            "salt": self.salt,
            "hash": self.hash,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "description": self.description,
            "job_id": self.job_id,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenRecord:
        return cls(
            token_id=str(data["token_id"]),
            role=Role(data["role"]),
            tenant=str(data.get("tenant", "")),
            salt=str(data["salt"]),
            hash=str(data["hash"]),
            created_at=float(data.get("created_at", 0.0)),
            created_by=str(data.get("created_by", "")),
            expires_at=float(data.get("expires_at", 0.0)),
            revoked_at=float(data.get("revoked_at", 0.0)),
            description=str(data.get("description", "")),
            job_id=str(data.get("job_id", "")),
        )

    def to_proto(self) -> master_pb2.TokenInfo:
        return master_pb2.TokenInfo(
            token_id=self.token_id,
            tenant=self.tenant,
            role=self.role.to_proto(),
            created_at=self.created_at,
            expires_at=self.expires_at,
            revoked_at=self.revoked_at,
            created_by=self.created_by,
            description=self.description,
            job_id=self.job_id,
        )


def check_ttl(ttl_s: float, field: str = "ttl_seconds") -> float:
    if ttl_s != ttl_s or not 0 <= ttl_s <= MAX_TTL_S:  # NaN fails the first test
        raise InvalidArgument(
            f"must be between 0 (never expires) and {MAX_TTL_S:.0f} seconds (10 years), got {ttl_s}",
            field=field,
        )
    return ttl_s


# -- principals ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller of one request."""

    role: Role
    tenant: str = ""
    token_id: str = ""
    cert_role: str = ""
    cert_id: str = ""
    job_id: str = ""

    @property
    def name(self) -> str:
        """How the audit log and error messages name the caller."""
        if self.token_id:
            return f"token:{self.token_id}"
        if self.cert_id:
            return f"cert:{self.cert_role}/{self.cert_id}"
        return "anonymous"

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    def can_see_job(self, tenant: str, job_id: str, created_by: str = "") -> bool:
        """Admins see every job; users their tenant's; a job credential its own job and the
        jobs it submitted."""
        if self.role is Role.ADMIN:
            return True
        if tenant != self.tenant:
            return False
        if self.role is Role.JOB:
            return job_id == self.job_id or (bool(created_by) and created_by == self.name)
        return True

    def to_proto(self) -> master_pb2.Principal:
        return master_pb2.Principal(
            token_id=self.token_id,
            tenant=self.tenant,
            role=self.role.to_proto(),
            cert_role=self.cert_role,
            cert_id=self.cert_id,
            job_id=self.job_id,
        )


# -- the access policy (one table) ---------------------------------------------------------------

_ANY = frozenset(Role)
_TENANT_USERS = frozenset({Role.ADMIN, Role.USER, Role.JOB})
_ADMIN = frozenset({Role.ADMIN})
_PEOPLE = frozenset({Role.ADMIN, Role.USER})

#: DomainControl method -> the roles that may call it. A method missing here is refused to all.
#: Which *jobs* a user or job credential may act on is decided by :meth:`Principal.can_see_job`.
POLICY: Mapping[str, frozenset[Role]] = {
    "SubmitJob": _TENANT_USERS,
    "GetJob": _TENANT_USERS,
    "ListJobs": _TENANT_USERS,
    "CancelJob": _TENANT_USERS,
    "ReadLogs": _TENANT_USERS,
    "ListDomains": _ANY,
    "GetClusterInfo": _ANY,
    "WhoAmI": _ANY,
    "ListNodes": _ADMIN,
    "AdminNode": _ADMIN,
    "CreateTenant": _ADMIN,
    "ListTenants": _ADMIN,
    "CreateToken": _ADMIN,
    "ListTokens": _ADMIN,
    "RevokeToken": _ADMIN,
    "ReadAudit": _ADMIN,
    "SetQuota": _ADMIN,
    "DeleteQuota": _ADMIN,
    # A user sees its own tenant's quotas only (checked by the servicer).
    "ListQuotas": _PEOPLE,
    # Like GetJob: another tenant's job is NOT_FOUND (checked by the master).
    "ExplainJob": _TENANT_USERS,
    # The DSDK's data plane. A job credential publishes and reports only for its own job; who may
    # list a job's endpoints is who may see the job. Datasets belong to the caller's tenant.
    "PublishEndpoint": _TENANT_USERS,
    "ListEndpoints": _TENANT_USERS,
    "ReportJobStats": _TENANT_USERS,
    "PutDataset": _TENANT_USERS,
    "GetDataset": _TENANT_USERS,
    "ListDatasets": _TENANT_USERS,
    "DeleteDataset": _TENANT_USERS,
}

#: Methods that change state: each call, allowed or denied, is written to the audit log.
#: PublishEndpoint and ReportJobStats change only memory and a job's statistics, many times per
#: job, and are not audited (one write each would cost more than the call).
MUTATING = frozenset(
    {
        "SubmitJob",
        "CancelJob",
        "CreateTenant",
        "CreateToken",
        "RevokeToken",
        "SetQuota",
        "DeleteQuota",
        "PutDataset",
        "DeleteDataset",
        "AdminNode",
    }
)


def authorize(principal: Principal, method: str) -> None:
    """PermissionDenied unless the table lets ``principal``'s role call ``method``."""
    allowed = POLICY.get(method)
    if allowed is None:
        raise PermissionDenied(f"{method} is not in the access policy; nobody may call it")
    if principal.role not in allowed:
        needs = " or ".join(r.value for r in Role if r in allowed)
        raise PermissionDenied(f"role {principal.role.value} cannot call {method}; it needs {needs}")
