"""Where the master is and how to reach it: its address, and this client's TLS files.

Address: an explicit one, ``$DOMAINOS_MASTER``, or the local federation's state file, written by
``domainctl up`` at ``<home>/local/cluster.json`` where home is ``$DOMAINOS_HOME`` or ``~/.domainos``.

TLS files (mutual TLS is the default; plaintext only with ``insecure=True`` / ``DOMAINOS_INSECURE=1``):
the ``tls`` argument, ``$DOMAINOS_TLS_CA`` / ``$DOMAINOS_TLS_CERT`` / ``$DOMAINOS_TLS_KEY``, the state
file's ``tls`` entry (when it describes the master being called), then ``<home>/pki/ca.crt`` and
``client-<user>.crt/.key`` (made by ``domainctl certs init``).
"""

from __future__ import annotations

import getpass
import json
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any

from domainos.errors import ConfigError, InvalidArgument, Unavailable
from domainos.security import CertFiles

ENV_MASTER = "DOMAINOS_MASTER"
ENV_HOME = "DOMAINOS_HOME"
ENV_TLS_CA = "DOMAINOS_TLS_CA"
ENV_TLS_CERT = "DOMAINOS_TLS_CERT"
ENV_TLS_KEY = "DOMAINOS_TLS_KEY"
ENV_INSECURE = "DOMAINOS_INSECURE"
NO_MASTER_MESSAGE = (
    "no DomainOS master found: pass --master ADDR, set DOMAINOS_MASTER, or start one with `domainctl up`"
)
NO_TLS_MESSAGE = (
    "no TLS client certificate found for the DomainOS master{where}: pass --tls-ca/--tls-cert/--tls-key "
    "(or set DOMAINOS_TLS_CA, DOMAINOS_TLS_CERT and DOMAINOS_TLS_KEY), start a local federation with "
    "`domainctl up` (it creates them), or create a CA and a client certificate with `domainctl certs "
    "init` (looked for in {pki}); plaintext only with --insecure or DOMAINOS_INSECURE=1"
)
_TRUE = ("1", "true", "yes", "on")


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


def pki_dir(home: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> pathlib.Path:
    """The client's own PKI directory (``<home>/pki``), made by ``domainctl certs init``."""
    return domainos_home(home, env) / "pki"


def default_client_id() -> str:
    """The id of this user's client certificate (``client-<id>.crt``): the login name, made safe."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = ""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", user).strip("-.") or "user"


def check_master_address(address: str) -> str:
    """Accept ``host:port`` (or a gRPC target with a scheme such as ``dns:///host:port``), or
    every replica of an HA master: ``host:port,host:port,...``."""
    address = address.strip()
    if "," in address:
        return ",".join(check_master_address(a) for a in address.split(",") if a.strip())
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


def _state(path: pathlib.Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _files_from(entry: object) -> CertFiles | None:
    if isinstance(entry, Mapping) and all(
        isinstance(entry.get(k), str) and entry[k] for k in ("ca", "cert", "key")
    ):
        return CertFiles(str(entry["ca"]), str(entry["cert"]), str(entry["key"]))
    return None


def insecure_requested(env: Mapping[str, str] | None = None) -> bool:
    """True when ``$DOMAINOS_INSECURE`` asks for plaintext (``1``, ``true``, ``yes``, ``on``)."""
    env = os.environ if env is None else env
    return env.get(ENV_INSECURE, "").strip().lower() in _TRUE


def resolve_tls(
    tls: CertFiles | None = None,
    *,
    insecure: bool = False,
    address: str | None = None,
    env: Mapping[str, str] | None = None,
    home: str | os.PathLike[str] | None = None,
) -> CertFiles | None:
    """This client's TLS files for the master at ``address``; None means plaintext (insecure).

    Order: ``tls``; ``insecure`` or ``$DOMAINOS_INSECURE``; ``$DOMAINOS_TLS_CA/CERT/KEY`` (all
    three); the local federation's ``cluster.json`` ``tls`` entry when its master is ``address``
    (or ``address`` is None; ``"insecure": true`` there means plaintext, as ``domainctl up
    --insecure`` records); ``<home>/pki/ca.crt`` + ``client-<user>.crt/.key``. Raises
    :class:`~domainos.errors.ConfigError` saying how to get them when none is found.
    """
    env = os.environ if env is None else env
    if tls is not None:
        if insecure:
            raise InvalidArgument("pass TLS files or insecure=True, not both", field="insecure")
        return tls
    if insecure or insecure_requested(env):
        return None
    named = {var: env.get(var, "") for var in (ENV_TLS_CA, ENV_TLS_CERT, ENV_TLS_KEY)}
    if any(named.values()):
        missing = [var for var, value in named.items() if not value]
        if missing:
            raise ConfigError(
                f"{', '.join(missing)} must be set too: the TLS files are a CA, a certificate and its key"
            )
        return CertFiles(*(os.path.expanduser(v) for v in named.values()))
    state = _state(state_file(home, env))
    if address is None or address == state.get("master"):  # the local federation's own files
        if state.get("insecure") is True:  # started with `domainctl up --insecure`
            return None
        local = _files_from(state.get("tls"))
        if local is not None:
            return local
    pki = pki_dir(home, env)
    own = CertFiles(
        str(pki / "ca.crt"),
        str(pki / f"client-{default_client_id()}.crt"),
        str(pki / f"client-{default_client_id()}.key"),
    )
    if all(os.path.exists(p) for p in (own.ca, own.cert, own.key)):
        return own
    where = f" at {address}" if address else ""
    raise ConfigError(NO_TLS_MESSAGE.format(where=where, pki=pki))
