"""The client side of mutual TLS: where the DSDK and the CLI find their certificate, what they say
when the master refuses it, and ``domainctl certs init | issue | show``."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import stat
from collections.abc import Iterator

import pytest
from tls_helpers import Pki, master_config, master_in_thread

import dsdk
from domainctl.__main__ import main
from domainos.errors import ConfigError, InvalidArgument, Unavailable
from domainos.security import CertFiles, Identity, check_usable, identity_of
from dsdk._address import NO_TLS_MESSAGE, default_client_id, resolve_tls
from dsdk._retry import NO_RETRY

pytestmark = pytest.mark.timeout(90)

ENV_VARS = ("DOMAINOS_MASTER", "DOMAINOS_TOKEN", "DOMAINOS_INSECURE", "DOMAINOS_TLS_CA", "DOMAINOS_TLS_CERT")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> pathlib.Path:
    """No test sees the developer's ~/.domainos, master, token or TLS settings."""
    for var in (*ENV_VARS, "DOMAINOS_TLS_KEY"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("DOMAINOS_HOME", str(home))
    return home


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _flags(files: CertFiles) -> list[str]:
    return ["--tls-ca", files.ca, "--tls-cert", files.cert, "--tls-key", files.key]


# -- where the client's files come from -------------------------------------------------------


def _write_state(home: pathlib.Path, **data: object) -> None:
    (home / "local").mkdir(parents=True, exist_ok=True)
    (home / "local" / "cluster.json").write_text(json.dumps(data))


def test_tls_files_are_found_in_the_documented_order(tmp_path: pathlib.Path) -> None:
    home = tmp_path / "h"
    own = Pki(home / "pki").files("client", default_client_id())
    local = CertFiles("/l/ca.crt", "/l/client.crt", "/l/client.key")
    _write_state(home, master="127.0.0.1:7070", tls=dataclasses.asdict(local))
    explicit = CertFiles("a", "b", "c")
    env = {
        "DOMAINOS_HOME": str(home),
        "DOMAINOS_TLS_CA": "/e/ca",
        "DOMAINOS_TLS_CERT": "/e/c",
        "DOMAINOS_TLS_KEY": "/e/k",
    }
    assert resolve_tls(explicit, env=env) == explicit
    assert resolve_tls(None, env=env) == CertFiles("/e/ca", "/e/c", "/e/k")
    env = {"DOMAINOS_HOME": str(home)}
    assert resolve_tls(None, env=env) == local  # the local federation, its master implied
    assert resolve_tls(None, address="127.0.0.1:7070", env=env) == local
    # Another master: the local federation's certificate is not for it; the user's own PKI is.
    assert resolve_tls(None, address="10.1.1.1:7070", env=env) == own
    # Plaintext only when asked for.
    assert resolve_tls(None, insecure=True, env=env) is None
    assert resolve_tls(None, env={**env, "DOMAINOS_INSECURE": "1"}) is None
    _write_state(home, master="127.0.0.1:7070", insecure=True)  # `domainctl up --insecure`
    assert resolve_tls(None, env=env) is None
    assert resolve_tls(None, address="10.1.1.1:7070", env=env) == own
    with pytest.raises(InvalidArgument, match="not both"):
        resolve_tls(explicit, insecure=True, env=env)


def test_partial_environment_and_nothing_found_say_what_to_do(tmp_path: pathlib.Path) -> None:
    env = {"DOMAINOS_HOME": str(tmp_path), "DOMAINOS_TLS_CA": "/e/ca"}
    with pytest.raises(ConfigError, match="DOMAINOS_TLS_CERT, DOMAINOS_TLS_KEY must be set too"):
        resolve_tls(None, env=env)
    with pytest.raises(ConfigError) as info:
        resolve_tls(None, address="10.0.0.1:7070", env={"DOMAINOS_HOME": str(tmp_path)})
    assert str(info.value) == NO_TLS_MESSAGE.format(where=" at 10.0.0.1:7070", pki=tmp_path / "pki")
    for hint in ("--tls-ca", "DOMAINOS_TLS_CA", "domainctl up", "domainctl certs init", "--insecure"):
        assert hint in str(info.value)


def test_cli_without_any_certificate_exits_2_with_the_hint(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "domains", "--master", "127.0.0.1:7070")
    assert (code, out) == (2, "")
    assert err.startswith("error: no TLS client certificate found for the DomainOS master at 127.0.0.1:7070")
    assert err.count("\n") == 1
    code, _out, err = run(capsys, "domains", "--master", "127.0.0.1:7070", "--tls-ca", "ca.crt")
    assert code == 2 and err == (
        "error: --tls-cert: --tls-ca, --tls-cert and --tls-key go together: a CA, a certificate and its key\n"
    )


# -- domainctl certs ----------------------------------------------------------------------------


def test_certs_init_issue_show(capsys: pytest.CaptureFixture[str], _isolated: pathlib.Path) -> None:
    pki = _isolated / "pki"
    code, out, err = run(capsys, "certs", "init")
    assert code == 0, err
    client = f"client-{default_client_id()}"
    assert f"created a cluster CA in {pki}" in out and f"{pki / client}.crt" in out
    assert stat.S_IMODE(os.stat(pki / "ca.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(pki / f"{client}.key").st_mode) == 0o600
    # The DSDK and the CLI find this certificate with no flags.
    assert resolve_tls(None, address="10.0.0.1:7070") == CertFiles(
        str(pki / "ca.crt"), str(pki / f"{client}.crt"), str(pki / f"{client}.key")
    )
    ca_before = (pki / "ca.crt").read_bytes()
    code, out, _ = run(capsys, "certs", "init")
    assert code == 0 and "kept the existing cluster CA" in out and (pki / "ca.crt").read_bytes() == ca_before

    code, out, err = run(
        capsys, "certs", "issue", "--role", "agent", "--id", "n7", "--host", "10.0.0.7", "--days", "30"
    )
    assert code == 0, err
    files = CertFiles(str(pki / "ca.crt"), str(pki / "agent-n7.crt"), str(pki / "agent-n7.key"))
    assert check_usable(files) == Identity("agent", "n7") and "issued agent/n7 for 10.0.0.7" in out
    first = pathlib.Path(files.cert).read_bytes()
    assert run(capsys, "certs", "issue", "--role", "agent", "--id", "n7")[0] == 0  # rotation: in place
    assert pathlib.Path(files.cert).read_bytes() != first

    code, out, _ = run(capsys, "certs", "show", files.cert)
    assert code == 0
    assert "role:" in out and " agent" in out and "n7" in out and "valid, expires in" in out
    assert "issuer:" in out and "DomainOS cluster CA" in out
    code, out, _ = run(capsys, "certs", "show", files.cert, "-o", "json")
    shown = json.loads(out)
    assert (shown["role"], shown["id"], shown["hosts"]) == ("agent", "n7", ["localhost", "127.0.0.1"])


def test_certs_errors_exit_2_with_a_precise_message(
    capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path
) -> None:
    empty = tmp_path / "empty"
    code, _, err = run(capsys, "certs", "issue", "--role", "agent", "--id", "n1", "--dir", str(empty))
    assert code == 2 and err == f"error: no CA in {empty}: run `domainctl certs init` first\n"
    assert run(capsys, "certs", "init", "--dir", str(empty))[0] == 0
    code, _, err = run(capsys, "certs", "issue", "--role", "root", "--id", "x", "--dir", str(empty))
    assert (
        code == 2 and err == "error: --role: unknown role 'root'; allowed: master, subdomain, agent, client\n"
    )
    code, _, err = run(capsys, "certs", "issue", "--role", "agent", "--id", "a/b", "--dir", str(empty))
    assert code == 2 and "invalid id 'a/b'" in err
    code, _, err = run(
        capsys, "certs", "issue", "--role", "agent", "--id", "n1", "--days", "0", "--dir", str(empty)
    )
    assert code == 2 and err.startswith("error: --days: must be greater than 0")
    (tmp_path / "junk.crt").write_text("not a certificate")
    code, _, err = run(capsys, "certs", "show", str(tmp_path / "junk.crt"))
    assert code == 2 and "is not a PEM certificate" in err
    expired = Pki(tmp_path / "p").expired("client", "old")
    code, out, _ = run(capsys, "certs", "show", expired.cert)
    assert code == 0 and "EXPIRED 2 days ago" in out


# -- against a real master over mutual TLS ----------------------------------------------------


@pytest.fixture
def tls_master(tmp_path: pathlib.Path) -> Iterator[tuple[str, Pki, str]]:
    """A TLS master in a thread: its address, the PKI, and its bootstrap admin token."""
    pki = Pki(tmp_path / "pki")
    with master_in_thread(master_config(pki, tmp_path)) as master:
        yield master.address, pki, (tmp_path / "admin.token").read_text().strip()


def test_dsdk_and_cli_work_with_a_client_certificate(
    tls_master: tuple[str, Pki, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    address, pki, token = tls_master
    alice = pki.files("client", "alice")
    with dsdk.connect(address, tls=alice, token=token) as client:
        assert client.info().master_id == "master-1"
        assert client.whoami().cert_id == "alice"
    monkeypatch.setenv("DOMAINOS_TOKEN", token)
    code, out, err = run(capsys, "info", "--master", address, *_flags(alice))
    assert code == 0 and "master-1" in out, err
    monkeypatch.setenv("DOMAINOS_TLS_CA", alice.ca)
    monkeypatch.setenv("DOMAINOS_TLS_CERT", alice.cert)
    monkeypatch.setenv("DOMAINOS_TLS_KEY", alice.key)
    assert run(capsys, "domains", "--master", address)[0] == 0


def test_a_client_certificate_from_another_ca_is_refused_and_the_error_says_why(
    tls_master: tuple[str, Pki, str], tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address, pki, token = tls_master
    theirs = Pki(tmp_path / "foreign").files("client", "mallory")
    mallory = CertFiles(str(pki.dir / "ca.crt"), theirs.cert, theirs.key)  # trusts the master, not trusted
    with (
        dsdk.connect(address, tls=mallory, token=token, retry=NO_RETRY) as client,
        pytest.raises(Unavailable) as info,
    ):
        client.info()
    text = str(info.value)
    assert text.startswith(f"cannot reach the DomainOS master at {address}: ")
    assert "refused this client's certificate" in text and "CA" in text, text
    code, out, err = run(capsys, "info", "--master", address, *_flags(mallory))
    assert (code, out) == (3, "")
    assert (
        err.startswith(f"error: cannot reach the DomainOS master at {address}: ")
        and "refused this client" in err
    )
    # The other way round: a client that does not trust the master's CA says that too.
    stranger = Pki(tmp_path / "stranger").files("client", "s")
    with (
        dsdk.connect(address, tls=stranger, token=token, retry=NO_RETRY) as client,
        pytest.raises(Unavailable) as info,
    ):
        client.info()
    assert "the server's certificate is not trusted by" in str(info.value)


def test_an_expired_client_certificate_is_a_clear_error(
    tls_master: tuple[str, Pki, str], capsys: pytest.CaptureFixture[str]
) -> None:
    address, pki, token = tls_master
    old = pki.expired("client", "old")
    with pytest.raises(
        ConfigError, match=r"client-old\.crt expired at .* UTC; issue a new one with `domainctl certs issue`"
    ):
        dsdk.connect(address, tls=old, token=token)
    code, _, err = run(capsys, "domains", "--master", address, *_flags(old))
    assert code == 2 and "client-old.crt expired at" in err and err.count("\n") == 1


def test_a_plaintext_client_is_refused(
    tls_master: tuple[str, Pki, str], capsys: pytest.CaptureFixture[str]
) -> None:
    address, _pki, token = tls_master
    with (
        dsdk.connect(address, insecure=True, token=token, retry=NO_RETRY) as client,
        pytest.raises(Unavailable),
    ):
        client.info()
    code, _, err = run(capsys, "domains", "--master", address, "--insecure")
    assert code == 3 and err.startswith(f"error: cannot reach the DomainOS master at {address}")


def test_an_agent_certificate_cannot_use_the_client_api(
    tls_master: tuple[str, Pki, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    address, pki, token = tls_master
    agent = pki.files("agent", "n1")
    assert identity_of(pathlib.Path(agent.cert).read_bytes()) == Identity("agent", "n1")
    monkeypatch.setenv("DOMAINOS_TOKEN", token)
    code, _, err = run(capsys, "jobs", "--master", address, *_flags(agent))
    assert code == 1
    assert err == ("error: a agent certificate (agent/n1) cannot call this; it needs a client certificate\n")
