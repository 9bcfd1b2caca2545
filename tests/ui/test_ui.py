"""The web UI in headless chromium against a broker filled through the SDK: login and
logout, every page with real data (screenshots: to docs/ui/ with WHARF_UI_SCREENSHOTS=1,
as `make screenshots` sets, else to the run's tmp dir), no console errors, axe-core's
WCAG A/AA rules, purge and dead-letter replay from the UI, a monitoring user's read-only
view, the CSRF check, and a consumer-group reset with its dry run."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, expect

from .conftest import ADMIN_PASSWORD, MONITOR_PASSWORD, Filled

pytestmark = pytest.mark.timeout(60)

ROOT: Final = Path(__file__).resolve().parents[2]
# Where the screenshots go: docs/ui/ (committed, linked from the README) only when asked,
# so that a test run leaves the tree clean; else the run's tmp dir.
DOCS_SCREENSHOTS: Final = ROOT / "docs" / "ui"
SCREENSHOTS_ENV: Final = "WHARF_UI_SCREENSHOTS"
AXE: Final = Path(__file__).with_name("vendor") / "axe.min.js"
TIMEOUT_MS: Final = 10_000
DESKTOP: Final = {"width": 1280, "height": 800}
PHONE: Final = {"width": 390, "height": 844}
# axe-core rules left out, and why (docs/management.md lists them too): none so far.
AXE_EXCEPTIONS: Final[tuple[str, ...]] = ()

# Each page: its hash route, and a text that shows it rendered the broker's data.
PAGES: Final = [
    ("overview", "#/overview", "Message rates"),
    ("queues", "#/queues", "orders.eu"),
    ("queue", "#/queues/%2F/orders.eu", "eu.#"),
    ("exchanges", "#/exchanges", "orders"),
    ("exchange", "#/exchanges/%2F/orders", "orders.us"),
    ("topics", "#/topics", "events"),
    ("topic", "#/topics/%2F/events", "retention_ms"),
    ("groups", "#/groups", "billing"),
    ("group", "#/groups/%2F/analytics", "Stable"),
    ("connections", "#/connections", "native"),
    ("admin", "#/admin", "Virtual hosts"),
]


class Console:
    """Console errors and uncaught exceptions of a page."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            self.errors.append(msg.text)


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport=DESKTOP)
    ctx.set_default_timeout(TIMEOUT_MS)
    try:
        yield ctx
    finally:
        ctx.close()


def login(page: Page, base: str, user: str = "admin", password: str = ADMIN_PASSWORD) -> None:
    page.goto(base + "/")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#whoami")).to_contain_text(user)


def show(page: Page, base: str, route: str, text: str) -> None:
    page.goto(base + "/" + route)
    expect(page.locator("#page")).to_contain_text(text)


def open_first_connection(page: Page, base: str) -> None:
    show(page, base, "#/connections", "native")
    page.locator("#page table tbody a").first.click()
    expect(page.locator("#page")).to_contain_text("Client properties")


def test_log_in_and_out(context: BrowserContext, filled: Filled) -> None:
    page = context.new_page()
    console = Console(page)
    page.goto(filled.base + "/")
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password").fill("wrong")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#login-status")).to_contain_text("invalid credentials")
    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#whoami")).to_contain_text("admin (administrator)")
    cookie = next(c for c in context.cookies() if c["name"] == "wharf_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    page.get_by_role("button", name="Log out").click()
    expect(page.locator("#login-status")).to_have_text("Logged out.")
    status = page.evaluate(
        "fetch('/api/overview', {headers: {'X-Requested-With': 't'}}).then(r => r.status)"
    )
    assert status == 401  # the cookie no longer opens anything
    # Only the failed login's 401 reached the console (Chrome logs failed requests).
    assert [e for e in console.errors if "401" not in e] == []


@pytest.fixture
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get(SCREENSHOTS_ENV) == "1":
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return DOCS_SCREENSHOTS
    return tmp_path_factory.mktemp("ui-screenshots")


def test_every_page_renders_real_data_without_console_errors(
    context: BrowserContext, filled: Filled, screenshots: Path
) -> None:
    page = context.new_page()
    console = Console(page)
    login(page, filled.base)
    for name, route, text in PAGES:
        show(page, filled.base, route, text)
        if name == "queue":  # show a peek, bodies pretty-printed as JSON
            page.get_by_label("Show bodies as").select_option("json")
            page.get_by_role("button", name="Peek").click()
            expect(page.locator("#page")).to_contain_text('"item": "boat"')
            # The queue's own message_stats: a rates chart next to the depth chart.
            rates = page.locator("figure.chart", has_text="Message rates")
            expect(rates).to_be_visible()
        browse = page.get_by_role("button", name="Browse")
        if name == "topic" and browse.count():  # the API can browse records
            browse.click()
            expect(page.locator("#page")).to_contain_text('{"n": ')
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(screenshots / f"{name}.png"), full_page=True)
        assert console.errors == [], (name, console.errors)
    open_first_connection(page, filled.base)
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(screenshots / "connection.png"), full_page=True)
    assert console.errors == [], ("connection", console.errors)
    page.set_viewport_size(PHONE)
    for name, route, text in PAGES[:2]:
        show(page, filled.base, route, text)
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(screenshots / f"{name}-phone.png"), full_page=True)
        # Nothing wider than the phone's screen but the scrolling tables.
        overflow = page.evaluate("document.documentElement.scrollWidth")
        assert overflow <= PHONE["width"], (name, overflow)
    assert console.errors == []


def test_each_page_passes_axe_wcag_a_and_aa(browser: Browser, filled: Filled) -> None:
    # axe is injected as a script tag: this context alone lets it past the page's CSP.
    ctx = browser.new_context(viewport=DESKTOP, bypass_csp=True)
    ctx.set_default_timeout(TIMEOUT_MS)
    try:
        page = ctx.new_page()
        page.goto(filled.base + "/")
        page.add_script_tag(path=str(AXE))
        assert _axe(page) == [], "login page"
        login(page, filled.base)
        for name, route, text in PAGES:
            show(page, filled.base, route, text)
            page.wait_for_load_state("networkidle")
            page.add_script_tag(path=str(AXE))
            assert _axe(page) == [], name
    finally:
        ctx.close()


def _axe(page: Page) -> list[dict[str, Any]]:
    result = page.evaluate(
        """async (skip) => {
            const rules = Object.fromEntries(skip.map((id) => [id, {enabled: false}]));
            const r = await axe.run(document, {
                runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']},
                rules,
            });
            return r.violations.map((v) => ({id: v.id, help: v.help,
                nodes: v.nodes.slice(0, 3).map((n) => n.target.join(' '))}));
        }""",
        list(AXE_EXCEPTIONS),
    )
    assert isinstance(result, list)
    return result


def test_purge_from_the_ui_empties_the_queue(context: BrowserContext, filled: Filled) -> None:
    assert filled.conn.declare_queue("purge.me", passive=True).messages == 3
    page = context.new_page()
    login(page, filled.base)
    show(page, filled.base, "#/queues/%2F/purge.me", "Purge or delete")
    page.get_by_role("button", name="Purge", exact=True).click()
    page.get_by_role("dialog").get_by_role("button", name="Purge").click()
    expect(page.locator("#page")).to_contain_text("Purged 3 message(s).")
    assert filled.conn.declare_queue("purge.me", passive=True).messages == 0


def test_replay_dead_letters_from_the_ui(context: BrowserContext, filled: Filled) -> None:
    assert filled.conn.declare_queue("work.dlq", passive=True).messages == 2
    page = context.new_page()
    login(page, filled.base)
    show(page, filled.base, "#/queues/%2F/work.dlq", "Replay dead letters")
    page.get_by_label("Only this last death reason").select_option("rejected")
    page.get_by_role("button", name="Replay dead letters").click()
    expect(page.locator("#page")).to_contain_text("Moved 2 message(s)")
    assert filled.conn.declare_queue("work.dlq", passive=True).messages == 0
    assert filled.conn.declare_queue("work", passive=True).messages == 2


def test_a_monitoring_user_sees_no_write_buttons(context: BrowserContext, filled: Filled) -> None:
    page = context.new_page()
    console = Console(page)
    login(page, filled.base, "monitor", MONITOR_PASSWORD)
    for name, route, text in PAGES:
        show(page, filled.base, route, text)
        page.wait_for_load_state("networkidle")
        assert page.locator("button.write").count() == 0, name
    expect(page.locator("#page")).to_contain_text("Only users with the administrator tag")
    open_first_connection(page, filled.base)
    assert page.locator("button.write").count() == 0, "connection"
    assert console.errors == []


def test_a_forged_change_without_the_csrf_token_is_refused(
    context: BrowserContext, filled: Filled
) -> None:
    page = context.new_page()
    login(page, filled.base)
    # What another page's script could send with the cookie: no X-CSRF-Token.
    answer = page.evaluate(
        """fetch('/api/queues/%2F/forged', {method: 'PUT',
            headers: {'Content-Type': 'application/json'}, body: '{}'})
           .then(async (r) => ({status: r.status, body: await r.json()}))"""
    )
    assert answer["status"] == 403 and answer["body"]["code"] == 403
    assert "X-CSRF-Token" in answer["body"]["error"]
    with pytest.raises(Exception, match="NOT_FOUND|not found|404"):
        filled.conn.declare_queue("forged", passive=True)


def tab_to(page: Page, text: str, limit: int = 80) -> None:
    """Press Tab until the focused element's text is ``text``."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent.trim()") == text:
            return
    raise AssertionError(f"{text!r} is not reachable with Tab")


def test_the_keyboard_reaches_pages_and_actions(context: BrowserContext, filled: Filled) -> None:
    page = context.new_page()
    page.goto(filled.base + "/")
    page.keyboard.type("admin")  # the user name field has the focus
    page.keyboard.press("Tab")
    page.keyboard.type(ADMIN_PASSWORD)
    page.keyboard.press("Enter")
    expect(page.locator("#whoami")).to_contain_text("admin")
    tab_to(page, "Queues")
    page.keyboard.press("Enter")
    expect(page.locator("#page")).to_contain_text("orders.eu")
    tab_to(page, "orders.eu")
    page.keyboard.press("Enter")
    expect(page.locator("#page")).to_contain_text("Purge or delete")
    tab_to(page, "Purge")
    page.keyboard.press("Enter")
    expect(page.get_by_role("dialog")).to_be_visible()
    page.keyboard.press("Escape")  # cancels: nothing purged
    expect(page.get_by_role("dialog")).to_have_count(0)
    assert filled.conn.declare_queue("orders.eu", passive=True).messages == 2
    focused = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert focused != "none"  # the focus stays visible


def test_group_reset_offsets_with_a_dry_run(context: BrowserContext, filled: Filled) -> None:
    # Last: it moves the group's offsets.  The dry run needs the API's "dry_run" field.
    before = filled.conn.committed_offsets("billing", ["events"])
    assert before and all(o > 0 for o in before.values())
    page = context.new_page()
    login(page, filled.base)
    show(page, filled.base, "#/groups/%2F/billing", "Reset offsets")
    page.get_by_label("Reset to").select_option("earliest")
    preview = page.get_by_role("button", name="Preview (dry run)")
    apply = page.get_by_role("button", name="Apply reset")
    dry_run = preview.is_enabled()
    if dry_run:
        expect(apply).to_be_disabled()
        preview.click()
        expect(page.locator(".preview")).to_contain_text("Dry run")
        assert filled.conn.committed_offsets("billing", ["events"]) == before  # not applied
    apply.click()
    expect(page.locator(".preview")).to_contain_text("Applied")
    after = filled.conn.committed_offsets("billing", ["events"])
    assert set(after.values()) == {0}, json.dumps({str(k): v for k, v in after.items()})
    if not dry_run:
        pytest.xfail("the broker's API has no dry run for reset-offsets yet")


def test_declare_a_queue_from_the_ui_lists_it(context: BrowserContext, filled: Filled) -> None:
    page = context.new_page()
    login(page, filled.base)
    show(page, filled.base, "#/queues", "Declare a queue")
    form = page.locator("form", has=page.get_by_role("button", name="Declare queue"))
    form.get_by_label("Name").fill("declared.here")
    form.get_by_role("button", name="Declare queue").click()
    expect(page.locator("#page")).to_contain_text("Queue declared.here declared.")
    # The form reloads the list after its write.
    expect(page.get_by_role("link", name="declared.here")).to_be_visible()
    assert filled.conn.declare_queue("declared.here", passive=True).messages == 0
