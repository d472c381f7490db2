"""The operator's door (issue 23): the dashboard API answers 403 `mfa_required` to the operator until the
operator's Cognito user has TOTP, then lets it in; every other principal may go without. On moto's in-process
cognito-idp, with TOTP codes checked (MOTO_COGNITO_IDP_USER_POOL_ENABLE_TOTP, as `onysoft dev` runs it) and
the same setup calls the web app makes (onysoft_tools.local.cognito.set_up_totp)."""

import json

import boto3
import jwt
import pytest
from botocore.exceptions import ClientError

from onysoft import mfa
from onysoft_tools import template
from onysoft_tools.local import cognito, moto_cognito
from tests.helpers import load_function_module
from tests.unit.test_dashboard import make_event

pytestmark = pytest.mark.real_mfa
dashboard_app = load_function_module("dashboard")
PASSWORD = "Operator-pass-2026"


@pytest.fixture
def pool(aws_tables, monkeypatch):
    for name, value in cognito.MOTO_ENV.items():
        monkeypatch.setenv(name, value)
    pool = cognito.create_pool("", "us-east-1", template.load_template())
    monkeypatch.setenv(mfa.POOL_ENV, pool.pool_id)
    return pool


def ask(claims: dict) -> tuple[int, dict]:
    event = make_event("GET", "/dashboard/accounts", claims={**claims, "token_use": "id"})
    response = dashboard_app.handler(event, None)
    return response["statusCode"], json.loads(response["body"])


def sign_in(pool, principal: str, email: str) -> dict:
    cognito.create_user(pool, principal=principal, email=email, password=PASSWORD)
    return cognito.initiate_auth(pool, email, PASSWORD)


def claims_of(result: dict) -> dict:
    return jwt.decode(result["IdToken"], options={"verify_signature": False})


def test_the_operator_without_totp_is_refused_then_let_in_once_it_is_set_up(pool):
    result = sign_in(pool, "operator", "op@example.com")
    status, body = ask(claims_of(result))
    assert status == 403 and body["error"]["code"] == "mfa_required", body
    assert set(body["error"]) == {"message", "type", "code", "param"}
    assert ask(claims_of(result))[0] == 403  # a refusal is not cached: read again (and refused again)

    secret = cognito.set_up_totp(pool, result["AccessToken"])
    status, body = ask(claims_of(result))  # at once: no negative answer was kept
    assert status == 200 and body["principal"] == "operator", body

    # From now on a password alone gets a challenge, never a token; the code gets one.
    with pytest.raises(cognito.SignInError, match="--mfa-code"):
        cognito.initiate_auth(pool, "op@example.com", PASSWORD)
    with pytest.raises(cognito.SignInError, match="authenticator code"):
        cognito.initiate_auth(pool, "op@example.com", PASSWORD, mfa_code="000000" if
                              cognito.totp_code(secret) != "000000" else "111111")
    again = cognito.initiate_auth(pool, "op@example.com", PASSWORD, totp_secret=secret)
    assert ask(claims_of(again))[0] == 200


def test_a_wrong_code_does_not_turn_totp_on(pool):
    result = sign_in(pool, "operator", "op2@example.com")
    client = pool.client()
    secret = client.associate_software_token(AccessToken=result["AccessToken"])["SecretCode"]
    wrong = "000000" if cognito.totp_code(secret) != "000000" else "111111"
    with pytest.raises(ClientError, match="CodeMismatch"):  # moto checks codes when asked to (MOTO_ENV)
        client.verify_software_token(AccessToken=result["AccessToken"], UserCode=wrong)
    with pytest.raises(ClientError):
        client.set_user_mfa_preference(AccessToken=result["AccessToken"],
                                       SoftwareTokenMfaSettings={"Enabled": True, "PreferredMfa": True})
    assert ask(claims_of(result))[0] == 403


@pytest.mark.parametrize("principal", ["partner:acme", "org:acme"])
def test_other_principals_may_sign_in_without_totp(pool, principal):
    result = sign_in(pool, principal, f"{principal.split(':')[0]}@example.com")
    status, body = ask(claims_of(result))
    assert status == 200 and body["principal"] == principal


def test_an_operator_token_whose_user_is_gone_or_unnamed_is_refused(pool):
    result = sign_in(pool, "operator", "gone@example.com")
    claims = claims_of(result)
    pool.client().admin_delete_user(UserPoolId=pool.pool_id, Username="gone@example.com")
    assert ask(claims)[1]["error"]["code"] == "mfa_required"
    assert ask({"sub": "x", "custom:principal": "operator"})[1]["error"]["code"] == "mfa_required"


def test_without_a_user_pool_the_operator_is_refused(aws_tables, monkeypatch):
    monkeypatch.delenv(mfa.POOL_ENV, raising=False)
    status, body = ask({"sub": "s", "cognito:username": "s", "custom:principal": "operator"})
    assert status == 403 and body["error"]["code"] == "mfa_required"


def test_a_yes_is_kept_a_minute_per_process(pool, monkeypatch):
    result = sign_in(pool, "operator", "cached@example.com")
    cognito.set_up_totp(pool, result["AccessToken"])
    username = claims_of(result)["cognito:username"]
    assert mfa.totp_enabled(username)
    calls = []
    real = mfa._client
    monkeypatch.setattr(mfa, "_client", lambda: calls.append(1) or real())
    assert mfa.totp_enabled(username) and calls == []
    monkeypatch.setattr(mfa.time, "monotonic", lambda: 10**12)  # past CACHE_SECONDS
    assert mfa.totp_enabled(username) and calls == [1]


def test_the_totp_codes_are_rfc_6238s():
    secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"  # RFC 6238's SHA-1 key "12345678901234567890"
    assert cognito.totp_code(secret, at=59) == "287082"  # the RFC's 94287082, six digits
    assert cognito.totp_code(secret, at=1111111109) == "081804"


def test_the_local_pool_is_the_templates_sign_in_settings(pool):
    client = pool.client()
    settings = client.describe_user_pool_client(UserPoolId=pool.pool_id, ClientId=pool.client_id)["UserPoolClient"]
    assert settings["WriteAttributes"] == ["name"] and settings["EnableTokenRevocation"] is True
    assert settings["IdTokenValidity"] == 15 and settings["TokenValidityUnits"]["IdToken"] == "minutes"
    mfa_config = client.get_user_pool_mfa_config(UserPoolId=pool.pool_id)
    assert mfa_config["MfaConfiguration"] == "OPTIONAL"
    assert mfa_config["SoftwareTokenMfaConfiguration"] == {"Enabled": True}


def test_revoke_token_ends_the_refresh_token_locally(pool):
    moto_cognito.install()
    result = sign_in(pool, "partner:acme", "revoke@example.com")
    client = boto3.client("cognito-idp", region_name="us-east-1")
    refreshed = client.initiate_auth(ClientId=pool.client_id, AuthFlow="REFRESH_TOKEN_AUTH",
                                     AuthParameters={"REFRESH_TOKEN": result["RefreshToken"]})
    assert "IdToken" in refreshed["AuthenticationResult"]
    with pytest.raises(ClientError, match="NotAuthorized"):  # another client's token
        client.revoke_token(Token=result["RefreshToken"], ClientId="another-client")
    client.revoke_token(Token=result["RefreshToken"], ClientId=pool.client_id)
    with pytest.raises(ClientError, match="NotAuthorized"):
        client.initiate_auth(ClientId=pool.client_id, AuthFlow="REFRESH_TOKEN_AUTH",
                             AuthParameters={"REFRESH_TOKEN": result["RefreshToken"]})
    with pytest.raises(ClientError, match="NotAuthorized"):  # its access token too
        client.get_user(AccessToken=result["AccessToken"])
    client.revoke_token(Token=result["RefreshToken"], ClientId=pool.client_id)  # again: no error, as in Cognito


def test_the_qr_code_is_drawn_by_the_stacks_own_script():
    event = make_event("GET", "/dashboard/static/{file}", path_params={"file": "qrcode.js"})
    answer = dashboard_app.handler(event, None)
    assert answer["statusCode"] == 200 and answer["headers"]["Content-Type"].startswith("text/javascript")
    assert "export default qrcode" in answer["body"] and "MIT license" in answer["body"]
    app_js = dashboard_app.handler(make_event("GET", "/dashboard/static/{file}", path_params={"file": "app.js"}),
                                   None)["body"]
    assert 'import qrcode from "./qrcode.js";' in app_js
    assert "otpauth://totp/" in app_js and "SOFTWARE_TOKEN_MFA" in app_js and '"RevokeToken"' in app_js


def test_the_cli_says_how_the_first_sign_in_sets_up_mfa_and_answers_the_challenge(pool, monkeypatch, capsys,
                                                                                   tmp_path):
    from onysoft_tools.cli import main

    monkeypatch.setenv(cognito.CLIENT_ENV, pool.client_id)
    state = ["--state-dir", str(tmp_path)]
    assert main(["users", "create", "--principal", "operator", "--email", "cli-op@example.com", "--password",
                 PASSWORD, *state]) == 0
    out = capsys.readouterr().out
    assert "first sign-in in the dashboard sets up an authenticator app" in out and "403 mfa_required" in out
    assert main(["users", "create", "--principal", "partner:acme", "--email", "cli-p@example.com", "--password",
                 PASSWORD, "--json", *state]) == 0
    assert json.loads(capsys.readouterr().out)["mfa"] == "optional"

    secret = cognito.set_up_totp(pool, cognito.initiate_auth(pool, "cli-op@example.com", PASSWORD)["AccessToken"])
    sign_in = ["token", "--email", "cli-op@example.com", "--password", PASSWORD, "--json", *state]
    assert main(sign_in) == 2 and "--mfa-code" in capsys.readouterr().err
    assert main([*sign_in, "--mfa-code", cognito.fresh_totp_code(secret)]) == 0
    token = json.loads(capsys.readouterr().out)["token"]
    assert ask(jwt.decode(token, options={"verify_signature": False}))[0] == 200
