"""The cluster's certificates: a CA and per-component certificates that name a role and an id.

Identity lives in a URI subject-alternative-name, SPIFFE style: ``spiffe://domainos/<role>/<id>``
(roles: ``master``, ``subdomain``, ``agent``, ``client``). Receivers check the role and the id
(:mod:`domainos.security._identity`). Keys are ECDSA P-256; private key files are written 0600.

Layout of a PKI directory (``domainctl certs init``)::

    ca.crt  ca.key                       the cluster CA
    <role>-<id>.crt  <role>-<id>.key     one pair per component
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pathlib
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from domainos.errors import ConfigError, InvalidArgument

ROLES = ("master", "subdomain", "agent", "client")
TRUST_DOMAIN = "domainos"
_URI_PREFIX = f"spiffe://{TRUST_DOMAIN}/"
DEFAULT_DAYS = 365
CA_DAYS = 3650


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a certificate says its holder is."""

    role: str
    id: str

    @property
    def uri(self) -> str:
        return f"{_URI_PREFIX}{self.role}/{self.id}"

    def __str__(self) -> str:
        return f"{self.role}/{self.id}"


@dataclass(frozen=True, slots=True)
class CertFiles:
    """Paths of a CA certificate and one component's certificate and key."""

    ca: str
    cert: str
    key: str


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def create_ca(common_name: str = "DomainOS cluster CA", *, days: int = CA_DAYS) -> tuple[bytes, bytes]:
    """A new self-signed CA: (key PEM, certificate PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _key_pem(key), cert.public_bytes(serialization.Encoding.PEM)


def check_role(role: str) -> None:
    if role not in ROLES:
        raise InvalidArgument(f"unknown role {role!r}; allowed: {', '.join(ROLES)}", field="role")


def issue_cert(
    ca_key_pem: bytes,
    ca_cert_pem: bytes,
    identity: Identity,
    *,
    hosts: Iterable[str] = ("127.0.0.1", "localhost"),
    days: float = DEFAULT_DAYS,
    not_before: dt.datetime | None = None,
) -> tuple[bytes, bytes]:
    """A certificate for ``identity`` signed by the CA: (key PEM, certificate PEM).

    ``hosts`` become DNS/IP SANs so the certificate also serves TLS on those addresses.
    """
    check_role(identity.role)
    if not identity.id or "/" in identity.id:
        raise InvalidArgument(f"invalid id {identity.id!r}: must be non-empty with no '/'", field="id")
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError("the CA key is not an EC key")
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or (_now() - dt.timedelta(minutes=5))
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, TRUST_DOMAIN),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.role),
                    x509.NameAttribute(NameOID.COMMON_NAME, identity.id),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _key_pem(key), cert.public_bytes(serialization.Encoding.PEM)


def identity_of(cert_pem: bytes) -> Identity | None:
    """The DomainOS identity a certificate names, or None when it names none."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(_URI_PREFIX):
            role, _, ident = uri[len(_URI_PREFIX) :].partition("/")
            if role in ROLES and ident:
                return Identity(role, ident)
    return None


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What a certificate says (``domainctl certs show``)."""

    identity: Identity | None
    subject: str
    issuer: str
    not_before: dt.datetime
    not_after: dt.datetime
    serial: int
    hosts: tuple[str, ...]
    is_ca: bool


def describe(cert_pem: bytes) -> CertInfo:
    """Identity, names, validity, DNS/IP names and CA flag of a PEM certificate (ValueError if not one)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
        hosts = (*san.get_values_for_type(x509.DNSName), *ips)
    except x509.ExtensionNotFound:
        hosts = ()
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return CertInfo(
        identity=identity_of(cert_pem),
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        serial=cert.serial_number,
        hosts=hosts,
        is_ca=is_ca,
    )


def validity(cert_pem: bytes) -> tuple[dt.datetime, dt.datetime]:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.not_valid_before_utc, cert.not_valid_after_utc


def check_usable(files: CertFiles, *, now: dt.datetime | None = None) -> Identity | None:
    """Refuse to start with a missing, expired or not-yet-valid certificate, saying which and why."""
    for what, path in (("CA certificate", files.ca), ("certificate", files.cert), ("key", files.key)):
        if not os.path.exists(path):
            raise ConfigError(f"{what} {path} does not exist; create one with `domainctl certs init`")
    cert_pem = pathlib.Path(files.cert).read_bytes()
    try:
        start, end = validity(cert_pem)
    except ValueError as exc:
        raise ConfigError(f"certificate {files.cert} is not a PEM certificate: {exc}") from None
    moment = now or _now()
    if moment > end:
        raise ConfigError(
            f"certificate {files.cert} expired at {end:%Y-%m-%d %H:%M:%S} UTC; "
            "issue a new one with `domainctl certs issue` (it is reloaded without a restart)"
        )
    if moment < start:
        raise ConfigError(f"certificate {files.cert} is not valid before {start:%Y-%m-%d %H:%M:%S} UTC")
    return identity_of(cert_pem)


def _write(path: pathlib.Path, data: bytes, *, private: bool) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)  # atomic: a reloading server never reads half a file


def init_ca(directory: str | os.PathLike[str], *, force: bool = False) -> CertFiles:
    """Create ``ca.crt``/``ca.key`` in ``directory`` unless they exist (or ``force``)."""
    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    ca_crt, ca_key = d / "ca.crt", d / "ca.key"
    if force or not (ca_crt.exists() and ca_key.exists()):
        key, cert = create_ca()
        _write(ca_key, key, private=True)
        _write(ca_crt, cert, private=False)
    return CertFiles(str(ca_crt), str(ca_crt), str(ca_key))


def issue_files(
    directory: str | os.PathLike[str],
    identity: Identity,
    *,
    hosts: Iterable[str] = ("127.0.0.1", "localhost"),
    days: float = DEFAULT_DAYS,
    not_before: dt.datetime | None = None,
) -> CertFiles:
    """Issue (or re-issue: rotation) ``<role>-<id>.crt/.key`` in a PKI directory made by :func:`init_ca`."""
    d = pathlib.Path(directory)
    ca_crt, ca_key = d / "ca.crt", d / "ca.key"
    if not ca_key.exists():
        raise ConfigError(f"no CA in {d}: run `domainctl certs init` first")
    key, cert = issue_cert(
        ca_key.read_bytes(), ca_crt.read_bytes(), identity, hosts=hosts, days=days, not_before=not_before
    )
    base = f"{identity.role}-{identity.id}"
    # Key first, then certificate: a reload that sees the new certificate also sees its key.
    _write(d / f"{base}.key", key, private=True)
    _write(d / f"{base}.crt", cert, private=False)
    return CertFiles(str(ca_crt), str(d / f"{base}.crt"), str(d / f"{base}.key"))


def files_for(directory: str | os.PathLike[str], identity: Identity) -> CertFiles:
    d = pathlib.Path(directory)
    base = f"{identity.role}-{identity.id}"
    return CertFiles(str(d / "ca.crt"), str(d / f"{base}.crt"), str(d / f"{base}.key"))
