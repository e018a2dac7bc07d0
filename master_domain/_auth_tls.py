"""Transport identity of DomainControl callers: the first step of the master's client authentication.

Every ``DomainControl`` call must come over mutual TLS with a certificate of role ``client``
(``spiffe://domainos/client/<id>``, made by ``domainctl certs init`` / ``certs issue --role client``).
An agent's or a sub-domain's certificate is refused with PERMISSION_DENIED; a caller without a
DomainOS identity with UNAUTHENTICATED. A certificate from another CA never gets this far: the TLS
handshake refuses it. Tokens and RBAC come after this check (``master_domain._auth``).

On a master that runs ``insecure: true`` there is no certificate to check and the answer is None.
"""

from __future__ import annotations

from typing import Any

from domainos.rpc import require_peer
from domainos.security import Identity

#: The certificate role of people and programs calling DomainControl.
CLIENT_ROLE = "client"


def check_client_cert(context: Any, secure: bool) -> Identity | None:
    """The caller's client identity, or raise Unauthenticated / PermissionDenied.

    ``context`` is the call's ``grpc.aio.ServicerContext``; ``secure`` is False only on a master
    that runs insecure (then None is returned: nobody is identified by a certificate).
    """
    # Master <-> master (HA, a later issue) will arrive on its own service with certificates of
    # role "master": check those there with require_peer(context, "master", ...), not here --
    # a master certificate is not a client certificate.
    return require_peer(context, CLIENT_ROLE, secure=secure)
