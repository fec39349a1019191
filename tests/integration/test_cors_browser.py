"""cors in a real browser (Debian's Chromium, headless, driven by Playwright, as the dashboard's
tests do): a page on one origin fetch()es a route on another, with a header that makes the
browser send a preflight first; the allowed origin reads the answer, another one cannot."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.integration.conftest import TASK_ADDRESSES
from tests.integration.test_dashboard import CHROMIUM_ARGS
from tests.support import free_port, missing, require_programs
from tests.support.gateway import Agent, Dnsmasq, Upstream

pytestmark = [pytest.mark.integration, pytest.mark.browser]

T1 = TASK_ADDRESSES[0]
StartAgent = Callable[..., Agent]
FETCH = """async (url) => {
    try {
        const answer = await fetch(url, {headers: {"X-Token": "1"}});
        return "read:" + await answer.text();
    } catch (err) {
        return "refused:" + err.name;
    }
}"""


def test_a_browser_reads_a_cross_origin_answer_only_from_an_allowed_origin(
        dns: Dnsmasq, tasks: dict[str, Upstream], upstream_port: int,
        start_agent: StartAgent) -> None:
    chromium = require_programs("chromium")["chromium"]
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed (the test extras: scripts/setup.sh test)")
    dns.set("tasks.web", [T1])
    # the gateway listens where the test says: the allowed origin names the port
    port = free_port()
    start_agent([
        {"hosts": ["app.test", "evil.test"], "service": "web", "port": upstream_port},
        {"hosts": ["api.test"], "service": "web", "port": upstream_port,
         "cors": {"origins": [f"http://app.test:{port}"], "headers": ["X-Token"]}},
    ], "--listen", f"127.0.0.1:{port}")
    rules = "--host-resolver-rules=MAP app.test 127.0.0.1, MAP evil.test 127.0.0.1, " \
            "MAP api.test 127.0.0.1"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=[*CHROMIUM_ARGS, rules])
        try:
            page = browser.new_page()
            api = f"http://api.test:{port}/"
            page.goto(f"http://app.test:{port}/")
            assert page.evaluate(FETCH, api) == "read:task1"
            page.goto(f"http://evil.test:{port}/")
            assert page.evaluate(FETCH, api) == "refused:TypeError"
        finally:
            browser.close()
