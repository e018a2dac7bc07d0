"""Say *why* a TLS connection was refused.

gRPC reports a refused handshake only as "Socket closed". When a call fails that way, clients run
:func:`diagnose_tls`: one plain TLS handshake with the same files, through Python's ``ssl`` module,
which does report the alert the server sent (expired certificate, unknown CA, ...).
"""

from __future__ import annotations

import datetime as dt
import pathlib
import socket
import ssl

from domainos.security._pki import CertFiles, validity


def _own_certificate_problem(files: CertFiles) -> str | None:
    try:
        start, end = validity(pathlib.Path(files.cert).read_bytes())
    except (OSError, ValueError) as exc:
        return f"cannot read this client's certificate {files.cert}: {exc}"
    now = dt.datetime.now(dt.UTC)
    if now > end:
        return f"this client's certificate {files.cert} expired at {end:%Y-%m-%d %H:%M:%S} UTC"
    if now < start:
        return f"this client's certificate {files.cert} is not valid before {start:%Y-%m-%d %H:%M:%S} UTC"
    return None


def diagnose_tls(address: str, files: CertFiles, timeout: float = 3.0) -> str | None:
    """A sentence naming why ``address`` refuses (or would refuse) this TLS identity; None if it doesn't."""
    own = _own_certificate_problem(files)
    if own:
        return own
    host, _, port = address.rpartition(":")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # we diagnose trust and certificates, gRPC checks the name
    ctx.load_verify_locations(files.ca)
    ctx.load_cert_chain(files.cert, files.key)
    ctx.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as raw, ctx.wrap_socket(raw) as tls:
            # With TLS 1.3 the server judges our certificate after our side finished the
            # handshake: its verdict arrives as an alert on the first read.
            tls.settimeout(0.5)
            try:
                data = tls.recv(1)
            except TimeoutError:
                return None  # the server is waiting for us: the handshake was accepted
            except ssl.SSLError as exc:
                return _explain(exc)
            except OSError:
                data = b""
            if data:
                return None
            return (
                "the server closed the connection right after the TLS handshake: it refused this "
                f"client's certificate {files.cert} (signed by a CA it does not trust, or revoked)"
            )
    except ssl.SSLCertVerificationError as exc:
        return f"the server's certificate is not trusted by {files.ca}: {exc.verify_message}"
    except ssl.SSLError as exc:
        return _explain(exc)
    except OSError:
        return None  # not a TLS problem: the caller's own error says enough


def _explain(exc: ssl.SSLError) -> str:
    reason = (exc.reason or str(exc)).upper()
    if "EXPIRED" in reason:
        return "the server refused this client's certificate: it has expired"
    if "UNKNOWN_CA" in reason:
        return "the server refused this client's certificate: it is signed by a CA the server does not trust"
    if "CERTIFICATE_REQUIRED" in reason:
        return "the server requires a client certificate"
    if "BAD_CERTIFICATE" in reason or "CERTIFICATE" in reason:
        return f"the server refused this client's certificate ({exc.reason})"
    return f"TLS handshake failed: {exc.reason or exc}"
