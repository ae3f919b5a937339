"""The console in a real browser: Debian's headless Chromium driven by Playwright.

What HTTP-level tests cannot show: that the login form and its cookie work in a browser, that the live view's
script really updates the page in place (under the console's strict CSP), that Chromium can play the recording,
and that forms, links and charts work as a person would use them. The browser is Debian's `chromium` (installed
by `scripts/ensure-chromium`), never a Playwright download. Every page must load without console errors.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import BrowserContext, ConsoleMessage, Page, async_playwright, expect

from agent.console import auth
from agent.engine import RealtimeSimConfig
from agent.testkit.carrier import CallerAudio, SimCallOptions
from tests.harness import Stack, running_stack
from tests.test_console import (
    BIG_EXPERIMENT,
    SMALL_EXPERIMENT,
    TOKEN,
    History,
    end_call,
    mount_console,
    place_barge_in_call,
    seed_experiments,
    seed_history,
    settle,
    write_prompts,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
expect.set_options(timeout=10_000)


def chromium() -> str:
    """Debian's Chromium; missing is a failure (CI installs it), never a reason to fetch another browser."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium with scripts/ensure-chromium", pytrace=False)
    return str(CHROMIUM)


@dataclasses.dataclass
class Site:
    stack: Stack
    call_id: str  # a real call with a barge-in, an answer and a recording
    history: History


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    prompts = write_prompts(tmp_path_factory.mktemp("prompts"))
    config = RealtimeSimConfig(reply_ms=1500, speed=1.5)
    async with running_stack(config, operator_token=TOKEN, prompts_dir=prompts) as stack:
        mount_console(stack.app)
        call = await place_barge_in_call(stack)
        await end_call(stack, call)
        await settle(stack)
        history = await seed_history(stack.state.store, stack.settings.recordings_dir)
        await seed_experiments(stack.state.store, history.sales_v2, time.time() - 3600)
        yield Site(stack, call.call_uuid, history)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def context(site: Site, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[BrowserContext]:
    """One browser with a fresh profile for the module: Debian's Chromium, never a downloaded one."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=chromium(),
            headless=True,
            args=CHROMIUM_ARGS,
            base_url=site.stack.base_url,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield browser
        finally:
            await browser.close()


@dataclasses.dataclass
class Tab:
    page: Page
    errors: list[str]


@pytest_asyncio.fixture(loop_scope="module")
async def tab(context: BrowserContext) -> AsyncIterator[Tab]:
    """A fresh page, logged in through the form if the profile has no session yet; no console errors allowed."""
    page = await context.new_page()
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    if not any(c["name"] == auth.COOKIE_NAME for c in await context.cookies()):
        await log_in(page)
    try:
        yield Tab(page, errors)
    finally:
        await page.close()
    assert errors == []


async def log_in(page: Page, token: str = TOKEN) -> None:
    await page.goto("/console/login")
    await page.get_by_label("Operator token").fill(token)
    await page.get_by_role("button", name="Log in").click()


# --- tests -------------------------------------------------------------------------------------------------------


async def test_login_form_sets_an_httponly_session(context: BrowserContext, site: Site) -> None:
    await context.clear_cookies()
    page = await context.new_page()
    try:
        await page.goto("/console/calls?q=plan")
        await expect(page).to_have_url(re.compile(r"/console/login\?next=%2Fconsole%2Fcalls%3Fq%3Dplan$"))
        await page.get_by_label("Operator token").fill("not-the-token")
        await page.get_by_role("button", name="Log in").click()
        await expect(page.get_by_role("alert")).to_have_text("That token is not right.")
        await page.get_by_label("Operator token").fill(TOKEN)
        await page.get_by_role("button", name="Log in").click()
        await expect(page).to_have_url(f"{site.stack.base_url}/console/calls?q=plan")
        await expect(page.get_by_role("heading", level=1)).to_have_text("Calls")
        [cookie] = [c for c in await context.cookies() if c["name"] == auth.COOKIE_NAME]
        assert cookie.get("httpOnly") is True and cookie.get("sameSite") == "Strict"
        assert cookie.get("path") == "/console"
        assert TOKEN not in cookie.get("value", TOKEN)
        assert auth.COOKIE_NAME not in await page.evaluate("document.cookie")  # scripts cannot read it
    finally:
        await page.close()


async def test_live_call_appears_and_disappears_without_a_reload(tab: Tab, site: Site) -> None:
    page, stack = tab.page, site.stack
    await page.goto("/console")
    await expect(page.locator("#live-body")).to_contain_text("No live calls.")
    await page.evaluate("window.stillTheSamePage = true")
    call = await stack.carrier.place_call([CallerAudio.silence(30_000)], SimCallOptions(from_="+919000000321"))
    row = page.locator(f'#live-body tr[data-call-id="{call.call_uuid}"]')
    await expect(row).to_be_visible()
    await expect(row).to_contain_text("+919000000321")
    await expect(row).to_contain_text("default")
    await expect(page.locator("#live-count")).to_have_text("1")
    await end_call(stack, call)
    await settle(stack)
    await expect(row).to_have_count(0)
    await expect(page.locator("#live-body")).to_contain_text("No live calls.")
    await expect(page.locator(f'#recent-body tr[data-call-id="{call.call_uuid}"]')).to_be_visible()
    assert await page.evaluate("window.stillTheSamePage === true")  # updated in place, never reloaded


async def test_search_open_a_call_and_play_its_recording(tab: Tab, site: Site) -> None:
    page = tab.page
    await page.goto("/console/calls")
    await page.get_by_label("Search numbers, call id or transcript").fill("caller audio")
    await page.get_by_role("button", name="Search").click()
    await expect(page).to_have_url(re.compile(r"q=caller\+audio"))
    row = page.locator(f'tr[data-call-id="{site.call_id}"]')
    await expect(row).to_be_visible()
    await expect(page.locator('tr[data-call-id="CA-hour-01"]')).to_have_count(0)
    await row.get_by_role("link").click()
    await expect(page.get_by_role("heading", level=1)).to_contain_text(site.call_id)
    await expect(page.locator("#transcript")).to_contain_text("caller audio")
    await expect(page.locator("#transcript li.interrupted")).to_contain_text("interrupted — heard")
    await expect(page.locator("svg.timeline rect.span.interrupted")).to_have_count(1)
    await expect(page.locator("#barge-ins tbody tr")).to_have_count(1)
    events = page.locator("#events table")
    await expect(events).to_be_hidden()
    await page.get_by_text("Raw event log").click()
    await expect(events).to_be_visible()
    duration = await page.evaluate(
        """() => new Promise((resolve, reject) => {
            const audio = document.getElementById("recording");
            if (audio.readyState >= 1) { resolve(audio.duration); return; }
            audio.addEventListener("loadedmetadata", () => resolve(audio.duration), { once: true });
            audio.addEventListener("error", () => reject(new Error("audio error " + audio.error.code)), { once: true });
            audio.load();
        })"""
    )
    assert isinstance(duration, int | float) and duration > 1.0


async def test_prompts_show_an_invalid_prompt_and_a_diff_between_versions(tab: Tab, site: Site) -> None:
    page = tab.page
    await page.goto("/console/prompts")
    broken = page.locator("#prompt-broken")
    await expect(broken.locator(".badge.bad")).to_have_text("invalid")
    await expect(broken.locator(".prompt-errors")).to_contain_text(
        "broken.md:3: speed: Input should be less than or equal to 1.5"
    )
    sales = page.locator("#prompt-sales")
    await expect(sales.locator(".badge.ok").first).to_have_text("ok")
    await expect(sales).to_contain_text("+918000000055")
    await expect(sales.locator("table.versions tbody tr")).to_have_count(2)
    await sales.get_by_role("link", name="diff with previous").click()
    await expect(page).to_have_url(re.compile(r"/console/prompts/sales/diff\?old=\w+&new=\w+"))
    await expect(page.locator("#diff .del")).to_have_text(
        ["-greeting: Hi, this is sales.", "-You sell the basic plan. Mention the price once."]
    )
    await expect(page.locator("#diff .add")).to_have_text(
        ["+greeting: Hello from sales!", "+You sell the basic plan and the premium plan. Mention both prices once."]
    )


async def test_prompt_versions_show_their_numbers_text_and_a_diff_of_any_two(tab: Tab, site: Site) -> None:
    page, store = tab.page, site.stack.state.store
    v1, v2 = site.history.sales_v1.content_hash, site.history.sales_v2.content_hash
    stats = await store.version_stats("sales")
    await page.goto("/console/prompts")
    sales = page.locator("#prompt-sales")
    await expect(sales.locator(".latency-definition")).to_have_text(
        "response latency: caller stopped speaking → bot audio on the line"
    )
    first = sales.locator(f'tr.version[data-hash="{v1}"]')
    assert stats[v1].latency_ms.p50 is not None and stats[v1].latency_ms.p95 is not None
    await expect(first.locator(".v-calls")).to_have_text("4")
    await expect(first.locator(".v-p50")).to_have_text(f"{stats[v1].latency_ms.p50:,.0f} ms")
    await expect(first.locator(".v-p95")).to_have_text(f"{stats[v1].latency_ms.p95:,.0f} ms")
    await expect(first.locator(".v-barge")).to_have_text("16.7%")  # 2 barge-ins over 12 answers (greetings too)
    await expect(first.locator(".v-endings .badge")).to_have_text(["agent_end_call 3", "caller_hangup 1"])
    await expect(first.locator(".v-tools")).to_have_text("0 / 4")
    await expect(first.locator(".v-cost")).to_have_text("$0.0120")
    await expect(first.locator(".v-evals")).to_have_text("run-a: 3/4 passed")
    await expect(sales.locator(f'tr.version[data-hash="{v2}"] .v-evals')).to_have_text("run-b: 4/4 passed")
    # The text and settings of a version, folded away until asked for.
    text = sales.locator(f"#version-sales-{v1} pre")
    await expect(text).to_be_hidden()
    await sales.locator(f"#version-sales-{v1} summary").click()
    await expect(text).to_contain_text("greeting: Hi, this is sales.")
    await expect(text).to_contain_text("You sell the basic plan. Mention the price once.")
    # Any two versions, in either order.
    form = sales.locator("form.diff-form")
    await form.get_by_label("Old").select_option(v2)
    await form.get_by_label("New").select_option(v1)
    await form.get_by_role("button", name="Compare").click()
    await expect(page).to_have_url(re.compile(rf"/console/prompts/sales/diff\?old={v2}&new={v1}$"))
    await expect(page.locator("#diff .add")).to_have_text(
        ["+greeting: Hi, this is sales.", "+You sell the basic plan. Mention the price once."]
    )


async def test_experiment_arms_side_by_side_with_their_uncertainty(tab: Tab) -> None:
    page = tab.page
    await page.goto("/console/experiments")
    await page.get_by_label("Experiment").select_option(BIG_EXPERIMENT)
    await page.get_by_role("button", name="Show").click()
    await expect(page).to_have_url(re.compile(rf"name={BIG_EXPERIMENT}$"))
    arms = page.locator("#arms")
    await expect(arms.locator("tbody tr").first.locator("td")).to_have_text(["Calls", "40", "40", ""])
    p50 = arms.locator("tr", has_text="Response latency p50").locator("td")
    await expect(p50.nth(1)).to_have_text(re.compile(r"^[\d,]+ ms \([\d,]+ ms–[\d,]+ ms\)$"))
    await expect(p50.nth(3)).to_have_text("candidate higher")
    await expect(arms.locator("tr", has_text="Ended: caller_hangup").locator("td").nth(3)).to_have_text("within noise")
    await expect(page.locator("#not-enough")).to_have_count(0)
    await page.get_by_label("Experiment").select_option(SMALL_EXPERIMENT)
    await page.get_by_role("button", name="Show").click()
    await expect(page.locator("#not-enough")).to_contain_text("3 control and 2 candidate calls")
    await expect(arms.locator("td.verdict", has_text="candidate")).to_have_count(0)


async def test_summary_draws_its_charts_and_switches_window(tab: Tab, site: Site) -> None:
    page, store = tab.page, site.stack.state.store
    await page.goto("/console/summary")
    for chart in ("#chart-calls", "#chart-latency", "#chart-barge", "#chart-cost"):
        svg = page.locator(f"{chart} svg")
        await expect(svg).to_be_visible()
        box = await svg.bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 100, chart
    assert await page.locator("#chart-calls svg rect.bar").count() >= 20
    assert await page.locator("#chart-latency svg polyline.line").count() >= 3  # p50, p90, p99
    await page.get_by_label("Window").select_option("7d")
    await page.get_by_role("button", name="Show").click()
    await expect(page).to_have_url(re.compile(r"window=7d"))
    week = await store.list_calls(since=dt.datetime.now(dt.UTC) - dt.timedelta(days=7), limit=0)
    await expect(page.locator("#stat-calls")).to_have_text(str(week.total))


async def test_runs_page_compares_two_tagged_runs(tab: Tab, site: Site) -> None:
    page = tab.page
    comparison = await site.stack.state.store.compare_runs("eval_run", "run-a", "run-b")
    await page.goto("/console/runs")
    await page.get_by_label("Run A").select_option("run-a")
    await page.get_by_label("Run B").select_option("run-b")
    await page.get_by_role("button", name="Compare").click()
    await expect(page).to_have_url(re.compile(r"a=run-a&b=run-b"))
    table = page.locator("#comparison")
    await expect(table.locator("thead")).to_contain_text("A: run-a")
    await expect(table.locator("thead")).to_contain_text("B: run-b")
    p50 = table.locator("tr", has_text="Response latency p50").locator("td")
    assert comparison.a.latency_ms.p50 is not None and comparison.b.latency_ms.p50 is not None
    await expect(p50).to_have_text(
        [
            "Response latency p50",
            f"{comparison.a.latency_ms.p50:,.0f} ms",
            f"{comparison.b.latency_ms.p50:,.0f} ms",
            f"−{comparison.a.latency_ms.p50 - comparison.b.latency_ms.p50:,.0f} ms",
        ]
    )
    await expect(table.locator("tr", has_text="Barge-in rate").locator("td").nth(2)).to_have_text("0.0%")
    await expect(page.locator("#run-a-calls tbody tr")).to_have_count(4)
    await expect(page.locator("#run-b-calls tbody tr")).to_have_count(4)
    await expect(page.locator("#chart-runs svg")).to_be_visible()
    await page.locator("#run-b-calls").get_by_role("link", name="CA-run-b-2").click()
    await expect(page.get_by_role("heading", level=1)).to_contain_text("CA-run-b-2")
    await expect(page.locator("#call-meta")).to_contain_text("eval_run=run-b")


async def test_logging_out_ends_the_session(tab: Tab) -> None:
    page = tab.page
    await page.goto("/console")
    await page.get_by_role("button", name="Log out").click()
    await expect(page).to_have_url(re.compile(r"/console/login$"))
    await page.goto("/console/summary")
    await expect(page).to_have_url(re.compile(r"/console/login\?next=%2Fconsole%2Fsummary$"))
