"""Tasks run with least privilege: never as root, apart from the agent's files and from other tenants.

The runner is tested against real processes, as root (the only case in which the agent switches
users): a task runs as ``nobody`` (or its tenant's user), cannot read the agent's key, its state
directory or another task's files, can write its own output and home, and sees the job's
credential but nothing of the agent's environment.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import pwd
import shutil
import stat
import sys
import tempfile
from collections.abc import Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from domainos.config import TLSConfig, build
from domainos.errors import ConfigError
from domainos.model import TaskRef, TaskSpec, TaskState, TaskStatus
from domainos.resources import Resources
from domainos.security import CertFiles, Identity, init_ca, issue_files
from node_agent import AgentConfig, NodeAgent
from node_agent._agent import _lock_state_dir
from node_agent._runner import (
    DEFAULT_TASK_USER,
    TaskRunner,
    TaskUser,
    blocking_dir,
    resolve_task_user,
    user_may,
)

T = TypeVar("T")

ROOT_ONLY = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="the agent switches tasks to an unprivileged user only when it runs as root; run as root (CI does)",
)


# ---------------------------------------------------------------------------------------- helpers


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def task_python(user: TaskUser) -> str:
    """An interpreter ``user`` can run: this one, or a system python3 when this one lives under a
    directory the user cannot enter (a virtual environment linked into /root/.pyenv, say)."""
    for candidate in (sys.executable, shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")):
        if candidate:
            real = os.path.realpath(candidate)
            if blocking_dir(user, real) is None and user_may(user, os.stat(real), 1):
                return candidate
    pytest.skip(f"no Python interpreter that {user} can run (tried {sys.executable} and python3)")


def other_user(*not_uids: int) -> TaskUser:
    """A second unprivileged user (for a second tenant): ``daemon`` if there is one."""
    entries = sorted(pwd.getpwall(), key=lambda e: (e.pw_name != "daemon", e.pw_uid))
    for e in entries:
        if e.pw_uid not in (0, *not_uids) and e.pw_gid != 0:
            return resolve_task_user(e.pw_name)
    pytest.skip("this machine has no second unprivileged user to map a tenant to")


def spec(
    job_id: str,
    command: Sequence[str],
    *,
    index: int = 0,
    tenant: str = "",
    env: dict[str, str] | None = None,
) -> TaskSpec:
    return TaskSpec(
        ref=TaskRef(job_id, index, 0),
        command=tuple(command),
        env=env or {},
        resources=Resources(0, 64 * 2**20, 0, ""),
        tenant=tenant,
        job_name="job",
        replicas=1,
        master_address="127.0.0.1:7000",
    )


def runner_in(state_dir: Path, **kw: Any) -> TaskRunner:
    return TaskRunner(state_dir, node_id="n-priv", cores=[], apply_affinity=False, **kw)


async def finish(runner: TaskRunner, s: TaskSpec) -> TaskStatus:
    await runner.start(s)
    status = await runner.wait(s.ref)
    assert status is not None
    return status


def out(runner: TaskRunner, ref: TaskRef, stream: str = "stdout") -> str:
    return runner.read_log(ref, stream, max_bytes=1 << 20).data.decode()


def owner_and_mode(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, stat.S_IMODE(st.st_mode)


#: A task that tries to open (or list) each path of argv and prints what happened, as JSON.
PROBE = """
import json, os, sys
seen = {}
for path in sys.argv[1:]:
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            open(path, "rb").read()
        seen[path] = "read"
    except PermissionError:
        seen[path] = "denied"
    except OSError as exc:
        seen[path] = type(exc).__name__
print(json.dumps(seen))
"""


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can traverse (pytest's tmp_path is under a 0700 directory of root's):
    state directories made here let tasks reach their home by path, as under /var/lib."""
    base = Path(tempfile.mkdtemp(prefix="domainos-task-priv-", dir="/tmp" if os.path.isdir("/tmp") else None))
    base.chmod(0o711)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def nobody() -> TaskUser:
    return resolve_task_user(DEFAULT_TASK_USER)


# ------------------------------------------------------------------------------------------ tests


@ROOT_ONLY
def test_a_task_runs_as_nobody_never_root(open_dir: Path, nobody: TaskUser) -> None:
    py = task_python(nobody)
    code = "import os; print(os.getuid(), os.geteuid(), os.getgid(), os.getgroups(), oct(os.umask(0)))"

    async def main() -> None:
        runner = runner_in(open_dir / "state")
        assert runner.users is not None and runner.users.default == nobody
        ident = spec("job-id", ("id", "-u"))
        st = await finish(runner, ident)
        assert (st.state, st.exit_code) == (TaskState.SUCCEEDED, 0), out(runner, ident.ref, "stderr")
        uid = int(out(runner, ident.ref))
        assert uid != 0 and uid == nobody.uid == pwd.getpwnam("nobody").pw_uid
        # No supplementary group (root's included) and umask 077: what it creates is its own.
        creds = spec("job-creds", (py, "-c", code))
        assert (await finish(runner, creds)).state is TaskState.SUCCEEDED
        assert out(runner, creds.ref).split() == [
            str(nobody.uid),
            str(nobody.uid),
            str(nobody.gid),
            "[]",
            "0o77",
        ]
        runner.validate()

    run(main())


@ROOT_ONLY
def test_a_task_cannot_read_the_agents_key(open_dir: Path, nobody: TaskUser) -> None:
    py = task_python(nobody)
    state = open_dir / "state"
    pki = state / "pki"
    pki.mkdir(parents=True)
    pki.chmod(0o755)  # only the key's own mode protects it here
    key = pki / "agent-n1.key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"-----BEGIN PRIVATE KEY-----\nagent secret\n")
    os.close(fd)
    assert owner_and_mode(key) == (0, 0o600)
    lock = _lock_state_dir(state)  # as the agent holds it

    async def main() -> None:
        runner = runner_in(state, private_files=[str(key)])
        steal = spec("job-steal", (py, "-c", "import sys; print(open(sys.argv[1]).read())", str(key)))
        st = await finish(runner, steal)
        assert st.state is TaskState.FAILED and st.exit_code != 0
        stderr = out(runner, steal.ref, "stderr")
        assert "PermissionError" in stderr and "Permission denied" in stderr, stderr
        assert "agent secret" not in out(runner, steal.ref)
        # Nor can it list the state directory, read the agent's lock or its own task record.
        record = runner.task_dir(steal.ref) / "status.json"
        probe = spec("job-probe", (py, "-c", PROBE, str(state), str(state / "agent.lock"), str(record)))
        assert (await finish(runner, probe)).state is TaskState.SUCCEEDED
        assert json.loads(out(runner, probe.ref)) == {
            str(state): "denied",
            str(state / "agent.lock"): "denied",
            str(record): "denied",
        }

    try:
        run(main())
    finally:
        lock.close()
    assert owner_and_mode(state) == (0, 0o711)
    assert owner_and_mode(state / "tasks") == (0, 0o711)
    assert owner_and_mode(state / "agent.lock") == (0, 0o600)


@ROOT_ONLY
def test_the_runner_refuses_an_agent_key_task_users_can_read(open_dir: Path) -> None:
    key = open_dir / "agent.key"
    key.write_bytes(b"secret")
    key.chmod(0o644)
    with pytest.raises(ConfigError, match=r"agent's key .*agent\.key is readable by the task user nobody"):
        runner_in(open_dir / "state", private_files=[str(key)])
    key.chmod(0o600)
    runner_in(open_dir / "state", private_files=[str(key)])  # now it starts


@ROOT_ONLY
def test_a_task_cannot_read_another_tenants_task(open_dir: Path, nobody: TaskUser) -> None:
    daemon = other_user(nobody.uid)
    py = task_python(nobody)
    if task_python(daemon) != py:
        pytest.skip(f"{py} is not runnable by {daemon}")
    writer = (
        "import os\n"
        "print('secret output of tenant a')\n"
        "open(os.path.join(os.environ['HOME'], 'secret.txt'), 'w').write('secret file of tenant a')\n"
    )

    async def main() -> None:
        runner = runner_in(open_dir / "state", tenant_users={"b": daemon.name})
        a = spec("job-a", (py, "-c", writer), tenant="a", env={"DOMAINOS_TOKEN": "token-of-a"})
        assert (await finish(runner, a)).state is TaskState.SUCCEEDED, out(runner, a.ref, "stderr")
        a_dir = runner.task_dir(a.ref)
        targets = [
            runner.tasks_dir,
            a_dir,
            a_dir / "home",
            a_dir / "home" / "secret.txt",
            a_dir / "stdout",
            a_dir / "stderr",
            a_dir / "status.json",
        ]
        b = spec("job-b", (py, "-c", PROBE, *map(str, targets)), tenant="b")
        assert (await finish(runner, b)).state is TaskState.SUCCEEDED, out(runner, b.ref, "stderr")
        assert json.loads(out(runner, b.ref)) == {str(t): "denied" for t in targets}
        # A task of the same user cannot read the record either: it holds the job's credential.
        same = spec("job-c", (py, "-c", PROBE, str(a_dir / "status.json")), tenant="a")
        assert (await finish(runner, same)).state is TaskState.SUCCEEDED
        assert json.loads(out(runner, same.ref)) == {str(a_dir / "status.json"): "denied"}
        # The agent still reads every log.
        assert out(runner, a.ref) == "secret output of tenant a\n"

    run(main())


@ROOT_ONLY
def test_a_task_writes_its_output_and_its_home(open_dir: Path, nobody: TaskUser) -> None:
    py = task_python(nobody)
    script = (
        "import os, sys\n"
        "home = os.environ['HOME']\n"
        "assert os.getcwd() == home, (os.getcwd(), home)\n"
        "open(os.path.join(home, 'by-path.txt'), 'w').write('absolute')\n"
        "open('relative.txt', 'w').write('relative')\n"
        "os.mkdir(os.path.join(home, 'sub'))\n"
        "print('to stdout', flush=True)\n"
        "print('to stderr', file=sys.stderr, flush=True)\n"
        "open('/dev/stdout', 'a').write('reopened stdout\\n')\n"
    )

    async def main() -> None:
        runner = runner_in(open_dir / "state")
        s = spec("job-w", (py, "-c", script))
        st = await finish(runner, s)
        assert st.state is TaskState.SUCCEEDED, out(runner, s.ref, "stderr")
        assert out(runner, s.ref) == "to stdout\nreopened stdout\n"
        assert out(runner, s.ref, "stderr") == "to stderr\n"
        task_dir = runner.task_dir(s.ref)
        home = task_dir / "home"
        assert (home / "by-path.txt").read_text() == "absolute"
        assert (home / "relative.txt").read_text() == "relative"
        assert owner_and_mode(home / "by-path.txt") == (nobody.uid, 0o600)  # umask 077
        assert owner_and_mode(home) == (nobody.uid, 0o700)
        assert owner_and_mode(task_dir) == (0, 0o711)
        assert owner_and_mode(task_dir.parent) == (0, 0o711)
        assert owner_and_mode(task_dir / "stdout") == (nobody.uid, 0o600)
        assert owner_and_mode(task_dir / "status.json") == (0, 0o600)

    run(main())


@ROOT_ONLY
def test_tenant_users_map_a_tenant_to_another_uid(open_dir: Path, nobody: TaskUser) -> None:
    daemon = other_user(nobody.uid)

    async def main() -> None:
        runner = runner_in(open_dir / "state", tenant_users={"b": str(daemon.uid)})
        assert runner.users is not None and runner.users.for_tenant("b") == daemon
        ids = {}
        for i, tenant in enumerate(("a", "b", "")):
            s = spec("job-t", ("id", "-u"), index=i, tenant=tenant)
            assert (await finish(runner, s)).state is TaskState.SUCCEEDED
            ids[tenant] = int(out(runner, s.ref))
        assert ids == {"a": nobody.uid, "b": daemon.uid, "": nobody.uid}
        b_home = runner.task_dir(TaskRef("job-t", 1, 0)) / "home"
        assert owner_and_mode(b_home) == (daemon.uid, 0o700)

    run(main())


def agent_config(state_dir: Path, **kw: Any) -> AgentConfig:
    base: dict[str, Any] = {
        "node_id": "n-priv",
        "subdomains": ["127.0.0.1:1"],
        "state_dir": str(state_dir),
        "metrics_listen": "",
        "simulated": True,
        "insecure": True,
    }
    base.update(kw)
    return AgentConfig(**base)


@ROOT_ONLY
@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"task_user": "no-such-user-xyz"}, "task_user", "no user 'no-such-user-xyz' on this machine"),
        ({"task_user": "root"}, "task_user", "tasks never run as root"),
        ({"task_user": "0"}, "task_user", "tasks never run as root"),
        ({"task_user": " "}, "task_user", "a user name or uid is required"),
        ({"task_user": "4294967294999"}, "task_user", "no user '4294967294999'"),
        ({"tenant_users": {"t1": "nobody", "t2": "root"}}, "tenant_users.t2", "tasks never run as root"),
        ({"tenant_users": {"t1": "ghost-user"}}, "tenant_users.t1", "no user 'ghost-user'"),
        ({"tenant_users": {"": "nobody"}}, "tenant_users", "a tenant name is required"),
    ],
)
def test_config_refuses_unknown_and_root_users(
    tmp_path: Path, fields: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        agent_config(tmp_path / "state", **fields).validate()
    assert err.value.field == field
    # The runner (constructed by the agent) refuses the same.
    kw = {k: v for k, v in fields.items() if k in ("task_user", "tenant_users")}
    with pytest.raises(ConfigError):
        runner_in(tmp_path / "state", **kw)


@ROOT_ONLY
def test_config_refuses_a_user_whose_uid_or_group_is_root(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real = pwd.getpwnam

    def fake(name: str) -> pwd.struct_passwd:
        if name == "toor":  # another name for uid 0
            return pwd.struct_passwd(("toor", "x", 0, 0, "", "/", "/bin/sh"))
        if name == "wheelie":  # unprivileged uid, but primary group root
            return pwd.struct_passwd(("wheelie", "x", 4242, 0, "", "/", "/bin/sh"))
        return real(name)

    monkeypatch.setattr(pwd, "getpwnam", fake)
    with pytest.raises(ConfigError, match=r"'toor' is root \(uid 0\)") as err:
        agent_config(tmp_path, task_user="toor").validate()
    assert err.value.field == "task_user"
    with pytest.raises(ConfigError, match=r"primary group of 'wheelie' is root") as err:
        agent_config(tmp_path, tenant_users={"t": "wheelie"}).validate()
    assert err.value.field == "tenant_users.t"


@ROOT_ONLY
def test_config_from_yaml_names_the_field(tmp_path: Path) -> None:
    data = {
        "node_id": "n1",
        "subdomains": ["127.0.0.1:9"],
        "insecure": True,
        "task_user": "nobody",
        "tenant_users": {"acme": "65534", "evil": "root"},
    }
    with pytest.raises(ConfigError, match=r"^tenant_users\.evil: tasks never run as root"):
        build(AgentConfig, data)
    data["tenant_users"] = {"acme": "65534"}
    cfg = build(AgentConfig, data)
    assert cfg.task_user == "nobody" and cfg.tenant_users == {"acme": "65534"}
    with pytest.raises(ConfigError, match=r"tenant_users\.acme: expected a string"):
        build(AgentConfig, {**data, "tenant_users": {"acme": ["nobody"]}})


@ROOT_ONLY
def test_env_carries_the_job_token_and_nothing_of_the_agent(
    open_dir: Path, nobody: TaskUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    py = task_python(nobody)
    monkeypatch.setenv("DOMAINOS_TOKEN", "admin-token-of-the-agent")
    monkeypatch.setenv("DOMAINOS_TLS_KEY", "/etc/domainos/pki/agent-n1.key")
    monkeypatch.setenv("DOMAINOS_TLS_CERT", "/etc/domainos/pki/agent-n1.crt")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "agent-cloud-secret")
    job_env = {"DOMAINOS_TOKEN": "job-scoped-token", "GREETING": "hi", "LD_PRELOAD": ""}

    async def main() -> None:
        runner = runner_in(open_dir / "state")
        s = spec("job-env", (py, "-c", "import os, json; print(json.dumps(dict(os.environ)))"), env=job_env)
        assert (await finish(runner, s)).state is TaskState.SUCCEEDED, out(runner, s.ref, "stderr")
        env = json.loads(out(runner, s.ref))
        assert env["DOMAINOS_TOKEN"] == "job-scoped-token" and env["GREETING"] == "hi"
        assert env["HOME"] == str(runner.task_dir(s.ref) / "home")
        assert not any(k.startswith("DOMAINOS_TLS_") for k in env)
        assert "AWS_SECRET_ACCESS_KEY" not in env
        leaked = [k for k, v in env.items() if "agent" in v and k != "DOMAINOS_NODE_ID"]
        assert not leaked, leaked
        allowed = {"PATH", "HOME", "LANG", "LC_CTYPE", *job_env}
        assert {k for k in env if not k.startswith(("DOMAINOS_", "CUDA_", "NVIDIA_"))} <= allowed

    run(main())


def issue(pki: Path, role: str, ident: str) -> CertFiles:
    return issue_files(pki, Identity(role, ident))


@ROOT_ONLY
def test_task_client_tls_is_copied_for_the_task_never_the_agents(open_dir: Path, nobody: TaskUser) -> None:
    py = task_python(nobody)
    pki = open_dir / "pki"
    init_ca(pki)  # 0700: the task could not read these where they are
    agent = issue(pki, "agent", "n-priv")
    client = issue(pki, "client", "tasks")
    digest = (
        "import hashlib, json, os\n"
        "print(json.dumps({v: [os.environ[v], hashlib.sha256(open(os.environ[v], 'rb').read()).hexdigest()]"
        " for v in ('DOMAINOS_TLS_CA', 'DOMAINOS_TLS_CERT', 'DOMAINOS_TLS_KEY')}))\n"
    )

    async def main() -> None:
        runner = runner_in(open_dir / "state", task_client_tls=client, private_files=[agent.key])
        s = spec("job-tls", (py, "-c", digest), env={"DOMAINOS_TLS_KEY": "/job/override.key"})
        assert (await finish(runner, s)).state is TaskState.SUCCEEDED, out(runner, s.ref, "stderr")
        seen = json.loads(out(runner, s.ref))
        tls_dir = runner.task_dir(s.ref) / "tls"

        def sha(path: str) -> str:
            return hashlib.sha256(Path(path).read_bytes()).hexdigest()

        assert seen == {
            "DOMAINOS_TLS_CA": [str(tls_dir / "ca.crt"), sha(client.ca)],
            "DOMAINOS_TLS_CERT": [str(tls_dir / "client.crt"), sha(client.cert)],
            "DOMAINOS_TLS_KEY": [str(tls_dir / "client.key"), sha(client.key)],
        }
        assert sha(agent.key) not in {h for _, h in seen.values()}
        assert owner_and_mode(tls_dir / "client.key") == (nobody.uid, 0o400)

    run(main())
    with pytest.raises(
        ConfigError, match="names agent/n-priv; tasks get a certificate of role client"
    ) as err:
        runner_in(open_dir / "state2", task_client_tls=agent)
    assert err.value.field == "task_client_tls.cert"
    mixed = CertFiles(client.ca, client.cert, agent.key)
    with pytest.raises(ConfigError, match="is the agent's own key") as err:
        runner_in(open_dir / "state3", task_client_tls=mixed, private_files=[agent.key])
    assert err.value.field == "task_client_tls.key"
    own = TLSConfig(agent.ca, agent.cert, agent.key)
    with pytest.raises(ConfigError, match=r"is the agent's own cert \(tls\.cert\)") as err2:
        agent_config(open_dir / "s", insecure=False, tls=own, task_client_tls=own).validate()
    assert err2.value.field == "task_client_tls.cert"


@ROOT_ONLY
def test_the_agent_runs_tasks_as_configured_and_refuses_a_readable_key(
    open_dir: Path, nobody: TaskUser
) -> None:
    daemon = other_user(nobody.uid)
    pki = open_dir / "pki"
    init_ca(pki)
    agent_files = issue(pki, "agent", "n-priv")
    own = TLSConfig(agent_files.ca, agent_files.cert, agent_files.key)

    async def main() -> None:
        cfg = agent_config(open_dir / "state", insecure=False, tls=own, tenant_users={"b": daemon.name})
        cfg.validate()
        async with NodeAgent(cfg) as agent:
            users = agent.runner.users
            assert users is not None and users.default == nobody and users.for_tenant("b") == daemon
            assert owner_and_mode(open_dir / "state" / "agent.lock") == (0, 0o600)
            assert owner_and_mode(open_dir / "state") == (0, 0o711)
        # A key the task users could read (here: a world-readable key in a traversable directory).
        pki.chmod(0o755)
        Path(agent_files.key).chmod(0o644)
        with pytest.raises(ConfigError, match="readable by the task user nobody"):
            await NodeAgent(cfg).start()

    run(main())


@pytest.mark.skipif(os.geteuid() == 0, reason="checks the agent that is not root; this test process is root")
def test_without_root_tasks_run_as_the_agents_own_user(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        with caplog.at_level(logging.INFO, logger="node_agent._runner"):
            runner = runner_in(tmp_path / "state", tenant_users={"b": "whoever"})
        assert runner.users is None
        assert "tenants are not separated by uid" in caplog.text
        s = spec("job-me", ("id", "-u"), tenant="b")
        assert (await finish(runner, s)).state is TaskState.SUCCEEDED
        assert int(out(runner, s.ref)) == os.geteuid()
        assert owner_and_mode(tmp_path / "state") == (os.geteuid(), 0o700)

    run(main())
