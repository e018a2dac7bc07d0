"""The dataset registry: which shards a dataset has and where their copies live.

The shards themselves live on agents (``<data_dir>/datasets/<name>/<shard>/``), written by a job's
tasks; the DSDK registers the dataset here once every copy is stored, naming for each shard the
nodes (and their sub-domains and regions) holding it. The master keeps one record per dataset
under ``/domainos/master/datasets/<name>`` -- per-dataset state, bounded by
:data:`MAX_SHARDS` x :data:`MAX_REPLICAS`, never per-node state. Names are global; a dataset
belongs to the tenant that registered it, and another tenant's is "not found" (as for jobs).

Placement does not read this registry: agents report the shards they find on disk in their
inventory, sub-domains summarise them, and the scheduler's locality rules run on the summaries.
The registry is what a client reads to plan where to run (``Dataset.get``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from domainos.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied
from domainos.model import check_node_id
from domainos.store import MAX_VALUE_BYTES, AsyncStore, Op, absent, delete_op, mod_revision_equals, put_op

PREFIX = "/domainos/master/datasets/"
#: Shards one dataset may have (the sub-domain summary carries at most 4,096 shards per dataset).
MAX_SHARDS = 4096
#: Copies of one shard the registry records.
MAX_REPLICAS = 8
MAX_LABELS = 32
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")


@dataclass(frozen=True, slots=True)
class ShardReplica:
    """One copy of a shard: the node holding it, its sub-domain and region."""

    node_id: str
    subdomain_id: str
    region: str = ""


@dataclass(frozen=True, slots=True)
class ShardInfo:
    shard: int
    size_bytes: int
    replicas: tuple[ShardReplica, ...]


@dataclass(frozen=True, slots=True)
class DatasetRecord:
    """A registered dataset (``master.proto`` ``Dataset``)."""

    name: str
    tenant: str = ""
    num_shards: int = 0
    replicas: int = 1
    shards: tuple[ShardInfo, ...] = ()
    created_at: float = 0.0
    created_by: str = ""
    job_id: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        """One copy of every shard."""
        return sum(s.size_bytes for s in self.shards)

    def validate(self) -> None:
        """InvalidArgument naming the field (``dataset.<...>``) that is wrong."""
        if not _NAME_RE.match(self.name):
            raise InvalidArgument(
                f"{self.name[:80]!r} is not a valid dataset name: 1-63 letters, digits, '-', '_' or '.'",
                field="dataset.name",
            )
        if not 1 <= self.num_shards <= MAX_SHARDS:
            raise InvalidArgument(
                f"must be between 1 and {MAX_SHARDS}, got {self.num_shards}", field="dataset.num_shards"
            )
        if not 1 <= self.replicas <= MAX_REPLICAS:
            raise InvalidArgument(
                f"must be between 1 and {MAX_REPLICAS}, got {self.replicas}", field="dataset.replicas"
            )
        if self.job_id and not _ID_RE.match(self.job_id):
            raise InvalidArgument(f"not a valid job id: {self.job_id[:80]!r}", field="dataset.job_id")
        if len(self.labels) > MAX_LABELS:
            raise InvalidArgument(
                f"at most {MAX_LABELS} labels, got {len(self.labels)}", field="dataset.labels"
            )
        for k, v in self.labels.items():
            if not _NAME_RE.match(k) or len(v) > 256 or "\x00" in v:
                raise InvalidArgument(
                    "label keys are names (letters, digits, '-', '_', '.'), values at most 256 characters",
                    field=f"dataset.labels.{k[:40]}",
                )
        got = sorted(s.shard for s in self.shards)
        if got != list(range(self.num_shards)):
            missing = sorted(set(range(self.num_shards)) - set(got))
            extra = sorted(
                {s for s in got if not 0 <= s < self.num_shards} | {s for s in got if got.count(s) > 1}
            )
            raise InvalidArgument(
                f"every shard 0..{self.num_shards - 1} exactly once: missing {missing[:10]}, unexpected or "
                f"repeated {extra[:10]}",
                field="dataset.shards",
            )
        for info in self.shards:
            fld = f"dataset.shards[{info.shard}]"
            if info.size_bytes < 0:
                raise InvalidArgument(
                    f"must not be negative, got {info.size_bytes}", field=f"{fld}.size_bytes"
                )
            if not info.replicas:
                raise InvalidArgument(
                    "a registered shard has at least one copy on a node; store it first",
                    field=f"{fld}.replicas",
                )
            if len(info.replicas) > MAX_REPLICAS:
                raise InvalidArgument(f"at most {MAX_REPLICAS} copies recorded", field=f"{fld}.replicas")
            nodes = [r.node_id for r in info.replicas]
            if len(set(nodes)) != len(nodes):
                raise InvalidArgument("one copy per node: a node is listed twice", field=f"{fld}.replicas")
            for i, r in enumerate(info.replicas):
                check_node_id(r.node_id, f"{fld}.replicas[{i}].node_id")
                if not _NAME_RE.match(r.subdomain_id):
                    raise InvalidArgument(
                        f"not a valid sub-domain id: {r.subdomain_id[:80]!r}",
                        field=f"{fld}.replicas[{i}].subdomain_id",
                    )
                if r.region and not _NAME_RE.match(r.region):
                    raise InvalidArgument(
                        f"not a valid region: {r.region[:80]!r}", field=f"{fld}.replicas[{i}].region"
                    )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tenant": self.tenant,
            "num_shards": self.num_shards,
            "replicas": self.replicas,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "job_id": self.job_id,
            "labels": dict(self.labels),
            # Positional rows keep a 4,096-shard x 8-copy record well under the store's limit.
            "shards": [
                [s.shard, s.size_bytes, [[r.node_id, r.subdomain_id, r.region] for r in s.replicas]]
                for s in self.shards
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetRecord:
        return cls(
            name=str(data["name"]),
            tenant=str(data.get("tenant", "")),
            num_shards=int(data["num_shards"]),
            replicas=int(data.get("replicas", 1)),
            created_at=float(data.get("created_at", 0.0)),
            created_by=str(data.get("created_by", "")),
            job_id=str(data.get("job_id", "")),
            labels=dict(data.get("labels", {})),
            shards=tuple(
                ShardInfo(int(row[0]), int(row[1]), tuple(ShardReplica(*map(str, r)) for r in row[2]))
                for row in data.get("shards", ())
            ),
        )


def _key(name: str) -> str:
    return PREFIX + name


class DatasetRegistry:
    """Dataset records in the master's store, with tenant checks. ``tenant`` "" = an admin."""

    def __init__(self, store: AsyncStore) -> None:
        self._store = store

    async def _read(self, name: str) -> tuple[DatasetRecord, int] | None:
        kv = await self._store.get(_key(name))
        if kv is None:
            return None
        return DatasetRecord.from_dict(json.loads(kv.value)), kv.mod_revision

    @staticmethod
    def _visible(record: DatasetRecord, tenant: str | None) -> bool:
        return tenant is None or record.tenant == tenant

    async def put(
        self, record: DatasetRecord, *, replace: bool, tenant: str | None, audit: Op | None = None
    ) -> DatasetRecord:
        """Register ``record`` for ``record.tenant`` (checked against the caller's ``tenant``;
        None: an admin or the master). Without ``replace`` a taken name is ALREADY_EXISTS --
        unless it is the same dataset registered by the same job (a retried request)."""
        record.validate()
        if tenant is not None and record.tenant != tenant:
            raise PermissionDenied(
                f"cannot register a dataset for tenant {record.tenant!r} as tenant {tenant!r}",
                field="dataset.tenant",
            )
        value = json.dumps(record.to_dict(), separators=(",", ":")).encode()
        if len(value) > MAX_VALUE_BYTES:
            raise InvalidArgument(
                f"the record is {len(value)} bytes; at most {MAX_VALUE_BYTES} (fewer shards or copies)",
                field="dataset.shards",
            )
        found = await self._read(record.name)
        ops: list[Op] = [put_op(_key(record.name), value)]
        if audit is not None:
            ops.append(audit)
        if found is None:
            compare = [absent(_key(record.name))]
        else:
            old, rev = found
            if not self._visible(old, tenant):
                raise AlreadyExists(
                    f"the dataset name {record.name!r} is taken; choose another", field="dataset.name"
                )
            same = (old.tenant, old.job_id, old.shards) == (record.tenant, record.job_id, record.shards)
            if same and record.job_id:
                return old
            if not replace:
                raise AlreadyExists(
                    f"dataset {record.name!r} exists ({old.num_shards} shards, stored by job {old.job_id or '?'}); "
                    "delete it first or pass replace",
                    field="dataset.name",
                )
            compare = [mod_revision_equals(_key(record.name), rev)]
        result = await self._store.txn(compare, ops)
        if not result.succeeded:
            raise AlreadyExists(
                f"dataset {record.name!r} changed while it was being registered; retry", field="dataset.name"
            )
        return record

    async def get(self, name: str, *, tenant: str | None) -> DatasetRecord:
        if not name:
            raise InvalidArgument("is required", field="name")
        if not _NAME_RE.match(name):
            raise InvalidArgument(f"{name[:80]!r} is not a valid dataset name", field="name")
        found = await self._read(name)
        if found is None or not self._visible(found[0], tenant):
            raise NotFound(f"no dataset {name!r}", field="name")
        return found[0]

    async def list(self, *, tenant: str | None) -> list[DatasetRecord]:
        out: list[DatasetRecord] = []
        for kv in await self._store.range(PREFIX):
            record = DatasetRecord.from_dict(json.loads(kv.value))
            if self._visible(record, tenant):
                out.append(record)
        return sorted(out, key=lambda r: r.name)

    async def delete(self, name: str, *, tenant: str | None, audit: Op | None = None) -> DatasetRecord:
        record = await self.get(name, tenant=tenant)
        ops: list[Op] = [delete_op(_key(name))]
        if audit is not None:
            ops.append(audit)
        await self._store.txn([], ops)
        return record
