"""The live dashboard (raftfl/ops/static) in a real headless browser: Debian's chromium,
driven by Playwright (never `playwright install`: nothing is downloaded).

A 3-node federation trains; the page of a node that is not the aggregator lists the three
members, plots each committed round, and, after the aggregator is SIGKILLed, shows the
failover (previous term's end -> elected -> resumed) and the rounds the new aggregator
commits, all without a reload. The same page over mutual TLS, with an operator's certificate
in the browser. RAFTFL_SCREENSHOT=docs/dashboard.png saves the README's screenshot.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from raftfl import tls
from raftfl.core.events import RoundCommitted, RoundStarted
from raftfl.lab.faults import at, first_term
from raftfl.lab.localcluster import LocalCluster, NodeProc
from raftfl.lab.testhooks import HOLD_ENV

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium")
playwright = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]'")
if CHROMIUM is None:
    pytest.skip("Debian's chromium is not installed (scripts/setup.sh as root)",
                allow_module_level=True)
WAIT = 150
UI_WAIT_MS = 60_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


def load(c: LocalCluster, page: Any, url: str) -> None:
    """Open `url`, retrying while the node's API does not answer yet."""
    def ok() -> bool:
        try:
            return bool(page.goto(url).ok)
        except playwright.Error:
            return False

    c.wait_for(ok, WAIT, f"the dashboard at {url}")


def until(page: Any, predicate: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    """Poll the page from here: the page's own CSP forbids the eval behind wait_for_function."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"the dashboard did not show {what}"
        page.wait_for_timeout(200)


def points(page: Any) -> int:
    return int(page.get_attribute("#chart", "data-points") or 0)


def wait_members(page: Any, nodes: list[NodeProc]) -> None:
    rows = page.locator("#members tbody tr")
    until(page, lambda: rows.count() == len(nodes), f"{len(nodes)} members")
    shown = [rows.nth(i).get_attribute("data-member") for i in range(rows.count())]
    assert sorted(shown) == sorted(n.name for n in nodes)


def test_the_dashboard_follows_a_failover_live(browser: Any, tmp_path: Path) -> None:
    hold = {i: {HOLD_ENV: "fit:2:2"} for i in (1, 2)}  # workers mid-fit when the kill comes
    with LocalCluster(n=3, rounds=5, cluster="t-dash", node_env=hold, train_size=2000,
                      test_size=400, exit_on_complete=False) as c:
        el = first_term(c)
        viewer = next(n for n in c.nodes if n.name != el.node)
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: "Content Security Policy" in msg.text
                and errors.append(msg.text))  # the page works under its own CSP
        load(c, page, viewer.api_url("/"))
        assert page.title() == "raftfl"
        wait_members(page, c.nodes)
        page.wait_for_selector(f'#members tr.aggregator[data-member="{el.node}"]',
                               timeout=UI_WAIT_MS)
        at(c, RoundCommitted, 1, el.term)
        until(page, lambda: points(page) >= 1, "round 1 on the chart")
        assert page.inner_text("#failovers") == "none in this run"

        at(c, RoundStarted, 2, el.term)
        c.kill(el.node)
        before = points(page)
        page.wait_for_selector("#failovers li.failover", timeout=UI_WAIT_MS)
        until(page, lambda: points(page) > before, "the new aggregator's commits", 120)
        entry_text = page.locator("#failovers li.failover").first.inner_text
        until(page, lambda: "pending" not in entry_text(), "the failover's resumption")
        entry = entry_text()
        assert el.node in entry and "lost" in entry and "recovery" in entry, entry
        assert "elected" in page.inner_text("#events")

        c.wait_event(lambda e: e.type == "run_completed", WAIT, "the run to complete")
        until(page, lambda: points(page) == 5, "all 5 rounds")
        page.wait_for_timeout(3500)  # one more poll of /cluster: the final member table
        page.screenshot(path=os.environ.get("RAFTFL_SCREENSHOT") or str(tmp_path / "dash.png"))
        assert not errors, errors
        page.close()


def test_the_dashboard_over_mutual_tls(browser: Any) -> None:
    with LocalCluster(n=3, rounds=30, cluster="t-dash-tls", train_size=2000, test_size=400,
                      exit_on_complete=False, secure=True) as c:
        certs = Path(c.workdir or ".") / "certs"
        alice = tls.issue_bundle(certs, "alice", "operator-alice", [])
        first_term(c)
        node = c.nodes[1]
        origin = node.api_url("").rstrip("/")
        context = browser.new_context(ignore_https_errors=True, client_certificates=[
            {"origin": origin, "certPath": str(alice / "tls.crt"),
             "keyPath": str(alice / "tls.key")}])
        try:
            page = context.new_page()
            load(c, page, node.api_url("/"))
            wait_members(page, c.nodes)
            page.wait_for_selector("#events li", timeout=UI_WAIT_MS)  # server-sent, over TLS
            assert "live" in page.inner_text("#stream-state")
        finally:
            context.close()
