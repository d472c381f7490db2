"""A real Chromium for the dashboard tests: Debian's `chromium` package driven by Playwright from PyPI.

Playwright's own browser download is not reachable where the suite runs, so `make test` installs
/usr/bin/chromium with apt-get when it is missing, and the tests launch that executable. No chromium means
the tests FAIL (never skip): a suite that silently skips its browser journeys would pass with a broken page.

Each page records console messages and uncaught errors; `Page.assert_clean()` fails the test on any error
the test did not say it expects (`expect_console_error`), and on any request for something off the stack
(everything must come from the gateway itself or the user pool's endpoint: no CDN).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("ONYSOFT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Where screenshots of the main screens go besides the test's tmp dir: docs/screenshots when refreshing them.
SCREENSHOT_DIR_ENV = "ONYSOFT_SCREENSHOT_DIR"


def launch(playwright):
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: the dashboard's browser tests need Debian's chromium "
                    "(`make test` installs it: apt-get install chromium)")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


@dataclass
class WatchedPage:
    """A Playwright page with everything it logged and fetched."""

    page: object
    allowed_origins: set[str]
    errors: list[str] = field(default_factory=list)
    expected: list[re.Pattern[str]] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    responses: list[tuple[str, int, bytes]] = field(default_factory=list)  # (url, status, body)

    def __post_init__(self) -> None:
        page = self.page
        page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        page.on("request", self._request)
        page.on("response", self._response)

    def _request(self, request) -> None:
        url = request.url
        if url.startswith(("data:", "blob:")):
            return
        origin = re.match(r"^[a-z]+://[^/]+", url)
        if origin is None or origin.group(0) not in self.allowed_origins:
            self.foreign.append(url)

    def _response(self, response) -> None:
        try:
            body = response.body()
        except Exception:  # noqa: BLE001 - a redirect or an aborted request has no body
            body = b""
        self.responses.append((response.url, response.status, body))

    def expect_console_error(self, pattern: str) -> None:
        self.expected.append(re.compile(pattern))

    def assert_clean(self) -> None:
        unexpected = [e for e in self.errors if not any(p.search(e) for p in self.expected)]
        assert not unexpected, f"console errors: {unexpected}"
        assert not self.foreign, f"requests off the stack: {self.foreign}"


# ---------------------------------------------------------------------------------------------- two-step sign-in

TOTP_MARGIN_SECONDS = 10.0  # a code typed with at least this long left in its 30 s step (a loaded machine is slow)


def totp_now(secret: str) -> str:
    """The code an authenticator app shows now for the secret the dashboard displayed (spaces ignored); it stays
    valid for TOTP_MARGIN_SECONDS (moto, like Cognito, takes only the current step's code)."""
    from onysoft_tools.local.cognito import fresh_totp_code

    return fresh_totp_code(secret.replace(" ", ""), margin=TOTP_MARGIN_SECONDS)


def wrong_totp(secret: str) -> str:
    from onysoft_tools.local.cognito import totp_code

    return f"{(int(totp_code(secret.replace(' ', ''))) + 1) % 1_000_000:06d}"


def finish_sign_in(watched: WatchedPage) -> str | None:
    """After "Sign in": the accounts page, or, for an operator without two-step sign-in, its setup completed
    with the secret the page shows (returns it); then the accounts page."""
    from playwright.sync_api import expect

    page = watched.page
    accounts = page.get_by_role("heading", name="Accounts")
    setup = page.get_by_role("heading", name="Set up two-step sign-in")
    # Not the Accounts heading: the page shows it while the accounts load, before the API's answer (403
    # mfa_required) sends an operator to the setup. The header's "who" appears once the accounts have loaded.
    expect(page.locator("#who:not([hidden])").or_(setup)).to_be_visible()
    if not setup.is_visible():
        return None
    watched.expect_console_error(r"status of 403")  # the API's mfa_required, which sent the page here
    secret = page.locator("#mfa-secret").inner_text()
    page.get_by_label("Code from your app").fill(totp_now(secret))
    page.get_by_role("button", name="Turn on two-step sign-in").click()
    expect(accounts).to_be_visible()
    return secret
