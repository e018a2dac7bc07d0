"""The Docker task runtime: a task attempt as one container on the node's Docker engine.

The agent talks to the engine through the official SDK (``docker``, sync) with one client per
agent and a bounded connection pool. Short calls (create, start, kill, inspect, remove) run on a
small executor of their own -- never on the event loop, and never on asyncio's default executor,
which the agent needs for other work. Each running container has one *log pump*: a thread that
follows the container's log stream (stdout and stderr, demultiplexed) and appends it to the task's
``stdout`` and ``stderr`` files, the same files process tasks write, so ``read_log`` and
``domainctl logs`` work unchanged. The stream ends when the container ends.

Every container carries labels naming its task (``io.domainos.job-id``, ``task-index``,
``attempt``), its node and the agent's state directory, and a name derived from them. Docker
keeps a container's output and exit code until it is removed, and the agent removes it only after
its end was recorded: a restarted agent finds a still-running container by the id in the task's
``status.json`` and follows it again under the same attempt (its log pump skips what the files
already hold), or records the exit code of one that ended meanwhile. Containers of this node
and state directory that no record names are removed.

Containers run with host networking (the engine may have no bridge), ``--init`` when the engine
has an init binary (signals reach the task as they reach a process task's group; a missing
program exits 127), the task user's uid:gid (as process tasks), ``no-new-privileges``, the task's
memory as the limit (no swap), its CPU as ``nano_cpus`` and its cores as a cpuset, and its GPUs as
a device request when the engine has the ``nvidia`` runtime.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import logging
import os
import struct
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Where the engine is when neither the config nor ``DOCKER_HOST`` says.
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
#: Connections the agent's client keeps at most (one per running container's log stream, plus
#: the short calls); more are opened when needed but not kept.
MAX_CONNECTIONS = 64
#: Threads running the short calls (create, start, kill, inspect, remove, pulls).
CALL_WORKERS = 4
#: Read timeout of the short calls (a pull is streamed, so this bounds its silences only).
CALL_TIMEOUT_S = 60.0
#: Labels on every task container.
LABEL_JOB = "io.domainos.job-id"
LABEL_INDEX = "io.domainos.task-index"
LABEL_ATTEMPT = "io.domainos.attempt"
LABEL_NODE = "io.domainos.node-id"
LABEL_STATE_DIR = "io.domainos.state-dir"
#: Where a container finds the task's home (its progress file), checkpoints, datasets, TLS files.
CONTAINER_HOME = "/domainos/home"
CONTAINER_CHECKPOINTS = "/domainos/checkpoints"
CONTAINER_DATASETS = "/domainos/datasets"
CONTAINER_TLS = "/domainos/tls"
#: Exit code of a task whose container the engine could not create or start (as ``docker run``).
ENGINE_FAILURE_CODE = 125
_HEADER = struct.Struct(">BxxxL")


def default_docker_host(environ: Mapping[str, str] | None = None) -> str:
    """``DOCKER_HOST``, else the standard socket."""
    environ = os.environ if environ is None else environ
    return environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


class DockerError(Exception):
    """The engine refused a call or could not be reached; the message says which and why."""


class ContainerStartError(DockerError):
    """A container could not be created or started; ``code`` is the task's exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """What the agent learned from the engine when it connected."""

    version: str
    api_version: str
    #: The engine has the ``nvidia`` runtime: GPUs can be given to containers.
    nvidia: bool
    #: The engine has an init binary (``--init``).
    init: bool
    cgroup_version: str


@dataclass(frozen=True, slots=True)
class ContainerEnd:
    """How a container ended (``docker inspect``'s ``State``)."""

    exit_code: int
    oom_killed: bool
    finished_at: float
    error: str = ""


@dataclass(frozen=True, slots=True)
class ContainerRun:
    """Everything :meth:`DockerRuntime.run` needs to create and start one task's container."""

    name: str
    image: str
    command: Sequence[str]
    env: Mapping[str, str]
    labels: Mapping[str, str]
    user: str
    memory_bytes: int
    cpu_millis: int
    cpuset: Sequence[int]
    gpu_indexes: Sequence[int]
    #: host path -> (container path, read-only)
    mounts: Mapping[str, tuple[str, bool]]


def _parse_time(text: str) -> float:
    """Unix time of an RFC 3339 timestamp with nanoseconds (Docker's); 0.0 when unreadable."""
    if not text or text.startswith("0001-"):
        return 0.0
    try:
        main, _, rest = text.rstrip("Z").partition(".")
        frac = "".join(c for c in rest if c.isdigit())[:6]
        stamp = datetime.datetime.fromisoformat(main).replace(tzinfo=datetime.UTC)
        return stamp.timestamp() + (int(frac.ljust(6, "0")) / 1e6 if frac else 0.0)
    except ValueError:
        return 0.0


def _explain(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    if explanation:
        return str(explanation)
    return str(exc) or type(exc).__name__


class LogPump:
    """A thread appending a container's log stream to the task's stdout and stderr files.

    It skips the bytes the files already hold (a restarted agent, a broken stream resumed): the
    engine replays a container's output from its start. ``done`` resolves (on ``loop``) when the
    stream ends: the container ended, the stream broke, or :meth:`close` was called.
    """

    def __init__(
        self,
        runtime: DockerRuntime,
        container_id: str,
        stdout: str,
        stderr: str,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._runtime = runtime
        self.container_id = container_id
        self._paths = {1: stdout, 2: stderr}
        self._loop = loop
        self.done: asyncio.Future[str] = loop.create_future()
        self._socket: Any = None
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._run, name=f"docker-logs-{container_id[:12]}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop following (the agent leaves the container running); the thread ends soon.

        Shuts the stream's socket down: its blocked read returns at once (closing the response
        from this thread would wait for the reader's lock), and the thread closes the rest.
        """
        with self._lock:
            self._closed = True
            sock = self._socket
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(2)  # SHUT_RDWR

    def _finish(self, error: str) -> None:
        def resolve() -> None:
            if not self.done.done():
                self.done.set_result(error)

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(resolve)

    def _run(self) -> None:
        error = ""
        try:
            self._follow()
        except Exception as exc:
            error = _explain(exc)
        self._finish("" if self._closed else error)

    def _follow(self) -> None:
        api = self._runtime.api
        files = {sid: open(path, "ab", buffering=0) for sid, path in self._paths.items()}  # noqa: SIM115
        try:
            skip = {sid: os.fstat(f.fileno()).st_size for sid, f in files.items()}
            response = None
            response = api._get(
                api._url("/containers/{0}/logs", self.container_id),
                params={"stdout": 1, "stderr": 1, "follow": 1},
                stream=True,
                timeout=None,  # a quiet task is not a dead stream
            )
            api._raise_for_status(response)
            with self._lock:
                raw_sock = api._get_raw_response_socket(response)  # a SocketIO (unix, tcp)
                sock = getattr(raw_sock, "_sock", raw_sock)
                self._socket = sock if hasattr(sock, "shutdown") else None
                if self._closed:
                    return
            raw = response.raw
            while True:
                header = _read_exact(raw, _HEADER.size)
                if len(header) < _HEADER.size:
                    return
                sid, size = _HEADER.unpack(header)
                data = _read_exact(raw, size)
                f = files.get(sid)
                if f is None:
                    continue
                if skip[sid]:
                    cut = min(skip[sid], len(data))
                    skip[sid] -= cut
                    data = data[cut:]
                if data:
                    f.write(data)
        finally:
            for f in files.values():
                f.close()
            with self._lock:
                self._socket = None
            if response is not None:
                with contextlib.suppress(Exception):
                    response.close()


def _read_exact(raw: Any, n: int) -> bytes:
    chunks: list[bytes] = []
    while n > 0:
        chunk = raw.read(n)
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


class DockerRuntime:
    """One agent's connection to its Docker engine. :meth:`connect` before anything else."""

    def __init__(
        self,
        host: str,
        *,
        max_connections: int = MAX_CONNECTIONS,
        workers: int = CALL_WORKERS,
    ) -> None:
        self.host = host
        self.info: EngineInfo | None = None
        self._max_connections = max_connections
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="docker-call"
        )
        self._client: Any = None

    @property
    def api(self) -> Any:
        """The SDK's low-level client (``docker.APIClient``)."""
        if self._client is None:
            raise DockerError(f"not connected to the Docker engine at {self.host}")
        return self._client.api

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on the runtime's executor."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def connect(self, timeout_s: float = 5.0) -> EngineInfo:
        """Reach the engine and learn what it offers; :class:`DockerError` saying why not."""
        try:
            return await asyncio.wait_for(self.call(self._connect), timeout_s)
        except TimeoutError:
            raise DockerError(
                f"the Docker engine at {self.host} did not answer within {timeout_s:.0f} s"
            ) from None

    def _connect(self) -> EngineInfo:
        try:
            import docker  # type: ignore[import-untyped,unused-ignore]
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise DockerError(f"the docker SDK is not installed ({exc})") from exc
        client = None
        try:
            client = docker.DockerClient(
                base_url=self.host,
                version="auto",  # the engine's API version (Debian's 20.10 speaks 1.41)
                timeout=int(CALL_TIMEOUT_S),
                max_pool_size=self._max_connections,
            )
            engine = client.api.info()
            version = client.api.version()
        except Exception as exc:
            if client is not None:  # its connection pool: nothing else would close it
                with contextlib.suppress(Exception):
                    client.close()
            raise DockerError(f"no Docker engine answers at {self.host}: {_explain(exc)}") from exc
        self._client = client
        self.info = EngineInfo(
            version=str(version.get("Version", "")),
            api_version=str(version.get("ApiVersion", "")),
            nvidia="nvidia" in (engine.get("Runtimes") or {}),
            init=bool(engine.get("InitBinary")),
            cgroup_version=str(engine.get("CgroupVersion", "")),
        )
        return self.info

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()

    # ------------------------------------------------------------------ containers

    async def run(self, spec: ContainerRun) -> str:
        """Create and start a container; its id. :class:`ContainerStartError` with the exit code."""
        try:
            return await self.call(self._run, spec)
        except DockerError:
            raise
        except Exception as exc:  # the engine went away mid-call (a connection error), ...
            raise ContainerStartError(
                ENGINE_FAILURE_CODE,
                f"the Docker engine at {self.host} failed to run a container of {spec.image}: {_explain(exc)}",
            ) from exc

    def _run(self, spec: ContainerRun) -> str:
        import docker

        api = self.api
        info = self.info
        assert info is not None
        if spec.gpu_indexes and not info.nvidia:
            raise ContainerStartError(
                ENGINE_FAILURE_CODE,
                f"the Docker engine at {self.host} has no nvidia runtime: a docker task with GPUs "
                "cannot run on this node",
            )
        self._ensure_image(spec.image)
        host_config = api.create_host_config(
            network_mode="host",
            init=info.init or None,
            mem_limit=spec.memory_bytes or None,
            memswap_limit=spec.memory_bytes or None,  # no swap beyond the limit
            nano_cpus=spec.cpu_millis * 1_000_000 or None,
            cpuset_cpus=",".join(str(c) for c in spec.cpuset) or None,
            binds={
                src: {"bind": dst, "mode": "ro" if ro else "rw"} for src, (dst, ro) in spec.mounts.items()
            },
            security_opt=["no-new-privileges"],
            device_requests=(
                [
                    docker.types.DeviceRequest(
                        device_ids=[str(i) for i in spec.gpu_indexes], capabilities=[["gpu"]]
                    )
                ]
                if spec.gpu_indexes
                else None
            ),
        )
        command = list(spec.command)
        kwargs: dict[str, Any] = {}
        if command:  # replaces the image's ENTRYPOINT and CMD; else the image's own run
            kwargs = {"entrypoint": command[:1], "command": command[1:]}
        try:
            created = self._create(spec, host_config, kwargs)
        except docker.errors.APIError as exc:
            raise ContainerStartError(
                ENGINE_FAILURE_CODE, f"cannot create a container of {spec.image}: {_explain(exc)}"
            ) from exc
        cid = str(created["Id"])
        try:
            api.start(cid)
        except docker.errors.APIError as exc:
            text = _explain(exc)
            with contextlib.suppress(docker.errors.APIError):
                api.remove_container(cid, force=True)
            program = command[0] if command else "the image's command"
            if "executable file not found" in text or "no such file or directory" in text:
                raise ContainerStartError(127, f"command not found in {spec.image}: {program}") from exc
            if "permission denied" in text:
                raise ContainerStartError(126, f"permission denied: {program} in {spec.image}") from exc
            raise ContainerStartError(
                ENGINE_FAILURE_CODE, f"cannot start a container of {spec.image}: {text}"
            ) from exc
        return cid

    def _create(self, spec: ContainerRun, host_config: Any, kwargs: Mapping[str, Any]) -> Any:
        import docker

        api = self.api

        def create() -> Any:
            return api.create_container(
                spec.image,
                name=spec.name,
                environment=dict(spec.env),
                labels=dict(spec.labels),
                user=spec.user or None,
                host_config=host_config,
                **kwargs,
            )

        try:
            return create()
        except docker.errors.APIError as exc:
            if exc.status_code != 409:
                raise
        # A container of this attempt left by an agent that died before recording it: replaced.
        log.warning("container %s exists (left by an earlier agent process); replacing it", spec.name)
        api.remove_container(spec.name, force=True)
        return create()

    def _ensure_image(self, image: str) -> None:
        import docker

        api = self.api
        try:
            api.inspect_image(image)
            return
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.APIError as exc:
            raise ContainerStartError(
                ENGINE_FAILURE_CODE, f"cannot inspect image {image}: {_explain(exc)}"
            ) from exc
        log.info("pulling image %s", image)
        repo, tag = _split_image(image)
        try:
            api.pull(repo, tag=tag)
        except docker.errors.APIError as exc:
            raise ContainerStartError(
                ENGINE_FAILURE_CODE,
                f"image {image} is not on this node's Docker engine and pulling it failed: {_explain(exc)}",
            ) from exc

    def follow_logs(self, container_id: str, stdout: str, stderr: str) -> LogPump:
        """Start appending the container's output to ``stdout`` and ``stderr`` (see :class:`LogPump`)."""
        return LogPump(self, container_id, stdout, stderr, asyncio.get_running_loop())

    async def inspect(self, container_id: str) -> dict[str, Any] | None:
        """``docker inspect``; None when there is no such container."""
        import docker

        def inspect() -> dict[str, Any] | None:
            try:
                return dict(self.api.inspect_container(container_id))
            except docker.errors.NotFound:
                return None
            except Exception as exc:
                raise DockerError(f"cannot inspect container {container_id[:12]}: {_explain(exc)}") from exc

        return await self.call(inspect)

    async def kill(self, container_id: str, signal: str) -> None:
        """Send ``signal`` (e.g. ``SIGTERM``) to the container; nothing when it is not running."""

        def kill() -> None:
            try:
                self.api.kill(container_id, signal=signal)
            except Exception as exc:  # not running (any more), gone, or the engine is unreachable
                log.debug("container %s: kill %s: %s", container_id[:12], signal, _explain(exc))

        await self.call(kill)

    async def remove(self, container_id: str, *, force: bool = False) -> None:
        """Remove the container; logged (not raised) when that fails."""
        import docker

        def remove() -> None:
            try:
                self.api.remove_container(container_id, force=force)
            except docker.errors.NotFound:
                pass
            except Exception as exc:
                log.warning("cannot remove container %s: %s", container_id[:12], _explain(exc))

        await self.call(remove)

    async def task_containers(self, node_id: str, state_dir: str) -> list[dict[str, Any]]:
        """Every container (running or not) labelled with this node and state directory."""
        filters = {"label": [f"{LABEL_NODE}={node_id}", f"{LABEL_STATE_DIR}={state_dir}"]}
        return list(await self.call(self.api.containers, all=True, filters=filters))


def container_end(inspected: Mapping[str, Any]) -> ContainerEnd | None:
    """How the container ended, from ``docker inspect``; None while it is still running."""
    state = inspected.get("State") or {}
    if state.get("Running") or state.get("Restarting") or state.get("Paused"):
        return None
    if state.get("Status") == "created":  # never started: no exit code of its own
        return ContainerEnd(ENGINE_FAILURE_CODE, False, 0.0, "its container was never started")
    return ContainerEnd(
        exit_code=int(state.get("ExitCode") or 0),
        oom_killed=bool(state.get("OOMKilled")),
        finished_at=_parse_time(str(state.get("FinishedAt") or "")),
        error=str(state.get("Error") or ""),
    )


def _split_image(image: str) -> tuple[str, str | None]:
    """(repository, tag or digest) for a pull."""
    if "@" in image:
        repo, _, digest = image.partition("@")
        return repo, digest
    head, sep, tail = image.rpartition(":")
    if sep and "/" not in tail:
        return head, tail
    return image, "latest"
