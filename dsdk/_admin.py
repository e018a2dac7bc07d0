"""Identity, tenants, tokens and the audit log as the client hands them out (built from protobuf
at the boundary, like :mod:`dsdk._types`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._types import _job_state

#: ``master.proto`` Role numbers -> the names people use.
_ROLES = {0: "unspecified", 1: "user", 2: "admin", 3: "job"}
ROLE_NUMBERS = {"user": 1, "admin": 2}


def role_name(value: int) -> str:
    return _ROLES.get(int(value), "unspecified")


@dataclass(frozen=True)
class Principal:
    """Who the master says the caller is (``Client.whoami``)."""

    role: str
    tenant: str = ""
    token_id: str = ""
    cert_role: str = ""
    cert_id: str = ""
    job_id: str = ""

    @classmethod
    def from_proto(cls, msg: Any) -> Principal:
        return cls(
            role=role_name(msg.role),
            tenant=msg.tenant,
            token_id=msg.token_id,
            cert_role=msg.cert_role,
            cert_id=msg.cert_id,
            job_id=msg.job_id,
        )


@dataclass(frozen=True)
class Tenant:
    name: str
    created_at: float = 0.0
    created_by: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, msg: Any) -> Tenant:
        return cls(
            name=msg.name, created_at=msg.created_at, created_by=msg.created_by, labels=dict(msg.labels)
        )


@dataclass(frozen=True)
class TokenInfo:
    """A token as the master lists it: never its secret."""

    token_id: str
    role: str
    tenant: str = ""
    created_at: float = 0.0
    #: Unix seconds; 0 = never.
    expires_at: float = 0.0
    #: Unix seconds; 0 = not revoked.
    revoked_at: float = 0.0
    created_by: str = ""
    description: str = ""
    job_id: str = ""

    def state(self, now: float) -> str:
        if self.revoked_at:
            return "revoked"
        if self.expires_at and now >= self.expires_at:
            return "expired"
        return "active"

    @classmethod
    def from_proto(cls, msg: Any) -> TokenInfo:
        return cls(
            token_id=msg.token_id,
            role=role_name(msg.role),
            tenant=msg.tenant,
            created_at=msg.created_at,
            expires_at=msg.expires_at,
            revoked_at=msg.revoked_at,
            created_by=msg.created_by,
            description=msg.description,
            job_id=msg.job_id,
        )


@dataclass(frozen=True)
class NewToken:
    """A token just created: ``token`` (``dos_...``) is shown this once and stored only hashed."""

    info: TokenInfo
    token: str = field(repr=False)


@dataclass(frozen=True)
class AuditEntry:
    """One mutating call as the audit log recorded it."""

    entry_id: str
    time: float
    principal: str
    tenant: str
    role: str
    method: str
    target: str
    request_id: str
    code: str
    message: str
    peer: str
    cert: str = ""

    @property
    def allowed(self) -> bool:
        return self.code == "OK"

    @classmethod
    def from_proto(cls, msg: Any) -> AuditEntry:
        return cls(
            entry_id=msg.entry_id,
            time=msg.time,
            principal=msg.principal,
            tenant=msg.tenant,
            role=role_name(msg.role) if msg.role else "",
            method=msg.method,
            target=msg.target,
            request_id=msg.request_id,
            code=msg.code,
            message=msg.message,
            peer=msg.peer,
            cert=msg.cert,
        )


@dataclass(frozen=True)
class Quota:
    """A tenant's quota in one scope (``region``/``subdomain``: a name or ``"*"``).

    ``limits`` and ``used`` map resource classes to amounts: ``cpu`` in millicores, ``memory`` in
    bytes, ``gpu:<model>`` / ``gpu:*`` in whole GPUs.
    """

    tenant: str
    region: str = "*"
    subdomain: str = "*"
    limits: Mapping[str, int] = field(default_factory=dict)
    used: Mapping[str, int] = field(default_factory=dict)

    @property
    def scope(self) -> str:
        """``region/subdomain`` (``east/*``)."""
        return f"{self.region}/{self.subdomain}"

    @classmethod
    def from_proto(cls, msg: Any) -> Quota:
        return cls(
            tenant=msg.tenant,
            region=msg.region or "*",
            subdomain=msg.subdomain or "*",
            limits=dict(sorted(msg.limits.items())),
            used=dict(sorted(msg.used.items())),
        )


@dataclass(frozen=True)
class Explanation:
    """Why a job is where it is, or why it waits (``Client.explain``)."""

    job_id: str
    text: str
    state: str = ""
    reasons: tuple[str, ...] = ()

    @classmethod
    def from_proto(cls, msg: Any) -> Explanation:
        return cls(
            job_id=msg.job_id, text=msg.text, state=_job_state(msg.state).value, reasons=tuple(msg.reasons)
        )
