"""Where the master is: an explicit address, ``$DOMAINOS_MASTER``, or the local federation's state file.

The state file is written by ``domainctl up`` at ``<home>/local/cluster.json`` where home is
``$DOMAINOS_HOME`` or ``~/.domainos``.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping

from domainos.errors import InvalidArgument, Unavailable

ENV_MASTER = "DOMAINOS_MASTER"
ENV_HOME = "DOMAINOS_HOME"
NO_MASTER_MESSAGE = (
    "no DomainOS master found: pass --master ADDR, set DOMAINOS_MASTER, or start one with `domainctl up`"
)


def domainos_home(
    home: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> pathlib.Path:
    """The DomainOS home directory: ``home`` if given, else ``$DOMAINOS_HOME``, else ``~/.domainos``."""
    env = os.environ if env is None else env
    if home:
        return pathlib.Path(home).expanduser()
    if env.get(ENV_HOME):
        return pathlib.Path(env[ENV_HOME]).expanduser()
    return pathlib.Path("~/.domainos").expanduser()


def state_file(
    home: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> pathlib.Path:
    """Path of the local federation's state file (``<home>/local/cluster.json``)."""
    return domainos_home(home, env) / "local" / "cluster.json"


def check_master_address(address: str) -> str:
    """Accept ``host:port`` (or a gRPC target with a scheme such as ``dns:///host:port``)."""
    address = address.strip()
    if "://" in address or address.startswith("unix:"):
        return address
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise InvalidArgument(f"expected HOST:PORT, got {address!r}", field="master")
    return address


def _from_state_file(path: pathlib.Path) -> str | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    master = data.get("master") if isinstance(data, dict) else None
    return master if isinstance(master, str) and master else None


def resolve_address(
    address: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    home: str | os.PathLike[str] | None = None,
) -> str:
    """Find the master: argument, then ``$DOMAINOS_MASTER``, then the local federation's state file.

    Raises :class:`~domainos.errors.Unavailable` when none of them names one.
    """
    env = os.environ if env is None else env
    if address:
        return check_master_address(address)
    if env.get(ENV_MASTER):
        return check_master_address(env[ENV_MASTER])
    found = _from_state_file(state_file(home, env))
    if found:
        return found
    raise Unavailable(NO_MASTER_MESSAGE)
