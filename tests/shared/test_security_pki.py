"""The cluster CA and component certificates; mutual TLS through domainos.rpc, with role checks,
refusal diagnosis and rotation without a restart."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import pathlib
import stat
from typing import Any

import grpc
import pytest

from domainos import rpc
from domainos.api.v1 import master_pb2, master_pb2_grpc
from domainos.errors import ConfigError, InvalidArgument, PermissionDenied, Unauthenticated
from domainos.security import (
    Identity,
    check_usable,
    diagnose_tls,
    identity_of,
    init_ca,
    issue_files,
    validity,
)


def test_certificates_name_role_and_id(tmp_path: pathlib.Path) -> None:
    init_ca(tmp_path)
    files = issue_files(tmp_path, Identity("agent", "node-7"), hosts=["127.0.0.1", "node-7.example"])
    assert identity_of(pathlib.Path(files.cert).read_bytes()) == Identity("agent", "node-7")
    assert stat.S_IMODE(os.stat(files.key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "ca.key").st_mode) == 0o600
    assert check_usable(files) == Identity("agent", "node-7")


def test_unknown_role_and_bad_id_are_refused(tmp_path: pathlib.Path) -> None:
    init_ca(tmp_path)
    with pytest.raises(InvalidArgument, match="unknown role 'root'"):
        issue_files(tmp_path, Identity("root", "x"))
    with pytest.raises(InvalidArgument, match="invalid id"):
        issue_files(tmp_path, Identity("agent", "a/b"))


def test_expired_own_certificate_is_refused_at_start_with_the_reason(tmp_path: pathlib.Path) -> None:
    init_ca(tmp_path)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    files = issue_files(tmp_path, Identity("master", "m"), days=1, not_before=past)
    with pytest.raises(ConfigError, match=r"expired at .* UTC; issue a new one"):
        check_usable(files)

    async def bind_expired() -> None:
        server = rpc.create_server()
        with pytest.raises(ConfigError, match="expired"):
            rpc.bind(server, "127.0.0.1:0", files)

    asyncio.run(bind_expired())


def test_missing_files_say_how_to_create_them(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="domainctl certs init"):
        check_usable(rpc.TLSFiles(str(tmp_path / "ca.crt"), str(tmp_path / "x.crt"), str(tmp_path / "x.key")))


class _Echo(master_pb2_grpc.DomainControlServicer):
    async def GetClusterInfo(self, request: Any, context: Any) -> Any:
        try:
            rpc.require_peer(context, "client")
        except (PermissionDenied, Unauthenticated) as err:
            await rpc.abort_with(context, err)
        return master_pb2.ClusterInfo(master_id=str(rpc.peer_identity(context)))


def _serve(server_files: rpc.TLSFiles, scenario: Any) -> None:
    async def main() -> None:
        server = rpc.create_server()
        master_pb2_grpc.add_DomainControlServicer_to_server(_Echo(), server)
        port = rpc.bind(server, "127.0.0.1:0", server_files)
        await server.start()
        try:
            await scenario(f"127.0.0.1:{port}")
        finally:
            await server.stop(None)

    asyncio.run(main())


async def _call(address: str, files: rpc.TLSFiles) -> str:
    async with rpc.create_channel(address, files) as channel:
        reply = await master_pb2_grpc.DomainControlStub(channel).GetClusterInfo(
            master_pb2.GetClusterInfoRequest(), timeout=5
        )
        return str(reply.master_id)


def test_mutual_tls_roles_foreign_ca_and_expiry(tmp_path: pathlib.Path) -> None:
    pki, other = tmp_path / "pki", tmp_path / "other"
    init_ca(pki)
    init_ca(other)
    server_files = issue_files(pki, Identity("master", "m1"))
    alice = issue_files(pki, Identity("client", "alice"))
    agent = issue_files(pki, Identity("agent", "n1"))
    eve = dataclasses.replace(issue_files(other, Identity("client", "eve")), ca=alice.ca)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    old = issue_files(pki, Identity("client", "old"), days=1, not_before=past)

    async def scenario(address: str) -> None:
        assert await _call(address, alice) == "client/alice"
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await _call(address, agent)
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "a agent certificate (agent/n1) cannot call this" in (exc.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            async with grpc.aio.secure_channel(
                address, grpc.ssl_channel_credentials(pathlib.Path(eve.ca).read_bytes(),
                pathlib.Path(eve.key).read_bytes(), pathlib.Path(eve.cert).read_bytes())
            ) as ch:  # fmt: skip
                await master_pb2_grpc.DomainControlStub(ch).GetClusterInfo(
                    master_pb2.GetClusterInfoRequest(), timeout=5
                )
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
        why = await asyncio.to_thread(diagnose_tls, address, eve)
        assert why is not None and "refused this client's certificate" in why
        assert "expired at" in (await asyncio.to_thread(diagnose_tls, address, old) or "")
        assert await asyncio.to_thread(diagnose_tls, address, alice) is None
        with pytest.raises(ConfigError, match="expired"):
            rpc.create_channel(address, old)

    _serve(server_files, scenario)


def test_rotation_without_restart(tmp_path: pathlib.Path) -> None:
    init_ca(tmp_path)
    server_files = issue_files(tmp_path, Identity("master", "m1"), days=30)
    alice = issue_files(tmp_path, Identity("client", "alice"))
    first_end = validity(pathlib.Path(server_files.cert).read_bytes())[1]

    async def scenario(address: str) -> None:
        assert await _call(address, alice) == "client/alice"
        # Re-issue the server's certificate in place; the running server serves it on new handshakes.
        issue_files(tmp_path, Identity("master", "m1"), days=90)
        import ssl

        def served_not_after() -> dt.datetime:
            host, _, port = address.rpartition(":")
            pem = ssl.get_server_certificate((host, int(port)))
            return validity(pem.encode())[1]

        assert await asyncio.to_thread(served_not_after) > first_end
        assert await _call(address, alice) == "client/alice"

    _serve(server_files, scenario)
