"""A private Docker engine for the deployment tier and the Docker task runtime's tests.

Nothing here touches a system-wide engine: ``dockerd`` runs with its own socket, data root and exec
root under one directory, with ``--bridge=none --iptables=false`` (containers use host networking;
these machines may only send traffic to loopback). Debian's ``docker.io`` provides ``dockerd``;
``install`` puts it (and docker-compose, debootstrap, busybox-static, tini, and the ops tests'
prometheus, chromium and chromium-driver) in place when it is missing.

    python scripts/docker_engine.py install            # apt-get install what is missing (root)
    python scripts/docker_engine.py start [--root DIR]  # prints DOCKER_HOST=unix://DIR/docker.sock
    python scripts/docker_engine.py stop [--root DIR]
    python scripts/docker_engine.py status [--root DIR]

From Python: ``engine = Engine(root); engine.start(); engine.host`` ... ``engine.stop()``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_ROOT = Path(os.environ.get("DOMAINOS_DOCKER_ROOT", "/var/tmp/domainos-docker"))
#: Debian packages the deployment tier needs (binary -> package).
PACKAGES = {
    "dockerd": "docker.io",
    "docker-compose": "docker-compose",
    "debootstrap": "debootstrap",
    "busybox": "busybox-static",
    # `init: true` in deploy/docker-compose.yml (tini as PID 1, reaping the agents' orphans)
    "docker-init": "tini",
    # the ops tests: promtool check rules/metrics and a real Prometheus; the console in Chromium
    "promtool": "prometheus",
    "chromium": "chromium",
    "chromedriver": "chromium-driver",
}


class EngineError(RuntimeError):
    """The engine could not be installed or started; the message says why."""


def missing_packages() -> list[str]:
    return [pkg for binary, pkg in PACKAGES.items() if shutil.which(binary) is None]


def install() -> None:
    """apt-get install the Debian packages that are missing (needs root and the Debian mirror)."""
    missing = missing_packages()
    if not missing:
        return
    if os.geteuid() != 0:
        raise EngineError(f"needs root to install {', '.join(missing)} (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *missing]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise EngineError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def docker_cli() -> str:
    """The Docker CLI to use: Debian's (API 1.41, matching its engine) before any other on PATH."""
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else (shutil.which("docker") or "docker")


class Engine:
    """One private ``dockerd`` rooted at ``root``; reuses one that is already running there."""

    def __init__(self, root: Path | str = DEFAULT_ROOT) -> None:
        self.root = Path(root)
        self.socket = self.root / "docker.sock"
        self.pidfile = self.root / "docker.pid"
        self.log = self.root / "dockerd.log"
        self.started_here = False

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host}

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def ping(self) -> bool:
        proc = subprocess.run(
            [docker_cli(), "-H", self.host, "version", "--format", "{{.Server.Version}}"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        return proc.returncode == 0

    def start(self, timeout: float = 60.0) -> Engine:
        if self.pid() is not None and self.socket.exists() and self.ping():
            return self
        if shutil.which("dockerd") is None:
            raise EngineError("dockerd is not installed: run `python scripts/docker_engine.py install`")
        if os.geteuid() != 0:
            raise EngineError("dockerd needs root here (no rootless setup)")
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        cmd = [
            "dockerd",
            f"--host={self.host}",
            f"--data-root={self.root / 'data'}",
            f"--exec-root={self.root / 'exec'}",
            f"--pidfile={self.pidfile}",
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
        ]
        with open(self.log, "ab") as log:
            subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.socket.exists() and self.ping():
                self.started_here = True
                return self
            time.sleep(0.5)
        tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        raise EngineError(f"dockerd did not answer on {self.socket} within {timeout:.0f} s:\n{tail}")

    def stop(self, timeout: float = 30.0) -> None:
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pid() is not None:
            time.sleep(0.3)
        if self.pid() is not None:
            os.kill(pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["install", "start", "stop", "status"])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help=f"default {DEFAULT_ROOT}")
    ns = parser.parse_args(argv)
    engine = Engine(ns.root)
    try:
        if ns.action == "install":
            missing = missing_packages()
            install()
            print("installed:", ", ".join(missing) if missing else "nothing (all present)")
        elif ns.action == "start":
            engine.start()
            print(f"DOCKER_HOST={engine.host}")
        elif ns.action == "stop":
            engine.stop()
        else:
            up = engine.pid() is not None and engine.ping()
            print(f"{'running' if up else 'stopped'} DOCKER_HOST={engine.host}")
            return 0 if up else 1
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
