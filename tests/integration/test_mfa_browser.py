"""The operator's door (issue 23) in a real Chromium on `onysoft dev`: the operator's first sign-in sets up
two-step sign-in (TOTP; the QR code drawn in the page by the stack's own script), a later sign-in answers the
user pool's SOFTWARE_TOKEN_MFA challenge, and sign-out revokes the refresh token. The local user pool is moto's
cognito-idp with TOTP codes checked (a wrong code is refused, as in AWS); its RevokeToken is onysoft's
(onysoft_tools.local.moto_cognito: moto has none).

What moto cannot show (docs/ARCHITECTURE.md, "Limits and abuse"): the ID token's 15 minutes (moto's live an
hour whatever the client says), threat protection, and a per-user secret (moto gives every user the same).
"""

from __future__ import annotations

import json
import re
import secrets

import httpx
import pytest
from botocore.exceptions import ClientError
from playwright.sync_api import expect

from tests.integration.browser import WatchedPage, totp_now, wrong_totp
from tests.integration.test_dashboard_browser import PASSWORD, new_account, screenshot, settled, sign_in_as

SESSION = "onysoft.dashboard.session"


@pytest.fixture
def watched(browser, gateway):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    context.set_default_timeout(15_000)
    page = WatchedPage(context.new_page(), {gateway.base_url, gateway.env["AWS_ENDPOINT_URL_COGNITO_IDP"].rstrip("/")})
    try:
        yield page
        page.assert_clean()
    finally:
        context.close()


def submit_password(page, gateway, email: str) -> None:
    page.goto(gateway.base_url + "/dashboard/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def session_of(page) -> dict:
    return json.loads(page.evaluate(f"sessionStorage.getItem('{SESSION}')") or "null")


def accounts_status(gateway, id_token: str) -> httpx.Response:
    return httpx.get(gateway.base_url + "/dashboard/accounts", headers={"Authorization": f"Bearer {id_token}"})


def test_the_operator_sets_up_totp_at_the_first_sign_in_then_answers_the_challenge(gateway, watched, tmp_path,
                                                                                    monkeypatch):
    from onysoft_tools.local import cognito

    page = watched.page
    new_account(gateway, name="Seen by the operator")
    email = f"operator-{secrets.token_hex(4)}@example.com"
    created = gateway.cli_json("users", "create", "--principal", "operator", "--email", email, "--password", PASSWORD)
    assert created["mfa"] == "required"

    # A password alone is a token the API turns away for the operator, in OpenAI's envelope.
    bare = gateway.cli_json("token", "--email", email, "--password", PASSWORD)["token"]
    refused = accounts_status(gateway, bare)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "mfa_required", refused.text

    # The first sign-in: the API's mfa_required sends the page to the setup, with no way around it.
    submit_password(page, gateway, email)
    expect(page.get_by_role("heading", name="Set up two-step sign-in")).to_be_visible()
    watched.expect_console_error(r"status of 403")  # GET accounts: mfa_required
    expect(page.get_by_role("button", name="Not now")).to_be_hidden()
    expect(page.get_by_text("The operator's sign-in must use two-step sign-in")).to_be_visible()
    qr = page.get_by_role("img", name="QR code for your authenticator app")
    expect(qr).to_be_visible()
    drawn = page.evaluate("""() => { const c = document.getElementById('mfa-qr');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let dark = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] < 128) dark += 1;
        return { width: c.width, height: c.height, dark, total: d.length / 4 }; }""")
    assert drawn["width"] == drawn["height"] >= 21 * 6 and 0.2 < drawn["dark"] / drawn["total"] < 0.6, drawn
    secret = page.locator("#mfa-secret").inner_text().replace(" ", "")
    assert re.fullmatch(r"[A-Z2-7a-z]+", secret), secret
    screenshot(watched, tmp_path, "mfa-setup")
    qr.screenshot(path=str(tmp_path / "mfa-qr.png"))
    # Drawn here: the only requests were the stack's own and the user pool's (WatchedPage checks); the script too.
    assert any(url.endswith("/dashboard/static/qrcode.js") and status == 200
               for url, status, _ in watched.responses)

    watched.expect_console_error(r"status of 400")  # the pool's answer to a wrong code
    page.get_by_label("Code from your app").fill(wrong_totp(secret))
    page.get_by_role("button", name="Turn on two-step sign-in").click()
    expect(page.get_by_role("alert").filter(has_text="That code is not right.")).to_be_visible()
    assert accounts_status(gateway, bare).status_code == 403  # still off

    page.get_by_label("Code from your app").fill(totp_now(secret))
    page.get_by_role("button", name="Turn on two-step sign-in").click()
    expect(page.get_by_role("heading", name="Accounts")).to_be_visible()
    settled(page)
    expect(page.get_by_role("cell", name="Seen by the operator").first).to_be_visible()
    expect(page.get_by_role("button", name="Two-step sign-in")).to_be_hidden()  # it is on
    assert accounts_status(gateway, session_of(page)["idToken"]).status_code == 200

    # Sign-out revokes this sign-in's refresh token (RevokeToken).
    refresh_token = session_of(page)["refreshToken"]
    with page.expect_response(lambda r: "RevokeToken" in (r.request.headers.get("x-amz-target") or "")) as revoked:
        page.get_by_role("button", name="Sign out").click()
    assert revoked.value.status == 200
    pool = cognito.Pool.from_env(gateway.env)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, gateway.env[name])
    with pytest.raises(ClientError, match="NotAuthorized"):
        pool.client().initiate_auth(ClientId=pool.client_id, AuthFlow="REFRESH_TOKEN_AUTH",
                                    AuthParameters={"REFRESH_TOKEN": refresh_token})

    # The next sign-in is challenged for a code: a wrong one is refused, the app's code lets the operator in.
    submit_password(page, gateway, email)
    expect(page.get_by_role("heading", name="Two-step sign-in", exact=True)).to_be_visible()
    assert session_of(page) is None  # no token before the code
    page.get_by_label("Authenticator code").fill(wrong_totp(secret))
    page.get_by_role("button", name="Verify").click()
    expect(page.get_by_role("alert").filter(has_text="That code is not right.")).to_be_visible()
    page.get_by_label("Authenticator code").fill(totp_now(secret))
    page.get_by_role("button", name="Verify").click()
    expect(page.get_by_role("heading", name="Accounts")).to_be_visible()
    settled(page)
    expect(page.get_by_text(f"{email} · operator")).to_be_visible()
    screenshot(watched, tmp_path, "mfa-signed-in")
    assert accounts_status(gateway, session_of(page)["idToken"]).json()["principal"] == "operator"


def test_two_step_sign_in_is_offered_to_everyone_and_optional_for_tenants(gateway, watched):
    page = watched.page
    account = new_account(gateway, name="Optional MFA")
    email = sign_in_as(gateway, f"user:{account}")
    submit_password(page, gateway, email)
    expect(page.get_by_role("heading", name="Accounts")).to_be_visible()
    settled(page)
    page.get_by_role("button", name="Two-step sign-in").click()
    expect(page.get_by_role("heading", name="Set up two-step sign-in")).to_be_visible()
    expect(page.get_by_role("img", name="QR code for your authenticator app")).to_be_visible()
    page.get_by_role("button", name="Not now").click()
    expect(page.get_by_role("heading", name="Accounts")).to_be_visible()
    settled(page)
