"""The client side of tokens: the credentials file, the DSDK's bearer token and admin calls, and
``domainctl login | whoami | tenant | token | audit`` against a real in-process master."""

from __future__ import annotations

import io
import json
import os
import pathlib
import stat
from collections.abc import Iterator

import pytest
from auth_helpers import MasterThread

import dsdk
from domainctl.__main__ import main
from domainos.errors import (
    ConfigError,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
)
from dsdk import _credentials

pytestmark = pytest.mark.timeout(60)

TOKEN_A = "dos_aaaaaaaaaaaa_" + "a" * 43
TOKEN_B = "dos_bbbbbbbbbbbb_" + "b" * 43


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> pathlib.Path:
    home = tmp_path / "home"
    monkeypatch.setenv("DOMAINOS_HOME", str(home))
    monkeypatch.setenv("DOMAINOS_INSECURE", "1")
    monkeypatch.delenv("DOMAINOS_TOKEN", raising=False)
    monkeypatch.delenv("DOMAINOS_MASTER", raising=False)
    return home


@pytest.fixture
def master(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, home: pathlib.Path
) -> Iterator[MasterThread]:
    m = MasterThread(tmp_path)
    monkeypatch.setenv("DOMAINOS_MASTER", m.address)
    try:
        yield m
    finally:
        m.close()


def ctl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- the credentials file and durations (pure) ---------------------------------------------------------


def test_token_precedence_env_then_address_then_default(home: pathlib.Path) -> None:
    assert _credentials.token_for("m:1") is None
    path = dsdk.save_token("m:1", TOKEN_A)
    assert path == home / "credentials"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    dsdk.save_token("m:2", TOKEN_B, default=False)
    assert json.loads(path.read_text()) == {"m:1": TOKEN_A, "default": TOKEN_A, "m:2": TOKEN_B}
    assert _credentials.token_for("m:1") == TOKEN_A
    assert _credentials.token_for("m:2") == TOKEN_B
    assert _credentials.token_for("elsewhere:3") == TOKEN_A  # the default
    assert (
        _credentials.token_for("m:2", env={"DOMAINOS_TOKEN": TOKEN_A, "DOMAINOS_HOME": str(home)}) == TOKEN_A
    )
    _credentials.forget_token("m:2")
    assert "m:2" not in json.loads(path.read_text())


def test_credentials_file_refusals(home: pathlib.Path) -> None:
    path = dsdk.save_token("m:1", TOKEN_A)
    os.chmod(path, 0o644)
    with pytest.raises(FailedPrecondition, match=r"readable by group or others \(mode 644\).*chmod 600"):
        dsdk.save_token("m:1", TOKEN_B)
    assert json.loads(path.read_text())["m:1"] == TOKEN_A  # nothing was written
    os.chmod(path, 0o600)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        _credentials.token_for("m:1")
    with pytest.raises(InvalidArgument, match="expected a DomainOS token"):
        dsdk.save_token("m:1", "hunter2")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("45s", 45), ("2w", 14 * 86400), ("120", 120),
     ("1.5h", 5400), ("never", 0), ("0", 0), (60, 60)],
)  # fmt: skip
def test_parse_ttl(text: str | int, seconds: float) -> None:
    assert dsdk.parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "30 days", "-1d", "d", "1y", "nan", "99999d"])
def test_parse_ttl_refuses(text: str) -> None:
    with pytest.raises(InvalidArgument, match="ttl"):
        dsdk.parse_ttl(text)


# -- the DSDK ---------------------------------------------------------------------------------------


def test_dsdk_admin_calls_and_bearer_token(master: MasterThread) -> None:
    with dsdk.connect(token=master.admin_token) as admin:
        me = admin.whoami()
        assert (me.role, me.tenant, me.token_id) == ("admin", "", master.admin_token[4:16])
        tenant = admin.create_tenant("acme", labels={"team": "ml"})
        assert tenant.name == "acme" and dict(tenant.labels) == {"team": "ml"}
        assert [t.name for t in admin.tenants()] == ["acme", "system"]
        made = admin.create_token(tenant="acme", ttl="1h", description="ci")
        assert made.token not in repr(made)  # never printed by accident
        assert made.info.role == "user" and made.info.expires_at == pytest.approx(made.info.created_at + 3600)
        assert [t.token_id for t in admin.tokens("acme")] == [made.info.token_id]
        with pytest.raises(InvalidArgument, match="role"):
            admin.create_token(tenant="acme", role="root")
    with dsdk.connect(token=made.token) as user:
        job = user.submit({"command": ["true"]})
        assert job.spec.tenant == "acme"
        with pytest.raises(PermissionDenied, match="role user cannot call ListTokens; it needs admin"):
            user.tokens()
    with dsdk.connect(token=master.admin_token) as admin:
        revoked = admin.revoke_token(made.token)  # a whole token pasted: only its id is sent
        assert revoked.revoked_at > 0 and revoked.state(revoked.revoked_at) == "revoked"
        entries = admin.audit(10)
        assert [e.method for e in entries][:4] == ["RevokeToken", "SubmitJob", "CreateToken", "CreateTenant"]
        assert entries[1].tenant == "acme" and entries[1].allowed
        assert len(admin.audit(2)) == 2
    with dsdk.connect() as anonymous, pytest.raises(Unauthenticated, match="no token: run `domainctl login`"):
        anonymous.info()


# -- the CLI ------------------------------------------------------------------------------------------


def test_login_checks_the_token_then_keeps_it(
    master: MasterThread,
    home: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, _, err = ctl(capsys, "whoami")
    assert code == 1 and err.startswith("error: no token: run `domainctl login`")
    code, _, err = ctl(capsys, "login", "--token", "dos_0123456789ab_" + "x" * 43)
    assert code == 1 and err.startswith("error: unknown token 0123456789ab")
    assert not (home / "credentials").exists()  # a token the master refused is not kept
    code, _, err = ctl(capsys, "login", "--token", "not-a-token")
    assert code == 2 and "expected a DomainOS token" in err
    monkeypatch.setattr("sys.stdin", io.StringIO(master.admin_token + "\n"))
    code, out, _ = ctl(capsys, "login")
    assert code == 0 and f"logged in to {master.address} as admin (token {master.admin_token[4:16]})" in out
    assert stat.S_IMODE((home / "credentials").stat().st_mode) == 0o600
    code, out, _ = ctl(capsys, "whoami")
    assert code == 0 and "role:         admin" in out

    assert ctl(capsys, "tenant", "create", "acme", "--label", "team=ml")[:2] == (0, "tenant acme created\n")
    code, out, _ = ctl(capsys, "tenant", "ls")
    assert code == 0 and out.splitlines()[0].split() == ["TENANT", "AGE", "CREATED", "BY", "LABELS"]
    assert "team=ml" in out
    code, _, err = ctl(capsys, "tenant", "create", "acme")
    assert (code, err) == (1, "error: name: tenant 'acme' already exists\n")
    code, _, err = ctl(capsys, "token", "create", "--tenant", "nope")
    assert code == 1
    assert (
        err == "error: tenant: tenant 'nope' does not exist; create it with `domainctl tenant create nope`\n"
    )
    assert ctl(capsys, "token", "create", "--ttl", "soon", "--tenant", "acme")[0] == 2
    assert ctl(capsys, "token", "create", "--role", "root")[0] == 2
    assert ctl(capsys, "token", "create")[0] == 2  # a user token needs --tenant

    code, out, err = ctl(capsys, "token", "create", "--tenant", "acme", "--ttl", "30d", "--description", "ci")
    assert code == 0 and "shown only this once" in err
    user_token = out.strip()
    assert user_token.startswith("dos_") and user_token not in err
    code, out, _ = ctl(capsys, "token", "ls", "--tenant", "acme")
    assert code == 0 and user_token[4:16] in out and user_token[17:] not in out and "ci" in out
    code, out, _ = ctl(capsys, "-o", "json", "token", "ls")
    listed = json.loads(out)
    assert {t["token_id"] for t in listed} == {master.admin_token[4:16], user_token[4:16]}
    assert all("hash" not in t and "salt" not in t for t in listed)

    code, out, _ = ctl(capsys, "login", "--token", user_token)
    assert code == 0 and "as user of tenant acme" in out
    code, _, err = ctl(capsys, "audit")
    assert (code, err) == (1, "error: role user cannot call ReadAudit; it needs admin\n")
    code, _, err = ctl(capsys, "token", "revoke", user_token[4:16])
    assert code == 1 and "PERMISSION" not in err and "it needs admin" in err
    code, out, _ = ctl(capsys, "run", "--", "true")
    assert code == 0 and out.startswith("j-")

    token_file = home.parent / "admin.tok"
    token_file.write_text(master.admin_token)
    assert ctl(capsys, "login", "--token-file", str(token_file))[0] == 0
    assert ctl(capsys, "token", "revoke", user_token[4:16])[:2] == (0, f"token {user_token[4:16]} revoked\n")
    code, out, _ = ctl(capsys, "audit", "--limit", "3", "--since", "1h")
    methods = [next(w for w in line.split() if w.endswith(("Token", "Job"))) for line in out.splitlines()[1:]]
    assert code == 0 and methods == ["RevokeToken", "SubmitJob", "RevokeToken"]
    assert "PERMISSION_DENIED: role user cannot call RevokeToken" in out
    assert ctl(capsys, "audit", "--since", "yesterday")[0] == 2
    # DOMAINOS_TOKEN overrides the file.
    monkeypatch.setenv("DOMAINOS_TOKEN", user_token)
    code, _, err = ctl(capsys, "whoami")
    assert code == 1 and f"token {user_token[4:16]} was revoked at" in err
