"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright),
against the real proxy and the fake provider: sign in as viewer and admin, every tab, the
policy form, an alert acknowledged, a proxied call showing up live, the CSV export, and the
figures of a budget equal to `/api/status`. Any console error or page error fails the test.
The test run writes one screenshot per tab to `docs/screenshots/`.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from budget_proxy import ws
from budget_proxy.app import create_app
from budget_proxy.testing.fake_provider import FakeProvider
from tests.api.conftest import ADMIN_TOKEN, VIEWER_TOKEN
from tests.conftest import PROXY_ANTHROPIC_KEY, PROXY_OPENAI_KEY, proxy_settings

playwright_api = pytest.importorskip("playwright.async_api")
expect = playwright_api.expect

CHROMIUM = os.environ.get("BUDGET_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
TABS = ("dashboard", "usage", "policies", "allocations", "alerts", "prices", "keys", "chat")
WAIT_MS = 20_000  # only a hung page waits this long

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}"),
]
expect.set_options(timeout=WAIT_MS)


@dataclass
class Site:
    url: str
    app: web.Application

    async def api(self, method: str, path: str, token: str = ADMIN_TOKEN, **kw: Any) -> Any:
        async with httpx.AsyncClient(timeout=10) as client:
            resp = await client.request(method, f"{self.url}{path}", **kw,
                                        headers={"Authorization": f"Bearer {token}"})
        assert resp.is_success, resp.text
        return resp.json()

    async def call(self, component: str) -> None:
        """One chat completion through the proxy (answered by the fake provider)."""
        async with httpx.AsyncClient(timeout=10) as client:
            resp = await client.post(f"{self.url}/v1/chat/completions", json={
                "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 50}, headers={"X-Budget-Component": component})
        assert resp.status_code == 200, resp.text


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OPENAI_API_KEY", PROXY_OPENAI_KEY)
        env.setenv("ANTHROPIC_API_KEY", PROXY_ANTHROPIC_KEY)
        fake = FakeProvider()
        async with fake.serve() as fake_url:
            settings = proxy_settings(fake_url, tmp_path_factory.mktemp("dashboard"),
                                      admin_token=ADMIN_TOKEN, viewer_token=VIEWER_TOKEN,
                                      timezone="Europe/Berlin")
            server = TestServer(create_app(settings), host="127.0.0.1")
            await server.start_server()
            yield Site(str(server.make_url("")).rstrip("/"), server.app)
            await server.close()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


SignIn = Callable[[str], Awaitable[Any]]


@pytest_asyncio.fixture(loop_scope="module")
async def sign_in(browser: Any, site: Site) -> AsyncIterator[SignIn]:
    """Open the page in a fresh browser context and sign in with a token; fail the test on
    any console error or uncaught page error."""
    contexts, errors = [], []

    async def open_as(token: str) -> Any:
        context = await browser.new_context(viewport={"width": 1280, "height": 900},
                                            accept_downloads=True)
        contexts.append(context)
        page = await context.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
        page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
        await page.goto(f"{site.url}/")  # redirected to /ui/
        await expect(page.locator("#login")).to_be_visible()
        await page.fill("#login-token", token)
        await page.click("#login-form button[type=submit]")
        role = "admin" if token == ADMIN_TOKEN else "viewer"
        await expect(page.locator("#role")).to_have_text(role)
        await expect(page.locator("#live")).to_have_text("live")
        return page

    yield open_as
    for context in contexts:
        await context.close()
    assert errors == [], errors


async def open_tab(page: Any, tab: str) -> Any:
    await page.click(f'#tabs [data-tab="{tab}"]')
    panel = page.locator(f"#tab-{tab}")
    await expect(panel).to_be_visible()
    return panel


async def test_a_wrong_token_is_refused_and_a_viewer_can_change_nothing(browser, site, sign_in):
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(f"{site.url}/ui/")
    await page.fill("#login-token", "not-a-token")
    await page.click("#login-form button[type=submit]")
    await expect(page.locator("#login-error")).to_have_text("This token is not accepted here.")
    assert await page.locator("#tabs").is_hidden()
    await context.close()

    page = await sign_in(VIEWER_TOKEN)
    for tab in TABS:
        await open_tab(page, tab)
    policies = await open_tab(page, "policies")
    await expect(policies.locator('#policy-form [data-role="submit"]')).to_be_disabled()
    for tab, form in (("allocations", "#allocation-form"), ("keys", "#key-form"),
                      ("prices", "#price-form")):
        panel = await open_tab(page, tab)
        await expect(panel.locator(f"{form} button[type=submit]")).to_be_disabled()
    dashboard = await open_tab(page, "dashboard")
    await expect(dashboard.locator('[data-empty="budgets"] pre')).to_contain_text(
        "budget set-limit daily 10")
    await expect(dashboard.locator('[data-empty="budgets"] button[type=submit]')).to_be_disabled()
    await expect(page.locator("#sign-in")).to_be_visible()  # a viewer may sign in as admin


async def test_admin_creates_and_edits_a_policy_through_the_form(site, sign_in):
    page = await sign_in(ADMIN_TOKEN)
    panel = await open_tab(page, "policies")
    form = panel.locator("#policy-form")
    await form.locator('[name="name"]').fill("team-daily")
    await form.locator('[name="cost_limit"]').fill("5")
    await form.locator('[name="component"]').fill("checkout")
    await form.locator('[data-role="submit"]').click()
    row = panel.locator("#policy-list tbody tr", has_text="team-daily")
    await expect(row).to_contain_text("$5.00 / day")
    policy_id = await row.get_attribute("data-policy-id")

    await row.locator("[data-edit]").click()
    await expect(form.locator('[name="cost_limit"]')).to_have_value("5")
    await form.locator('[name="cost_limit"]').fill("7.5")
    await form.locator('[name="warning_threshold"]').fill("50")
    await form.locator('[data-role="submit"]').click()
    await expect(row).to_contain_text("$7.50 / day")
    await expect(row).to_contain_text("warn 50%")
    stored = await site.api("GET", f"/api/policies/{policy_id}")
    assert (stored["cost_limit"], stored["warning_threshold"], stored["component"]) == (
        7.5, 0.5, "checkout")
    assert len(await site.api("GET", "/api/policies")) == 1  # edited, not added


async def test_a_proxied_call_shows_up_live_and_the_figures_equal_the_status(site, sign_in):
    policy = await site.api("POST", "/api/policies", json={
        "name": "live-budget", "period": "daily", "cost_limit": 2, "component": "live"})
    page = await sign_in(ADMIN_TOKEN)
    dashboard = await open_tab(page, "dashboard")
    budget = dashboard.locator(f'[data-policy-id="{policy["policy_id"]}"]')
    await expect(budget.locator('[data-field="spent"]')).to_have_attribute("data-value", "0")
    await page.evaluate("window.notReloaded = true")

    await site.call("live")
    await expect(dashboard.locator("#latest-calls tbody tr").first).to_contain_text("live")
    spent = budget.locator('[data-field="spent"]')
    await expect(spent).not_to_have_attribute("data-value", "0")
    assert await page.evaluate("window.notReloaded") is True

    status = await site.api("GET", "/api/status", token=VIEWER_TOKEN)
    (row,) = [p for p in status["policies"] if p["policy_id"] == policy["policy_id"]]
    assert row["spent"] > 0
    for name in ("spent", "reserved", "limit", "remaining"):
        shown = budget.locator(f'[data-field="{name}"]')
        assert float(await shown.get_attribute("data-value")) == row[name], name
        text = await shown.inner_text()
        assert re.fullmatch(r"\$\d[\d,]*\.\d{2,6}", text), text  # money, never 2.175e-05
    assert await budget.locator('[data-field="used"]').inner_text() == (
        f"{row['utilisation'] * 100:.1f}%" if 0 < row["utilisation"] < 0.1
        else f"{round(row['utilisation'] * 100)}%")
    await expect(dashboard.locator('[data-card="today"] .value')).not_to_have_text("$0.00")

    await expect(page.locator("#live")).to_have_attribute("data-connections", "1")
    await ws.close_all(site.app)  # the server drops every WebSocket: the page reconnects
    await expect(page.locator("#live")).to_have_attribute("data-connections", "2")
    usage = await open_tab(page, "usage")
    await expect(usage.locator("#usage-records tbody tr").first).to_contain_text("live")
    await site.call("live-again")  # the Usage tab follows too, on the new connection
    await expect(usage.locator("#usage-records tbody tr").first).to_contain_text("live-again")


async def test_an_alert_is_acknowledged(site, sign_in):
    await site.api("POST", "/api/policies", json={
        "name": "tiny-warn", "period": "daily", "type": "warn", "cost_limit": 0.000001,
        "component": "alerting"})
    page = await sign_in(ADMIN_TOKEN)
    panel = await open_tab(page, "alerts")
    await site.call("alerting")
    rows = panel.locator("#alert-list tbody tr", has_text="tiny-warn")
    await expect(rows.first).to_be_visible()  # raised live, no reload
    first = rows.first
    alert_id = await first.get_attribute("data-alert-id")
    await first.locator("[data-ack]").click()
    await expect(panel.locator(f'[data-alert-id="{alert_id}"]')).to_have_count(0)  # open only
    await panel.locator('select[name="acknowledged"]').select_option("true")
    await expect(panel.locator(f'[data-alert-id="{alert_id}"]')).to_contain_text("by dashboard")
    assert (await site.api("GET", f"/api/alerts/{alert_id}"))["acknowledged"] is True


async def test_usage_filters_and_csv_export(site, sign_in):
    await site.call("export-me")
    page = await sign_in(VIEWER_TOKEN)  # reading and exporting need no admin token
    panel = await open_tab(page, "usage")
    await panel.locator('#usage-filters [name="component"]').fill("export-me")
    await panel.locator("#usage-filters button[type=submit]").click()
    rows = panel.locator("#usage-records tbody tr")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("export-me")
    await expect(panel.locator("#usage-totals")).to_contain_text("1 calls")
    async with page.expect_download() as download_info:
        await panel.locator("#export-csv").click()
    download = await download_info.value
    assert download.suggested_filename == "budget-usage.csv"
    lines = (await asyncio.to_thread(Path(await download.path()).read_text)).splitlines()
    assert lines[0].startswith("record_id,")
    assert len(lines) == 2 and "export-me" in lines[1]


async def test_keys_allocations_prices_and_chat(site, sign_in):
    page = await sign_in(ADMIN_TOKEN)
    keys = await open_tab(page, "keys")
    await keys.locator('#key-form [name="component"]').fill("agent")
    await keys.locator("#key-form button[type=submit]").click()
    secret = await keys.locator("#key-secret").inner_text()
    assert secret.startswith("bp-")
    row = keys.locator("#key-list tbody tr", has_text="agent")
    await row.locator("[data-revoke]").click()
    await expect(row).to_contain_text("revoked")
    assert secret not in await keys.inner_text() or await keys.locator("#key-created").is_visible()

    allocs = await open_tab(page, "allocations")
    form = allocs.locator("#allocation-form")
    await form.locator('[name="context_id"]').fill("run-42")
    await form.locator('[name="component"]').fill("agent")
    await form.locator('[name="tokens_allocated"]').fill("5000")
    await form.locator("button[type=submit]").click()
    row = allocs.locator("#allocation-list tbody tr", has_text="run-42")
    await expect(row).to_contain_text("5,000 tokens")
    await row.locator("[data-release]").click()
    await expect(row).to_contain_text("released")

    prices = await open_tab(page, "prices")
    await prices.locator("#price-filter").fill("openai gpt-4o-mini")
    row = prices.locator("#price-list tbody tr").first
    await expect(row).to_contain_text("gpt-4o-mini")
    await row.get_by_role("button", name="History").click()
    await expect(prices.locator("#price-history")).to_contain_text("Price history: openai")

    chat = await open_tab(page, "chat")
    await chat.locator('#chat-form [name="message"]').fill("How can I spend less?")
    await chat.locator("#chat-form button[type=submit]").click()
    await expect(chat.locator(".msg.assistant")).to_contain_text("no LLM")


async def test_screenshots_of_every_tab(site, sign_in):
    """Runs last: by now every tab has data to show."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = await sign_in(ADMIN_TOKEN)
    for tab in TABS:
        panel = await open_tab(page, tab)
        if tab == "chat":
            await chat_once(panel)
        await expect(panel.locator(".panel").first).to_be_visible()
        await page.screenshot(path=SCREENSHOTS / f"{tab}.png")
        assert (SCREENSHOTS / f"{tab}.png").stat().st_size > 10_000


async def chat_once(panel: Any) -> None:
    await panel.get_by_role("button", name="How is my spend going?").click()
    await expect(panel.locator(".msg.assistant").first).to_contain_text("requests cost")
