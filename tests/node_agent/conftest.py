"""Every node-agent test also fails when asyncio reports a leak: a task destroyed while pending
(an orphan) or an exception nobody retrieved."""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Iterator

import pytest

# The repository root first: `master_domain` is the package, not the tests' directory of that name
# (the in-process federation test imports the master; plain `pytest` does not put the root first).
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(autouse=True)
def no_asyncio_leaks() -> Iterator[None]:
    handler = _Collect()
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    try:
        yield
        gc.collect()
    finally:
        logger.removeHandler(handler)
    assert not handler.messages, f"asyncio reported: {handler.messages}"


# ------------------------------------------------------------------ the Docker engine (docker marker)

#: The image the Docker runtime's tests use: busybox-static (``/bin/busybox``, and ``sh``, ``echo``,
#: ``sleep``, ``cat``, ``env``, ``ls``: the tests use no other applet by name).
TEST_IMAGE = "busybox:domainos-test"
#: Where the tests start an engine of their own when ``DOCKER_HOST`` does not answer.
TEST_ENGINE_ROOT = "/var/tmp/domainos-docker-test"
_APPLETS = ("sh", "echo", "sleep", "cat", "env", "ls", "id", "dd", "head", "true", "false", "test", "[")


def _answers(host: str) -> bool:
    import docker

    try:
        client = docker.DockerClient(base_url=host, version="auto", timeout=10)
    except Exception:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def _import_busybox(host: str) -> None:
    """``docker import`` a root file system of busybox-static as :data:`TEST_IMAGE`."""
    import io
    import tarfile

    import docker

    busybox = next((p for p in ("/usr/bin/busybox", "/bin/busybox") if os.path.exists(p)), None)
    if busybox is None:
        pytest.skip(
            f"{TEST_IMAGE} is missing and there is no busybox to build it from (apt install busybox-static)"
        )
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("bin", "tmp"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
            tar.addfile(info)
        tar.add(busybox, "bin/busybox")
        for applet in _APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
    client = docker.DockerClient(base_url=host, version="auto", timeout=60)
    try:
        repo, tag = TEST_IMAGE.split(":")
        client.api.import_image_from_data(buf.getvalue(), repository=repo, tag=tag)
    finally:
        client.close()


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[str]:
    """A Docker engine's address (``unix://...``) holding :data:`TEST_IMAGE`.

    ``DOCKER_HOST`` when it answers; else a private engine started here
    (``scripts/docker_engine.py``, data under :data:`TEST_ENGINE_ROOT`) and stopped at the end.
    Skips, saying why, where there is no ``dockerd`` or the tests do not run as root.
    """
    import shutil
    from pathlib import Path

    import docker

    started = None
    host = os.environ.get("DOCKER_HOST", "")
    if not host or not _answers(host):
        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
        from docker_engine import Engine, EngineError

        if shutil.which("dockerd") is None:
            pytest.skip("dockerd is not installed (python scripts/docker_engine.py install, as root)")
        if os.geteuid() != 0:
            pytest.skip("dockerd needs root here and the tests do not run as root")
        engine = Engine(TEST_ENGINE_ROOT)
        try:
            engine.start()
        except EngineError as exc:
            pytest.skip(f"cannot start a Docker engine: {exc}")
        started = engine if engine.started_here else None
        host = engine.host
    client = docker.DockerClient(base_url=host, version="auto", timeout=30)
    try:
        try:
            client.api.inspect_image(TEST_IMAGE)
        except docker.errors.ImageNotFound:
            _import_busybox(host)
    finally:
        client.close()
    try:
        yield host
    finally:
        if started is not None:
            started.stop()
