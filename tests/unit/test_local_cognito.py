"""The local stand-in for the user pool and API Gateway's Cognito authorizer (onysoft_tools.local_cognito)."""

import os
import stat
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from onysoft_tools import local_cognito as lc


def test_issued_token_verifies_with_cognito_claims(tmp_path):
    token = lc.issue_token(tmp_path, "user:acct_0123456789abcdef", expires_in=600)
    claims = lc.verify(tmp_path, f"Bearer {token}")
    assert claims["custom:principal"] == "user:acct_0123456789abcdef"
    assert claims["token_use"] == "id" and claims["aud"] == lc.CLIENT_ID and claims["iss"] == lc.ISSUER
    assert claims["exp"] - claims["iat"] == 600
    assert claims["sub"] == lc.subject_of("user:acct_0123456789abcdef")
    assert lc.verify(tmp_path, token) == claims  # the bare token too, as the Cognito authorizer takes it
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    key_file = tmp_path / lc.KEY_FILE
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert lc.verify(tmp_path, token) and key_file.read_bytes() == (tmp_path / lc.KEY_FILE).read_bytes()


def test_rejects_what_the_authorizer_rejects(tmp_path, tmp_path_factory):
    token = lc.issue_token(tmp_path, "operator", expires_in=60)
    with pytest.raises(lc.InvalidToken):
        lc.verify(tmp_path, token, now=time.time() + 61)  # expired
    for bad in (None, "", "Bearer", "Bearer x.y.z", token[:-4] + "AAAA"):
        with pytest.raises(lc.InvalidToken):
            lc.verify(tmp_path, bad)
    other_dir = tmp_path_factory.mktemp("other")
    with pytest.raises(lc.InvalidToken):  # another state dir's key
        lc.verify(other_dir, token)
    key = lc.signing_key(tmp_path)
    now = int(time.time())
    base = {"sub": "s", "aud": lc.CLIENT_ID, "iss": lc.ISSUER, "token_use": "id", "iat": now, "exp": now + 60,
            "custom:principal": "operator"}
    for change in ({"aud": "someone-else"}, {"iss": "https://evil"}, {"token_use": "access"}):
        forged = jwt.encode({**base, **change}, key, algorithm="RS256", headers={"kid": lc.key_id(key)})
        with pytest.raises(lc.InvalidToken):
            lc.verify(tmp_path, forged)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(base, stranger, algorithm="RS256", headers={"kid": lc.key_id(key)})
    with pytest.raises(lc.InvalidToken):
        lc.verify(tmp_path, forged)
    unsigned = jwt.encode(base, "secret-secret-secret-secret-1234", algorithm="HS256",
                          headers={"kid": lc.key_id(key)})
    with pytest.raises(lc.InvalidToken):
        lc.verify(tmp_path, unsigned)


def test_bad_principals_get_no_token(tmp_path):
    for principal in ("root", "user:nope", ""):
        with pytest.raises(ValueError):
            lc.issue_token(tmp_path, principal)


def test_authorizer_claims_are_strings_with_java_dates():
    rendered = lc.authorizer_claims({"exp": 0, "iat": 86400, "sub": "s", "custom:principal": "org:acme",
                                     "cognito:groups": ["a", "b"]})
    assert rendered == {"exp": "Thu Jan 01 00:00:00 UTC 1970", "iat": "Fri Jan 02 00:00:00 UTC 1970", "sub": "s",
                        "custom:principal": "org:acme", "cognito:groups": "a,b"}


@pytest.mark.parametrize("text, seconds", [("3600", 3600), ("90s", 90), ("30m", 1800), ("1h", 3600), ("1d", 86400)])
def test_parse_duration(text, seconds):
    assert lc.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "2d", "1w", "-1h", "h"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        lc.parse_duration(text)
