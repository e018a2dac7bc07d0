"""Collective bandwidth of the DSDK against a raw socket copy on loopback.

``python -m bench.collective [--smoke] [--runs N] [--mib M]``

* **raw**: one process sends ``M`` MiB to another over a loopback TCP socket (``sendall`` of a
  numpy buffer, ``recv_into`` a preallocated one): the machine's ceiling for moving bytes between
  two processes.
* **DSDK wire**: the same bytes as one data-plane message (:mod:`dsdk._wire`: authenticated,
  pickle-5 out-of-band buffers) between two processes.
* **allreduce**: a pool of 2 and of 4 workers on distinct nodes of a real local federation (2
  regions x 1 sub-domain x 2 agents), ``collective.group().allreduce`` of ``M`` MiB of float32,
  timed inside the workers after a warm-up (median over the runs of the slowest rank). Reported
  as algorithm bandwidth (``size / time``) and bus bandwidth (``2 (n-1)/n x size / time``, what
  every rank sent), as NCCL's tests report them; and broadcast from rank 0.

Everything shares this machine's cores (2 here); on loopback "the network" is memory copies.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import pathlib
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
MIB = 2**20


def _raw_receiver(port: Any, nbytes: int, runs: int, ready: Any) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port.value = srv.getsockname()[1]
    ready.set()
    conn, _ = srv.accept()
    buf = bytearray(nbytes)
    view = memoryview(buf)
    for _ in range(runs):
        got = 0
        while got < nbytes:
            got += conn.recv_into(view[got:])
        conn.sendall(b"k")
    conn.close()


def raw_copy(nbytes: int, runs: int) -> list[float]:
    """Seconds per ``nbytes`` sent process to process over loopback TCP."""
    import numpy as np

    ctx = mp.get_context("spawn")
    port, ready = ctx.Value("i", 0), ctx.Event()
    p = ctx.Process(target=_raw_receiver, args=(port, nbytes, runs, ready))
    p.start()
    ready.wait(30)
    data = np.ones(nbytes // 4, dtype=np.float32)
    s = socket.create_connection(("127.0.0.1", port.value))
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        s.sendall(memoryview(data).cast("B"))
        s.recv(1)
        out.append(time.perf_counter() - t0)
    s.close()
    p.join(30)
    return out


def _wire_receiver(port: Any, runs: int, ready: Any) -> None:
    import asyncio

    from dsdk import _wire

    async def main() -> None:
        srv = _wire.listen("127.0.0.1")
        port.value = srv.getsockname()[1]
        ready.set()
        loop = asyncio.get_running_loop()
        sock, _ = await loop.sock_accept(srv)
        conn = _wire.Connection(sock)
        await _wire.server_handshake(conn, bytes(32))
        for _ in range(runs):
            await conn.recv()
            await conn.send(b"k")

    asyncio.run(main())


def wire_copy(nbytes: int, runs: int) -> list[float]:
    """Seconds per ``nbytes`` array as one DSDK data-plane message, process to process."""
    import asyncio

    import numpy as np

    from dsdk import _wire

    ctx = mp.get_context("spawn")
    port, ready = ctx.Value("i", 0), ctx.Event()
    p = ctx.Process(target=_wire_receiver, args=(port, runs, ready))
    p.start()
    ready.wait(30)
    data = np.ones(nbytes // 4, dtype=np.float32)

    async def main() -> list[float]:
        conn = await _wire.connect(f"127.0.0.1:{port.value}", bytes(32))
        out = []
        for _ in range(runs):
            t0 = time.perf_counter()
            await conn.send(data)
            await conn.recv()
            out.append(time.perf_counter() - t0)
        conn.close()
        return out

    times = asyncio.run(main())
    p.join(30)
    return times


def _collective_step(nbytes: int, runs: int) -> dict[str, Any]:
    """Runs on every worker: warm up, then time allreduce and broadcast."""
    import numpy as np

    from dsdk import collective

    g = collective.group()
    x = np.ones(nbytes // 4, dtype=np.float32)
    g.allreduce(np.ones(1024, dtype=np.float32))  # connections up
    g.barrier()
    ar, bc = [], []
    for _ in range(runs):
        g.barrier()
        t0 = time.perf_counter()
        y = g.allreduce(x)
        ar.append(time.perf_counter() - t0)
        assert float(y[0]) == g.size
        g.barrier()
        t0 = time.perf_counter()
        g.broadcast(x if g.rank == 0 else None, root=0)
        bc.append(time.perf_counter() - t0)
    return {"rank": g.rank, "allreduce_s": ar, "broadcast_s": bc, "ring": g.ring, "leaders": g.leaders}


def _federation(home: pathlib.Path) -> dict[str, Any]:
    env = {**os.environ, "DOMAINOS_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("DOMAINOS_MASTER", None)
    subprocess.run([sys.executable, "-m", "domainctl", "up", "--detach", "--home", str(home), "--timeout", "90"],
                   env=env, check=True, capture_output=True)  # fmt: skip
    state: dict[str, Any] = json.loads((home / "local" / "cluster.json").read_text())
    return state


def _stop(home: pathlib.Path) -> None:
    env = {**os.environ, "DOMAINOS_HOME": str(home)}
    subprocess.run(
        [sys.executable, "-m", "domainctl", "down", "--home", str(home)], env=env, capture_output=True
    )


def _med(xs: list[float]) -> float:
    return float(statistics.median(xs))


def run(*, smoke: bool, out: pathlib.Path, mib: int | None = None, runs: int | None = None) -> dict[str, Any]:
    import dsdk

    size_mib = mib or (4 if smoke else 64)
    n_runs = runs or (1 if smoke else 5)
    nbytes = size_mib * MIB
    results: dict[str, Any] = {
        "benchmark": "collective",
        "smoke": smoke,
        "size_mib": size_mib,
        "runs": n_runs,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }
    raw = raw_copy(nbytes, n_runs + 1)[1:]
    wire = wire_copy(nbytes, n_runs + 1)[1:]
    results["raw_socket"] = {"median_s": _med(raw), "mib_per_s": size_mib / _med(raw)}
    results["dsdk_wire"] = {"median_s": _med(wire), "mib_per_s": size_mib / _med(wire)}
    print(f"raw loopback socket copy    {size_mib} MiB: {size_mib / _med(raw):8.0f} MiB/s")
    print(f"DSDK wire (one message)     {size_mib} MiB: {size_mib / _med(wire):8.0f} MiB/s")
    with tempfile.TemporaryDirectory(prefix="domainos-coll-") as tmp:
        home = pathlib.Path(tmp) / "home"
        state = _federation(home)
        try:
            with dsdk.connect(state["master"], home=home) as client:
                for n in (2, 4):
                    with client.pool(n, cpus="250m", distinct_nodes=True, name=f"bench-coll-{n}") as pool:
                        pool.wait_ready(timeout=120)
                        per_rank = pool.run_on_all(_collective_step, nbytes, n_runs, timeout=600)
                        stats = pool.stats()
                    slowest_ar = [max(r["allreduce_s"][i] for r in per_rank) for i in range(n_runs)]
                    slowest_bc = [max(r["broadcast_s"][i] for r in per_rank) for i in range(n_runs)]
                    t_ar, t_bc = _med(slowest_ar), _med(slowest_bc)
                    row = {
                        "ranks": n,
                        "subdomains": len(per_rank[0]["leaders"]),
                        "allreduce_median_s": t_ar,
                        "allreduce_algbw_mib_s": size_mib / t_ar,
                        "allreduce_busbw_mib_s": 2 * (n - 1) / n * size_mib / t_ar,
                        "broadcast_median_s": t_bc,
                        "broadcast_mib_s": size_mib / t_bc,
                        "bytes_between_nodes": stats.bytes_between_nodes,
                        "bytes_between_domains": stats.bytes_between_domains,
                        "bytes_intra_node": stats.bytes_intra_node,
                    }
                    results[f"ranks_{n}"] = row
                    print(
                        f"allreduce {n} ranks ({row['subdomains']} sub-domains) {size_mib} MiB: {t_ar:6.3f} s, "
                        f"algbw {row['allreduce_algbw_mib_s']:7.0f} MiB/s, busbw {row['allreduce_busbw_mib_s']:7.0f} MiB/s; "
                        f"broadcast {row['broadcast_mib_s']:7.0f} MiB/s"
                    )
        finally:
            _stop(home)
    name = "collective-smoke.json" if smoke else "collective.json"
    (out / name).write_text(json.dumps(results, indent=2))
    print(f"wrote {out / name}")
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.collective", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("bench/results"))
    p.add_argument("--mib", type=int, help="array size in MiB (default 64; smoke 4)")
    p.add_argument("--runs", type=int, help="timed runs (default 5; smoke 1)")
    ns = p.parse_args(argv)
    ns.out.mkdir(parents=True, exist_ok=True)
    run(smoke=ns.smoke, out=ns.out, mib=ns.mib, runs=ns.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
