"""The synchronous DomainOS client: one blocking gRPC channel to the master's ``DomainControl``."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO, TypeVar, overload

import grpc

from domainos.clock import Clock, SystemClock
from domainos.errors import FailedPrecondition, InvalidArgument, Unavailable
from domainos.ids import new_request_id
from domainos.jobspec import JobSpec
from domainos.rpc import TLSFiles, create_sync_channel, error_reason, leader_hint, translate_rpc_error

from ._address import resolve_address, resolve_tls
from ._admin import ROLE_NUMBERS, AuditEntry, Explanation, NewToken, Principal, Quota, Tenant, TokenInfo
from ._credentials import check_token_text, parse_ttl, token_for
from ._progress import ProgressBar
from ._retry import Retry, call_with_retry
from ._spec import SpecLike, as_spec
from ._types import (
    ClusterInfo,
    DatasetInfo,
    Endpoint,
    Job,
    JobState,
    JobStats,
    Node,
    NodeList,
    Region,
    TaskLog,
)
from .errors import WaitTimeout

if TYPE_CHECKING:
    from ._driver import Pool

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Options of :meth:`Client.run` (functions), :meth:`Client.map` and :class:`dsdk.Pool`.
_POOL_OPTIONS = frozenset(
    {
        "cpus",
        "gpus",
        "memory",
        "name",
        "retries",
        "restarts",
        "affinity",
        "soft",
        "distinct_nodes",
        "node_selector",
        "env",
        "priority",
        "idle_s",
    }
)


def _close_when_done(pool: Pool, futures: Sequence[concurrent.futures.Future[Any]]) -> None:
    """End ``pool``'s job once every future is settled (closing blocks: not on the driver thread)."""
    left = [len(futures)]
    lock = threading.Lock()

    def one_done(_: concurrent.futures.Future[Any]) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            threading.Thread(target=pool.close, name=f"dsdk-close-{pool.job_id}", daemon=True).start()

    for f in futures:
        f.add_done_callback(one_done)


#: Largest log chunk asked for per task and request (the server caps at 1 MiB).
LOG_PAGE_BYTES = 1024 * 1024
#: Stop collecting one task's log past this many bytes (the rest stays on the node).
MAX_LOG_BYTES = 64 * 1024 * 1024
_LIST_PAGE = 500


class Client:
    """A connection to a DomainOS master.

    Every gRPC error is translated to a :class:`~domainos.errors.DomainOSError` subclass in one
    place. Calls the master could not take (UNAVAILABLE) are retried per ``retry`` with the
    injectable ``sleep``; a submit or cancel is retried with the same request id, so a retry can
    never run a job twice.

    The connection is mutual TLS: ``tls`` names the CA, certificate and key, else they are found
    as :func:`dsdk.resolve_tls` says (environment, the local federation, ``~/.domainos/pki``).
    ``insecure=True`` (or ``DOMAINOS_INSECURE=1``) talks plaintext to a master run with
    ``insecure: true``. ``home`` replaces ``$DOMAINOS_HOME`` in that search. When the master refuses this client's certificate, the error says why
    (expired, signed by another CA, ...).
    """

    def __init__(
        self,
        address: str,
        *,
        timeout: float = 5.0,
        tls: TLSFiles | None = None,
        insecure: bool = False,
        home: str | os.PathLike[str] | None = None,
        token: str | None = None,
        retry: Retry | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Clock | None = None,
    ) -> None:
        from domainos.api.v1 import master_pb2_grpc

        self.address = address
        self.timeout = timeout
        self.retry = retry or Retry()
        self._sleep = sleep
        self._clock: Clock = clock or SystemClock()
        #: The TLS files in use; None when talking plaintext (insecure).
        self.tls: TLSFiles | None = resolve_tls(tls, insecure=insecure, address=address, home=home)
        # The bearer token sent with every call: ``token``, else $DOMAINOS_TOKEN, else the
        # credentials file's entry for this address (or its default). None: no token is sent.
        bearer = token if token is not None else token_for(address, home=home)
        self._metadata: tuple[tuple[str, str], ...] | None = (
            (("authorization", f"Bearer {check_token_text(bearer)}"),) if bearer else None
        )
        #: The master's replicas ("a,b,c" for an HA master); calls go to ``target``, and follow the
        #: leader a follower names (or the next replica when one does not answer).
        self.addresses = [a.strip() for a in address.split(",") if a.strip()] or [address]
        self._channels: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._stub_class = master_pb2_grpc.DomainControlStub
        self.target = self.addresses[0]
        self._stub: Any = self._stub_for(self.target)
        self._closed = False

    # -- plumbing ---------------------------------------------------------------------------

    def _call(self, method: str, request: Any, *, timeout: float | None = None) -> Any:
        """One RPC, retried on UNAVAILABLE; the single place gRPC errors become DomainOS errors."""
        if self._closed:
            raise FailedPrecondition(f"this client of {self.address} is closed; cannot call {method}")
        deadline = self.timeout if timeout is None else timeout

        def once() -> Any:
            for _ in range(len(self.addresses) + 2):
                target, stub = self.target, self._stub
                try:
                    return getattr(stub, method)(request, timeout=deadline, metadata=self._metadata)
                except grpc.RpcError as exc:
                    if error_reason(exc) == "not-leader":  # a follower: go where it says, at once
                        self._follow_leader(exc, target)
                        continue
                    if (
                        len(self.addresses) > 1
                        and getattr(exc, "code", lambda: None)() == grpc.StatusCode.UNAVAILABLE
                    ):
                        self._next(target)  # this replica is down: the retry goes to the next
                    raise translate_rpc_error(exc, target) from exc
            raise Unavailable(f"no leader among the masters {', '.join(self.addresses)}; retry shortly")

        try:
            return call_with_retry(once, self.retry, self._sleep, what=f"{method} to {self.address}")
        except Unavailable as exc:
            reason = self._tls_refusal()
            if reason is None:
                raise
            raise Unavailable(f"cannot reach the DomainOS master at {self.address}: {reason}") from exc

    def _tls_refusal(self) -> str | None:
        """Why the master refuses this client's TLS identity (gRPC only says "Socket closed")."""
        if self.tls is None:
            return None
        from domainos.security import diagnose_tls

        try:
            return diagnose_tls(self.address, self.tls)
        except (OSError, ValueError):  # unreadable files, an address ssl cannot dial
            return None

    def _stub_for(self, target: str) -> Any:
        with self._lock:
            channel = self._channels.get(target)
            if channel is None:
                channel = self._channels[target] = create_sync_channel(target, self.tls)
            return self._stub_class(channel)

    def _use(self, target: str) -> None:
        stub = self._stub_for(target)
        with self._lock:
            self.target, self._stub = target, stub

    def _follow_leader(self, exc: grpc.RpcError, target: str) -> None:
        hint = leader_hint(exc)
        if hint and hint != target:
            log.info("master %s is a follower; the leader is %s", target, hint)
            if hint not in self.addresses:
                self.addresses.append(hint)
            self._use(hint)
        else:
            self._next(target)
            self._sleep(0.2)  # no leader elected yet: a moment before the next replica

    def _next(self, target: str) -> None:
        i = self.addresses.index(target) if target in self.addresses else -1
        self._use(self.addresses[(i + 1) % len(self.addresses)])

    def close(self) -> None:
        """Close the channels (idempotent)."""
        if not self._closed:
            self._closed = True
            with self._lock:
                for channel in self._channels.values():
                    channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.address!r})"

    # -- jobs -------------------------------------------------------------------------------

    def submit(self, spec: SpecLike | None = None, *, request_id: str | None = None, **fields: Any) -> Job:
        """Validate ``spec`` locally and submit it; returns the accepted job.

        ``spec`` is a :class:`JobSpec`, a mapping, or YAML text (see :mod:`domainos.jobspec`).
        Keyword ``fields`` are spec fields as in the YAML form, replacing the same fields of a
        mapping or YAML ``spec`` (or making the whole spec)::

            client.submit(command=["python3", "train.py"], parallelism={"tp": 8, "pp": 2, "dp": 4},
                          model={"parameters": "7B"}, iteration_time="2s", gang={"timeout": "10m"})

        A retry (here or by the caller with the same ``request_id``) returns the first job.
        """
        from domainos.api.v1 import master_pb2

        job_spec: JobSpec = as_spec(spec, **fields)
        rid = request_id or new_request_id()
        request = master_pb2.SubmitJobRequest(spec=job_spec.to_proto(), request_id=rid)
        reply = self._call("SubmitJob", request)
        job = Job.from_proto(reply.job)
        log.info("submitted job %s (request %s, duplicate=%s)", job.job_id, rid, reply.duplicate)
        return job

    @overload
    def run(self, target: Sequence[str] | str, *, request_id: str | None = None, **fields: Any) -> Job: ...

    @overload
    def run(self, target: Callable[..., T], *args: Any, **options: Any) -> concurrent.futures.Future[T]: ...

    def run(self, target: Any, *args: Any, **kw: Any) -> Any:
        """Run a command as a job, or a Python function on the cluster.

        ``run(["python3", "train.py"], replicas=4, resources={"gpus": 0.25})`` submits a job
        (``fields`` as for :meth:`submit`) and returns it.

        ``run(fn, *args, cpus=1, gpus=1)`` ships ``fn`` (cloudpickle) to a DSDK worker started for
        it and returns a :class:`concurrent.futures.Future` of its result; an exception raised by
        ``fn`` comes back as :class:`dsdk.errors.RemoteError` with the remote traceback. Options:
        ``cpus``, ``gpus``, ``memory``, ``name``, ``retries``, ``affinity``, ``node_selector``,
        ``env``, ``priority``. The worker's job ends when the result is in.
        """
        if callable(target):
            options = {k: kw.pop(k) for k in list(kw) if k in _POOL_OPTIONS}
            pool = self.pool(1, **options)
            fut = pool.submit(target, *args, **kw)
            _close_when_done(pool, [fut])
            return fut
        if args:
            raise InvalidArgument("a command takes no positional arguments after it; put them in the command")
        cmd: list[str] | str = target if isinstance(target, str) else list(target)
        return self.submit(None, request_id=kw.pop("request_id", None), command=cmd, **kw)

    def map(
        self, fn: Callable[..., T], *iterables: Iterable[Any], workers: int | None = None, **options: Any
    ) -> list[concurrent.futures.Future[T]]:
        """``fn`` over the items on the cluster: a list of futures, in order.

        One job of ``workers`` long-lived workers (default: as many as the federation's free CPUs
        allow for ``cpus`` each, at most the number of items and 64) runs every call; a worker is
        never started per call. Options as for :meth:`run`. The job ends when every result is in.
        Use :func:`dsdk.gather` for the results.
        """
        items = [tuple(t) for t in zip(*iterables, strict=False)]
        if not items:
            return []
        unknown = sorted(set(options) - _POOL_OPTIONS)
        if unknown:
            raise InvalidArgument(
                f"unknown option; allowed: {', '.join(sorted(_POOL_OPTIONS))}", field=unknown[0]
            )
        n = workers if workers is not None else self._default_workers(len(items), options.get("cpus", 1))
        pool = self.pool(n, **options)
        futs = pool.map(fn, *zip(*items, strict=False))
        _close_when_done(pool, futs)
        return futs

    def pool(self, workers: int = 1, **options: Any) -> Pool:
        """A pool of ``workers`` long-lived DSDK workers (one job) to run many calls on: see
        :class:`dsdk.Pool`. Close it (or use ``with``) to end its job."""
        from ._driver import Pool

        return Pool(self, workers, **options)

    def _default_workers(self, items: int, cpus: Any) -> int:
        from domainos.resources import parse_cpus

        per = max(parse_cpus(cpus, "cpus"), 1)
        free = sum(
            sd.free.cpu_millis for region in self.domains() for sd in region.subdomains if sd.connected
        )
        return max(1, min(items, 64, free // per if free else 1))

    def job(self, job_id: str) -> Job:
        """The job with its tasks; :class:`~domainos.errors.NotFound` if the master does not know it."""
        from domainos.api.v1 import master_pb2

        return Job.from_proto(self._call("GetJob", master_pb2.GetJobRequest(job_id=_job_id(job_id))))

    def jobs(self, states: Iterable[JobState | str] | None = None, limit: int | None = None) -> list[Job]:
        """Jobs, newest first (tasks omitted), optionally filtered by state; follows pages."""
        from domainos.api.v1 import master_pb2

        if limit is not None and limit < 1:
            raise InvalidArgument(f"must be at least 1, got {limit}", field="limit")
        wanted = [s if isinstance(s, JobState) else JobState.parse(s) for s in states or ()]
        names = [f"JOB_STATE_{s.value}" for s in wanted]
        out: list[Job] = []
        token = ""
        while True:
            page = _LIST_PAGE if limit is None else min(_LIST_PAGE, limit - len(out))
            reply = self._call(
                "ListJobs", master_pb2.ListJobsRequest(states=names, limit=page, page_token=token)
            )
            out.extend(Job.from_proto(j) for j in reply.jobs)
            token = reply.next_page_token
            if not token or not reply.jobs or (limit is not None and len(out) >= limit):
                return out[:limit] if limit is not None else out

    def cancel(self, job_id: str, *, reason: str = "", request_id: str | None = None) -> Job:
        """Ask the master to cancel a job (idempotent); returns the job as it is now."""
        from domainos.api.v1 import master_pb2

        request = master_pb2.CancelJobRequest(
            job_id=_job_id(job_id), request_id=request_id or new_request_id(), reason=reason
        )
        return Job.from_proto(self._call("CancelJob", request))

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        poll: float = 0.2,
        on_update: Callable[[Job], None] | None = None,
        *,
        progress: bool | TextIO = False,
    ) -> Job:
        """Poll until the job is terminal and return it.

        ``on_update`` is called with the job whenever its state or a task's state changed;
        ``progress=True`` draws a progress bar of the job's tasks on standard error (or on the
        stream given). Raises :class:`WaitTimeout` (carrying the last seen job) after
        ``timeout`` seconds.
        """
        if poll <= 0:
            raise InvalidArgument(f"must be greater than 0, got {poll}", field="poll")
        if progress:
            bar = ProgressBar(sys.stderr if progress is True else progress)
            user = on_update

            def both(job: Job) -> None:
                bar.update(job)
                if user is not None:
                    user(job)

            try:
                return self.wait(job_id, timeout, poll, both)
            finally:
                bar.close()
        deadline = None if timeout is None else self._clock.monotonic() + timeout
        last_key: object = None
        while True:
            job = self.job(job_id)
            key = (job.state, job.message, tuple((t.index, t.attempt, t.state) for t in job.tasks))
            if key != last_key:
                last_key = key
                if on_update is not None:
                    on_update(job)
            if job.terminal:
                return job
            if deadline is not None:
                left = deadline - self._clock.monotonic()
                if left <= 0:
                    raise WaitTimeout(
                        f"job {job.job_id} did not finish within {timeout:g}s (state {job.state.value}); it keeps running",
                        job,
                    )
                self._sleep(min(poll, left))
            else:
                self._sleep(poll)

    def logs(self, job_id: str, task: int | None = None, stream: str = "stdout") -> list[TaskLog]:
        """Every task's output (or task ``task``'s), read page by page until the end of each file."""
        from domainos.api.v1 import master_pb2

        if stream not in ("stdout", "stderr"):
            raise InvalidArgument(f"expected stdout or stderr, got {stream!r}", field="stream")
        if task is not None and task < 0:
            raise InvalidArgument(f"must be 0 or more, got {task}", field="task")
        jid = _job_id(job_id)

        def read(index: int, offset: int) -> list[Any]:
            request = master_pb2.ReadLogsRequest(
                job_id=jid, task_index=index, stream=stream, offset=offset, max_bytes=LOG_PAGE_BYTES
            )
            return list(self._call("ReadLogs", request, timeout=max(self.timeout, 15.0)).logs)

        out: list[TaskLog] = []
        for first in read(-1 if task is None else task, 0):
            out.append(self._follow(first, read))
        out.sort(key=lambda t: t.task_index)
        return out

    def stream_logs(
        self, job_id: str, task: int | None = None, stream: str = "stdout", *, poll: float = 0.5
    ) -> Iterator[tuple[int, bytes]]:
        """Follow a job's output as it is written: ``(task index, bytes)`` chunks, until the job
        has finished and everything it wrote was read (as ``tail -f`` would, for every task)."""
        from domainos.api.v1 import master_pb2

        if stream not in ("stdout", "stderr"):
            raise InvalidArgument(f"expected stdout or stderr, got {stream!r}", field="stream")
        jid = _job_id(job_id)
        offsets: dict[tuple[int, int], int] = {}
        while True:
            job = self.job(jid)  # read first: what was written before it ended is read below
            request = master_pb2.ReadLogsRequest(
                job_id=jid, task_index=-1 if task is None else task, stream=stream, max_bytes=LOG_PAGE_BYTES
            )
            progressed = False
            for entry in self._call("ReadLogs", request, timeout=max(self.timeout, 15.0)).logs:
                key = (entry.task_index, entry.attempt)
                offset = offsets.get(key, 0)
                while True:
                    page = master_pb2.ReadLogsRequest(
                        job_id=jid,
                        task_index=entry.task_index,
                        stream=stream,
                        offset=offset,
                        max_bytes=LOG_PAGE_BYTES,
                    )
                    chunk = next(
                        (
                            t.chunk
                            for t in self._call("ReadLogs", page, timeout=max(self.timeout, 15.0)).logs
                            if t.task_index == entry.task_index
                        ),
                        None,
                    )
                    if chunk is None or chunk.error or not chunk.data:
                        break
                    offset += len(chunk.data)
                    progressed = True
                    yield entry.task_index, bytes(chunk.data)
                offsets[key] = offset
            if job.terminal and not progressed:
                return
            if not progressed:
                self._sleep(poll)

    def _follow(self, first: Any, read: Callable[[int, int], Sequence[Any]]) -> TaskLog:
        """Collect one task's pages until eof, an error, no progress, or MAX_LOG_BYTES."""
        chunks = [bytes(first.chunk.data)]
        chunk = first.chunk
        got = len(chunk.data)
        while not chunk.eof and not chunk.error and chunk.data and got < MAX_LOG_BYTES:
            nxt = [
                t
                for t in read(first.task_index, chunk.offset + len(chunk.data))
                if t.task_index == first.task_index
            ]
            if not nxt:
                break
            chunk = nxt[0].chunk
            chunks.append(bytes(chunk.data))
            got += len(chunk.data)
        return TaskLog(
            task_index=first.task_index,
            attempt=first.attempt,
            node_id=first.node_id,
            data=b"".join(chunks),
            size=chunk.size,
            eof=chunk.eof,
            error=chunk.error,
        )

    # -- the data plane: rendezvous, statistics, datasets ----------------------------------

    def publish_endpoint(self, job_id: str, endpoint: Endpoint) -> None:
        """Tell the master where a task of ``job_id`` serves (a task's own job credential may)."""
        from domainos.api.v1 import master_pb2

        request = master_pb2.PublishEndpointRequest(
            job_id=_job_id(job_id),
            endpoint=master_pb2.Endpoint(
                task_index=endpoint.task_index,
                attempt=endpoint.attempt,
                address=endpoint.address,
                kind=endpoint.kind,
                node_id=endpoint.node_id,
                subdomain_id=endpoint.subdomain_id,
                region=endpoint.region,
            ),
        )
        self._call("PublishEndpoint", request)

    def endpoints(
        self, job_id: str, *, kind: str = "", min_count: int = 0, wait: float = 0.0
    ) -> tuple[list[Endpoint], JobState]:
        """The job's published endpoints (current attempts), waiting up to ``wait`` seconds (at
        most 30 per call) for ``min_count`` of them; and the job's state."""
        from domainos.api.v1 import master_pb2

        request = master_pb2.ListEndpointsRequest(
            job_id=_job_id(job_id), kind=kind, min_count=min_count, wait_s=wait
        )
        reply = self._call("ListEndpoints", request, timeout=self.timeout + min(wait, 30.0))
        return [Endpoint.from_proto(e) for e in reply.endpoints], JobState.parse(
            master_pb2.JobState.Name(reply.state)
        )

    def report_stats(self, job_id: str, stats: JobStats) -> None:
        """Replace the job's data-plane totals (what ``domainctl job`` shows as bytes moved)."""
        from domainos.api.v1 import master_pb2

        self._call(
            "ReportJobStats", master_pb2.ReportJobStatsRequest(job_id=_job_id(job_id), stats=stats.to_proto())
        )

    def register_dataset(
        self, info: DatasetInfo, *, replace: bool = False, request_id: str | None = None
    ) -> DatasetInfo:
        """Record a dataset whose shards are stored (see :class:`dsdk.Dataset`)."""
        from domainos.api.v1 import master_pb2

        request = master_pb2.PutDatasetRequest(
            dataset=info.to_proto(), replace=replace, request_id=request_id or new_request_id()
        )
        return DatasetInfo.from_proto(self._call("PutDataset", request))

    def dataset(self, name: str) -> DatasetInfo:
        """A dataset's record (NotFound when there is none, or it is another tenant's)."""
        from domainos.api.v1 import master_pb2

        return DatasetInfo.from_proto(self._call("GetDataset", master_pb2.GetDatasetRequest(name=name)))

    def datasets(self, tenant: str | None = None) -> list[DatasetInfo]:
        """Datasets of the caller's tenant (admins: every tenant, or ``tenant``); shards omitted."""
        from domainos.api.v1 import master_pb2

        reply = self._call("ListDatasets", master_pb2.ListDatasetsRequest(tenant=tenant or ""))
        return [DatasetInfo.from_proto(d) for d in reply.datasets]

    def delete_dataset_record(self, name: str, *, request_id: str | None = None) -> DatasetInfo:
        """Remove a dataset from the registry (its shards stay on the nodes; see
        :meth:`dsdk.Dataset.delete`, which removes both)."""
        from domainos.api.v1 import master_pb2

        request = master_pb2.DeleteDatasetRequest(name=name, request_id=request_id or new_request_id())
        return DatasetInfo.from_proto(self._call("DeleteDataset", request))

    # -- the federation ---------------------------------------------------------------------

    def domains(self) -> list[Region]:
        """Regions and their sub-domains with the master's summary of each."""
        from domainos.api.v1 import master_pb2

        reply = self._call("ListDomains", master_pb2.ListDomainsRequest())
        return sorted((Region.from_proto(r) for r in reply.regions), key=lambda r: r.name)

    def list_nodes(self, subdomain: str | None = None) -> NodeList:
        """Nodes of every connected sub-domain (or one), plus the sub-domains that did not answer."""
        from domainos.api.v1 import master_pb2

        reply = self._call(
            "ListNodes",
            master_pb2.ListNodesRequest(subdomain_id=subdomain or ""),
            timeout=max(self.timeout, 10.0),
        )
        nodes = sorted(
            (Node.from_proto(n) for n in reply.nodes), key=lambda n: (n.region, n.subdomain_id, n.node_id)
        )
        return NodeList(nodes=tuple(nodes), unreachable=tuple(reply.unreachable))

    def cordon(self, node: str, *, reason: str = "", subdomain: str | None = None) -> Node:
        """No new tasks on ``node`` (``"<node>"`` or ``"<sub-domain>/<node>"``); running ones stay.
        Admins only."""
        return self._admin_node(node, "CORDON", reason, subdomain, 0.0)[0]

    def drain(
        self, node: str, *, reason: str = "", subdomain: str | None = None, grace_s: float = 0.0
    ) -> tuple[Node, int]:
        """Cordon ``node`` and move its tasks off (each is stopped with ``grace_s`` of SIGTERM
        and queued again elsewhere, no retry spent); returns the node and how many tasks move."""
        return self._admin_node(node, "DRAIN", reason, subdomain, grace_s)

    def uncordon(self, node: str, *, reason: str = "", subdomain: str | None = None) -> Node:
        """Put ``node`` back in service (refused while it reports itself UNHEALTHY)."""
        return self._admin_node(node, "UNCORDON", reason, subdomain, 0.0)[0]

    def _admin_node(
        self, node: str, action: str, reason: str, subdomain: str | None, grace_s: float
    ) -> tuple[Node, int]:
        from domainos.api.v1 import master_pb2

        reply = self._call(
            "AdminNode",
            master_pb2.AdminNodeRequest(
                node_id=node,
                subdomain_id=subdomain or "",
                action=f"NODE_ACTION_{action}",
                reason=reason,
                grace_s=grace_s,
            ),
            timeout=max(self.timeout, 10.0),
        )
        return Node.from_proto(reply.node), int(reply.tasks_stopped)

    def nodes(self, subdomain: str | None = None) -> list[Node]:
        """Nodes of every connected sub-domain, or only of ``subdomain``."""
        return list(self.list_nodes(subdomain).nodes)

    def info(self) -> ClusterInfo:
        """The master's identity, version, store, and federation-wide counts."""
        from domainos.api.v1 import master_pb2

        return ClusterInfo.from_proto(
            self._call("GetClusterInfo", master_pb2.GetClusterInfoRequest()), self.address
        )

    # -- identity, tenants, tokens, audit -------------------------------------------------------

    def whoami(self) -> Principal:
        """Who the master takes this client for: role, tenant, token id, certificate."""
        from domainos.api.v1 import master_pb2

        return Principal.from_proto(self._call("WhoAmI", master_pb2.WhoAmIRequest()))

    def create_tenant(
        self, name: str, *, labels: Mapping[str, str] | None = None, request_id: str | None = None
    ) -> Tenant:
        """Create a tenant (admins). A retry with the same ``request_id`` returns it again."""
        from domainos.api.v1 import master_pb2

        request = master_pb2.CreateTenantRequest(
            name=name, labels=dict(labels or {}), request_id=request_id or new_request_id()
        )
        return Tenant.from_proto(self._call("CreateTenant", request))

    def tenants(self) -> list[Tenant]:
        """Every tenant (admins)."""
        from domainos.api.v1 import master_pb2

        reply = self._call("ListTenants", master_pb2.ListTenantsRequest())
        return [Tenant.from_proto(t) for t in reply.tenants]

    def create_token(
        self,
        *,
        tenant: str = "",
        role: str = "user",
        ttl: float | str | None = None,
        description: str = "",
        request_id: str | None = None,
    ) -> NewToken:
        """Create a token (admins): ``role`` user (needs ``tenant``) or admin; ``ttl`` in seconds or
        ``"30d"``/``"12h"``/``"90m"`` (None: never expires). The secret is in the result only."""
        from domainos.api.v1 import master_pb2

        if role not in ROLE_NUMBERS:
            raise InvalidArgument(f"unknown role {role!r}; allowed: user, admin", field="role")
        request = master_pb2.CreateTokenRequest(
            tenant=tenant,
            role=f"ROLE_{role.upper()}",
            ttl_seconds=0.0 if ttl is None else parse_ttl(ttl),
            description=description,
            request_id=request_id or new_request_id(),
        )
        reply = self._call("CreateToken", request)
        return NewToken(info=TokenInfo.from_proto(reply.info), token=reply.token)

    def tokens(self, tenant: str | None = None, *, include_revoked: bool = False) -> list[TokenInfo]:
        """Tokens (admins), oldest first; revoked ones only with ``include_revoked``."""
        from domainos.api.v1 import master_pb2

        reply = self._call(
            "ListTokens", master_pb2.ListTokensRequest(tenant=tenant or "", include_revoked=include_revoked)
        )
        return [TokenInfo.from_proto(t) for t in reply.tokens]

    def revoke_token(self, token_id: str) -> TokenInfo:
        """Revoke a token (admins; idempotent). It stops working at once."""
        from domainos.api.v1 import master_pb2

        token_id = token_id.strip()
        if token_id.startswith("dos_"):  # a whole token was pasted: use its id, never send the secret
            token_id = token_id[4:16]
        reply = self._call(
            "RevokeToken", master_pb2.RevokeTokenRequest(token_id=token_id, request_id=new_request_id())
        )
        return TokenInfo.from_proto(reply)

    def audit(self, limit: int = 100, *, since: float | None = None) -> list[AuditEntry]:
        """The newest ``limit`` audit entries (admins), newest first; ``since``: unix seconds."""
        from domainos.api.v1 import master_pb2

        if limit < 1:
            raise InvalidArgument(f"must be at least 1, got {limit}", field="limit")
        out: list[AuditEntry] = []
        token = ""
        while len(out) < limit:
            request = master_pb2.ReadAuditRequest(
                limit=min(1000, limit - len(out)), page_token=token, since=since or 0.0
            )
            reply = self._call("ReadAudit", request)
            out.extend(AuditEntry.from_proto(e) for e in reply.entries)
            token = reply.next_page_token
            if not token or not reply.entries:
                break
        return out[:limit]

    # -- scheduling: quotas and explain ---------------------------------------------------------

    def set_quota(
        self,
        tenant: str,
        limits: Mapping[str, int],
        *,
        region: str = "*",
        subdomain: str = "*",
        request_id: str | None = None,
    ) -> Quota:
        """Set ``tenant``'s quota in ``region``/``subdomain`` (admins; ``"*"`` = all), replacing
        the limits of that scope. ``limits``: resource class -> amount (``cpu`` millicores,
        ``memory`` bytes, ``gpu:<model>`` or ``gpu:*`` whole GPUs); 0 allows none."""
        from domainos.api.v1 import master_pb2

        checked = _check_limits(limits)
        request = master_pb2.SetQuotaRequest(
            tenant=_required(tenant, "tenant"),
            region=region or "*",
            subdomain=subdomain or "*",
            limits=checked,
            request_id=request_id or new_request_id(),
        )
        return Quota.from_proto(self._call("SetQuota", request))

    def delete_quota(self, tenant: str, *, region: str = "*", subdomain: str = "*") -> Quota:
        """Remove ``tenant``'s quota in ``region``/``subdomain`` (admins); returns what it was."""
        from domainos.api.v1 import master_pb2

        request = master_pb2.DeleteQuotaRequest(
            tenant=_required(tenant, "tenant"),
            region=region or "*",
            subdomain=subdomain or "*",
            request_id=new_request_id(),
        )
        return Quota.from_proto(self._call("DeleteQuota", request))

    def quotas(self, tenant: str | None = None) -> list[Quota]:
        """Quotas with their usage: every tenant's (admins) or the caller's own tenant's (users)."""
        from domainos.api.v1 import master_pb2

        reply = self._call("ListQuotas", master_pb2.ListQuotasRequest(tenant=tenant or ""))
        return [Quota.from_proto(q) for q in reply.quotas]

    def explain(self, job_id: str) -> Explanation:
        """Why a job is where it is, or why it waits (quota, power, capacity, priority; with numbers)."""
        from domainos.api.v1 import master_pb2

        reply = self._call("ExplainJob", master_pb2.ExplainJobRequest(job_id=_job_id(job_id)))
        return Explanation.from_proto(reply)


def _required(value: str, fld: str) -> str:
    value = value.strip() if isinstance(value, str) else ""
    if not value:
        raise InvalidArgument("is required", field=fld)
    return value


def _check_limits(limits: Mapping[str, int]) -> dict[str, int]:
    """Amounts must be whole and non-negative; the classes themselves are checked by the master."""
    if not isinstance(limits, Mapping) or not limits:
        raise InvalidArgument("at least one resource class limit is required", field="limits")
    out: dict[str, int] = {}
    for cls, amount in limits.items():
        if not isinstance(cls, str) or not cls:
            raise InvalidArgument(f"expected a resource class name, got {cls!r}", field="limits")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
            raise InvalidArgument(f"expected a whole number >= 0, got {amount!r}", field=f"limits[{cls}]")
        out[cls] = amount
    return out


def _job_id(job_id: str) -> str:
    job_id = job_id.strip() if isinstance(job_id, str) else ""
    if not job_id:
        raise InvalidArgument("a job id is required", field="job_id")
    return job_id


def connect(
    address: str | None = None,
    *,
    timeout: float = 5.0,
    tls: TLSFiles | None = None,
    insecure: bool = False,
    home: str | os.PathLike[str] | None = None,
    token: str | None = None,
    retry: Retry | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Client:
    """Open a client to the master at ``address``.

    Without an address: ``$DOMAINOS_MASTER``, then the local federation started by
    ``domainctl up`` (``$DOMAINOS_HOME``/``~/.domainos`` ``local/cluster.json``); raises
    :class:`~domainos.errors.Unavailable` when none is found. The channel connects lazily:
    an unreachable master surfaces on the first call.

    Mutual TLS with ``tls``, else ``$DOMAINOS_TLS_CA``/``_CERT``/``_KEY``, else the local
    federation's files, else ``~/.domainos/pki`` (``domainctl certs init``); raises
    :class:`~domainos.errors.ConfigError` saying how to get them when none is found.
    ``insecure=True`` or ``DOMAINOS_INSECURE=1``: plaintext. ``home`` (a DomainOS home directory)
    replaces ``$DOMAINOS_HOME`` in both searches.

    The bearer token is ``token``, else ``$DOMAINOS_TOKEN``, else the credentials file
    (``<home>/credentials``, written by ``domainctl login``) for this address or its default.
    """
    return Client(
        resolve_address(address, home=home),
        timeout=timeout,
        tls=tls,
        insecure=insecure,
        home=home,
        token=token,
        retry=retry,
        sleep=sleep,
    )
