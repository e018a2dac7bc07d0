"""The web console's API against real in-process masters (no mocks): a follower's answer, the live
stream's limits, a revoked token ending its stream. The browser and federation tests are in
tests/e2e/test_console.py."""

from __future__ import annotations

import json
import pathlib
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from master_helpers import LoopThread

import dsdk
from master_domain import MasterDomain
from master_domain._config import MasterConfig
from master_domain.console import _server

pytestmark = pytest.mark.timeout(120)


def _config(tmp: pathlib.Path, ident: str, wait: float) -> MasterConfig:
    return MasterConfig(
        id=ident,
        listen="127.0.0.1:0",
        metrics_listen="",
        console_listen="127.0.0.1:0",
        bootstrap_token_file=str(tmp / "admin.token"),
        insecure=True,
        store=f"sqlite://{tmp / 'master.db'}",
        leader_lease_s=2,
        leader_wait_s=wait,
    )


class Pair:
    """A leader and a follower on one SQLite store, each with its console."""

    def __init__(self, tmp: pathlib.Path) -> None:
        self.loop = LoopThread()
        self.leader = MasterDomain(_config(tmp, "m1", 1.0))
        self.loop.call(self.leader.start())
        self.follower = MasterDomain(_config(tmp, "m2", 0.3))
        self.loop.call(self.follower.start())
        self.token = (tmp / "admin.token").read_text().strip()

    def close(self) -> None:
        for m in (self.follower, self.leader):
            self.loop.call(m.shutdown())
        self.loop.close()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    p = Pair(tmp_path_factory.mktemp("console"))
    try:
        yield p
    finally:
        p.close()


def get(url: str, token: str | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
            return r.status, json.loads(body) if r.headers["Content-Type"].startswith(
                "application/json"
            ) else body
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_console_is_plain_http_on_an_insecure_master(pair: Pair) -> None:
    assert pair.leader.console is not None and pair.leader.console.url.startswith("http://127.0.0.1:")
    status, body = get(pair.leader.console.url + "api/whoami", pair.token)
    assert (
        status == 200 and body["principal"]["role"] == "ROLE_ADMIN" and body["cluster"]["master_id"] == "m1"
    )
    status, body = get(pair.leader.console.url + "api/jobs/j-nope", pair.token)
    assert status == 404 and body["error"]["code"] == "NOT_FOUND"
    status, body = get(pair.leader.console.url + "api/jobs?state=BOGUS", pair.token)
    assert status == 400 and "BOGUS" in body["error"]["message"]


def test_a_followers_console_names_the_leader(pair: Pair) -> None:
    assert pair.follower.role == "follower" and pair.follower.console is not None
    url = pair.follower.console.url
    status, page = get(url)
    assert status == 200 and b"DomainOS console" in page  # the page loads and shows the banner
    status, body = get(url + "api/domains", pair.token)
    assert status == 503
    assert body["error"]["code"] == "UNAVAILABLE"
    assert body["error"]["leader"] == pair.leader.address
    assert "m1" in body["error"]["message"]


def test_live_clients_are_capped(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_server, "MAX_CLIENTS", 1)
    url = pair.leader.console.url + "api/events"  # type: ignore[union-attr]
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {pair.token}"})
    with urllib.request.urlopen(req, timeout=10) as first:
        assert first.readline() == b"event: snapshot\n"
        status, body = get(url, pair.token)
        assert status == 429 and "at most 1 live clients" in body["error"]["message"]


def test_a_revoked_token_ends_its_stream(pair: Pair) -> None:
    with dsdk.Client(pair.leader.address, insecure=True, token=pair.token) as admin:
        made = admin.create_token(role="admin", description="console test")
    url = pair.leader.console.url + "api/events"  # type: ignore[union-attr]
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {made.token}"})
    with urllib.request.urlopen(req, timeout=10) as stream:
        assert stream.readline() == b"event: snapshot\n"
        with dsdk.Client(pair.leader.address, insecure=True, token=pair.token) as admin:
            admin.revoke_token(made.info.token_id)
        lines = []
        for _ in range(50):
            line = stream.readline()
            if not line:
                break
            lines.append(line.decode())
    assert "event: error\n" in lines
    error = json.loads(lines[lines.index("event: error\n") + 1].removeprefix("data: "))
    assert error["error"]["code"] == "UNAUTHENTICATED" and "revoked" in error["error"]["message"]


def test_a_slow_client_is_dropped(pair: Pair) -> None:
    console = pair.leader.console
    assert console is not None
    client = _server._Client()
    for _ in range(_server.QUEUE_EVENTS):
        console._put(client, b"event: snapshot\ndata: {}\n\n")
    assert not client.dropped
    console._put(client, b"one too many")
    assert client.dropped
