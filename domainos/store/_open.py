"""``open_store``: build a :class:`Store` from a URL."""

from __future__ import annotations

import logging

from domainos.errors import ConfigError
from domainos.store._base import Store
from domainos.store._etcd import EtcdStore, parse_endpoints
from domainos.store._sqlite import SQLiteStore

__all__ = ["ALLOWED_SCHEMES", "open_store"]

logger = logging.getLogger(__name__)

#: Accepted URL forms, as shown in error messages.
ALLOWED_SCHEMES = (
    "sqlite:///absolute/path.db",
    "sqlite:relative/path.db",
    "memory://",
    "etcd://host:port[,host:port...]",
)


def _bad(url: str, why: str) -> ConfigError:
    return ConfigError(
        f"unsupported store URL {url!r} ({why}); allowed schemes: {', '.join(ALLOWED_SCHEMES)}",
        field="store_url",
    )


def open_store(url: str) -> Store:
    """Open the store named by ``url``.

    * ``sqlite:///abs/path.db`` — a SQLite file (absolute path);
    * ``sqlite:relative.db`` — a SQLite file relative to the working directory;
    * ``memory://`` — a private in-memory SQLite store;
    * ``etcd://host:port`` or ``etcd://h1:p1,h2:p2`` — an etcd cluster (the
      first endpoint that answers is used; the port defaults to 2379).

    Raises :class:`~domainos.errors.ConfigError` for a malformed URL and
    :class:`~domainos.store.StoreUnavailable` when the store cannot be reached.
    """
    if not isinstance(url, str) or not url.strip():
        raise _bad(str(url), "empty")
    url = url.strip()
    scheme, sep, rest = url.partition(":")
    if not sep:
        raise _bad(url, "no scheme")
    scheme = scheme.lower()
    if scheme == "memory":
        if rest not in ("//", ""):
            raise _bad(url, "memory:// takes no path")
        logger.debug("opening in-memory store")
        return SQLiteStore(":memory:")
    if scheme == "sqlite":
        if rest.startswith("///"):
            path = rest[2:]
        elif rest.startswith("//"):
            raise _bad(url, "use sqlite:///absolute/path or sqlite:relative/path")
        else:
            path = rest
        if not path or path.endswith("/"):
            raise _bad(url, "no database file")
        logger.debug("opening SQLite store %s", path)
        return SQLiteStore(path)
    if scheme == "etcd":
        if not rest.startswith("//"):
            raise _bad(url, "expected etcd://host:port")
        netloc = rest[2:].rstrip("/")
        if not netloc or "/" in netloc or "?" in netloc or "@" in netloc:
            raise _bad(url, "expected etcd://host:port[,host:port...]")
        try:
            endpoints = parse_endpoints(netloc)
        except ConfigError as exc:
            raise _bad(url, exc.message) from exc
        logger.debug("opening etcd store %s", netloc)
        return EtcdStore([f"{host}:{port}" for host, port in endpoints])
    raise _bad(url, f"unknown scheme {scheme!r}")
