"""The dashboard as a person uses it: Debian's headless Chromium driven by Playwright.

A real registry (uvicorn on a loopback port, SQLite) with the dashboard
seed; the tests sign in through the form, click, copy, download, and save a
screenshot of each page to docs/screenshots/ (shown in the README).
Playwright's own browser download is never used: ``executable_path`` points
at /usr/bin/chromium, which ``.ci/run`` installs with apt.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from resistance.registry.app import create_app
from resistance.registry.db import make_engine, make_sessions
from resistance.registry.keys import load_or_create_ring_key
from resistance.registry.ui import sessions
from tests.grants.helpers import CHANGE_DESCRIPTOR, DESCRIPTOR, utxos_for
from tests.registry.conftest import ThreadedServer, make_settings
from tests.registry.dashboard_seed import Seeded, seed

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)"
)


class Site(SimpleNamespace):
    base: str
    admin: str
    operator: str
    seeded: Seeded
    state_dir: Path


async def _seed(url: str, base: str) -> tuple[str, Seeded]:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        tokens = []
        for name in ("alice", "bob"):
            made = await client.post("/api/v1/operators", json={"name": name})
            assert made.status_code == 201, made.text
            tokens.append((made.json()["operator_id"], made.json()["token"]))
    engine = make_engine(url)
    try:
        world: Any = SimpleNamespace(sessions=make_sessions(engine), now=lambda: int(time.time()))
        seeded = await seed(world, operator_id=tokens[0][0], other_operator_id=tokens[1][0])
    finally:
        await engine.dispose()
    return tokens[0][1], seeded


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    state = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite+aiosqlite:///{state / 'registry.sqlite3'}"
    settings = make_settings(state / "registry", url, approve_open_periods=False)
    admin: list[str] = []
    with ThreadedServer(create_app(settings, on_admin_token=admin.append)) as server:
        base = f"http://127.0.0.1:{server.port}"
        # Playwright's sync API may already run a loop in this thread: seed in another.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            operator, seeded = pool.submit(asyncio.run, _seed(url, base)).result(timeout=60)
        yield Site(
            base=base, admin=admin[0], operator=operator, seeded=seeded,
            state_dir=state / "registry",
        )  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, site: Site) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=site.base)
    context.set_default_timeout(20_000)
    tab = context.new_page()
    yield tab
    context.close()


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def sign_in(page: Any, site: Site, token: str) -> None:
    page.goto(f"{site.base}/ui/signin")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def test_public_pages_need_no_sign_in(page: Any, site: Site) -> None:
    for path, name, heading in (
        ("/ui/", "network", "The network now"),
        ("/ui/reachability", "reachability", "Reachability: inside versus outside"),
        ("/ui/blocking", "time-to-block", "How long until the censor blocks a proxy"),
        ("/ui/censor", "censor", "The censor's blocklist"),
    ):
        response = page.goto(site.base + path)
        assert response.status == 200
        assert page.get_by_role("heading", level=1).inner_text() == heading
        assert page.locator("svg.chart").count() >= 1
        assert page.locator("table").count() >= 1
        shot(page, name)
    # Keyboard: the first Tab lands on the skip link, which leads to the content.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"


def test_signed_out_visitor_is_refused(page: Any, site: Site) -> None:
    for path in ("/ui/operator", f"/ui/operator/proxies/{site.seeded.socks_id}", "/ui/funder"):
        response = page.goto(site.base + path)
        assert response.status == 401
        assert page.get_by_role("heading", level=1).inner_text() == "Sign in needed"
    shot(page, "refused")


def test_operator_sees_verdicts_and_copies_a_link(page: Any, site: Site) -> None:
    sign_in(page, site, site.operator)
    page.wait_for_url("**/ui/operator")
    cookie = next(c for c in page.context.cookies() if c["name"] == sessions.SESSION_COOKIE)
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # HttpOnly: scripts cannot read it
    shot(page, "operator")
    page.get_by_role("link", name="198.51.100.7:1080").click()
    assert page.locator("#state").inner_text() == "blocked"
    evidence = page.get_by_role("table", name="What each vantage saw last")
    assert "ru-moscow-1" in evidence.inner_text() and "ip-blackhole" in evidence.inner_text()
    page.get_by_role("button", name="Copy link").first.click()
    page.get_by_text("Copied.").wait_for()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == "tg://socks?server=198.51.100.7&port=1080&user=friend&pass=s3cret+pass"
    shot(page, "operator-proxy")
    # The funder's page is not an operator's.
    assert page.goto(f"{site.base}/ui/funder").status == 403


def test_forged_csrf_is_refused(page: Any, site: Site) -> None:
    page.goto(f"{site.base}/ui/signin")
    page.eval_on_selector("input[name=csrf]", "el => el.value = 'forged'")
    page.get_by_label("API token").fill(site.operator)
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("heading", level=1).inner_text() == "Not for you"
    assert "did not come from this site" in page.get_by_role("alert").inner_text()
    assert not [c for c in page.context.cookies() if c["name"] == sessions.SESSION_COOKIE]


def test_expired_session_is_refused(page: Any, site: Site) -> None:
    sign_in(page, site, site.operator)
    page.wait_for_url("**/ui/operator")
    cookie = next(c for c in page.context.cookies() if c["name"] == sessions.SESSION_COOKIE)
    body = json.loads(base64.urlsafe_b64decode(cookie["value"].split(".")[0] + "=="))
    key = sessions.derive_key(load_or_create_ring_key(site.state_dir))
    expired = sessions.Session(body["r"], body["t"], body["o"], int(time.time()) - 1)
    page.context.add_cookies(
        [{**cookie, "value": sessions.seal(key, expired)}]  # signed right, but past its expiry
    )
    assert page.goto(f"{site.base}/ui/operator").status == 401


def test_funder_previews_a_round_and_downloads_the_psbt(
    page: Any, site: Site, tmp_path: Path
) -> None:
    sign_in(page, site, site.admin)
    page.wait_for_url("**/ui/funder")
    page.get_by_label("First day").fill(site.seeded.days[0])
    page.get_by_label("Last day").fill(site.seeded.days[-1])
    page.get_by_label("Operator cap (basis points of the pool)").fill("6000")
    page.get_by_role("button", name="Preview round").click()
    page.wait_for_url("**/ui/funder/rounds/*")
    assert page.locator("#round-state").inner_text() == "draft"
    awards = page.get_by_role("table", name="Awards per operator").inner_text()
    assert "alice" in awards and "bob" in awards
    shot(page, "funder-round-draft")
    page.get_by_role("button", name="Approve round").click()
    page.get_by_role("heading", name="Download the PSBT").wait_for()
    page.get_by_label("Receive descriptor").fill(DESCRIPTOR)
    page.get_by_label("Change descriptor").fill(CHANGE_DESCRIPTOR)
    page.get_by_label("UTXO file (JSON)").fill(json.dumps(utxos_for([3_000_000])))
    shot(page, "funder-round-approved")
    with page.expect_download() as download:
        page.get_by_role("button", name="Download PSBT").click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.suffix == ".psbt"
    assert base64.b64decode(saved.read_text())[:5] == b"psbt\xff"
    page.goto(f"{site.base}/ui/funder")
    assert "approved" in page.get_by_role("table", name="Rounds, newest period first").inner_text()
    shot(page, "funder")


ACCESSIBILITY = """() => {
  const problems = [];
  if (document.documentElement.lang !== "en") problems.push("no lang");
  if (document.querySelectorAll("h1").length !== 1) problems.push("not one h1");
  for (const el of document.querySelectorAll("input:not([type=hidden]), textarea, select")) {
    if (!el.labels || el.labels.length === 0) problems.push("unlabelled " + (el.id || el.name));
  }
  for (const t of document.querySelectorAll("table")) {
    if (!t.querySelector("caption")) problems.push("table without caption");
  }
  for (const svg of document.querySelectorAll("svg.chart")) {
    if (svg.getAttribute("role") !== "img" || !svg.querySelector("title")) {
      problems.push("chart without role or title");
    }
  }
  for (const b of document.querySelectorAll("button, a")) {
    if (!b.textContent.trim() && !b.getAttribute("aria-label")) problems.push("nameless control");
  }
  return problems;
}"""


def test_every_page_has_labels_captions_and_one_heading(page: Any, site: Site) -> None:
    public = ["/ui/", "/ui/proxies", "/ui/reachability", "/ui/blocking", "/ui/censor", "/ui/signin"]
    for path in public:
        page.goto(site.base + path)
        assert page.evaluate(ACCESSIBILITY) == [], path
    sign_in(page, site, site.operator)
    page.wait_for_url("**/ui/operator")
    for path in ("/ui/operator", f"/ui/operator/proxies/{site.seeded.socks_id}"):
        page.goto(site.base + path)
        assert page.evaluate(ACCESSIBILITY) == [], path
    page.context.clear_cookies()
    sign_in(page, site, site.admin)
    page.wait_for_url("**/ui/funder")
    assert page.evaluate(ACCESSIBILITY) == [], "/ui/funder"
    # Keyboard only: Enter in a field submits the preview form.  Its default period (this
    # month) may overlap the round another test made: then the answer is one alert.
    page.get_by_label("First day").focus()
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*/ui/funder/(preview|rounds/[^/]+)$"))
    if page.url.endswith("/preview"):
        assert "already covers" in page.get_by_role("alert").inner_text()
    else:
        assert page.locator("#round-state").inner_text() == "draft"
    assert page.evaluate(ACCESSIBILITY) == [], page.url
