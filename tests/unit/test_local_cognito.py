"""The local user pool (onysoft_tools.local.cognito): built from template.yaml's definitions, users with the
`custom:principal` attribute, tokens from InitiateAuth, and API Gateway's Cognito authorizer checks.
moto's in-process cognito-idp here; the integration tests run the same code against moto server."""

import stat
import time

import jwt
import pytest
from moto import mock_aws

from onysoft_tools import template
from onysoft_tools.local import cognito
from tests.helpers import moto_cognito_jwks, sign_like_moto_cognito


@pytest.fixture
def pool(monkeypatch):
    for name, value in cognito.MOTO_ENV.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield cognito.create_pool("", "us-east-1", template.load_template())


def test_definitions_come_from_the_template():
    tpl = template.load_template()
    definition = cognito.pool_definition(tpl)
    assert definition["PoolName"] == "onysoft-local-dashboard"  # ${AWS::StackName}-dashboard
    assert definition["UsernameAttributes"] == ["email"]
    assert definition["AdminCreateUserConfig"] == {"AllowAdminCreateUserOnly": True}
    assert definition["Policies"]["PasswordPolicy"]["MinimumLength"] == 12
    assert [a["Name"] for a in definition["Schema"]] == ["principal"]
    client = cognito.client_definition(tpl)
    assert client["GenerateSecret"] is False and "ALLOW_USER_PASSWORD_AUTH" in client["ExplicitAuthFlows"]
    assert "custom:principal" in client["ReadAttributes"] and "custom:principal" not in client["WriteAttributes"]


def test_the_pool_is_found_again_not_made_twice(pool):
    again = cognito.create_pool("", "us-east-1", template.load_template())
    assert (again.pool_id, again.client_id) == (pool.pool_id, pool.client_id)
    assert pool.issuer == f"https://cognito-idp.us-east-1.amazonaws.com/{pool.pool_id}"
    assert pool.env() == {cognito.ENDPOINT_ENV: "", cognito.POOL_ENV: pool.pool_id, cognito.CLIENT_ENV: pool.client_id}
    assert cognito.Pool.from_env({**pool.env(), "AWS_REGION": "us-east-1"}) == pool
    with pytest.raises(LookupError):
        cognito.Pool.from_env({})


def test_a_sign_in_gets_an_id_token_the_authorizer_accepts(pool):
    cognito.create_user(pool, principal="partner:acme", email="p@example.com", password="Partner-pass-1")
    result = cognito.initiate_auth(pool, "p@example.com", "Partner-pass-1")
    claims = cognito.verify(pool, f"Bearer {result['IdToken']}", jwks=moto_cognito_jwks())
    assert claims["custom:principal"] == "partner:acme" and claims["email"] == "p@example.com"
    rendered = cognito.authorizer_claims(claims)
    assert rendered["custom:principal"] == "partner:acme"
    assert all(isinstance(v, str) for v in rendered.values()) and rendered["exp"].endswith(time.strftime("%Y"))
    with pytest.raises(cognito.SignInError, match="Incorrect email or password"):
        cognito.initiate_auth(pool, "p@example.com", "Wrong-pass-1")
    with pytest.raises(cognito.SignInError, match="Incorrect email or password"):
        cognito.initiate_auth(pool, "nobody@example.com", "Wrong-pass-1")
    with pytest.raises(ValueError):
        cognito.create_user(pool, principal="root", email="r@example.com", password="Partner-pass-1")


def test_a_temporary_password_is_a_challenge_not_a_token(pool):
    cognito.create_user(pool, principal="operator", email="o@example.com", temporary_password="Temporary-pass-1")
    with pytest.raises(cognito.SignInError, match="NEW_PASSWORD_REQUIRED"):
        cognito.initiate_auth(pool, "o@example.com", "Temporary-pass-1")


@pytest.mark.parametrize("change", [
    {"aud": "another-client"}, {"iss": "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_other"},
    {"token_use": "access"}, {"exp": -1}, {"sub": None},
])
def test_the_authorizer_turns_away_what_api_gateway_would(change):
    pool = cognito.Pool("http://127.0.0.1:9", "us-east-1", "us-east-1_abc", "client-1")
    now = int(time.time())
    claims = {"sub": "s", "aud": "client-1", "iss": pool.issuer, "token_use": "id", "iat": now, "exp": now + 60}
    assert cognito.verify(pool, sign_like_moto_cognito(claims), jwks=moto_cognito_jwks())["sub"] == "s"
    changed = {**claims, **change}
    if change.get("exp") == -1:
        changed["exp"] = now - 1
    changed = {k: v for k, v in changed.items() if v is not None}
    with pytest.raises(cognito.InvalidToken):
        cognito.verify(pool, sign_like_moto_cognito(changed), jwks=moto_cognito_jwks())


def test_tokens_of_another_key_or_algorithm_are_refused():
    pool = cognito.Pool("http://127.0.0.1:9", "us-east-1", "us-east-1_abc", "client-1")
    now = int(time.time())
    claims = {"sub": "s", "aud": "client-1", "iss": pool.issuer, "token_use": "id", "iat": now, "exp": now + 60}
    for token in (jwt.encode(claims, "a-shared-secret-of-32-bytes-or-more!", algorithm="HS256"), "a.b.c", "", None):
        with pytest.raises(cognito.InvalidToken):
            cognito.verify(pool, token, jwks=moto_cognito_jwks())


def test_saved_sign_ins_are_private_and_replace_by_email(tmp_path):
    cognito.save_user(tmp_path, principal="org:a", email="A@example.com", password="First-pass-1")
    cognito.save_user(tmp_path, principal="org:a", email="a@example.com", password="Second-pass-1")
    assert cognito.read_saved_users(tmp_path) == [
        {"principal": "org:a", "email": "a@example.com", "password": "Second-pass-1"}]
    assert stat.S_IMODE((tmp_path / cognito.USERS_FILE).stat().st_mode) == 0o600
    (tmp_path / cognito.USERS_FILE).write_text("not json")
    assert cognito.read_saved_users(tmp_path) == []
