"""``domainctl certs init | issue | show``: the cluster CA and the components' certificates.

A PKI directory holds ``ca.crt``/``ca.key`` and one ``<role>-<id>.crt``/``.key`` pair per component
(:mod:`domainos.security`). ``init`` also issues a client certificate for the caller,
``client-<user>``, which the CLI and the DSDK find without flags in the default directory
(``$DOMAINOS_HOME/pki`` or ``~/.domainos/pki``). ``issue`` re-issued in place is a rotation: running
daemons pick the new files up on their next TLS handshake.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import pathlib
import sys
from typing import Any

from domainos.errors import InvalidArgument

DEFAULT_HOSTS = ("127.0.0.1", "localhost")


def default_dir() -> pathlib.Path:
    from dsdk._address import pki_dir

    return pki_dir()


def _dir(ns: argparse.Namespace) -> pathlib.Path:
    return pathlib.Path(ns.dir).expanduser() if getattr(ns, "dir", None) else default_dir()


def _print_files(title: str, files: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"ca": files.ca, "cert": files.cert, "key": files.key}, indent=2))
        return
    print(title)
    print(f"  CA certificate:  {files.ca}")
    print(f"  certificate:     {files.cert}")
    print(f"  key:             {files.key}  (mode 0600)")


def cmd_init(ns: argparse.Namespace) -> int:
    from domainos.security import Identity, files_for, init_ca, issue_files
    from dsdk._address import default_client_id

    directory = _dir(ns)
    existed = (directory / "ca.key").exists()
    init_ca(directory, force=ns.force)
    client = Identity("client", default_client_id())
    files = files_for(directory, client)
    if ns.force or not (pathlib.Path(files.cert).exists() and pathlib.Path(files.key).exists()):
        files = issue_files(directory, client, hosts=DEFAULT_HOSTS)
    as_json = ns.output == "json"
    if not as_json:
        kept = existed and not ns.force
        print(
            f"{'kept the existing' if kept else 'created a'} cluster CA in {directory} (ca.key stays private)"
        )
    _print_files(f"client certificate for {client}:", files, as_json)
    if not as_json:
        print(
            "next: issue each component's certificate, e.g.\n"
            f"  domainctl certs issue --dir {directory} --role master --id master-1\n"
            f"  domainctl certs issue --dir {directory} --role subdomain --id east-1\n"
            f"  domainctl certs issue --dir {directory} --role agent --id NODE_ID --host NODE_ADDRESS"
        )
    return 0


def cmd_issue(ns: argparse.Namespace) -> int:
    from domainos.security import ROLES, Identity, issue_files

    if ns.role not in ROLES:
        raise InvalidArgument(f"unknown role {ns.role!r}; allowed: {', '.join(ROLES)}", field="--role")
    if not 0 < ns.days <= 36500:
        raise InvalidArgument(f"must be greater than 0 and at most 36500, got {ns.days:g}", field="--days")
    hosts = tuple(ns.host) or DEFAULT_HOSTS
    files = issue_files(_dir(ns), Identity(ns.role, ns.ident), hosts=hosts, days=ns.days)
    _print_files(
        f"issued {ns.role}/{ns.ident} for {', '.join(hosts)}, valid {ns.days:g} days:",
        files,
        ns.output == "json",
    )
    return 0


def cmd_show(ns: argparse.Namespace) -> int:
    from domainos.security import describe

    path = pathlib.Path(ns.file).expanduser()
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror or exc}", field="FILE") from None
    try:
        info = describe(pem)
    except ValueError as exc:
        raise InvalidArgument(f"{path} is not a PEM certificate: {exc}", field="FILE") from None
    now = dt.datetime.now(dt.UTC)
    if now > info.not_after:
        status = f"EXPIRED {_ago(now - info.not_after)} ago"
    elif now < info.not_before:
        status = f"NOT YET VALID (in {_ago(info.not_before - now)})"
    else:
        status = f"valid, expires in {_ago(info.not_after - now)}"
    data = {
        "file": str(path),
        "role": info.identity.role if info.identity else ("ca" if info.is_ca else ""),
        "id": info.identity.id if info.identity else "",
        "subject": info.subject,
        "issuer": info.issuer,
        "not_before": info.not_before.isoformat(),
        "not_after": info.not_after.isoformat(),
        "status": status,
        "hosts": list(info.hosts),
        "serial": f"{info.serial:x}",
    }
    if ns.output == "json":
        print(json.dumps(data, indent=2))
        return 0
    width = max(len(k) for k in data)
    for key, value in data.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        print(f"{key + ':':<{width + 1}}  {shown or '-'}")
    return 0


def _ago(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 2 * 86400:
        return f"{seconds // 86400} days"
    if seconds >= 2 * 3600:
        return f"{seconds // 3600} hours"
    if seconds >= 120:
        return f"{seconds // 60} minutes"
    return f"{seconds} seconds"


def cmd_certs(ns: argparse.Namespace) -> int:
    handler = {"init": cmd_init, "issue": cmd_issue, "show": cmd_show}[ns.certs_command]
    code = handler(ns)
    sys.stdout.flush()
    return code
