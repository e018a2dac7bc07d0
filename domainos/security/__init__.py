"""Identities and transport security: the cluster CA, component certificates, TLS diagnosis."""

from domainos.security._diagnose import diagnose_tls
from domainos.security._pki import (
    ROLES,
    CertFiles,
    CertInfo,
    Identity,
    check_usable,
    create_ca,
    describe,
    files_for,
    identity_of,
    init_ca,
    issue_cert,
    issue_files,
    validity,
)

__all__ = [
    "ROLES",
    "CertFiles",
    "CertInfo",
    "Identity",
    "check_usable",
    "create_ca",
    "describe",
    "diagnose_tls",
    "files_for",
    "identity_of",
    "init_ca",
    "issue_cert",
    "issue_files",
    "validity",
]
