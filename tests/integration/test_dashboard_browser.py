"""The web dashboard in a real Chromium (Debian's, driven by Playwright), on `onysoft dev`: people sign in with
the local user pool (moto's cognito-idp, InitiateAuth from the browser), manage keys, see usage, and never see
another tenant. Every page fails its test on a console error or a request off the stack (tests/integration/browser.py).

Accessible names are DESIGN.md's contract ("Web dashboard"): the tests find everything by role and label.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest
from playwright.sync_api import expect

from tests.integration.browser import SCREENSHOT_DIR_ENV, WatchedPage, finish_sign_in
from tests.integration.conftest import DevGateway

PASSWORD = "Browser-test-2026"


@pytest.fixture
def open_page(browser, gateway, tmp_path):
    """open_page(width=1200) -> a WatchedPage on a fresh browser context (no shared storage); each is checked
    for console errors and foreign requests when the test ends."""
    opened: list[tuple[object, WatchedPage]] = []
    origins = {gateway.base_url, gateway.env["AWS_ENDPOINT_URL_COGNITO_IDP"].rstrip("/")}

    def make(width: int = 1200, height: int = 900) -> WatchedPage:
        context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
        context.set_default_timeout(15_000)
        watched = WatchedPage(context.new_page(), origins)
        opened.append((context, watched))
        return watched

    yield make
    try:
        for _, watched in opened:
            watched.assert_clean()
    finally:
        for context, _ in opened:
            context.close()


def sign_in_as(gateway: DevGateway, principal: str) -> str:
    """A fresh sign-in (email) acting as `principal`, made the way an operator would: `onysoft users create`."""
    email = f"{principal.split(':')[0]}-{secrets.token_hex(4)}@example.com"
    gateway.cli_json("users", "create", "--principal", principal, "--email", email, "--password", PASSWORD)
    return email


def new_account(gateway: DevGateway, kind: str = "user", name: str = "", owner: str | None = None,
                topup: str | None = "100") -> str:
    args = ["accounts", "create", "--kind", kind, "--name", name or f"{kind} {secrets.token_hex(2)}"]
    if owner:
        args += ["--owner", owner]
    account = gateway.cli_json(*args)["account_id"]
    if topup:
        gateway.cli_json("accounts", "topup", account, topup)
    return account


def screenshot(watched: WatchedPage, tmp_path: Path, name: str, *, full_page: bool = True) -> None:
    watched.page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=full_page)
    target = os.environ.get(SCREENSHOT_DIR_ENV)
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        watched.page.screenshot(path=str(Path(target) / f"{name}.png"), full_page=full_page)


def sign_in(watched: WatchedPage, gateway: DevGateway, email: str, password: str = PASSWORD) -> None:
    page = watched.page
    page.goto(gateway.base_url + "/dashboard/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()
    finish_sign_in(watched)  # an operator's first sign-in sets up two-step sign-in (test_mfa_browser.py)
    settled(page)


INPUTS_RIGHT_AFTER_CLICK = ("(button) => { button.click(); "
                            "return [...document.querySelectorAll('input')].map((i) => i.value).join(' '); }")


def settled(page) -> None:
    """Every table has finished loading (the page marks a loading table aria-busy)."""
    expect(page.locator("table[aria-busy]")).to_have_count(0)


def key_row(page, name: str):
    return page.get_by_role("row").filter(has=page.get_by_role("cell", name=name, exact=True))


def wait_until_counted(gateway: DevGateway, key: str, requests: int, timeout: float = 20.0) -> None:
    """Until the usage rollup has counted the key's requests (its count in GET /v1/key): the usage totals the
    dashboard shows are the rollup's, about a second behind (the local poller reads the stream every 1-2 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = httpx.get(gateway.base_url + "/v1/key", headers={"Authorization": f"Bearer {key}"}).json()
        if view.get("request_count") == requests:
            return
        time.sleep(0.2)
    raise AssertionError(f"the rollup did not count {requests} request(s) in {timeout:g} s")


def chat(gateway: DevGateway, key: str) -> str:
    client = openai.OpenAI(api_key=key, base_url=gateway.base_url + "/v1", max_retries=0, timeout=15)
    completion = client.chat.completions.create(model="mock/echo", messages=[{"role": "user", "content": "hi"}])
    return completion.choices[0].message.content


# ---------------------------------------------------------------------------------------------- journeys


def test_sign_in_errors_in_words_then_sign_in_and_out(gateway, open_page, tmp_path):
    account = new_account(gateway, name="Sign-in test")
    email = sign_in_as(gateway, f"user:{account}")
    watched = open_page()
    page = watched.page
    response = page.goto(gateway.base_url + "/dashboard")  # no slash: redirected to the app's URL
    assert page.url == gateway.base_url + "/dashboard/" and response.ok
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["cache-control"] == "no-cache"
    screenshot(watched, tmp_path, "sign-in")

    watched.expect_console_error(r"status of 400")  # the user pool's answer to a wrong password
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password", exact=True).fill("Not-the-password-1")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("Incorrect email or password.")).to_be_visible()

    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Accounts")).to_be_visible()
    expect(page.get_by_text(email)).to_be_visible()
    expect(page.get_by_role("table").first.get_by_text("₺100.00")).to_be_visible()  # balances in their currency
    session = json.loads(page.evaluate("sessionStorage.getItem('onysoft.dashboard.session')"))
    assert session["idToken"].count(".") == 2 and session["refreshToken"]

    page.reload()  # still signed in: the session is kept for this tab
    expect(page.get_by_role("heading", name="Accounts")).to_be_visible()

    # A token about to expire is refreshed with the refresh token (REFRESH_TOKEN_AUTH), not a new sign-in.
    flows = []
    page.on("request", lambda r: flows.append(json.loads(r.post_data).get("AuthFlow"))
            if r.method == "POST" and "InitiateAuth" in (r.headers.get("x-amz-target") or "") else None)
    page.evaluate("""() => { const s = JSON.parse(sessionStorage.getItem('onysoft.dashboard.session'));
        s.expiresAt = Date.now() + 30000; sessionStorage.setItem('onysoft.dashboard.session', JSON.stringify(s)); }""")
    page.reload()
    expect(page.get_by_role("heading", name="Accounts")).to_be_visible()
    settled(page)
    assert flows == ["REFRESH_TOKEN_AUTH"]
    refreshed = json.loads(page.evaluate("sessionStorage.getItem('onysoft.dashboard.session')"))
    assert refreshed["idToken"] != session["idToken"] and refreshed["expiresAt"] > session["expiresAt"] - 60_000
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    page.reload()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()


def test_a_temporary_password_must_be_changed_at_first_sign_in(gateway, open_page, monkeypatch):
    from onysoft_tools.local import cognito

    account = new_account(gateway, name="First sign-in")
    pool = cognito.Pool.from_env(gateway.env)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, gateway.env[name])
    email = f"new-{secrets.token_hex(4)}@example.com"
    cognito.create_user(pool, principal=f"user:{account}", email=email, temporary_password="Temporary-pass-1")
    watched = open_page()
    page = watched.page
    page.goto(gateway.base_url + "/dashboard/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password", exact=True).fill("Temporary-pass-1")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Choose a new password")).to_be_visible()
    watched.expect_console_error(r"status of 400")  # the pool refuses a password against its policy
    page.get_by_label("New password", exact=True).fill("short")
    page.get_by_role("button", name="Set password").click()
    expect(page.get_by_role("alert").filter(has_text="password")).to_be_visible()
    page.get_by_label("New password", exact=True).fill("My-own-password-1")
    page.get_by_role("button", name="Set password").click()
    expect(page.get_by_role("heading", name="Accounts")).to_be_visible()
    document = gateway.cli_json("token", "--email", email, "--password", "My-own-password-1")
    assert document["principal"] == f"user:{account}"


def test_create_a_key_use_it_see_last_used_then_delete_it(gateway, open_page, tmp_path):
    account = new_account(gateway, name="Keys journey")
    email = sign_in_as(gateway, f"user:{account}")
    watched = open_page()
    page = watched.page
    sign_in(watched, gateway, email)
    expect(page.get_by_text("No keys yet.")).to_be_visible()  # the empty state

    # Create, by keyboard: the button, the dialog's Name field (focused on open), Enter submits.
    page.get_by_role("button", name="Create key").focus()
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_label("Name", exact=True)).to_be_focused()
    page.keyboard.type("laptop")
    dialog.get_by_label("Requests per minute").fill("30")
    dialog.get_by_label("Spend limit").fill("5")
    dialog.get_by_label("Models").fill("mock/echo, mock/slow-stream")
    dialog.get_by_label("Expires").fill("2030-01-15T12:00")
    dialog.get_by_label("Name", exact=True).press("Enter")
    key_field = dialog.get_by_label("API key")
    expect(key_field).to_have_value(re.compile(r"^sk-ony-[0-9a-f]{48}$"))
    key = key_field.input_value()
    gateway.known_keys.add(key)
    expect(dialog.get_by_label("In a shell")).to_have_value(f"export ONYSOFT_API_KEY={key}")
    expect(dialog.get_by_role("button", name="Copy", exact=True)).to_be_visible()
    screenshot(watched, tmp_path, "create-key", full_page=False)
    page.keyboard.press("Escape")  # closing the dialog forgets the key
    expect(dialog).to_be_hidden()
    assert key not in page.content()
    assert key not in page.evaluate("JSON.stringify([Object.entries(sessionStorage), Object.entries(localStorage)])")
    assert key not in page.evaluate("[...document.querySelectorAll('input')].map((i) => i.value).join(' ')")

    row = key_row(page, "laptop")
    expect(row).to_have_count(1)
    expect(row.get_by_role("cell", name="Never")).to_be_visible()
    expect(row).to_contain_text("30 req/min")
    expect(row).to_contain_text("spend ≤ ₺5.00")
    expect(row).to_contain_text("models: mock/echo, mock/slow-stream")
    expect(row).to_contain_text("expires 15 Jan 2030")
    expect(row).to_contain_text(key[:11])  # the display form
    assert key not in row.inner_text()

    assert chat(gateway, key)  # the OpenAI SDK, with the key the page showed
    wait_until_counted(gateway, key, 1)
    page.reload()
    row = key_row(page, "laptop")
    last_used = row.locator("td.last-used time")
    expect(last_used).to_have_text("just now")
    assert re.fullmatch(r"\d{1,2} \w{3} \d{4}, \d{2}:\d{2}:\d{2} UTC", last_used.get_attribute("title"))
    expect(page.get_by_role("table", name="By model").get_by_role("cell", name="mock/echo")).to_be_visible()
    screenshot(watched, tmp_path, "keys")

    row.get_by_role("button", name="Delete").click()
    confirm = page.get_by_role("dialog", name="Delete key?")
    expect(confirm).to_contain_text("laptop")
    confirm.get_by_role("button", name="Delete").click()
    expect(confirm).to_be_hidden()
    expect(key_row(page, "laptop")).to_have_count(0)
    expect(page.get_by_text("No keys yet.")).to_be_visible()
    with pytest.raises(openai.AuthenticationError) as caught:
        chat(gateway, key)
    assert caught.value.status_code == 401
    expect(page.get_by_role("table").filter(has_text="key delete").first).to_be_visible()  # the audit log


def test_rotate_a_key_the_new_one_shown_once_the_old_one_until_its_grace(gateway, open_page, tmp_path):
    account = new_account(gateway, name="Rotation journey")
    old = gateway.cli_json("keys", "create", "--account", account, "--name", "ci", "--rpm", "25")
    soon = gateway.cli_json("keys", "create", "--account", account, "--name", "nightly", "--expires-in", "3d")
    gateway.known_keys.update({old["key"], soon["key"]})
    email = sign_in_as(gateway, f"user:{account}")
    watched = open_page()
    page = watched.page
    sign_in(watched, gateway, email)
    # A key that expires within 7 days gets a banner that says when, and what to do.
    banner = page.locator("[data-banner=expiring]")
    expect(banner).to_have_count(1)
    expect(banner).to_contain_text("nightly")
    expect(banner).to_contain_text("expires in 3 days")

    row = key_row(page, "ci")
    row.get_by_role("button", name="Rotate").click()
    dialog = page.get_by_role("dialog", name="Rotate key?")
    expect(dialog).to_contain_text("ci")
    expect(dialog.get_by_label("Old key keeps working")).to_be_focused()
    expect(dialog.get_by_label("Old key keeps working")).to_have_value("24h")  # the default
    dialog.get_by_label("Old key keeps working").select_option(label="1 hour")
    dialog.get_by_role("button", name="Rotate").click()
    shown = page.get_by_role("dialog", name="Your new key")
    key_field = shown.get_by_label("API key")
    expect(key_field).to_have_value(re.compile(r"^sk-ony-[0-9a-f]{48}$"))
    new = key_field.input_value()
    gateway.known_keys.add(new)
    assert new != old["key"]
    expect(shown.get_by_label("In a shell")).to_have_value(f"export ONYSOFT_API_KEY={new}")
    expect(shown.get_by_role("button", name="Copy", exact=True)).to_be_visible()
    expect(shown).to_contain_text(f"The old key {old['display']} keeps working until")
    screenshot(watched, tmp_path, "rotate-key", full_page=False)
    # Both secrets work now, as the same key (id, limits), with the OpenAI SDK.
    for secret in (old["key"], new):
        assert chat(gateway, secret)
        view = httpx.get(gateway.base_url + "/v1/key", headers={"Authorization": f"Bearer {secret}"}).json()
        assert (view["key_id"], view["rpm"]) == (old["key_id"], 25)
    # Closing forgets the new key, at once: Done is clicked and every input read in one JavaScript task, so a key
    # still in the page right after the click shows whatever the timing (the dialog's `close` event, which once
    # did the wiping, comes a task later: CI read the key there once).
    left = shown.get_by_role("button", name="Done").evaluate(INPUTS_RIGHT_AFTER_CLICK)
    assert new not in left
    expect(shown).to_be_hidden()
    row = key_row(page, "ci")
    expect(row).to_contain_text(new[:11])  # its display form now
    expect(row).to_contain_text(f"{old['display']} works until")
    expect(row).to_contain_text("Rotated")
    expect(row).to_contain_text("25 req/min")
    screenshot(watched, tmp_path, "rotated-keys", full_page=False)

    # Rotated again with "Stop now": every older secret stops at once; the newest one works.
    row.get_by_role("button", name="Rotate").click()
    dialog = page.get_by_role("dialog", name="Rotate key?")
    dialog.get_by_label("Old key keeps working").select_option(label="Stop now")
    dialog.get_by_role("button", name="Rotate").click()
    shown = page.get_by_role("dialog", name="Your new key")
    expect(shown.get_by_label("API key")).to_have_value(re.compile(r"^sk-ony-[0-9a-f]{48}$"))
    newest = shown.get_by_label("API key").input_value()
    gateway.known_keys.add(newest)
    expect(shown).to_contain_text("stopped working now")
    page.keyboard.press("Escape")
    for secret in (old["key"], new):
        refused = httpx.get(gateway.base_url + "/v1/key", headers={"Authorization": f"Bearer {secret}"})
        assert refused.status_code == 401
    assert chat(gateway, newest)
    expect(key_row(page, "ci")).not_to_contain_text("works until")
    rotations = [e for e in gateway.cli_json("events")["events"]
                 if e["detail"].get("key_id") == old["key_id"] and e["detail-type"] == "Key Rotated"]
    assert [e["detail"]["previous_display"] for e in rotations] == [old["display"], new[:11] + "…" + new[-4:]]


def test_a_key_github_found_in_public_has_a_banner_saying_where(gateway, open_page, tmp_path):
    account = new_account(gateway, name="Leak journey")
    leaked = gateway.cli_json("keys", "create", "--account", account, "--name", "committed")
    gateway.known_keys.add(leaked["key"])
    url = f"https://github.com/octocat/hello/blob/{secrets.token_hex(4)}/settings.py"
    raw, headers = gateway.github.report({"token": leaked["key"], "type": "onysoft_api_key", "url": url,
                                          "source": "content"})
    answer = httpx.post(gateway.base_url + "/secret-scanning/github", content=raw,
                        headers={"Content-Type": "application/json", **headers})
    assert answer.json()[0]["label"] == "true_positive"
    email = sign_in_as(gateway, f"user:{account}")
    watched = open_page()
    page = watched.page
    sign_in(watched, gateway, email)
    banner = page.locator("[data-banner=leaked]")
    expect(banner).to_have_count(1)
    expect(banner).to_contain_text("“committed”")
    expect(banner).to_contain_text("was found in public and revoked")
    expect(banner.get_by_role("link", name=url)).to_have_attribute("href", url)
    row = key_row(page, "committed")
    expect(row).to_contain_text("leaked")
    expect(row.get_by_role("button", name="Rotate")).to_have_count(0)  # revoked for good: delete it, make a new one
    screenshot(watched, tmp_path, "leaked-key", full_page=False)
    row.get_by_role("button", name="Delete").click()
    page.get_by_role("dialog", name="Delete key?").get_by_role("button", name="Delete").click()
    expect(page.locator("[data-banner=leaked]")).to_have_count(0)
    expect(key_row(page, "committed")).to_have_count(0)


def test_usage_chart_table_and_csv_export(gateway, open_page, tmp_path):
    account = new_account(gateway, name="Usage journey")
    key = gateway.cli_json("keys", "create", "--account", account, "--name", "batch")["key"]
    gateway.known_keys.add(key)
    for _ in range(3):
        chat(gateway, key)
    # The page reads the usage rollup's totals once, when it loads; they trail the requests by the poller's 1-2 s
    # (by design: docs/ARCHITECTURE.md), so the page is opened once the rollup has counted all three.
    wait_until_counted(gateway, key, 3)
    email = sign_in_as(gateway, f"user:{account}")
    watched = open_page()
    page = watched.page
    sign_in(watched, gateway, email)
    chart = page.get_by_role("img", name=re.compile("Requests per day"))
    expect(chart).to_be_visible()
    expect(chart).to_have_accessible_name(re.compile(r"3 in all$"))
    model_row = page.get_by_role("table", name="By model").get_by_role("row").filter(has_text="mock/echo")
    expect(model_row.get_by_role("cell").nth(1)).to_have_text("3")
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Export CSV").click()
    csv = Path(download_info.value.path()).read_text()
    lines = csv.strip().splitlines()
    assert lines[0].startswith("created_at,request_id,key_id,model") and len(lines) == 4
    assert all('"mock/echo"' in line for line in lines[1:])
    screenshot(watched, tmp_path, "usage")


def test_a_user_never_sees_another_tenants_account(gateway, open_page):
    mine = new_account(gateway, name="Mine")
    theirs = new_account(gateway, name="Theirs")
    their_key = gateway.cli_json("keys", "create", "--account", theirs, "--name", "their secret key")
    gateway.known_keys.add(their_key["key"])
    email = sign_in_as(gateway, f"user:{mine}")
    watched = open_page()
    page = watched.page
    sign_in(watched, gateway, email)
    expect(page.get_by_role("heading", name="Mine")).to_be_visible()
    settled(page)
    page.wait_for_load_state("networkidle")
    api_calls = [(url, status, body) for url, status, body in watched.responses if "/dashboard/" in url
                 and not re.search(r"/dashboard/(static/|config\.json|$)", url)]
    assert api_calls and all(status == 200 for _, status, _ in api_calls), api_calls
    for url, _, body in watched.responses:
        for secret in (theirs, their_key["key_id"], their_key["key"], "Theirs", "their secret key"):
            assert secret not in url and secret.encode() not in body, (secret, url)
    accounts = next(json.loads(body) for url, _, body in api_calls if url.endswith("/dashboard/accounts"))
    assert [a["account_id"] for a in accounts["accounts"]] == [mine]
    assert theirs not in page.content() and "Theirs" not in page.content()


def test_a_partner_creates_a_customer_and_a_key_for_it(gateway, open_page, tmp_path):
    partner = f"partner:p-{secrets.token_hex(3)}"
    email = sign_in_as(gateway, partner)
    watched = open_page(width=390, height=844)  # a phone
    page = watched.page
    sign_in(watched, gateway, email)
    expect(page.get_by_text("No customers yet.")).to_be_visible()
    new_customer = page.get_by_role("form", name="New customer")
    new_customer.get_by_label("Name").fill("Kahve Dükkanı")
    new_customer.get_by_label("Markup %").fill("45")
    new_customer.get_by_role("button", name="Create customer").click()
    expect(page.get_by_role("heading", name="Kahve Dükkanı")).to_be_visible()
    accounts = page.get_by_role("table").first
    expect(accounts.get_by_role("row").filter(has_text="Kahve Dükkanı")).to_contain_text("45%")
    expect(accounts).to_contain_text("₺0.00")
    # The platform's ceilings on it, with the counts (issue 23): the key type's defaults.
    expect(page.get_by_role("definition").filter(has_text="rpm 600")).to_have_text(
        "rpm 600 · tpm 2,000,000 · parallel 20 · keys 0 of 20 · accounts 1 of 1,000")

    markup = page.get_by_role("form", name="Account markup")
    watched.expect_console_error(r"status of 400")  # the API refuses a markup out of range, in words
    markup.get_by_label("Markup %").fill("250")
    markup.get_by_role("button", name="Save markup").click()
    expect(page.get_by_role("alert").filter(has_text="between 0% and 200%")).to_be_visible()
    markup.get_by_label("Markup %").fill("60")
    markup.get_by_role("button", name="Save markup").click()
    expect(accounts.get_by_role("row").filter(has_text="Kahve Dükkanı")).to_contain_text("60%")

    page.get_by_role("button", name="Create key").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Name", exact=True).fill("register")
    dialog.get_by_role("button", name="Create", exact=True).click()
    expect(dialog.get_by_label("API key")).to_have_value(re.compile(r"^sk-ony-"))
    key = dialog.get_by_label("API key").input_value()
    gateway.known_keys.add(key)
    dialog.get_by_role("button", name="Done").click()
    expect(key_row(page, "register")).to_contain_text("partner customer")
    described = httpx.get(gateway.base_url + "/v1/key", headers={"Authorization": f"Bearer {key}"}, timeout=15)
    assert described.status_code == 200 and described.json()["type"] == "partner_customer"
    # Usable at 390 px: nothing wider than the screen but the tables, which scroll in their own region.
    wide = page.evaluate("""[...document.querySelectorAll('body *')].filter((e) => e.getBoundingClientRect().right > 391
        && !e.closest('.table-wrap *')).map((e) => e.tagName + '#' + e.id + '.' + e.className)""")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, wide
    screenshot(watched, tmp_path, "partner-phone")


def test_an_org_admin_creates_a_project(gateway, open_page):
    org = f"org:o-{secrets.token_hex(3)}"
    watched = open_page()
    page = watched.page
    sign_in(watched, gateway, sign_in_as(gateway, org))
    expect(page.get_by_text("No projects yet.")).to_be_visible()
    new_project = page.get_by_role("form", name="New project")
    expect(new_project.get_by_label("Markup %")).to_be_hidden()  # a project's markup is the platform's
    new_project.get_by_label("Name").fill("Search")
    new_project.get_by_role("button", name="Create project").click()
    expect(page.get_by_role("heading", name="Search")).to_be_visible()
    expect(page.get_by_role("form", name="Account markup")).to_be_hidden()
    settled(page)
    (project,) = [a for a in gateway.cli_json("accounts", "list")["accounts"] if a.get("owner") == org.split(":")[1]]
    assert project["kind"] == "project" and project["name"] == "Search"


def test_the_operator_tops_up_once_per_click_even_when_the_request_is_delivered_twice(gateway, open_page, tmp_path):
    account = new_account(gateway, name=f"Top-up {uuid.uuid4().hex[:6]}", topup=None)
    email = sign_in_as(gateway, "operator")
    watched = open_page()
    page = watched.page
    sent: list[dict] = []

    def deliver_twice(route) -> None:
        # What a retrying network or proxy does: the same request (same Idempotency-Key) reaches the API twice.
        sent.append(route.request.headers)
        route.fetch()
        second = route.fetch()
        sent.append({"replayed": second.headers.get("idempotent-replayed")})
        route.fulfill(response=second)

    page.route("**/topup", deliver_twice)
    sign_in(watched, gateway, email)
    row = page.get_by_role("row").filter(has_text=account)
    row.get_by_role("button", name=re.compile("^Open")).click()
    expect(page.get_by_role("heading", name=re.compile("^Top-up"))).to_be_visible()
    page.get_by_label("Amount").fill("12.5")
    page.get_by_role("button", name="Top up").click()
    expect(row).to_contain_text("₺12.50")
    assert gateway.cli_json("accounts", "show", account)["balance_micros"] == 12_500_000  # charged once
    assert sent[1] == {"replayed": "true"}
    first_key = sent[0]["idempotency-key"]
    assert re.fullmatch(r"[0-9a-f-]{36}", first_key)

    page.get_by_label("Amount").fill("1")  # another click: another top-up, with its own key
    page.get_by_role("button", name="Top up").click()
    expect(row).to_contain_text("₺13.50")
    assert gateway.cli_json("accounts", "show", account)["balance_micros"] == 13_500_000
    assert sent[2]["idempotency-key"] != first_key
    screenshot(watched, tmp_path, "operator")


def element_screenshot(watched: WatchedPage, tmp_path: Path, name: str, locator) -> None:
    """One part of the page (a section), here and, when refreshing them, in docs/screenshots."""
    locator.screenshot(path=str(tmp_path / f"{name}.png"))
    target = os.environ.get(SCREENSHOT_DIR_ENV)
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        locator.screenshot(path=str(Path(target) / f"{name}.png"))


def dollars(amount: str) -> str:
    """A decimal string as the page shows USD: `$`, at least 2 and at most 6 decimals (no trailing zeros)."""
    whole, _, fraction = amount.partition(".")
    return f"${whole}.{fraction.rstrip('0').ljust(2, '0')}"


def test_the_operator_sees_the_margin_chart_and_a_partner_only_its_revenue(gateway, open_page, tmp_path):
    partner = f"p-{secrets.token_hex(3)}"
    customer = new_account(gateway, "partner_customer", name="Margin customer", owner=partner)
    direct = new_account(gateway, name="Margin direct user")
    for account, requests in ((customer, 2), (direct, 1)):
        key = gateway.cli_json("keys", "create", "--account", account, "--name", "m")["key"]
        gateway.known_keys.add(key)
        for _ in range(requests):
            chat(gateway, key)
    today = time.strftime("%Y-%m-%d", time.gmtime())
    start = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 29 * 86400))

    def report() -> dict:
        return {row["account_id"]: row for row in
                gateway.cli_json("report", "margin", "--from", start, "--to", today, "--by", "account")["rows"]}

    # The rollup counts a request's hold and its settle, maybe in two polls: wait until both are settled there.
    deadline = time.monotonic() + 20
    expected = report()
    while not all(expected.get(a, {}).get("settled") == n for a, n in ((customer, 2), (direct, 1))):
        assert time.monotonic() < deadline, expected
        time.sleep(0.2)
        expected = report()
    assert expected[customer]["requests"] == 2 and expected[customer]["margin_usd_micros"] > 0

    watched = open_page()
    page = watched.page
    sign_in(watched, gateway, sign_in_as(gateway, "operator"))
    section = page.get_by_role("region", name="Margin", exact=True)
    expect(section.get_by_role("heading", name="Margin")).to_be_visible()
    chart = section.get_by_role("img", name=re.compile(r"^Margin by account, .*: charged \$"))
    expect(chart).to_be_visible()
    table = section.get_by_role("table", name=re.compile("^Margin by account"))
    row = table.get_by_role("row").filter(has_text=customer)
    cells = row.get_by_role("cell")
    expect(row.get_by_role("rowheader")).to_have_text(f"Margin customer{customer}")  # the name, its id below
    expect(cells.nth(1)).to_have_text("2")  # requests
    expect(cells.nth(3)).to_have_text(dollars(expected[customer]["charged_usd"]))
    expect(cells.nth(4)).to_have_text(dollars(expected[customer]["provider_cost_usd"]))
    expect(cells.nth(5)).to_have_text(dollars(expected[customer]["margin_usd"]))
    expect(cells.nth(6)).to_have_text(f"{expected[customer]['margin_pct']}%")
    section.get_by_label("Group by").select_option("partner")
    section.get_by_role("button", name="Show margin").click()
    expect(section.get_by_role("table", name=re.compile("^Margin by partner"))
           .get_by_role("row").filter(has_text=partner)).to_be_visible()
    expect(section.get_by_role("img", name=re.compile(r"^Margin by partner"))).to_be_visible()
    section.get_by_label("Group by").select_option("account")
    section.get_by_role("button", name="Show margin").click()
    expect(section.get_by_role("table", name=re.compile("^Margin by account"))).to_be_visible()
    settled(page)
    element_screenshot(watched, tmp_path, "margin", page.locator("#margin"))

    partner_page = open_page()
    page = partner_page.page
    sign_in(partner_page, gateway, sign_in_as(gateway, f"partner:{partner}"))
    section = page.get_by_role("region", name="Revenue", exact=True)
    table = section.get_by_role("table", name=re.compile("^Revenue by account"))
    expect(table.get_by_role("row").filter(has_text=customer)).to_be_visible()
    expect(table.get_by_role("row")).to_have_count(2)  # the header and its one customer
    expect(table.get_by_role("columnheader", name="Provider cost (USD)")).to_have_count(0)
    expect(section.get_by_role("img", name=re.compile(r"^Revenue by account"))).to_be_visible()
    report_calls = [body for url, _, body in partner_page.responses if "/reports/margin" in url]
    assert report_calls and all(b'"provider_cost_usd_micros": null' in body or
                                b'"provider_cost_usd_micros":null' in body for body in report_calls)
    assert direct.encode() not in b"".join(report_calls)


def test_a_statement_page_printable_with_its_csv(gateway, open_page, tmp_path):
    account = new_account(gateway, name="Defter Kırtasiye", topup="100")
    operator = gateway.cli_json("token", "--principal", "operator")["token"]
    added = httpx.post(f"{gateway.base_url}/dashboard/accounts/{account}/topup", json={"amount": "25"}, timeout=15,
                       headers={"Authorization": f"Bearer {operator}", "Idempotency-Key": "invoice-2026-0042"})
    assert added.status_code == 200, added.text
    key = gateway.cli_json("keys", "create", "--account", account, "--name", "shop")["key"]
    gateway.known_keys.add(key)
    for _ in range(2):
        chat(gateway, key)
    month = time.strftime("%Y-%m", time.gmtime())
    # The rollup counts a request's hold and its settle, maybe in two polls: until both are settled there.
    deadline = time.monotonic() + 20
    expected = gateway.cli_json("statement", account, "--month", month)
    while (expected["requests"], expected["pending_requests"]) != (2, 0):
        assert time.monotonic() < deadline, expected
        time.sleep(0.2)
        expected = gateway.cli_json("statement", account, "--month", month)
    assert expected["closing_balance_micros"] == (expected["opening_balance_micros"] + expected["topups_micros"]
                                                  - expected["charges_micros"])
    assert expected["charges_micros"] > 0 and expected["topups_micros"] == 125_000_000

    watched = open_page()
    page = watched.page
    sign_in(watched, gateway, sign_in_as(gateway, f"user:{account}"))
    statement = page.get_by_role("region", name="Statement", exact=True)
    expect(statement.get_by_label("Month")).to_have_value(month)
    statement.get_by_role("button", name="Show statement").click()
    sheet = page.get_by_role("article", name=re.compile(r"^Statement · Defter Kırtasiye · "))
    expect(sheet).to_be_visible()
    summary = sheet.get_by_role("definition")
    expect(summary.nth(1)).to_have_text("₺125.00")  # top-ups
    charges = expected["charges"].rstrip("0")
    expect(summary.nth(2)).to_have_text(re.compile(rf"^₺{re.escape(charges)}0*$"))
    lines = sheet.get_by_role("table", name="Lines")
    expect(lines.get_by_role("row")).to_have_count(1 + len(expected["lines"]))
    topup = lines.get_by_role("row").filter(has_text="invoice-2026-0042")
    expect(topup.get_by_role("cell").nth(3)).to_have_text("₺25.00")
    expect(topup.get_by_role("cell").nth(5)).to_have_text("operator")  # the principal; the person is the platform's
    expect(lines.get_by_role("row").filter(has_text="Charges: mock/echo").get_by_role("cell").nth(2)).to_have_text("2")
    expect(sheet.get_by_role("table", name="Charges by key").get_by_role("row").filter(has_text="shop")).to_be_visible()

    with page.expect_download() as download_info:
        sheet.get_by_role("button", name="Download CSV").click()
    downloaded = Path(download_info.value.path()).read_text()
    rows = [line.split(",") for line in downloaded.strip().splitlines()]
    assert rows[0][:3] == ["type", "date", "description"]
    ledger = [r for r in rows[1:] if r[0] != "key_charges"]
    assert sum(int(r[7]) for r in ledger[:-1]) == int(ledger[-1][7]) == expected["closing_balance_micros"]

    element_screenshot(watched, tmp_path, "statement", sheet)

    page.emulate_media(media="print")  # what the Print button prints: the statement alone
    expect(page.get_by_role("heading", name="Accounts")).to_be_hidden()
    expect(sheet.get_by_role("button", name="Print")).to_be_hidden()
    expect(sheet.get_by_role("heading")).to_be_visible()
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(tmp_path / "statement-print.png"))


def test_a_person_sets_a_balance_alert_and_the_banner_says_when_it_fired(gateway, open_page, tmp_path):
    account = new_account(gateway, name="Alert journey", topup="10")
    watched = open_page()
    page = watched.page
    sign_in(watched, gateway, sign_in_as(gateway, f"user:{account}"))
    banner = page.get_by_role("region", name="Balance alerts")
    expect(banner).to_be_hidden()
    form = page.get_by_role("form", name="Balance alert")
    form.get_by_label("Alert below").fill("25")  # above the balance: the alert is in force at once (no event)
    form.get_by_role("button", name="Save alert").click()
    expect(banner).to_be_visible()
    expect(banner.get_by_role("listitem")).to_have_text(
        "Alert journey: balance low (₺10.00), below its alert at ₺25.00.")
    assert gateway.cli_json("accounts", "show", account)["alert_below_micros"] == 25_000_000
    settled(page)
    screenshot(watched, tmp_path, "balance-alert", full_page=False)
    gateway.cli_json("accounts", "topup", account, "20")  # to 30: above the alert, re-armed
    page.reload()
    expect(page.get_by_role("heading", name="Accounts")).to_be_visible()
    settled(page)
    expect(banner).to_be_hidden()
    expect(page.get_by_role("form", name="Balance alert").get_by_label("Alert below")).to_have_value("25")
