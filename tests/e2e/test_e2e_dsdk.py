"""The DSDK end to end on a real `domainctl up` federation (2 regions x 1 sub-domain x 2 agents):
functions as jobs, datasets stored on the agents, computation moved to the data, collectives across
sub-domains, the three compute models, the examples, and faults -- a node dying under a map, an
agent restarted under its shards. Asserts what a developer sees: results, errors, where things ran,
bytes moved, files on the nodes.
"""

from __future__ import annotations

import collections
import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import psutil  # type: ignore[import-untyped,unused-ignore]
import pytest
from e2e_helpers import ROOT
from test_e2e_jobs import Federation, wait_for

import dsdk
from dsdk import collective

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

AGENTS = {"east-1-n1", "east-1-n2", "west-1-n1", "west-1-n2"}


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    f = Federation(tmp_path_factory.mktemp("dsdk") / "home")
    f.up()
    try:
        yield f
    finally:
        f.down()


@pytest.fixture(scope="module")
def client(fed: Federation) -> Iterator[dsdk.Client]:
    with fed.client() as c:
        yield c


def shard_path(fed: Federation, node: str, dataset: str, shard: int) -> pathlib.Path:
    return fed.home / "local" / "agents" / node / "data" / "datasets" / dataset / str(shard) / "object.pkl"


def finished(client: dsdk.Client, job_id: str) -> dsdk.Job:
    return wait_for(lambda: (j := client.job(job_id)).terminal and j, 30, f"job {job_id} ends")


# -- functions as jobs ---------------------------------------------------------------------------------


def test_run_map_and_a_remote_traceback(client: dsdk.Client) -> None:
    def where(x: int) -> tuple[int, str, str]:
        ctx = dsdk.context()
        return x * x, ctx.node_id, ctx.job_id

    value, node, job_id = client.run(where, 12, cpus="250m").result(60)
    assert value == 144 and node in AGENTS
    assert finished(client, job_id).state == "SUCCEEDED"  # its worker's job ends with the result

    futs = client.map(lambda x: x + 1, range(300), workers=2, cpus="250m")
    assert dsdk.gather(futs, 60) == list(range(1, 301))

    def fails(n: int) -> None:
        raise ValueError(f"bad input {n}")

    with pytest.raises(dsdk.RemoteError) as err:
        client.run(fails, 7, cpus="250m").result(60)
    e = err.value
    assert (e.type_name, e.remote_message) == ("ValueError", "bad input 7")
    assert "in fails" in e.remote_traceback and "_worker.py" not in e.remote_traceback
    assert "ValueError: bad input 7" in str(e) and "raised on node" in str(e)


def test_a_pool_keeps_its_workers_and_reports_what_it_moved(client: dsdk.Client) -> None:
    with client.pool(2, cpus="250m", name="e2e-pool") as pool:
        workers = pool.wait_ready(timeout=60)
        assert len(workers) == 2 and {w.node_id for w in workers} <= AGENTS
        pids = dsdk.gather(pool.map(lambda _: os.getpid(), range(200)), 60)
        assert len(set(pids)) == 2  # two long-lived processes ran all 200 calls
        ranks = pool.run_on_all(lambda: dsdk.context().task_index)
        assert ranks == [0, 1]
        job_id = pool.job_id
    job = finished(client, job_id)
    assert job.state == "SUCCEEDED"
    assert job.stats.calls == 202 and job.stats.bytes_client > 0


# -- datasets --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def numbers(client: dsdk.Client) -> dsdk.Dataset:
    shards = [np.arange(i * 1000, (i + 1) * 1000, dtype=np.int64) for i in range(6)]
    return dsdk.Dataset.put("e2e-numbers", shards, replicas=2, client=client, replace=True)


def test_put_stores_two_copies_on_distinct_nodes_in_both_regions(
    fed: Federation, client: dsdk.Client, numbers: dsdk.Dataset
) -> None:
    assert numbers.num_shards == 6 and numbers.replicas == 2 and numbers.size_bytes > 6 * 8000
    regions = set()
    for s in numbers.shards:
        nodes = [r.node_id for r in s.replicas]
        assert len(set(nodes)) == 2 and set(nodes) <= AGENTS
        regions |= {r.region for r in s.replicas}
        for node in nodes:  # on the node's own storage, where its agent reports it
            assert shard_path(fed, node, "e2e-numbers", s.shard).exists()
    assert regions == {"east", "west"}
    assert dsdk.Dataset.get("e2e-numbers", client=client).info == numbers.info
    shown = fed.ctl("dataset", "show", "e2e-numbers", check=True).stdout
    assert "shards:         6" in shown and "copies:         2" in shown
    assert "e2e-numbers" in fed.ctl("dataset", "ls", check=True).stdout


def test_map_reduce_runs_where_the_data_is_and_moves_only_results(numbers: dsdk.Dataset) -> None:
    m = numbers.map(lambda a: int(a.sum()), cpus="250m")
    assert m.reduce(lambda x, y: x + y) == sum(range(6000))
    st = m.stats
    assert st is not None and st.calls >= 6 and st.local_calls == 6  # every shard where it lives
    # Only reduced values crossed: far less than the 48 KB of data, between domains one partial.
    assert 0 < st.bytes_between_domains < 4096
    assert st.bytes_between_nodes < numbers.size_bytes / 4
    firsts = numbers.map(lambda a: int(a[0]), cpus="250m").collect()
    assert firsts == [i * 1000 for i in range(6)]


def test_create_makes_shards_on_the_nodes(client: dsdk.Client) -> None:
    ds = dsdk.Dataset.create(
        "e2e-made", lambda i: np.full(4096, float(i)), 4, replicas=2, client=client, replace=True, cpus="250m"
    )
    made = dsdk.last_stats()
    assert made is not None and made.bytes_client < 64 * 1024  # the client sent a function, not data
    total = ds.map(lambda a: float(a.sum()), cpus="250m").reduce(lambda x, y: x + y)
    assert total == 4096 * (0 + 1 + 2 + 3)


def test_bad_input_is_refused_with_the_reason(fed: Federation, client: dsdk.Client) -> None:
    with pytest.raises(
        dsdk.errors.FailedPrecondition, match="replicas=5 needs 5 distinct nodes; the federation has 4"
    ):
        dsdk.Dataset.put("e2e-too-many", [1, 2], replicas=5, client=client)
    with pytest.raises(dsdk.errors.InvalidArgument, match="not a valid dataset name"):
        dsdk.Dataset.put("bad name!", [1], client=client)
    with pytest.raises(dsdk.errors.NotFound, match="no dataset 'nope'"):
        dsdk.Dataset.get("nope", client=client)
    with pytest.raises(dsdk.errors.FailedPrecondition, match="exists"):
        dsdk.Dataset.put("e2e-numbers", [1], client=client)  # taken, and not replaced
    with pytest.raises(dsdk.errors.InvalidArgument, match="expected a function"):
        dsdk.Dataset.get("e2e-numbers", client=client).map(42)  # type: ignore[arg-type]
    proc = fed.ctl("dataset", "show", "nope")
    assert proc.returncode == 1 and "no dataset 'nope'" in proc.stderr


# -- collectives -----------------------------------------------------------------------------------------


def test_collectives_ring_inside_sub_domains_tree_across(client: dsdk.Client) -> None:
    def step(n: int) -> dict[str, Any]:
        g = collective.group()
        total = g.allreduce(np.full(n, float(g.rank + 1)))
        biggest = g.allreduce(np.array([g.rank]), op="max")
        root = g.broadcast(np.arange(5) * 7 if g.rank == 2 else None, root=2)
        g.barrier()
        return {"rank": g.rank, "sum": total.tolist(), "max": int(biggest[0]), "root": root.tolist(),
                "ring": g.ring, "leaders": g.leaders}  # fmt: skip

    with client.pool(4, cpus="250m", distinct_nodes=True) as pool:
        pool.wait_ready(timeout=60)
        out = pool.run_on_all(step, 1000, timeout=120)
        stats = pool.stats()
    assert [o["rank"] for o in out] == [0, 1, 2, 3]
    for o in out:
        assert o["sum"] == [10.0] * 1000 and o["max"] == 3 and o["root"] == [0, 7, 14, 21, 28]
        assert len(o["ring"]) == 2 and len(o["leaders"]) == 2  # two sub-domains of two ranks
    # The leaders exchange across domains; the rings stay inside their sub-domain.
    assert stats.bytes_inter_node > 0 and stats.bytes_between_domains > 0


# -- the compute models ----------------------------------------------------------------------------------


def test_conduct_establish_contact(client: dsdk.Client) -> None:
    texts = ["a b a c", "b c d", "a a a", "d e"] * 2
    corpus = dsdk.Dataset.put("e2e-corpus", texts, replicas=2, client=client, replace=True)
    counts = dsdk.conduct(
        corpus, from_=lambda t: [(w, 1) for w in t.split()], to=lambda w, ones: sum(ones), cpus="250m"
    )
    assert counts == dict(collections.Counter(" ".join(texts).split()))

    letters = dsdk.establish(
        corpus,
        "e2e-letters",
        scan=lambda t: t.split(),
        sift=lambda w: ord(w) % 2,
        rise=sorted,
        num_shards=2,
        cpus="250m",
        replace=True,
    )
    rebuilt = letters.map(list, cpus="250m").collect()
    assert sorted(rebuilt[0] + rebuilt[1]) == sorted(" ".join(texts).split())
    assert all(ord(w) % 2 == i for i in (0, 1) for w in rebuilt[i])

    value = dsdk.contact(
        fork=lambda: list(range(8)),
        distant=lambda x: x * x,
        merge=sum,
        near=lambda s: s + 1,
        client=client,
        cpus="250m",
    )
    assert value == sum(x * x for x in range(8)) + 1


def test_examples_run_and_print_their_bytes(fed: Federation) -> None:
    env = {**fed.env, "PYTHONPATH": str(ROOT)}
    for script, says in (
        ("wordcount.py", "matches a local count: ok"),
        ("establish.py", "each user in exactly one shard: ok"),
        ("contact.py", "pi ~ 3.1"),
    ):
        proc = subprocess.run([sys.executable, str(ROOT / "examples" / script)], env=env, capture_output=True,
                              text=True, timeout=240)  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert says in proc.stdout and "bytes moved" in proc.stdout
    ckpt = fed.home / "train.npz"
    train = [sys.executable, str(ROOT / "examples" / "train_dp.py"), "--steps", "20", "--every", "10",
             "--checkpoint", str(ckpt)]  # fmt: skip
    first = subprocess.run(
        [*train, "--stop-after", "10"], env=env, capture_output=True, text=True, timeout=240
    )
    assert first.returncode == 0 and "stopped at step 10" in first.stdout, first.stdout + first.stderr
    assert ckpt.exists()
    second = subprocess.run(train, env=env, capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resumed from step 10" in second.stdout and "step   20" in second.stdout
    assert "bytes moved between nodes" in second.stdout
    intra = subprocess.run([sys.executable, str(ROOT / "examples" / "intra_node.py")], env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert intra.returncode == 0, intra.stdout + intra.stderr


def test_logs_follow_prints_output_as_it_comes(fed: Federation) -> None:
    job = fed.ctl("run", "--replicas", "2", "--cpus", "0.1", "--", "sh", "-c", "for i in 1 2 3; do echo n$i; sleep 0.2; done",
                  check=True).stdout.strip()  # fmt: skip
    out = fed.ctl("logs", "-f", job, check=True).stdout
    for task in (0, 1):
        assert [ln for ln in out.splitlines() if ln.startswith(f"[task {task}]")] == [
            f"[task {task}] n1",
            f"[task {task}] n2",
            f"[task {task}] n3",
        ]


# -- faults (destructive: last in this module) -------------------------------------------------------------


def _restart_agent(fed: Federation, node: str) -> None:
    comp = fed.component(f"agent-{node}")
    proc = psutil.Process(comp["pid"])
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    log = open(fed.home / "local" / "logs" / f"agent-{node}.restarted.log", "ab")  # noqa: SIM115
    new = subprocess.Popen([sys.executable, "-m", "node_agent", "--config", comp["config"]], stdout=log,
                           stderr=subprocess.STDOUT, env=fed.env, start_new_session=True)  # fmt: skip
    fed.extra_pids.append(new.pid)


def test_shards_survive_an_agent_restart(fed: Federation, client: dsdk.Client, numbers: dsdk.Dataset) -> None:
    node = numbers.shards[0].replicas[0].node_id
    _restart_agent(fed, node)
    wait_for(
        lambda: any(n.node_id == node and n.state == "ready" for n in client.nodes()), 60, f"{node} back"
    )
    assert shard_path(fed, node, "e2e-numbers", 0).exists()
    m = numbers.map(lambda a: int(a.sum()), cpus="250m")
    assert (
        m.reduce(lambda x, y: x + y) == sum(range(6000)) and m.stats is not None and m.stats.local_calls == 6
    )


def test_a_map_task_on_a_dead_node_reruns_on_another_copy(fed: Federation, client: dsdk.Client) -> None:
    ds = dsdk.Dataset.put(
        "e2e-fault", [np.full(100, i) for i in range(4)], replicas=2, client=client, replace=True
    )
    victim = ds.shards[0].replicas[0].node_id

    def slow_sum(a: np.ndarray) -> int:
        time.sleep(4.0)  # long enough for the node to die under it
        return int(a.sum())

    m = ds.map(slow_sum, cpus="250m")
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = m.reduce(lambda x, y: x + y)
        except BaseException as exc:  # reported below
            result["error"] = exc

    import threading

    t = threading.Thread(target=run)
    t.start()

    # The machine dies while its worker computes: its agent and every task process on it.
    def victim_worker() -> list[psutil.Process]:
        comp = fed.component(f"agent-{victim}")
        out = []
        for p in psutil.process_iter(["cmdline", "environ"]):
            with contextlib.suppress(psutil.Error):
                if (
                    "dsdk.worker" in " ".join(p.info["cmdline"] or [])
                    and (p.info["environ"] or {}).get("DOMAINOS_NODE_ID") == victim
                ):
                    out.append(p)
        return out if comp else []

    workers = wait_for(victim_worker, 60, f"a DSDK worker on {victim}")
    time.sleep(1.0)  # it has started computing
    agent_pids = [c["pid"] for c in fed.state["components"] if c["name"] == f"agent-{victim}"] + [
        pid
        for pid in fed.extra_pids
        if psutil.pid_exists(pid) and victim in " ".join(psutil.Process(pid).cmdline())
    ]
    for pid in agent_pids:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    for p in workers:
        with contextlib.suppress(psutil.Error):
            p.kill()
    t.join(240)
    assert "error" not in result, result.get("error")
    assert result["value"] == sum(i * 100 for i in range(4))  # every shard, the lost ones on their other copy
