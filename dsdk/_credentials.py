"""The caller's token: ``$DOMAINOS_TOKEN``, else the credentials file.

The file is ``<home>/credentials`` (home: ``$DOMAINOS_HOME`` or ``~/.domainos``), mode 0600,
JSON mapping a master address to the token to use there, with an optional ``default``::

    {"10.0.0.5:7070": "dos_3f2a...", "default": "dos_3f2a..."}

``domainctl login`` writes it (after checking the token with the master); ``domainctl up`` adds
the local federation's admin token for its master's address. The DSDK sends the token as
``authorization: Bearer dos_...`` on every call.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import re
import stat
from collections.abc import Mapping

from domainos.errors import ConfigError, FailedPrecondition, InvalidArgument

from ._address import domainos_home

log = logging.getLogger(__name__)

ENV_TOKEN = "DOMAINOS_TOKEN"
DEFAULT_KEY = "default"
TOKEN_PREFIX = "dos_"
_TTL_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_warned: set[str] = set()


def credentials_file(
    home: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> pathlib.Path:
    """``<home>/credentials``."""
    return domainos_home(home, env) / "credentials"


def check_token_text(token: str, field: str = "token") -> str:
    """A token as printed by ``domainctl token create`` (``dos_...``), whitespace stripped."""
    token = token.strip()
    if not token.startswith(TOKEN_PREFIX) or any(c.isspace() for c in token):
        raise InvalidArgument(
            "expected a DomainOS token: dos_<id>_<secret>, as printed by `domainctl token create`",
            field=field,
        )
    return token


def read_credentials(path: pathlib.Path) -> dict[str, str]:
    """The file's entries ({} when it does not exist); ConfigError naming the file when unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read the credentials file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise ConfigError(
            f"the credentials file {path} is not valid JSON ({exc}); fix it or remove it and run "
            "`domainctl login`"
        ) from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ConfigError(
            f"the credentials file {path} must map master addresses to tokens; fix it or remove it"
        )
    if mode & 0o077 and str(path) not in _warned:
        _warned.add(str(path))
        log.warning("credentials file %s is readable by others (mode %o); run chmod 600 on it", path, mode)
    return {str(k): v for k, v in data.items()}


def token_for(
    address: str,
    *,
    env: Mapping[str, str] | None = None,
    home: str | os.PathLike[str] | None = None,
) -> str | None:
    """The token to present to ``address``: ``$DOMAINOS_TOKEN``, else the file's entry for the
    address, else its ``default``; None when there is none."""
    env = os.environ if env is None else env
    if env.get(ENV_TOKEN, "").strip():
        return env[ENV_TOKEN].strip()
    entries = read_credentials(credentials_file(home, env))
    return entries.get(address) or entries.get(DEFAULT_KEY) or None


def save_token(
    address: str,
    token: str,
    *,
    default: bool = True,
    home: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> pathlib.Path:
    """Record ``token`` for ``address`` (and as the ``default`` unless told not to).

    Refuses (FailedPrecondition) to write into a file that is, or would end up, readable by
    group or others: a token there may already have been read, and tightening the mode silently
    would hide that.
    """
    token = check_token_text(token)
    path = credentials_file(home, env)
    if path.exists() and stat.S_IMODE(path.stat().st_mode) & 0o077:
        mode = stat.S_IMODE(path.stat().st_mode)
        raise FailedPrecondition(
            f"refusing to write the credentials file {path}: it is readable by group or others "
            f"(mode {mode:o}); anything in it may have been read. Run `chmod 600 {path}` (and revoke "
            "its tokens if others could read them), then try again"
        )
    entries = read_credentials(path)
    entries[address] = token
    if default:
        entries[DEFAULT_KEY] = token
    _write_private(path, json.dumps(entries, indent=2, sort_keys=True) + "\n")
    return path


def forget_token(
    address: str, *, home: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> None:
    """Drop the entry of ``address`` (e.g. a local federation that was stopped)."""
    path = credentials_file(home, env)
    entries = read_credentials(path)
    if entries.pop(address, None) is not None:
        _write_private(path, json.dumps(entries, indent=2, sort_keys=True) + "\n")


def _write_private(path: pathlib.Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        if stat.S_IMODE(os.stat(tmp).st_mode) & 0o077:  # a file system that ignores modes
            raise FailedPrecondition(
                f"refusing to write the credentials file {path}: the file system there does not keep "
                "it private (mode 600); set DOMAINOS_HOME to a directory on one that does"
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def parse_ttl(text: str | float | int, field: str = "ttl") -> float:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or plain seconds -> seconds; ``0``/``never`` = no expiry."""
    if isinstance(text, bool):
        raise InvalidArgument(f"expected a duration such as 30d, 12h or 90m, got {text!r}", field=field)
    if isinstance(text, int | float):
        seconds = float(text)
    elif text.strip().lower() == "never":
        return 0.0
    else:
        m = _TTL_RE.match(text)
        if not m:
            raise InvalidArgument(
                f"expected a duration such as 30d, 12h, 90m or 45s (or never), got {text!r}", field=field
            )
        seconds = float(m.group(1)) * _TTL_UNITS[m.group(2)]
    if seconds != seconds or seconds < 0 or seconds > 10 * 365 * 86400:
        raise InvalidArgument(f"must be between 0 (never) and 10 years, got {text!r}", field=field)
    return seconds
