"""A stand-in for the three daemons, so `domainctl up`/`down` can be tested without them.

Run as ``python -m fake_daemon_cli --config FILE --ready-file FILE --log-format json``. The kind
is read from the config the launcher wrote (``node_id`` -> agent, ``region`` -> sub-domain, else
the master). The master serves ListDomains from what the launcher left on disk: the sub-domains'
configs and the agents' ready files. An agent starts a "task" (a sleeping child in its own
session) and leaves it behind on SIGTERM, so tests can check that `down` cleans up after it.
``FAKE_DAEMON_CRASH=<node id>`` makes that agent exit 1 at startup.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Any

import yaml


def _write_ready(path: str, info: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({**info, "pid": os.getpid()}, f)
    os.replace(tmp, path)


def _wait_for_term() -> None:
    got = []
    signal.signal(signal.SIGTERM, lambda *_: got.append(1))
    while not got:
        signal.pause()


def run_agent(cfg: dict[str, Any], ready: str) -> int:
    if os.environ.get("FAKE_DAEMON_CRASH") == cfg["node_id"]:
        print(f"fake agent {cfg['node_id']}: crashing on purpose", flush=True)
        return 1
    task = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    _write_ready(ready, {"node_id": cfg["node_id"], "metrics": "127.0.0.1:1", "task_pid": task.pid})
    print(f"fake agent {cfg['node_id']} ready", flush=True)
    _wait_for_term()
    return 0


def run_subdomain(cfg: dict[str, Any], ready: str) -> int:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    _write_ready(ready, {"id": cfg["id"], "listen": f"127.0.0.1:{sock.getsockname()[1]}", "metrics": ""})
    _wait_for_term()
    return 0


def run_master(cfg: dict[str, Any], ready: str) -> int:
    import grpc.aio

    from domainos.api.v1 import common_pb2, master_pb2, master_pb2_grpc

    local = pathlib.Path(ready).resolve().parent.parent

    def view() -> Any:
        subs: dict[str, dict[str, Any]] = {}
        for f in (local / "config").glob("subdomain-*.yaml"):
            c = yaml.safe_load(f.read_text())
            subs[c["id"]] = {"region": c["region"], "ready": 0}
        addr_to_sd = {}
        for sid in subs:
            with contextlib.suppress(OSError, ValueError, KeyError):
                addr_to_sd[json.loads((local / "run" / f"subdomain-{sid}.json").read_text())["listen"]] = sid
        for f in (local / "config").glob("agent-*.yaml"):
            c = yaml.safe_load(f.read_text())
            if (local / "run" / f"agent-{c['node_id']}.json").exists():
                owner = addr_to_sd.get(c["subdomains"][0])
                if owner:
                    subs[owner]["ready"] += 1
        regions: dict[str, Any] = {}
        for sid, s in sorted(subs.items()):
            summary = common_pb2.SubDomainSummary(nodes_total=s["ready"], nodes_ready=s["ready"])
            regions.setdefault(s["region"], []).append(
                master_pb2.SubDomainView(
                    subdomain_id=sid,
                    region=s["region"],
                    connected=sid in addr_to_sd.values(),
                    summary=summary,
                )
            )
        return master_pb2.ListDomainsResponse(
            regions=[master_pb2.RegionView(name=r, subdomains=v) for r, v in sorted(regions.items())]
        )

    class Servicer(master_pb2_grpc.DomainControlServicer):  # type: ignore[misc]
        async def ListDomains(self, request: Any, context: Any) -> Any:
            return view()

        async def ListNodes(self, request: Any, context: Any) -> Any:
            return master_pb2.ListNodesResponse()

    async def main() -> None:
        server = grpc.aio.server()
        master_pb2_grpc.add_DomainControlServicer_to_server(Servicer(), server)
        if cfg.get("tls"):  # `domainctl up` runs mutual TLS unless --insecure
            from domainos.rpc import bind
            from domainos.security import CertFiles

            port = bind(server, "127.0.0.1:0", CertFiles(**cfg["tls"]))
        else:
            port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        _write_ready(ready, {"id": "master-1", "listen": f"127.0.0.1:{port}", "metrics": "127.0.0.1:2"})
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop(0)

    asyncio.run(main())
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--ready-file", required=True)
    p.add_argument("--log-format")
    ns = p.parse_args()
    cfg = yaml.safe_load(pathlib.Path(ns.config).read_text())
    print(f"{time.time():.3f} fake daemon starting with {cfg}", flush=True)
    if "node_id" in cfg:
        return run_agent(cfg, ns.ready_file)
    if "region" in cfg:
        return run_subdomain(cfg, ns.ready_file)
    return run_master(cfg, ns.ready_file)


if __name__ == "__main__":
    sys.exit(main())
