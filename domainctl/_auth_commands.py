"""People and their credentials: ``login``, ``whoami``, ``tenant``, ``token``, ``audit``.

The token a command presents comes from ``$DOMAINOS_TOKEN``, else the credentials file
(``<home>/credentials``, mode 0600) that ``login`` writes; see :mod:`dsdk._credentials`.
"""

from __future__ import annotations

import argparse
import getpass
import pathlib
import sys
import time
from typing import Any

import dsdk
from domainos.errors import InvalidArgument

from . import _render
from ._commands import _json, _out, _width, client_for


def _read_token(ns: argparse.Namespace) -> str:
    if ns.token is not None and ns.token_file is not None:
        raise InvalidArgument("give --token or --token-file, not both", field="--token")
    if ns.token is not None:
        text = ns.token
    elif ns.token_file is not None:
        try:
            text = pathlib.Path(ns.token_file).expanduser().read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidArgument(
                f"cannot read {ns.token_file}: {exc.strerror}", field="--token-file"
            ) from None
    elif sys.stdin.isatty():
        text = getpass.getpass("DomainOS token (dos_...): ")
    else:
        text = sys.stdin.readline()
    from dsdk._credentials import check_token_text

    return check_token_text(text)


def cmd_login(ns: argparse.Namespace) -> int:
    """Check a token with the master (WhoAmI), then keep it for that master and as the default."""
    token = _read_token(ns)
    address = dsdk.resolve_address(ns.master)
    ns.master = address
    with dsdk.connect(
        address,
        tls=_tls(ns),
        insecure=bool(getattr(ns, "insecure", False)),
        token=token,
    ) as client:
        me = client.whoami()
    path = dsdk.save_token(address, token)
    who = f"{me.role}" + (f" of tenant {me.tenant}" if me.tenant else "")
    _out(f"logged in to {address} as {who} (token {me.token_id}); saved in {path}")
    return 0


def _tls(ns: argparse.Namespace) -> Any:
    from ._commands import tls_files

    return tls_files(ns)


def cmd_whoami(ns: argparse.Namespace) -> int:
    with client_for(ns) as c:
        me = c.whoami()
        address = c.address
    if _json(ns):
        _out(_render.to_json(me))
        return 0
    cert = f"{me.cert_role}/{me.cert_id}" if me.cert_id else "-"
    _out(
        _render.key_values(
            [
                ("master", address),
                ("role", me.role),
                ("tenant", me.tenant or ("all (admin)" if me.role == "admin" else "-")),
                ("token", me.token_id),
                ("certificate", cert),
                *([("job", me.job_id)] if me.job_id else []),
            ]
        )
    )
    return 0


def _labels(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"expected KEY=VALUE, got {pair!r}", field="--label")
        out[key] = value
    return out


def cmd_tenant(ns: argparse.Namespace) -> int:
    with client_for(ns) as c:
        if ns.tenant_command == "create":
            tenant = c.create_tenant(ns.name, labels=_labels(ns.label))
            _out(_render.to_json(tenant) if _json(ns) else f"tenant {tenant.name} created")
            return 0
        tenants = c.tenants()
    if _json(ns):
        _out(_render.to_json(tenants))
    else:
        now = time.time()
        rows = [
            [
                t.name,
                _render.fmt_age(t.created_at, now),
                t.created_by or "-",
                ",".join(f"{k}={v}" for k, v in sorted(t.labels.items())) or "-",
            ]
            for t in tenants
        ]
        _out(_render.table(["TENANT", "AGE", "CREATED BY", "LABELS"], rows, max_width=_width()))
    return 0


def _when(ts: float, now: float) -> str:
    if not ts:
        return "never"
    text = _render.fmt_clock(ts, date=True)
    return f"{text} ({'in ' if ts > now else ''}{_render.fmt_duration(abs(ts - now), coarse=True)}{'' if ts > now else ' ago'})"


def cmd_token(ns: argparse.Namespace) -> int:
    if ns.token_command == "create":
        ttl = dsdk.parse_ttl(ns.ttl, "--ttl") if ns.ttl is not None else None
        if ns.role == "user" and not ns.tenant:
            raise InvalidArgument("is required for a user token (or use --role admin)", field="--tenant")
        with client_for(ns) as c:
            made = c.create_token(tenant=ns.tenant or "", role=ns.role, ttl=ttl, description=ns.description)
        if _json(ns):
            _out(_render.to_json({"info": made.info, "token": made.token}))
        else:
            info = made.info
            scope = f"tenant {info.tenant}" if info.tenant else "every tenant"
            print(
                f"created {info.role} token {info.token_id} for {scope}, expires: "
                f"{_when(info.expires_at, time.time())}",
                file=sys.stderr,
            )
            print("the token is shown only this once; keep it safe:", file=sys.stderr)
            _out(made.token)
        return 0
    if ns.token_command == "revoke":
        with client_for(ns) as c:
            info = c.revoke_token(ns.token_id)
        _out(_render.to_json(info) if _json(ns) else f"token {info.token_id} revoked")
        return 0
    with client_for(ns) as c:
        tokens = c.tokens(ns.tenant, include_revoked=ns.all)
    if _json(ns):
        _out(_render.to_json(tokens))
        return 0
    now = time.time()
    rows = [
        [
            t.token_id,
            t.role,
            t.tenant or "-",
            t.state(now),
            _render.fmt_age(t.created_at, now),
            _when(t.expires_at, now),
            t.job_id or t.description or "-",
        ]
        for t in tokens
    ]
    headers = ["TOKEN", "ROLE", "TENANT", "STATE", "AGE", "EXPIRES", "JOB / DESCRIPTION"]
    _out(_render.table(headers, rows, max_width=_width()))
    return 0


def cmd_audit(ns: argparse.Namespace) -> int:
    if ns.limit < 1:
        raise InvalidArgument(f"must be at least 1, got {ns.limit}", field="--limit")
    since = time.time() - dsdk.parse_ttl(ns.since, "--since") if ns.since else None
    with client_for(ns) as c:
        entries = c.audit(ns.limit, since=since)
    if _json(ns):
        _out(_render.to_json(entries))
        return 0
    rows = [
        [
            _render.fmt_clock(e.time, date=True),
            e.principal + (f" ({e.role}" + (f", {e.tenant})" if e.tenant else ")") if e.role else ""),
            e.method,
            e.target or "-",
            e.code if e.allowed else f"{e.code}: {e.message}",
            e.peer,
        ]
        for e in entries
    ]
    _out(_render.table(["TIME", "WHO", "METHOD", "TARGET", "RESULT", "FROM"], rows, max_width=_width()))
    return 0
