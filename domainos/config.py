"""Strict loading of YAML files into frozen dataclasses.

Unknown fields, wrong types and malformed YAML are reported with the file, the
field path and what is allowed -- never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import pathlib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from domainos.errors import ConfigError

if TYPE_CHECKING:  # domainos.security imports cryptography: only when TLS is really used
    from domainos.security import CertFiles

T = TypeVar("T")

#: Said when a daemon config has neither ``tls`` nor ``insecure: true``.
TLS_REQUIRED_MESSAGE = (
    "tls is required: set tls.ca, tls.cert and tls.key (create them with `domainctl certs init`), "
    "or run with insecure: true"
)
#: Logged (WARNING) at every start of a daemon that runs with ``insecure: true``.
INSECURE_WARNING = (
    "running without TLS: every connection is unauthenticated plaintext; use only for local tests"
)


@dataclass(frozen=True)
class TLSConfig:
    """Mutual TLS of one component: PEM paths of the cluster CA, its certificate and its key.

    The certificate names the component's role and id (``domainctl certs issue``); the files are
    re-read when they change, so a certificate is rotated by re-issuing it in place.
    """

    #: The cluster CA certificate (``ca.crt``): peers must present a certificate it signed.
    ca: str = ""
    #: This component's certificate (``<role>-<id>.crt``).
    cert: str = ""
    #: This component's private key (``<role>-<id>.key``, mode 0600).
    key: str = ""

    def check(self, field: str = "tls") -> None:
        """Raise :class:`ConfigError` naming ``<field>.<name>`` for an empty path."""
        for name in ("ca", "cert", "key"):
            if not getattr(self, name).strip():
                raise ConfigError(
                    "a PEM file path is required (see `domainctl certs init`)", field=f"{field}.{name}"
                )

    def files(self) -> CertFiles:
        """The paths as :class:`domainos.security.CertFiles` (``~`` expanded)."""
        from domainos.security import CertFiles

        return CertFiles(*(os.path.expanduser(p) for p in (self.ca, self.cert, self.key)))


def check_transport(tls: TLSConfig | None, insecure: bool) -> None:
    """A daemon runs with exactly one of ``tls`` (mutual TLS) and ``insecure: true`` (plaintext)."""
    if tls is not None and insecure:
        raise ConfigError(
            "set either tls (mutual TLS) or insecure: true (plaintext), not both", field="insecure"
        )
    if tls is None and not insecure:
        raise ConfigError(TLS_REQUIRED_MESSAGE)
    if tls is not None:
        tls.check("tls")


def add_tls_flags(parser: argparse.ArgumentParser) -> None:
    """The daemons' ``--tls-ca/--tls-cert/--tls-key`` and ``--insecure`` flags (see :func:`tls_overrides`)."""
    g = parser.add_argument_group("transport security (mutual TLS is required unless --insecure)")
    g.add_argument("--tls-ca", metavar="FILE", help="cluster CA certificate (PEM); sets tls.ca")
    g.add_argument("--tls-cert", metavar="FILE", help="this component's certificate (PEM); sets tls.cert")
    g.add_argument("--tls-key", metavar="FILE", help="this component's private key (PEM); sets tls.key")
    g.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="plaintext, unauthenticated connections (local tests only; logged at every start)",
    )


def tls_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config overrides (dotted paths) from :func:`add_tls_flags`; unset flags are None (ignored)."""
    return {
        "tls.ca": args.tls_ca,
        "tls.cert": args.tls_cert,
        "tls.key": args.tls_key,
        "insecure": args.insecure,
    }


def open_transport(
    tls: TLSConfig | None, *, role: str, ident: str | None, log: logging.Logger
) -> CertFiles | None:
    """At every daemon start: the checked TLS files, or None for an insecure daemon (logs a warning).

    Refuses (ConfigError) a missing, expired or not-yet-valid certificate, and one that does not
    name this component (role ``role``, and id ``ident`` unless None): its peers would refuse it.
    """
    if tls is None:
        log.warning(INSECURE_WARNING)
        return None
    from domainos.security import check_usable

    files = tls.files()
    who = check_usable(files)
    if who is None or who.role != role or (ident is not None and who.id != ident):
        want = f"{role}/{ident}" if ident is not None else f"role {role}"
        named = f"names {who}" if who is not None else "names no DomainOS identity"
        raise ConfigError(
            f"certificate {files.cert} {named}, but this component needs one for {want}; issue it with "
            f"`domainctl certs issue --role {role} --id {ident or 'ID'}`",
            field="tls.cert",
        )
    return files


def load_yaml(path: str | pathlib.Path) -> Any:
    """Parse a YAML file; errors name the file and the line."""

    p = pathlib.Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"file not found: {p}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc.strerror}") from exc
    return parse_yaml(text, str(p))


def parse_yaml(text: str, source: str = "<input>") -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"malformed YAML at {where}: {problem}") from None


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        (arg, *_) = typing.get_args(tp) or (Any,)
        return f"a list of {_type_name(arg)}"
    if origin is dict:
        return "a mapping"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors: list[ConfigError] = []
        candidates = [a for a in args if a is not type(None)]
        for arg in candidates:
            try:
                return _convert(arg, value, path)
            except ConfigError as exc:
                errors.append(exc)
        if len(candidates) == 1:  # Optional[X]: the inner error says what is wrong
            raise errors[0]
        raise ConfigError(f"expected {_type_name(tp)}, got {value!r}", field=path)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return build(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"expected {_type_name(tp)}, got {value!r}", field=path)
        (arg, *_) = typing.get_args(tp) or (Any,)
        items = [_convert(arg, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"expected a mapping, got {value!r}", field=path)
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {_convert(kt, k, f"{path}.{k}"): _convert(vt, v, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise ConfigError(f"expected {_type_name(tp)}, got {value!r}", field=path)


def build(cls: type[T], data: Any, path: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown fields."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping, got {data!r}", field=path or None)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(str(k) for k in data if k not in fields)
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"unknown field {where}{unknown[0]!s}; allowed: {', '.join(sorted(fields))}",
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        sub = f"{path}.{name}" if path else str(name)
        kwargs[str(name)] = _convert(hints[str(name)], value, sub)
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{path or cls.__name__}: {exc}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict (flags override file values this way)."""
    keys = dotted.split(".")
    cur = data
    for k in keys[:-1]:
        nxt = cur.get(k)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[k] = nxt
        cur = nxt
    cur[keys[-1]] = value


def load(cls: type[T], path: str | None, overrides: Mapping[str, Any] | None = None) -> T:
    """Load ``cls`` from an optional YAML file, then apply dotted-path overrides (flags)."""
    data: Any = load_yaml(path) if path else {}
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    for key, value in (overrides or {}).items():
        if value is not None:
            set_path(data, key, value)
    try:
        return build(cls, data)
    except ConfigError as exc:
        if path:
            raise ConfigError(f"{path}: {exc}") from None
        raise


def parse_set_flags(pairs: list[str] | None) -> dict[str, Any]:
    """``--set key.sub=value`` flags; values are parsed as YAML scalars (``3``, ``true``)."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = yaml.safe_load(raw) if raw else ""
    return out


def check_address(value: str, field: str, *, allow_empty: bool = False) -> None:
    """A ``host:port`` listen or dial address (port 0 = pick a free port)."""
    if not value and allow_empty:
        return
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"expected HOST:PORT (port 0-65535), got {value!r}", field=field)
