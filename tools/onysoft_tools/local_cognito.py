"""A local stand-in for the dashboard's Cognito user pool and API Gateway's Cognito authorizer.

`onysoft token` issues ID tokens the way the user pool would (RS256, Cognito's ID-token claims, the
`custom:principal` attribute); `onysoft dev` checks them the way API Gateway's Cognito authorizer does
(signature, issuer, audience, expiry, `token_use` = id) and hands the dashboard function the claims as
that authorizer does: every value a string, times in Java's `Date.toString()` form.

The signing key is an RSA key in `<state dir>/cognito-signing-key.pem` (mode 0600), made on first use.
It signs local tokens only: this module runs on developer machines, never in Lambda.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

KEY_FILE = "cognito-signing-key.pem"
USER_POOL_ID = "local_onysoftdev"
CLIENT_ID = "onysoft-local-dashboard"
ISSUER = f"https://cognito-idp.local.onysoft/{USER_POOL_ID}"
PRINCIPAL_CLAIM = "custom:principal"
DEFAULT_EXPIRES_IN = 3600  # Cognito's default ID-token validity: one hour
MAX_EXPIRES_IN = 24 * 3600  # Cognito's longest ID-token validity
_DURATION = re.compile(r"(\d+)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class InvalidToken(Exception):
    """The token would not pass API Gateway's Cognito authorizer (API Gateway answers 401)."""


def parse_duration(text: str) -> int:
    """'3600', '90s', '30m', '1h', '1d' → seconds (1 s to 24 h, Cognito's bounds for ID tokens)."""
    match = _DURATION.fullmatch(str(text).strip().lower())
    if not match:
        raise ValueError(f"a duration is a number with an optional unit s, m, h or d (like 1h); got {text!r}")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if not 1 <= seconds <= MAX_EXPIRES_IN:
        raise ValueError("a token lives between 1 second and 24 hours")
    return seconds


def _key_path(state_dir: Path) -> Path:
    return Path(state_dir) / KEY_FILE


def signing_key(state_dir: str | os.PathLike[str]) -> rsa.RSAPrivateKey:
    """The state dir's signing key, made (atomically, mode 0600) on first use."""
    path = _key_path(Path(state_dir))
    if path.is_file():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise InvalidToken(f"{path} holds no RSA key")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    try:
        os.link(temporary, path)  # never replaces a key another process made meanwhile
    except FileExistsError:
        pass
    finally:
        temporary.unlink()
    return signing_key(state_dir)


def key_id(key: rsa.RSAPrivateKey) -> str:
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:32]


def subject_of(principal: str) -> str:
    """A stable `sub` per principal, so one local person keeps one identity across tokens."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"onysoft-local:{principal}"))


def issue_token(state_dir: str | os.PathLike[str], principal: str, *, expires_in: int = DEFAULT_EXPIRES_IN,
                username: str | None = None, now: float | None = None) -> str:
    """An ID token as the user pool would issue it to a person whose `principal` attribute is `principal`."""
    from onysoft import principals

    principals.parse(principal)  # raises PrincipalError (a ValueError) for a malformed principal
    key = signing_key(state_dir)
    issued = int(now if now is not None else time.time())
    sub = subject_of(principal)
    claims = {
        "sub": sub, "aud": CLIENT_ID, "iss": ISSUER, "token_use": "id", "auth_time": issued, "iat": issued,
        "exp": issued + int(expires_in), "cognito:username": username or principal.replace(":", "-"),
        PRINCIPAL_CLAIM: principal, "event_id": str(uuid.uuid4()), "jti": str(uuid.uuid4()),
    }
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": key_id(key)})


def verify(state_dir: str | os.PathLike[str], authorization: str | None, *, now: float | None = None) -> dict:
    """The claims of the token in an Authorization header value (`Bearer <token>` or the bare token), checked
    as the Cognito authorizer checks an ID token; InvalidToken otherwise."""
    if not authorization:
        raise InvalidToken("no token")
    token = authorization.strip()
    if token[:7].lower() == "bearer ":
        token = token[7:].strip()
    key = signing_key(state_dir)
    try:
        header = jwt.get_unverified_header(token)
        if header.get("alg") != "RS256" or header.get("kid") != key_id(key):
            raise InvalidToken("unknown signing key")
        # Expiry is checked below against `now` (tests move the clock); everything else by PyJWT.
        claims = jwt.decode(token, key.public_key(), algorithms=["RS256"], audience=CLIENT_ID, issuer=ISSUER,
                            options={"require": ["exp", "iat", "iss", "aud", "sub", "token_use"],
                                     "verify_exp": False, "verify_iat": False})
    except jwt.PyJWTError as exc:
        raise InvalidToken(str(exc)) from None
    if not isinstance(claims.get("exp"), int) or claims["exp"] <= (now if now is not None else time.time()):
        raise InvalidToken("the token has expired")
    if claims.get("token_use") != "id":
        raise InvalidToken("not an ID token")
    return claims


def _java_date(epoch: int) -> str:
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%a %b %d %H:%M:%S UTC %Y")


def authorizer_claims(claims: dict) -> dict[str, str]:
    """The claims as API Gateway's Cognito authorizer puts them in `requestContext.authorizer.claims`."""
    rendered = {}
    for name, value in claims.items():
        if name in ("exp", "iat", "auth_time") and isinstance(value, int | float):
            rendered[name] = _java_date(int(value))
        elif isinstance(value, list):
            rendered[name] = ",".join(str(v) for v in value)
        else:
            rendered[name] = str(value)
    return rendered
