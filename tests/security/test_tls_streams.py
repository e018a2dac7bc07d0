"""Mutual TLS between the tiers, with real daemons in-process: who may open which stream, an
insecure mode that says so at every start, refusals that explain themselves, and certificate
rotation without restarting the agent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import subprocess
import sys
import time
from typing import Any

import grpc
import grpc.aio
import pytest
from tls_helpers import Pki, agent_config, fast_sleep, master_config, subdomain_config, tls, until

from domainos.api.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    common_pb2,
    master_pb2,
    master_pb2_grpc,
    subdomain_pb2,
    subdomain_pb2_grpc,
)
from domainos.config import INSECURE_WARNING, TLS_REQUIRED_MESSAGE, TLSConfig
from domainos.errors import ConfigError
from domainos.model import NodeInventory
from domainos.resources import Resources
from domainos.rpc import create_channel
from master_domain import MasterConfig, MasterDomain
from node_agent import AgentConfig, NodeAgent
from sub_domain import SubDomainConfig, SubDomainManager

pytestmark = pytest.mark.timeout(90)

EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]


@pytest.fixture
def pki(tmp_path: pathlib.Path) -> Pki:
    return Pki(tmp_path / "pki")


def _register(node_id: str) -> agent_pb2.AgentMessage:
    inventory = NodeInventory(
        node_id=node_id,
        allocatable=Resources(4000, 8 * 2**30, 0, ""),
        hostname=f"{node_id}.test",
        simulated=True,
        cpu_cores=4,
        memory_bytes=8 * 2**30,
    )
    return agent_pb2.AgentMessage(
        register=agent_pb2.Register(
            inventory=inventory.to_proto(),
            incarnation="inc-test",
            health=common_pb2.NodeHealth(status=common_pb2.HEALTH_STATUS_HEALTHY),
        )
    )


async def _first_answer(call: Any, first: Any) -> tuple[grpc.StatusCode, str, Any]:
    """Send ``first`` on a bidi stream; the status it ends with, or OK and the first reply."""
    try:
        await call.write(first)
        reply = await asyncio.wait_for(call.read(), 10)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or "", None
    finally:
        call.cancel()
    return grpc.StatusCode.OK, "", reply


async def _register_as(address: str, files: Any, node_id: str) -> tuple[grpc.StatusCode, str, Any]:
    channel = create_channel(address, files)
    try:
        call = agent_pb2_grpc.AgentGatewayStub(channel).Connect()
        return await _first_answer(call, _register(node_id))
    finally:
        await channel.close()


async def _hello_as(address: str, files: Any, subdomain_id: str) -> tuple[grpc.StatusCode, str, Any]:
    hello = subdomain_pb2.Hello(
        subdomain_id=subdomain_id,
        region="east",
        incarnation="inc-test",
        address="127.0.0.1:1",
        max_nodes=10,
        summary=common_pb2.SubDomainSummary(),
    )
    channel = create_channel(address, files)
    try:
        call = subdomain_pb2_grpc.SubDomainGatewayStub(channel).Connect()
        return await _first_answer(call, subdomain_pb2.SubDomainMessage(hello=hello))
    finally:
        await channel.close()


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: MasterConfig(**kw),
        lambda **kw: SubDomainConfig(id="sd-1", region="east", **kw),
        lambda **kw: AgentConfig(node_id="n1", subdomains=["127.0.0.1:7100"], **kw),
    ],
    ids=["master", "subdomain", "agent"],
)
def test_every_daemon_needs_tls_or_an_explicit_insecure(make: Any) -> None:
    with pytest.raises(ConfigError) as info:
        make().validate()
    assert str(info.value) == TLS_REQUIRED_MESSAGE
    assert "domainctl certs init" in str(info.value) and "insecure: true" in str(info.value)
    with pytest.raises(ConfigError, match="not both"):
        make(tls=TLSConfig("ca.crt", "c.crt", "c.key"), insecure=True).validate()
    with pytest.raises(ConfigError, match=r"^tls\.key: a PEM file path is required"):
        make(tls=TLSConfig("ca.crt", "c.crt", "")).validate()
    make(insecure=True).validate()
    make(tls=TLSConfig("ca.crt", "c.crt", "c.key")).validate()


@pytest.mark.parametrize("kind", ["master", "subdomain", "agent"])
def test_insecure_mode_logs_a_warning_at_every_start(
    kind: str, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    def make() -> Any:
        if kind == "master":
            return MasterDomain(MasterConfig(listen="127.0.0.1:0", metrics_listen="", insecure=True))
        if kind == "subdomain":
            return SubDomainManager(subdomain_config(None, "", insecure=True))
        return NodeAgent(agent_config(None, tmp_path, "n1", "127.0.0.1:9", insecure=True), sleep=fast_sleep)

    async def start_twice() -> None:
        for _ in range(2):
            daemon = make()
            await daemon.start()
            await daemon.shutdown()

    with caplog.at_level(logging.WARNING):
        asyncio.run(start_twice())
    warnings = [r for r in caplog.records if r.getMessage() == INSECURE_WARNING]
    assert len(warnings) == 2 and all(r.levelno == logging.WARNING for r in warnings)


def test_a_certificate_for_another_component_is_refused_at_start(pki: Pki, tmp_path: pathlib.Path) -> None:
    other = pki.files("agent", "node-x")
    agent = NodeAgent(agent_config(pki, tmp_path, "node-y", "127.0.0.1:9", files=other), sleep=fast_sleep)
    with pytest.raises(ConfigError) as info:
        asyncio.run(agent.start())
    text = str(info.value)
    assert "names agent/node-x" in text and "agent/node-y" in text
    assert "domainctl certs issue --role agent --id node-y" in text


def test_a_missing_or_expired_own_certificate_is_refused_at_start(pki: Pki, tmp_path: pathlib.Path) -> None:
    missing = TLSConfig(str(pki.dir / "ca.crt"), str(tmp_path / "none.crt"), str(tmp_path / "none.key"))
    master = MasterDomain(master_config(pki, tmp_path, tls=missing))
    with pytest.raises(
        ConfigError, match=r"none\.crt does not exist; create one with `domainctl certs init`"
    ):
        asyncio.run(master.start())
    expired = tls(pki.expired("subdomain", "sd-1"))
    sd = SubDomainManager(subdomain_config(pki, "", files=pki.existing("subdomain", "sd-1"), tls=expired))
    with pytest.raises(ConfigError, match=r"sd-1\.crt expired at .* UTC; issue a new one"):
        asyncio.run(sd.start())


# -- who may open which stream ----------------------------------------------------------------


def test_a_node_cannot_register_under_another_nodes_id(pki: Pki) -> None:
    async def main() -> None:
        async with SubDomainManager(subdomain_config(pki, "")) as sd:
            address = sd.listen_address
            code, details, _ = await _register_as(address, pki.files("agent", "node-x"), "node-y")
            assert code == grpc.StatusCode.PERMISSION_DENIED
            assert "node-x" in details and "node-y" in details, details
            assert sd.node_state("node-y") is None
            # The same certificate registers its own node.
            code, details, reply = await _register_as(address, pki.existing("agent", "node-x"), "node-x")
            assert code == grpc.StatusCode.OK, details
            assert reply.WhichOneof("body") == "registered" and reply.registered.node_id == "node-x"
            # Another role's certificate cannot register a node at all.
            code, details, _ = await _register_as(address, pki.files("client", "alice"), "alice")
            assert code == grpc.StatusCode.PERMISSION_DENIED and "needs a agent certificate" in details

    asyncio.run(main())


def test_an_agent_certificate_cannot_open_a_subdomain_stream_to_the_master(
    pki: Pki, tmp_path: pathlib.Path
) -> None:
    async def main() -> None:
        async with MasterDomain(master_config(pki, tmp_path)) as master:
            code, details, _ = await _hello_as(master.address, pki.files("agent", "n1"), "sd-1")
            assert code == grpc.StatusCode.PERMISSION_DENIED
            assert "agent/n1" in details and "subdomain certificate" in details, details
            # A sub-domain certificate speaks only for its own sub-domain.
            code, details, _ = await _hello_as(master.address, pki.files("subdomain", "sd-1"), "sd-2")
            assert code == grpc.StatusCode.PERMISSION_DENIED and "'sd-2'" in details and "'sd-1'" in details
            assert master.list_domains().regions == []
            code, details, reply = await _hello_as(master.address, pki.existing("subdomain", "sd-1"), "sd-1")
            assert code == grpc.StatusCode.OK and reply.WhichOneof("body") == "welcome", details

    asyncio.run(main())


def test_domain_control_takes_only_client_certificates(pki: Pki, tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with MasterDomain(master_config(pki, tmp_path)) as master:
            token = (tmp_path / "admin.token").read_text().strip()
            metadata = (("authorization", f"Bearer {token}"),)
            for role, ident, expected in [
                ("agent", "n1", grpc.StatusCode.PERMISSION_DENIED),
                ("subdomain", "sd-1", grpc.StatusCode.PERMISSION_DENIED),
                ("client", "alice", grpc.StatusCode.OK),
            ]:
                channel = create_channel(master.address, pki.files(role, ident))
                stub = master_pb2_grpc.DomainControlStub(channel)
                try:
                    await stub.GetClusterInfo(
                        master_pb2.GetClusterInfoRequest(), metadata=metadata, timeout=10
                    )
                    code, details = grpc.StatusCode.OK, ""
                except grpc.aio.AioRpcError as exc:
                    code, details = exc.code(), exc.details() or ""
                finally:
                    await channel.close()
                assert code == expected, (role, details)
                if expected != grpc.StatusCode.OK:
                    assert f"{role}/{ident}" in details and "needs a client certificate" in details

    asyncio.run(main())


def test_a_plaintext_peer_is_refused_by_a_tls_server(pki: Pki, tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with MasterDomain(master_config(pki, tmp_path)) as master:
            code, _details, _ = await _hello_as(master.address, None, "sd-1")
            assert code == grpc.StatusCode.UNAVAILABLE
            assert master.list_domains().regions == []

    asyncio.run(main())


# -- a whole federation over mutual TLS --------------------------------------------------------


def test_a_federation_runs_over_mutual_tls(pki: Pki, tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            master = await stack.enter_async_context(MasterDomain(master_config(pki, tmp_path)))
            sd = await stack.enter_async_context(SubDomainManager(subdomain_config(pki, master.address)))
            cfg = agent_config(pki, tmp_path, "n1", sd.listen_address)
            agent = await stack.enter_async_context(NodeAgent(cfg, sleep=fast_sleep))
            await until(lambda: agent.connected, what="the agent registered over TLS")
            await until(
                lambda: [
                    s
                    for r in master.list_domains().regions
                    for s in r.subdomains
                    if s.connected and s.summary.nodes_ready == 1
                ],
                what="the master to see sd-1 with one ready node",
            )

    asyncio.run(main())


def test_refusals_are_explained_once_in_the_log(
    pki: Pki, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An agent whose certificate comes from another CA keeps retrying; its log says why, once."""
    foreign = Pki(tmp_path / "foreign")
    theirs = foreign.files("agent", "n1")
    files = type(theirs)(ca=str(pki.dir / "ca.crt"), cert=theirs.cert, key=theirs.key)

    async def main() -> None:
        async with SubDomainManager(subdomain_config(pki, "")) as sd:
            cfg = agent_config(pki, tmp_path, "n1", sd.listen_address, files=files)
            async with NodeAgent(cfg, sleep=fast_sleep) as agent:
                await until(lambda: agent.reconnects_total >= 4, what="several reconnect attempts")
                assert not agent.connected and sd.node_state("n1") is None

    with caplog.at_level(logging.INFO):
        asyncio.run(main())
    refusals = [r.getMessage() for r in caplog.records if "TLS connection to sub-domain" in r.getMessage()]
    assert len(refusals) == 1, refusals
    # BoringSSL may close without sending its alert: then the sentence names the likely causes.
    assert "refused this client's certificate" in refusals[0] and "CA" in refusals[0], refusals[0]
    ended = [r.getMessage() for r in caplog.records if "stream to sub-domain at" in r.getMessage()]
    assert len(ended) >= 3 and all("refused this client's certificate" in m for m in ended)


def test_a_subdomain_says_why_the_master_refuses_it_once(
    pki: Pki, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its certificate is replaced by one from another CA while it runs; after the master restarts,
    every reconnect is refused, and its log says why once."""
    theirs = Pki(tmp_path / "foreign").files("subdomain", "sd-1")

    def refusals() -> list[str]:
        return [r.getMessage() for r in caplog.records if "TLS connection to master" in r.getMessage()]

    async def main() -> None:
        master = MasterDomain(master_config(pki, tmp_path))
        await master.start()
        port = master.address.rpartition(":")[2]
        try:
            async with SubDomainManager(subdomain_config(pki, master.address)) as sd:
                await until(lambda: sd.connected_to_master, what="sd-1 connected")
                mine = pki.existing("subdomain", "sd-1")
                for src, dst in ((theirs.key, mine.key), (theirs.cert, mine.cert)):
                    pathlib.Path(dst).write_bytes(pathlib.Path(src).read_bytes())
                await master.shutdown()
                master = MasterDomain(master_config(pki, tmp_path, listen=f"127.0.0.1:{port}"))
                await master.start()
                await until(
                    lambda: len([r for r in caplog.records if "stream to master" in r.getMessage()]) >= 4,
                    what="several failed reconnects",
                )
                assert not sd.connected_to_master and len(refusals()) == 1
        finally:
            await master.shutdown()

    with caplog.at_level(logging.INFO):
        asyncio.run(main())
    assert len(refusals()) == 1, refusals()
    assert "refused this client's certificate" in refusals()[0], refusals()


# -- rotation ------------------------------------------------------------------------------------


def test_rotated_certificates_are_used_on_reconnect_without_restarting_the_agent(
    pki: Pki, tmp_path: pathlib.Path
) -> None:
    """The agent's and the sub-domain's certificates expire a few seconds after the start; they
    are re-issued in place while everything runs. After the old ones expired, the sub-domain is
    restarted on the same port: the agent (same process, same object) registers again, which it
    can only do with the new certificate."""
    lifetime = 5.0
    sd_old, sd_expiry = pki.short_lived("subdomain", "sd-1", lifetime)
    agent_old, agent_expiry = pki.short_lived("agent", "n1", lifetime)

    async def main() -> None:
        async with MasterDomain(master_config(pki, tmp_path)) as master:
            sd = SubDomainManager(subdomain_config(pki, master.address, files=sd_old))
            await sd.start()
            port = int(sd.listen_address.rpartition(":")[2])
            agent = NodeAgent(
                agent_config(pki, tmp_path, "n1", sd.listen_address, files=agent_old), sleep=fast_sleep
            )
            try:
                await agent.start()
                await until(lambda: agent.connected and sd.connected_to_master, what="first registration")
                assert time.time() < min(sd_expiry, agent_expiry), "the federation started too slowly"
                first = agent.registrations_total
                # Rotate in place: same paths, new certificates valid for a year.
                assert pki.files("subdomain", "sd-1").cert == sd_old.cert
                assert pki.files("agent", "n1").cert == agent_old.cert
                await until(
                    lambda: time.time() > max(sd_expiry, agent_expiry) + 0.2, what="the old ones to expire"
                )
                await sd.shutdown()
                sd = SubDomainManager(
                    subdomain_config(pki, master.address, files=sd_old, listen=f"127.0.0.1:{port}")
                )
                await sd.start()
                await until(
                    lambda: agent.registrations_total > first and agent.connected,
                    timeout=20,
                    what="the agent to register again with its new certificate",
                )
                await until(lambda: sd.connected_to_master and sd.nodes_ready == 1, what="sd-1 back")
            finally:
                await agent.shutdown()
                await sd.shutdown()

    asyncio.run(main())


def test_a_running_server_serves_its_rotated_certificate(pki: Pki, tmp_path: pathlib.Path) -> None:
    """The master's own certificate expires while it runs; re-issued in place, new connections
    get the new one with no restart (an expired server certificate would fail every client)."""
    lifetime = 3.0
    old, expiry = pki.short_lived("master", "master-1", lifetime)

    async def main() -> None:
        async with MasterDomain(master_config(pki, tmp_path, tls=tls(old))) as master:
            pki.files("master", "master-1")
            await until(lambda: time.time() > expiry + 0.2, what="the old certificate to expire")
            code, details, reply = await _hello_as(master.address, pki.files("subdomain", "sd-1"), "sd-1")
            assert code == grpc.StatusCode.OK, details
            assert reply.WhichOneof("body") == "welcome"

    asyncio.run(main())


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("master_domain", []),
        ("sub_domain", ["--id", "east-1", "--region", "east"]),
        ("node_agent", ["--node-id", "n1", "--subdomain", "127.0.0.1:9", "--simulated"]),
    ],
)
def test_daemon_flags_name_the_tls_files_and_missing_ones_stop_the_start(
    module: str, args: list[str], pki: Pki, tmp_path: pathlib.Path
) -> None:
    root = pathlib.Path(__file__).resolve().parents[2]
    base = [sys.executable, "-m", module, *args, "--metrics-listen", "", "--log-format", "text"]
    if module == "node_agent":
        base += ["--state-dir", str(tmp_path / "state")]
    env = {**os.environ, "PYTHONPATH": str(root)}

    def run(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*base, *flags], capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path
        )

    missing = str(tmp_path / "nowhere.crt")
    proc = run("--tls-ca", str(pki.dir / "ca.crt"), "--tls-cert", missing, "--tls-key", missing)
    assert proc.returncode == 2, proc.stderr
    assert (
        f"error: certificate {missing} does not exist; create one with `domainctl certs init`" in proc.stderr
    )
    proc = run("--tls-ca", str(pki.dir / "ca.crt"))
    assert proc.returncode == 2 and "error: tls.cert: a PEM file path is required" in proc.stderr
    proc = run()
    assert proc.returncode == 2 and proc.stderr == f"error: {TLS_REQUIRED_MESSAGE}\n"
