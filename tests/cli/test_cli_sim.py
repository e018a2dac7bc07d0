"""``domainctl sim``: flags, and a short run against a real sub-domain (insecure, then mutual TLS)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from domainctl.__main__ import main
from domainos.config import TLSConfig
from domainos.security import Identity, init_ca, issue_files
from sub_domain import SubDomainConfig, SubDomainManager


class _SubDomainThread:
    """A real sub-domain manager on its own event loop in a thread (the CLI runs its own loop)."""

    def __init__(self, **kw: Any) -> None:
        self.loop = asyncio.new_event_loop()
        cfg = SubDomainConfig(id="sd-1", region="east", listen="127.0.0.1:0", metrics_listen="", **kw)
        self.mgr = SubDomainManager(cfg)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> SubDomainManager:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.mgr.start(), self.loop).result(10)
        return self.mgr

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.mgr.shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def insecure_subdomain() -> Iterator[SubDomainManager]:
    with _SubDomainThread(insecure=True) as mgr:
        yield mgr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nodes", "3", "--insecure"], "--subdomain: at least one sub-domain address is required"),
        (["--subdomain", "nohost", "--nodes", "3", "--insecure"], "--subdomain"),
        (["--subdomain", "127.0.0.1:1", "--insecure"], "--nodes: is required"),
        (["--subdomain", "127.0.0.1:1", "--nodes", "0", "--insecure"], "--nodes: must be between 1"),
        (["--subdomain", "127.0.0.1:1", "--nodes", "3"], "--pki: choose the transport"),
        (
            ["--subdomain", "127.0.0.1:1", "--nodes", "3", "--insecure", "--kill-fraction", "1.5"],
            "--kill-fraction: must be between 0 and 1, got 1.5",
        ),
        (
            ["--subdomain", "127.0.0.1:1", "--nodes", "3", "--insecure", "--flap-fraction", "0.1"],
            "--period: is required with --flap-fraction",
        ),
        (
            ["--subdomain", "127.0.0.1:1", "--nodes", "3", "--insecure", "--at", "5"],
            "--at: needs --kill-fraction",
        ),
        (
            ["--subdomain", "127.0.0.1:1", "--nodes", "3", "--insecure", "--duration", "0"],
            "--duration: must be",
        ),
        (
            ["--subdomain", "127.0.0.1:1", "--nodes", "3", "--insecure", "--profile", "tpu"],
            "profile: unknown profile 'tpu'; known: a100x8, cpu, h100x8",
        ),
        (
            ["--subdomain", "127.0.0.1:1", "--nodes", "3", "--tls-cert", "x.crt"],
            "sim takes no --tls-* files",
        ),
        (
            ["--subdomain", "127.0.0.1:1", "--nodes", "3", "--pki", "/nonexistent"],
            "--pki: no CA in /nonexistent",
        ),
        (["--subdomain", "127.0.0.1:1", "--nodes", "three", "--insecure"], "invalid int value: 'three'"),
    ],
)
def test_bad_flags_exit_2_with_a_precise_message(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sim", *args]) == 2
    assert message in capsys.readouterr().err


def test_sim_registers_nodes_prints_progress_and_injects_faults(
    insecure_subdomain: SubDomainManager, capsys: pytest.CaptureFixture[str]
) -> None:
    mgr = insecure_subdomain
    args = ["sim", "--subdomain", mgr.listen_address, "--nodes", "20", "--profile", "cpu", "--insecure"]
    args += ["--seed", "3", "--kill-fraction", "0.1", "--at", "1", "--duration", "1.6"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "simulating 20 cpu nodes" in out
    assert "20/20 connected" in out, out
    assert "faults: killed 2, silenced 0, flapping 0" in out
    assert "18/20 connected" in out and "2 killed" in out, out
    assert "stopped after" in out
    assert mgr.registrations >= 20


def test_sim_over_mutual_tls_issues_a_certificate_per_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = tmp_path / "pki"
    init_ca(pki)
    files = issue_files(pki, Identity("subdomain", "sd-1"))
    tls = TLSConfig(ca=files.ca, cert=files.cert, key=files.key)
    with _SubDomainThread(tls=tls) as mgr:
        args = ["sim", "--subdomain", mgr.listen_address, "--nodes", "3", "--profile", "cpu"]
        assert main([*args, "--pki", str(pki), "--duration", "1.2"]) == 0
    out = capsys.readouterr().out
    assert "mutual TLS" in out and "3/3 connected" in out, out
    assert (pki / "agent-sim-0000.crt").exists()
