"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright, against a
running agent with real nginx and dnsmasq (and the controller, reading a fake Docker API).

What a user would notice: the routes and task counts on the page; a service scaled (its DNS
answer changes) and the page following without a reload; a refused certificate shown refused;
request rates and error ratios from the access-log metrics; the VIP state the keepalived notify
hook recorded. Screenshots at a desktop and a phone width are saved in the test's tmp dir
(and, with SCREENSHOTS_DIR=docs/images, where the README shows one).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.integration.conftest import TASK_ADDRESSES
from tests.support import free_port, missing, require_programs, wait_until
from tests.support.controller import ControllerProcess
from tests.support.fakedocker import FakeDocker
from tests.support.gateway import Agent, Dnsmasq, Upstream, http_get, nginx_wrapper
from tests.support.tlsca import DAY, NOW, TestCA

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

pytestmark = [pytest.mark.integration, pytest.mark.browser]

T1, T2, T3, T4 = TASK_ADDRESSES[:4]
StartAgent = Callable[..., Agent]
WAIT_MS = 15_000  # how long the page may take to show a change (it polls every 2 s)
# Headless, and nothing that reaches outside hosts (updates, sync, safe browsing, QUIC probes).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--disable-extensions"]
DESKTOP = {"width": 1280, "height": 1000}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    chromium = require_programs("chromium")["chromium"]
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        missing("playwright is not installed (the test extras: scripts/setup.sh test)")
    expect.set_options(timeout=WAIT_MS)  # the page polls every 2 s, reloads are coalesced
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=chromium,
            headless=True, args=CHROMIUM_ARGS, viewport=DESKTOP)
        context.set_default_timeout(WAIT_MS)
        yield context
        context.close()


@pytest.fixture
def page(browser: BrowserContext) -> Iterator[Page]:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    page.close()
    assert errors == [], f"the page's script failed: {errors}"


def screenshot(page: Page, tmp_path: Path, name: str, full_page: bool = True) -> Path:
    """Save a screenshot in the tmp dir; copy it to $SCREENSHOTS_DIR when set."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    target = os.environ.get("SCREENSHOTS_DIR")
    if target:
        shutil.copy(path, Path(target) / path.name)
    return path


def notify(textfile: Path, state: str, priority: int) -> None:
    """What keepalived runs on a transition: the notify hook, as configured in keepalived/."""
    subprocess.run([sys.executable, "-m", "agent", "keepalived", "notify", "--textfile",
                    str(textfile), "INSTANCE", "gateway_vip", state, str(priority)],
                   check=True, capture_output=True, cwd=Path(__file__).resolve().parents[2])


def cell(page: Page, kind: str, key: str, column: str) -> str:
    return page.locator(f'tr[data-{kind}="{key}"] td.{column}').inner_text()


def test_the_dashboard_shows_routes_tasks_certificates_traffic_and_follows_changes(
        tmp_path: Path, dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent, page: Page) -> None:
    from playwright.sync_api import expect

    ca = TestCA()
    certs = tmp_path / "certs"
    certs.mkdir()
    ca.issue("shop.example.test").write(certs, "shop.example.test")
    ca.issue("old.example.test", not_before=NOW - 30 * DAY, not_after=NOW - DAY).write(
        certs, "old.example.test")
    vrrp = tmp_path / "node-exporter" / "keepalived.prom"
    notify(vrrp, "BACKUP", 100)
    notify(vrrp, "MASTER", 150)
    dns.set("tasks.managerhttp", [T1, T2])
    dns.set("tasks.shop", [T3])
    dns.set("tasks.dmzhttp", [T4])
    p = upstream_port
    routes: list[dict[str, object]] = [
        {"hosts": ["managerhttp", "manager.example.test"], "service": "managerhttp", "port": p},
        {"hosts": ["shop.example.test"], "service": "shop", "port": p, "tls": True},
        {"hosts": ["old.example.test"], "service": "shop", "port": p, "tls": True},
        {"hosts": ["api.example.test"], "path": "/v1", "service": "api", "port": p},
        {"hosts": ["api.example.test"], "path": "/v1", "service": "api", "port": p,
         "match": {"headers": {"X-Env": "beta"}, "methods": ["GET"]}},
        {"hosts": ["dmzhttp"], "service": "dmzhttp", "port": p, "zone": "dmz"},
    ]
    https_port = free_port()
    tcp_port = free_port()  # a tcp route to the same tasks: its connections on the page
    agent = start_agent(routes, "--https-listen", f"127.0.0.1:{https_port}",
                        "--certs-dir", str(certs),
                        "--tls-ca-bundle", str(ca.write_bundle(tmp_path / "roots.pem")),
                        "--access-log-metrics", "on", "--vrrp-state-file", str(vrrp),
                        tcp=[{"listen": tcp_port, "service": "managerhttp", "port": p}])
    assert agent.backends_seen("managerhttp", 4) == {"task1", "task2"}

    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    page.goto(f"http://127.0.0.1:{agent.admin_port}/")  # the admin port's root leads there
    assert page.url.endswith("/dashboard/")
    expect(page.locator("#summary")).to_have_text("ready")

    # routes with hosts, path, target, zone and source; task counts per route and service
    rows = page.locator("#routes tbody tr")
    expect(rows).to_have_count(6)
    manager = page.locator('tr[data-route="managerhttp/"]')
    expect(manager).to_contain_text("managerhttp, manager.example.test")
    expect(manager).to_contain_text(f"tasks.managerhttp:{p}")
    expect(manager).to_contain_text("routes file")
    expect(manager.locator("td.tasks")).to_have_text("2")
    expect(manager.locator("td.state")).to_have_text("serving")
    expect(page.locator('tr[data-route="dmzhttp/"]')).to_contain_text("dmz")
    api = page.locator('tr[data-route="api.example.test/v1"]')
    expect(api.locator("td.tasks")).to_have_text("0")
    expect(api.locator("td.state")).to_have_text("503")
    # a route of the same path by match: its match under its path
    beta = page.locator('tr[data-route^="api.example.test/v1[match:"]')
    expect(beta.locator("td.mono")).to_have_text("/v1match X-Env: beta, GET")
    expect(page.locator('tr[data-service="managerhttp"] td.tasks')).to_have_text("2")
    expect(page.locator('tr[data-service="managerhttp"] td.addresses')).to_have_text(
        f"{T1} {T2}")

    # certificates: the good one serves with its expiry, the expired one is refused
    expect(page.locator('tr[data-host="shop.example.test"] td.state')).to_have_text("serving")
    expect(page.locator('tr[data-host="shop.example.test"]')).to_contain_text("days left")
    old = page.locator('tr[data-host="old.example.test"]')
    expect(old.locator("td.state")).to_have_text("refused")
    expect(old.locator("td.error")).to_contain_text("expired on")
    expect(page.locator("#certificates h2")).to_have_text("Certificates (1 refused)")
    expect(page.locator('tr[data-route="old.example.test/"] td.errors')).to_contain_text(
        "certificate refused")

    # the VIP state the notify hook recorded on this node
    expect(page.locator("#vrrp")).to_contain_text("gateway_vip MASTER")
    # the history: the start, then nothing but what happened
    expect(page.locator("#history tbody tr").first).to_contain_text("certificate refused for "
                                                                    "old.example.test")

    # traffic: a request rate and no errors for the route that got requests
    for _ in range(30):
        assert agent.get("managerhttp")[0] == 200
    expect(manager.locator("td.rate")).to_have_text(re.compile(r"^(?!0\.00)[\d.]+ req/s$"))
    expect(manager.locator("td.ratio")).to_have_text("0% 5xx")
    page.evaluate("window.notReloaded = true")
    # the tcp route: its connections counted from nginx's stream log
    for _ in range(3):
        assert http_get(tcp_port, "managerhttp")[0] == 200
    tcp = page.locator(f'tr[data-tcp=":{tcp_port}"]')
    expect(tcp.locator("td.tasks")).to_have_text("2")
    expect(tcp.locator("td.connections")).to_have_text("3")
    # the last 15 minutes: a line in the route's charts once two samples are 10 s apart
    chart = page.locator('tr[data-chart="managerhttp/"]')
    expect(chart.locator("td.chart").first.locator("polyline")).to_have_count(1)
    expect(chart.locator("td.chart").last).to_contain_text("ms")  # its p95

    # scaled up: the page follows, without a reload
    dns.set("tasks.managerhttp", [T1, T2, T3])
    expect(manager.locator("td.tasks")).to_have_text("3")
    expect(page.locator('tr[data-service="managerhttp"] td.addresses')).to_have_text(
        f"{T1} {T2} {T3}")
    # nginx follows the new task itself: no reload, and the history says so
    expect(page.locator("#history tbody tr").first).to_contain_text(
        "followed without reload: +1 endpoints for tasks.managerhttp")
    screenshot(page, tmp_path, "dashboard")
    page.set_viewport_size(PHONE)
    screenshot(page, tmp_path, "dashboard-phone", full_page=False)  # the first screen
    # nothing wider than the phone: no sideways scrolling to read a row
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    page.set_viewport_size(DESKTOP)

    # scaled to zero: 503, and the error ratio of the route shows it
    dns.set("tasks.managerhttp", [])
    expect(manager.locator("td.tasks")).to_have_text("0")
    expect(manager.locator("td.state")).to_have_text("503")
    wait_until(lambda: agent.get("managerhttp")[0] == 503, 10, "nginx to answer 503")
    for _ in range(30):
        assert agent.get("managerhttp")[0] == 503
    expect(manager.locator("td.ratio")).to_have_text(re.compile(r"^[1-9][\d.]*% 5xx$"))

    # the VIP moves away from this node: the page shows it
    notify(vrrp, "BACKUP", 100)
    expect(page.locator("#vrrp")).to_contain_text("gateway_vip BACKUP")

    assert page.evaluate("window.notReloaded") is True
    assert len(navigations) == 1, navigations  # the first load only
    assert page.url.endswith("/dashboard/")


def test_names_from_dns_and_routes_are_shown_as_text_never_as_markup(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent, page: Page) -> None:
    """An error message carrying markup (here: a routes file refused for a host that looks like
    HTML) is shown as the characters it is."""
    from playwright.sync_api import expect

    dns.set("tasks.managerhttp", [T1])
    agent = start_agent([{"hosts": ["managerhttp"], "service": "managerhttp",
                          "port": upstream_port}])
    bad = '<img src=x onerror="window.injected=1">'
    routes_file = agent.workdir / "routes.yaml"
    routes_file.write_text(f"routes:\n  - hosts: ['{bad}']\n    service: managerhttp\n"
                           f"    port: {upstream_port}\n")
    wait_until(lambda: agent.status()["routes_error"], 10, "the bad file to be refused")
    page.goto(f"http://127.0.0.1:{agent.admin_port}/dashboard/")
    expect(page.locator("#errors")).to_contain_text(bad)
    assert page.locator("#errors img").count() == 0
    assert page.evaluate("window.injected") is None
    expect(page.locator('tr[data-route="managerhttp/"] td.tasks')).to_have_text("1")


def test_the_controller_page_and_label_routes_on_the_gateway_page(
        tmp_path: Path, dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        docker: FakeDocker, start_agent: StartAgent, page: Page) -> None:
    from playwright.sync_api import expect

    dns.set("tasks.managerhttp", [T1])
    dns.set("tasks.shop_web", [T2, T3])
    docker.create("shop_web", {"gateway.hosts": "web.example.test",
                               "gateway.port": str(upstream_port)})
    docker.create("shop_broken", {"gateway.hosts": "broken.example.test",
                                  "gateway.port": "not a port"})
    controller = ControllerProcess(tmp_path, docker)
    controller.start()
    try:
        page.goto(f"http://127.0.0.1:{controller.port}/dashboard/")
        expect(page.locator("#title")).to_have_text("swarm-gateway controller")
        expect(page.locator("#labelled")).to_have_text("2")  # the two with labels
        web = page.locator('tr[data-route="web.example.test/"]')
        expect(web).to_contain_text("service shop_web")
        expect(web).to_contain_text(f"tasks.shop_web:{upstream_port}")
        expect(page.locator("#errors")).to_contain_text("service shop_broken: label gateway.port")
        screenshot(page, tmp_path, "controller")

        # a new labelled service shows up without a reload
        docker.create("shop_api", {"gateway.hosts": "api.example.test",
                                   "gateway.port": str(upstream_port)})
        expect(page.locator('tr[data-route="api.example.test/"]')).to_contain_text(
            "service shop_api")
        expect(page.locator("#labelled")).to_have_text("3")

        agent = start_agent([{"hosts": ["managerhttp"], "service": "managerhttp",
                              "port": upstream_port}], "--routes-url", controller.url)
        page.goto(f"http://127.0.0.1:{agent.admin_port}/dashboard/")
        web = page.locator('tr[data-route="web.example.test/"]')
        expect(web).to_contain_text("service shop_web")
        expect(web.locator("td.tasks")).to_have_text("2")
        expect(page.locator('tr[data-route="managerhttp/"]')).to_contain_text("routes file")
    finally:
        controller.stop()


def test_a_server_that_asks_for_a_token_gets_it_from_a_form_kept_in_the_tab(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent, browser: BrowserContext, page: Page) -> None:
    """An admin token for /status is a separate change (docs/security.md); until the agent
    asks for one itself, the browser stands in for that check: its /status answers 401 unless
    the request carries the token, and the real agent answers everything else."""
    from playwright.sync_api import Route, expect

    token = "d3c0de-a-token-of-32-characters"

    def guard(route: Route) -> None:
        if route.request.headers.get("authorization") == f"Bearer {token}":
            route.continue_()
        else:
            route.fulfill(status=401, body="a token is needed\n",
                          headers={"WWW-Authenticate": "Bearer"})

    dns.set("tasks.managerhttp", [T1])
    agent = start_agent([{"hosts": ["managerhttp"], "service": "managerhttp",
                          "port": upstream_port}])
    url = f"http://127.0.0.1:{agent.admin_port}/dashboard/"
    page.route("**/status", guard)
    page.goto(url)
    expect(page.locator("#banner")).to_have_text("This server asks for a token.")
    expect(page.locator("#token-form")).to_be_visible()
    expect(page.locator("#routes")).to_have_count(0)

    page.fill("#token", "not-the-token-at-all-000000")
    page.click("#token-form button")
    expect(page.locator("#banner")).to_have_text("The token was not accepted.")
    page.fill("#token", token)
    page.click("#token-form button")
    expect(page.locator('tr[data-route="managerhttp/"] td.tasks')).to_have_text("1")
    expect(page.locator("#token-form")).to_be_hidden()
    assert page.evaluate("Object.values(sessionStorage)") == [token]
    assert page.evaluate("localStorage.length") == 0  # nothing outlives the tab

    other = browser.new_page()  # another tab has its own sessionStorage: it asks again
    try:
        other.route("**/status", guard)
        other.goto(url)
        expect(other.locator("#token-form")).to_be_visible()
    finally:
        other.close()


def test_a_refused_reload_is_shown_with_its_status_line_and_then_the_recovery(
        tmp_path: Path, dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent, page: Page) -> None:
    """nginx -t refuses a change (an nginx that fails `-t` while a flag file exists): the page
    shows the refusal in the history, and the reload once nginx -t passes again."""
    from playwright.sync_api import expect

    wrapper, flag = nginx_wrapper(tmp_path)
    dns.set("tasks.web", [T1])
    # a change of tasks is a reload when the agent writes task addresses (static mode)
    agent = start_agent([{"hosts": ["web"], "service": "web", "port": upstream_port}],
                        "--nginx-binary", str(wrapper), "--upstream-mode", "static")
    page.goto(f"http://127.0.0.1:{agent.admin_port}/dashboard/")
    expect(page.locator('tr[data-route="web/"] td.tasks')).to_have_text("1")

    flag.touch()
    dns.set("tasks.web", [T1, T2])
    refused = page.locator("#history tbody tr", has_text="reload refused")
    expect(refused.first).to_contain_text("reload refused (+1 endpoints for tasks.web)")
    expect(refused.first).to_contain_text("refused by the test")
    expect(refused.first.locator("td.error")).to_have_count(1)  # shown as a failure
    expect(page.locator("#errors")).to_contain_text("refused by the test")
    assert agent.backends_seen("web", 6) == {"task1"}  # what the page says: still the old one

    flag.unlink()
    expect(page.locator("#history tbody tr").first).to_contain_text(
        "reloaded: +1 endpoints for tasks.web")
    expect(page.locator('tr[data-route="web/"] td.tasks')).to_have_text("2")
