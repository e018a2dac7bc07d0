"""The master's web console end to end: a real `domainctl up` federation (mutual TLS, so the console
is served over HTTPS with the master's certificate), its JSON API over plain HTTP clients, and the
page itself in Debian's headless Chromium driven by Selenium, with screenshots checked.

The API tests are ``e2e``; the browser test is also ``ops`` and is skipped, saying why, when
/usr/bin/chromium, /usr/bin/chromedriver or the selenium package is missing.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import ssl
import struct
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from typing import Any, cast

import pytest
from e2e_helpers import domainctl_env, run_domainctl, wait_for

from domainctl import _render

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
MARKER = "console-e2e-marker"

pytestmark = [pytest.mark.e2e]


class Fed:
    """A `domainctl up --detach` federation (the default topology: 2 regions x 1 sub-domain x 2 agents)."""

    def __init__(self, home: pathlib.Path) -> None:
        self.home = home
        self.env = domainctl_env(home, "DOMAINOS_TOKEN")
        self.up_output = ""

    def ctl(self, *args: str, check: bool = True, env: dict[str, str] | None = None) -> str:
        proc = run_domainctl(*args, env=env or self.env)
        print(f"$ domainctl {' '.join(args)}  [exit {proc.returncode}]\n{proc.stdout}{proc.stderr}")
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc.stdout

    @property
    def state(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.home / "local" / "cluster.json").read_text())
        return data

    @property
    def console(self) -> str:
        master = next(c for c in self.state["components"] if c["kind"] == "master")
        return str(master["console"])

    @property
    def admin_token(self) -> str:
        return (self.home / "local" / "admin.token").read_text().strip()

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.state["tls"]["ca"])

    def get(self, path: str, token: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        req = urllib.request.Request(self.console + path.lstrip("/"), headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=15, context=self.ssl_context()) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    f = Fed(tmp_path_factory.mktemp("console") / "home")
    f.up_output = f.ctl("up", "--detach", "--home", str(f.home), "--timeout", "90")
    try:
        yield f
    finally:
        f.ctl("down", "--home", str(f.home), check=False)


def _submit(fed: Fed, *command: str, token: str | None = None) -> str:
    env = {**fed.env, "DOMAINOS_TOKEN": token} if token else None
    return fed.ctl("run", "--cpus", "0.25", "--mem", "32Mi", "--", *command, env=env).strip()


# -- the API --------------------------------------------------------------------------------------


def test_up_prints_the_console_url_and_serves_it_over_https(fed: Fed) -> None:
    assert fed.console.startswith("https://127.0.0.1:")
    assert f"console:     {fed.console}" in fed.up_output
    # The page and its scripts are served without a token; the API is not.
    with urllib.request.urlopen(fed.console, timeout=10, context=fed.ssl_context()) as r:
        page = r.read().decode()
        assert r.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert "DomainOS console" in page and "/static/app.js" in page


def test_api_requires_a_token_and_says_so(fed: Fed) -> None:
    status, body = fed.get("/api/domains")
    assert status == 401 and body["error"]["code"] == "UNAUTHENTICATED"
    assert "no token" in body["error"]["message"]
    status, body = fed.get("/api/jobs", "dos_000000000000_" + "x" * 43)
    assert status == 401 and "token" in body["error"]["message"]
    status, body = fed.get("/api/whoami", fed.admin_token)
    assert status == 200 and body["principal"]["role"] == "ROLE_ADMIN"


def test_domains_match_domainctl(fed: Fed) -> None:
    status, body = fed.get("/api/domains", fed.admin_token)
    assert status == 200
    cli = json.loads(fed.ctl("domains", "-o", "json"))
    api = {sd["subdomain_id"]: sd for r in body["regions"] for sd in r["subdomains"]}
    assert {sd["subdomain_id"] for r in cli for sd in r["subdomains"]} == set(api) == {"east-1", "west-1"}
    for region in cli:
        for sd in region["subdomains"]:
            summary = api[sd["subdomain_id"]]["summary"]
            assert summary["nodes_total"] == sd["nodes_total"] == 2
            assert int(summary["capacity"]["cpu_millis"]) == sd["capacity"]["cpu_millis"]
            assert int(summary["capacity"]["memory_bytes"]) == sd["capacity"]["memory_bytes"]


def test_tenant_isolation_mirrors_grpc(fed: Fed) -> None:
    admin_job = _submit(fed, "python3", "-c", "print('admin')")
    fed.ctl("tenant", "create", "acme")
    acme = fed.ctl("token", "create", "--tenant", "acme", "--role", "user").strip().splitlines()[-1].strip()
    assert acme.startswith("dos_"), acme
    acme_job = _submit(fed, "python3", "-c", "print('acme')", token=acme)

    status, body = fed.get("/api/jobs", acme)
    assert status == 200
    assert [j["job_id"] for j in body["jobs"]] == [acme_job]
    status, body = fed.get(f"/api/jobs/{admin_job}", acme)
    assert status == 404 and body["error"]["code"] == "NOT_FOUND"  # the same words as gRPC's
    assert fed.get(f"/api/jobs/{admin_job}/logs", acme)[0] == 404
    assert fed.get(f"/api/jobs/{acme_job}/explain", acme)[0] == 200
    status, body = fed.get("/api/nodes", acme)
    assert status == 403 and "ListNodes" in body["error"]["message"]
    assert fed.get("/api/tenants", acme)[0] == 403
    assert fed.get("/api/quotas?tenant=system", acme)[0] == 403

    status, body = fed.get("/api/jobs", fed.admin_token)
    assert {admin_job, acme_job} <= {j["job_id"] for j in body["jobs"]}
    status, body = fed.get("/api/tenants", fed.admin_token)
    assert {"system", "acme"} <= {t["name"] for t in body["tenants"]}


def test_live_events_stream_snapshots_with_the_header_token(fed: Fed) -> None:
    req = urllib.request.Request(
        fed.console + "api/events", headers={"Authorization": f"Bearer {fed.admin_token}"}
    )
    with urllib.request.urlopen(req, timeout=15, context=fed.ssl_context()) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        first = r.readline().decode()
        data = r.readline().decode()
    assert first == "event: snapshot\n"
    snapshot = json.loads(data.removeprefix("data: "))
    assert {r["name"] for r in snapshot["domains"]["regions"]} == {"east", "west"}
    assert "jobs" in snapshot["jobs"]
    assert fed.get("/api/events")[0] == 401


# -- the page in a browser ------------------------------------------------------------------------


def _browser_missing() -> str:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (os.path.exists(p) and os.access(p, os.X_OK))]
    if missing:
        return f"needs Debian's chromium and chromium-driver ({', '.join(missing)} missing: apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "needs the selenium package (pip install -e '.[test]')"
    return ""


def png_is_a_picture(path: pathlib.Path) -> tuple[int, int, int]:
    """(width, height, distinct byte values of the decoded image data); asserts a valid PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    return width, height, len(set(raw))


def _screenshot(driver: Any, out: pathlib.Path, name: str) -> pathlib.Path:
    path = out / f"{name}.png"
    assert driver.save_screenshot(str(path))
    width, height, distinct = png_is_a_picture(path)
    assert width >= 800 and height >= 600, (width, height)
    # A blank or flat page decodes to a handful of byte values (filter bytes and one colour).
    assert distinct > 32, f"{name}.png looks flat ({distinct} distinct values)"
    assert path.stat().st_size > 8_000, f"{name}.png is only {path.stat().st_size} bytes"
    return path


@pytest.mark.ops
def test_console_in_headless_chromium(fed: Fed, tmp_path: pathlib.Path) -> None:
    why = _browser_missing()
    if why:
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    # A job that runs a few seconds: seen RUNNING (or queued), then SUCCEEDED without a reload.
    job = _submit(
        fed, "python3", "-c", f"import time; print('{MARKER}', flush=True); time.sleep(5); print('bye')"
    )

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ):
        options.add_argument(arg)
    options.set_capability("acceptInsecureCerts", True)  # the federation's own CA signed the certificate
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    started = time.monotonic()
    shots: list[pathlib.Path] = []
    try:
        driver.set_page_load_timeout(20)
        driver.get(fed.console)
        q = driver.find_element
        qs = driver.find_elements

        def text_of(css: str) -> str | None:
            """An element's text read in one step: live updates replace rows and cards, so an element
            found first and read after may be gone (stale) by then."""
            return cast(
                "str | None",
                driver.execute_script(
                    "const e = document.querySelector(arguments[0]); return e ? e.innerText : null", css
                ),
            )

        # A wrong token: the error is shown and the page stays on the login form.
        wait_for(lambda: q(By.ID, "login-view").is_displayed(), 10, "the login form")
        q(By.ID, "token").send_keys("dos_000000000000_" + "y" * 43)
        q(By.CSS_SELECTOR, "#login-form button").click()
        error = wait_for(lambda: q(By.ID, "login-error").text, 10, "the login error")
        assert "unknown token" in error or "token" in error, error
        shots.append(_screenshot(driver, tmp_path, "login-error"))

        # The admin token: the domain tree with the capacity `domainctl domains` shows.
        q(By.ID, "token").clear()
        q(By.ID, "token").send_keys(fed.admin_token)
        q(By.CSS_SELECTOR, "#login-form button").click()
        wait_for(lambda: len(qs(By.CSS_SELECTOR, ".subdomain")) == 2, 15, "two sub-domain cards")
        assert {e.get_attribute("data-region") for e in qs(By.CSS_SELECTOR, ".region")} == {"east", "west"}

        def shown(sid: str, name: str) -> str:
            return str(text_of(f".subdomain[data-subdomain='{sid}'] [data-field='{name}']"))

        def as_domainctl_shows(regions: list[dict[str, Any]]) -> bool:
            for region in regions:
                for sd in region["subdomains"]:
                    sid, cap, free = sd["subdomain_id"], sd["capacity"], sd["free"]
                    want = {
                        "status": "connected",
                        "nodes": f"{sd['nodes_ready']}/{sd['nodes_total']} ready",
                        "cpus": f"{_render.fmt_cpus(free['cpu_millis'])}/{_render.fmt_cpus(cap['cpu_millis'])}",
                        "memory": f"{_render.fmt_mem(free['memory_bytes'])}/{_render.fmt_mem(cap['memory_bytes'])}",
                        "tasks": str(sd["running_tasks"]),
                    }
                    got = {k: shown(sid, k) for k in want}
                    if got != want:
                        print(f"{sid}: page {got} != domainctl {want}")
                        return False
            return True

        # The job may hold a share of a sub-domain: compare with what `domainctl domains` says now.
        wait_for(lambda: as_domainctl_shows(json.loads(fed.ctl("domains", "-o", "json"))), 15, "the capacity")
        assert "live" in q(By.ID, "live").text
        shots.append(_screenshot(driver, tmp_path, "domains"))

        # The heat map: one cell per node.
        driver.execute_script("window.location.hash = '#/nodes'")
        wait_for(lambda: len(qs(By.CSS_SELECTOR, "#heatmap .cell")) == 4, 15, "one cell per node")
        assert {c.get_attribute("data-node") for c in qs(By.CSS_SELECTOR, "#heatmap .cell")} == {
            "east-1-n1", "east-1-n2", "west-1-n1", "west-1-n2"
        }  # fmt: skip
        qs(By.CSS_SELECTOR, "#heatmap .cell")[0].click()
        assert "state: ready" in wait_for(lambda: q(By.ID, "node-detail").text, 5, "the node's details")
        shots.append(_screenshot(driver, tmp_path, "nodes"))

        # The job list updates live: no reload (the marker set on this page survives).
        driver.execute_script("window.location.hash = '#/jobs'; window.__same_page = 'yes'")
        row = f"#jobs-table tr[data-job='{job}'] [data-field='state']"
        first = wait_for(lambda: text_of(row), 10, "the job row")
        wait_for(lambda: text_of(row) == "SUCCEEDED", 30, f"{job} SUCCEEDED (was {first})")
        assert driver.execute_script("return window.__same_page") == "yes"
        shots.append(_screenshot(driver, tmp_path, "jobs"))
        # ... and so does the domain tree: the job's share is free again, as domainctl says.
        driver.execute_script("window.location.hash = '#/domains'")
        # Sub-domains report the freed share in their next summary (about a second later).
        idle = wait_for(
            lambda: (
                (d := json.loads(fed.ctl("domains", "-o", "json")))
                and all(sd["running_tasks"] == 0 for r in d for sd in r["subdomains"])
                and d
            ),
            15,
            "domainctl domains: no task running",
        )
        wait_for(lambda: as_domainctl_shows(idle), 15, "the capacity after the job")
        assert driver.execute_script("return window.__same_page") == "yes"
        driver.execute_script("window.location.hash = '#/jobs'")

        # The job page: tasks, the scheduler's explanation and the task's output.
        q(By.CSS_SELECTOR, f"#jobs-table tr[data-job='{job}'] a").click()
        wait_for(lambda: MARKER in q(By.ID, "job-logs").text, 15, "the job's output in the page")
        assert q(By.ID, "job-state").text == "SUCCEEDED"
        assert f"job {job}" in q(By.ID, "job-explain").text
        assert len(qs(By.CSS_SELECTOR, "#tasks-table tbody tr")) == 1
        shots.append(_screenshot(driver, tmp_path, "job"))

        driver.execute_script("window.location.hash = '#/tenants'")
        wait_for(lambda: qs(By.CSS_SELECTOR, "#tenant-list [data-tenant='system']"), 10, "the tenant list")
        shots.append(_screenshot(driver, tmp_path, "tenants"))
    finally:
        driver.quit()
    took = time.monotonic() - started
    print(f"browser test: {took:.1f}s, screenshots in {tmp_path}: {[p.name for p in shots]}")
    assert took < 90, f"the browser test took {took:.0f}s"
    assert shutil.which(CHROMIUM) is not None
