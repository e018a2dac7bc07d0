from __future__ import annotations

import json
import pathlib

import grpc
import pytest
from fake_master_dsdk import FakeMaster

import dsdk
from domainos.clock import FakeClock
from domainos.errors import InvalidArgument, NotFound, Unavailable
from dsdk import Client, JobState, Retry, TaskState, WaitTimeout
from dsdk._address import NO_MASTER_MESSAGE, resolve_address, state_file


class Sleeps:
    """An injectable sleep that records the pauses (and moves a fake clock, if given)."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.pauses: list[float] = []
        self.clock = clock

    def __call__(self, seconds: float) -> None:
        self.pauses.append(seconds)
        if self.clock is not None:
            self.clock.advance(seconds)


def client(address: str, sleep: Sleeps | None = None, clock: FakeClock | None = None) -> Client:
    return Client(address, timeout=5.0, sleep=sleep or Sleeps(), clock=clock)


# -- address resolution -----------------------------------------------------------------------


def test_address_argument_wins_over_env_and_state_file(tmp_path: pathlib.Path) -> None:
    env = {"DOMAINOS_MASTER": "10.0.0.1:7070", "DOMAINOS_HOME": str(tmp_path)}
    assert resolve_address("127.0.0.1:9000", env=env) == "127.0.0.1:9000"
    assert resolve_address(None, env=env) == "10.0.0.1:7070"


def test_address_from_the_local_federation_state_file(tmp_path: pathlib.Path) -> None:
    env = {"DOMAINOS_HOME": str(tmp_path)}
    path = state_file(env=env)
    assert path == tmp_path / "local" / "cluster.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"master": "127.0.0.1:45678", "components": []}))
    assert resolve_address(env=env) == "127.0.0.1:45678"


def test_explicit_home_beats_env_home(tmp_path: pathlib.Path) -> None:
    other = tmp_path / "other"
    (other / "local").mkdir(parents=True)
    (other / "local" / "cluster.json").write_text(json.dumps({"master": "127.0.0.1:1111"}))
    assert resolve_address(env={"DOMAINOS_HOME": str(tmp_path)}, home=other) == "127.0.0.1:1111"


@pytest.mark.parametrize("content", [None, "not json", json.dumps({"components": []}), json.dumps([1])])
def test_no_master_anywhere_is_unavailable_with_the_hint(tmp_path: pathlib.Path, content: str | None) -> None:
    env = {"DOMAINOS_HOME": str(tmp_path)}
    if content is not None:
        state_file(env=env).parent.mkdir(parents=True)
        state_file(env=env).write_text(content)
    with pytest.raises(Unavailable) as info:
        resolve_address(env=env)
    assert str(info.value) == NO_MASTER_MESSAGE
    assert "domainctl up" in str(info.value) and "DOMAINOS_MASTER" in str(info.value)


@pytest.mark.parametrize("bad", ["localhost", "host:port", ":7070", "h:70000"])
def test_malformed_address_is_invalid_argument(bad: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        resolve_address(bad, env={})
    assert info.value.field == "master"


def test_connect_uses_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOMAINOS_MASTER", "127.0.0.1:7070")
    with dsdk.connect() as c:
        assert c.address == "127.0.0.1:7070"


# -- local validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "field", "fragment"),
    [
        ({"command": ["x"], "colour": "red"}, "colour", "unknown field"),
        ({"command": ["x"], "resources": {"cpus": -1}}, "resources.cpus", "greater than 0"),
        ({"command": ["x"], "resources": {"memory": "lots"}}, "resources.memory", "expected a size"),
        ({"command": []}, "command", "is required"),
        ("name: a\ncommand: [x\nreplicas: 2\n", None, "malformed YAML at <job spec>:"),
    ],
)
def test_bad_specs_are_refused_before_any_request(
    fake_master: tuple[FakeMaster, str], spec: object, field: str | None, fragment: str
) -> None:
    fake, address = fake_master
    with client(address) as c, pytest.raises(InvalidArgument) as info:
        c.submit(spec)  # type: ignore[arg-type]
    assert info.value.field == field
    assert fragment in str(info.value)
    assert fake.calls == []


def test_spec_file_errors_name_the_file_and_line(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("name: a\ncommand: [echo, hi]\nresources:\n  cpus: [1\n")
    with pytest.raises(InvalidArgument, match=r"malformed YAML at .*job\.yaml:\d+:\d+"):
        dsdk.load_spec_file(str(path))
    path.write_text("command: [echo]\nresources: {cpus: -2}\n")
    with pytest.raises(InvalidArgument) as info:
        dsdk.load_spec_file(str(path))
    assert str(info.value).startswith(f"{path}: resources.cpus: must be greater than 0")
    with pytest.raises(InvalidArgument, match="file not found"):
        dsdk.load_spec_file(str(tmp_path / "missing.yaml"))


# -- retries with the same request id ---------------------------------------------------------


def test_submit_retries_unavailable_with_the_same_request_id(fake_master: tuple[FakeMaster, str]) -> None:
    fake, address = fake_master
    fake.fail_next("SubmitJob", grpc.StatusCode.UNAVAILABLE, "master is electing a leader")
    sleeps = Sleeps()
    with client(address, sleeps) as c:
        job = c.submit({"command": ["echo", "hi"], "replicas": 2})
    assert len(fake.submit_request_ids) == 2
    assert fake.submit_request_ids[0] == fake.submit_request_ids[1] != ""
    assert job.request_id == fake.submit_request_ids[0]
    assert len(fake.jobs) == 1 and job.job_id in fake.jobs
    assert sleeps.pauses == [0.25]


def test_submit_gives_up_after_three_tries(fake_master: tuple[FakeMaster, str]) -> None:
    fake, address = fake_master
    fake.fail_next("SubmitJob", grpc.StatusCode.UNAVAILABLE, "down", times=3)
    sleeps = Sleeps()
    with (
        client(address, sleeps) as c,
        pytest.raises(Unavailable, match=f"cannot reach the DomainOS master at {address}"),
    ):
        c.submit({"command": ["echo"]})
    assert len(set(fake.submit_request_ids)) == 1 and len(fake.submit_request_ids) == 3
    assert sleeps.pauses == [0.25, 0.5]
    assert fake.jobs == {}


def test_caller_request_id_is_sent_and_a_duplicate_returns_the_first_job(
    fake_master: tuple[FakeMaster, str],
) -> None:
    fake, address = fake_master
    with client(address) as c:
        first = c.submit({"command": ["echo"]}, request_id="req-1")
        again = c.submit({"command": ["echo"]}, request_id="req-1")
    assert fake.submit_request_ids == ["req-1", "req-1"]
    assert first.job_id == again.job_id and len(fake.jobs) == 1


def test_other_errors_are_not_retried_and_keep_their_class(fake_master: tuple[FakeMaster, str]) -> None:
    fake, address = fake_master
    fake.fail_next(
        "SubmitJob", grpc.StatusCode.INVALID_ARGUMENT, "resources.cpus: 64 exceeds the largest node"
    )
    sleeps = Sleeps()
    with client(address, sleeps) as c, pytest.raises(InvalidArgument, match="exceeds the largest node"):
        c.submit({"command": ["echo"]})
    assert len(fake.submit_request_ids) == 1 and sleeps.pauses == []


def test_retry_policy_delays() -> None:
    assert list(Retry().delays()) == [0.25, 0.5]
    assert list(Retry(attempts=5, backoff=1, max_backoff=3).delays()) == [1, 2, 3, 3]
    assert list(Retry(attempts=1).delays()) == []
    with pytest.raises(ValueError):
        Retry(attempts=0)


def test_unreachable_master_is_unavailable_naming_the_address() -> None:
    with client("127.0.0.1:1") as c, pytest.raises(Unavailable) as info:
        c.jobs()
    assert str(info.value).startswith("cannot reach the DomainOS master at 127.0.0.1:1: ")
    assert info.value.exit_code == 3


# -- reads ------------------------------------------------------------------------------------


def test_unknown_job_is_not_found(fake_master: tuple[FakeMaster, str]) -> None:
    _fake, address = fake_master
    with client(address) as c, pytest.raises(NotFound, match="job j-nope not found"):
        c.job("j-nope")
    with client(address) as c, pytest.raises(InvalidArgument):
        c.job("  ")


def test_job_from_proto_keeps_protobuf_out(fake_master: tuple[FakeMaster, str]) -> None:
    _fake, address = fake_master
    with client(address) as c:
        submitted = c.submit(
            {
                "name": "sq",
                "command": ["python3", "-c", "print(1)"],
                "replicas": 3,
                "resources": {"cpus": 0.5, "memory": "128Mi"},
            }
        )
        job = c.job(submitted.job_id)
    assert submitted.state is JobState.PENDING and not submitted.terminal
    assert job.name == "sq" and job.replicas == 3 and job.command == ("python3", "-c", "print(1)")
    assert job.resources.cpu_millis == 500 and job.resources.memory_bytes == 128 * 2**20
    assert [t.index for t in job.tasks] == [0, 1, 2]
    assert all(t.state is TaskState.RUNNING and t.node_id for t in job.tasks)
    assert job.spec is not None and job.spec.replicas == 3
    assert job.task_counts() == {"RUNNING": 3}


def test_wait_reports_updates_and_returns_the_terminal_job(fake_master: tuple[FakeMaster, str]) -> None:
    fake, address = fake_master
    fake.steps_to_finish = 3
    sleeps = Sleeps()
    seen: list[str] = []
    with client(address, sleeps) as c:
        job = c.submit({"command": ["x"]})
        done = c.wait(job.job_id, poll=0.5, on_update=lambda j: seen.append(j.state.value))
    assert done.state is JobState.SUCCEEDED and done.succeeded
    assert seen == ["RUNNING", "SUCCEEDED"]  # the unchanged second RUNNING is not reported twice
    assert sleeps.pauses == [0.5, 0.5]


def test_wait_times_out_in_fake_time(fake_master: tuple[FakeMaster, str]) -> None:
    fake, address = fake_master
    fake.steps_to_finish = 10_000
    clock = FakeClock()
    sleeps = Sleeps(clock)
    with client(address, sleeps, clock) as c:
        job = c.submit({"command": ["x"]})
        with pytest.raises(WaitTimeout) as info:
            c.wait(job.job_id, timeout=1.0, poll=0.3)
    assert info.value.job.state is JobState.RUNNING
    assert f"job {job.job_id} did not finish within 1s" in str(info.value)
    assert info.value.exit_code == 1
    assert sum(sleeps.pauses) == pytest.approx(1.0)


def test_logs_follow_pages_until_eof(fake_master: tuple[FakeMaster, str]) -> None:
    fake, address = fake_master
    fake.page_bytes = 7
    with client(address) as c:
        job = c.submit({"command": ["x"], "replicas": 2})
        fake.logs[(job.job_id, 0, "stdout")] = b"line one\nline two\nline three\n"
        fake.logs[(job.job_id, 1, "stderr")] = b"oops\n"
        calls_before = fake.calls.count("ReadLogs")
        logs = c.logs(job.job_id)
        assert [lg.task_index for lg in logs] == [0, 1]
        assert logs[0].text == "line one\nline two\nline three\n" and logs[0].eof
        assert logs[1].text == "hello from task 1\n"
        assert fake.calls.count("ReadLogs") - calls_before > 2  # it really paged
        only = c.logs(job.job_id, task=1, stream="stderr")
        assert [(lg.task_index, lg.text) for lg in only] == [(1, "oops\n")]
        with pytest.raises(InvalidArgument):
            c.logs(job.job_id, stream="stdin")


def test_jobs_follow_pages_filter_states_and_limit(fake_master: tuple[FakeMaster, str]) -> None:
    fake, address = fake_master
    with client(address) as c:
        ids = [c.submit({"command": ["x"]}).job_id for _ in range(5)]
        c.wait(ids[0])
        everything = c.jobs()
        assert [j.job_id for j in everything] == sorted(ids, reverse=True)
        assert all(j.tasks == () for j in everything)
        assert [j.job_id for j in c.jobs(states=["succeeded"])] == [ids[0]]
        assert fake.last_list_jobs is not None and list(fake.last_list_jobs.states) == [4]
        assert len(c.jobs(limit=2)) == 2
        with pytest.raises(InvalidArgument, match="unknown job state 'sleeping'"):
            c.jobs(states=["sleeping"])


def test_cancel(fake_master: tuple[FakeMaster, str]) -> None:
    fake, address = fake_master
    with client(address) as c:
        job = c.submit({"command": ["sleep", "100"]})
        cancelled = c.cancel(job.job_id, reason="test")
    assert cancelled.state is JobState.CANCELLED and cancelled.terminal
    assert cancelled.message == "test"
    assert fake.calls.count("CancelJob") == 1


def test_domains_nodes_and_info(fake_master: tuple[FakeMaster, str]) -> None:
    fake, address = fake_master
    fake.unreachable = ["south-1"]
    with client(address) as c:
        regions = c.domains()
        nodes = c.list_nodes()
        only_west = c.nodes("west-1")
        info = c.info()
    assert [r.name for r in regions] == ["east", "west"]
    west = regions[1].subdomains[0]
    assert west.subdomain_id == "west-1" and west.connected and west.nodes_simulated == 2
    assert west.capacity.gpus == 16 and dict(west.gpus_by_model) == {"H100-SXM-80GB": 16}
    assert [n.node_id for n in nodes.nodes] == ["east-1-n1", "east-1-n2", "west-1-n1"]
    assert nodes.unreachable == ("south-1",)
    assert [n.node_id for n in only_west] == ["west-1-n1"]
    sim = only_west[0]
    assert sim.simulated and sim.gpus == 8 and sim.gpu_model == "H100-SXM-80GB" and sim.health == "HEALTHY"
    assert sim.free.cpu_millis == 3500 and sim.allocatable.memory_bytes == 16 * 2**30
    assert info.master_id == "master-1" and info.address == address and info.nodes_ready == 4


def test_errors_module_reexports_the_one_tree() -> None:
    from domainos import errors as shared
    from dsdk import errors

    assert errors.NotFound is shared.NotFound and errors.DomainOSError is shared.DomainOSError
    assert issubclass(errors.WaitTimeout, shared.DeadlineExceeded)
