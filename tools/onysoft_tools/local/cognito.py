"""The local dashboard sign-in: moto server's Cognito user pool API (cognito-idp), built from template.yaml.

`onysoft dev` creates the user pool and its app client from template.yaml's DashboardUserPool and
DashboardUserPoolClient (the `custom:principal` attribute included) on the moto server it runs, seeds one
demo sign-in (email and password) per demo principal, and writes the pool's endpoint and ids to dev.env.
People sign in with `InitiateAuth` (USER_PASSWORD_AUTH) exactly as in AWS: the browser dashboard, and
`onysoft token`. The local gateway checks each ID token as API Gateway's Cognito authorizer does:
signature against the pool's JWKS (`<endpoint>/<pool id>/.well-known/jwks.json`), issuer, audience
(the app client), expiry and `token_use` = id, and hands the dashboard function the claims in the
authorizer's form (every value a string, times in Java's `Date.toString()` form).

Restarts: moto keeps the pool in memory only. Its ids are derived from the pool's definition
(moto's HASH id strategy, MOTO_ENV below), so a restart builds the same pool and client ids and tokens
issued before it still verify; the demo sign-ins are created again, and so are the sign-ins made by
`onysoft users create` against the local pool, which are kept in `<state dir>/cognito-users.json`
(mode 0600, passwords included: a local development convenience, like demo-keys.json). This module runs on
developer and operator machines, never in Lambda.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

USER_POOL_RESOURCE = "DashboardUserPool"
CLIENT_RESOURCE = "DashboardUserPoolClient"
LOCAL_STACK_NAME = "onysoft-local"  # what ${AWS::StackName} stands for in the local pool's name
PRINCIPAL_CLAIM = "custom:principal"
USERS_FILE = "cognito-users.json"
ENDPOINT_ENV = "AWS_ENDPOINT_URL_COGNITO_IDP"
POOL_ENV = "ONYSOFT_USER_POOL_ID"
CLIENT_ENV = "ONYSOFT_USER_POOL_CLIENT_ID"
# moto derives pool and client ids from their definitions: the same ids after every restart.
# moto checks TOTP codes only when asked to (otherwise any six digits pass): asked, so a wrong code fails as in AWS.
MOTO_ENV = {"MOTO_COGNITO_IDP_USER_POOL_ID_STRATEGY": "HASH",
            "MOTO_COGNITO_IDP_USER_POOL_CLIENT_ID_STRATEGY": "HASH",
            "MOTO_COGNITO_IDP_USER_POOL_ENABLE_TOTP": "true"}
TOTP_STEP = 30  # seconds; six digits, HMAC-SHA1: RFC 6238 as Cognito (and every authenticator app) uses it
DEMO_PASSWORD = "Onysoft-demo-2026"  # noqa: S105 - local demo sign-ins only; printed in the banner
DEMO_EMAIL_DOMAIN = "demo.onysoft.local"
JWKS_CACHE_SECONDS = 300
USERS_NOTE = ("Local development only: sign-ins made with `onysoft users create` against the local user pool, "
              "kept so `onysoft dev` can create them again after a restart (moto keeps users in memory only).")


class InvalidToken(Exception):
    """The token would not pass API Gateway's Cognito authorizer (API Gateway answers 401)."""


class SignInError(Exception):
    """InitiateAuth refused the sign-in (wrong email or password, a challenge the CLI cannot answer…)."""


@dataclass(frozen=True)
class Pool:
    endpoint: str  # the cognito-idp endpoint (moto server's URL locally); "" means AWS's regional endpoint
    region: str
    pool_id: str
    client_id: str

    @property
    def issuer(self) -> str:
        # What Cognito (and moto) put in `iss`, whatever endpoint served the token.
        return f"https://cognito-idp.{self.region}.amazonaws.com/{self.pool_id}"

    @property
    def jwks_url(self) -> str:
        base = self.endpoint.rstrip("/") if self.endpoint else f"https://cognito-idp.{self.region}.amazonaws.com"
        return f"{base}/{self.pool_id}/.well-known/jwks.json"

    def env(self) -> dict[str, str]:
        return {ENDPOINT_ENV: self.endpoint, POOL_ENV: self.pool_id, CLIENT_ENV: self.client_id}

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Pool:
        environ = os.environ if environ is None else environ
        pool_id, client_id = environ.get(POOL_ENV, ""), environ.get(CLIENT_ENV, "")
        if not pool_id or not client_id:
            raise LookupError(f"no user pool: set {POOL_ENV} and {CLIENT_ENV} (a local gateway writes them to "
                              "dev.env; in AWS they are the stack's UserPoolId and UserPoolClientId outputs)")
        region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or pool_id.split("_", 1)[0]
        return cls(environ.get(ENDPOINT_ENV, ""), region, pool_id, client_id)

    def client(self):
        import boto3

        return boto3.client("cognito-idp", region_name=self.region, endpoint_url=self.endpoint or None)


# ---------------------------------------------------------------------------------------------- the pool


def _properties(tpl: dict[str, Any], logical_id: str) -> dict[str, Any]:
    resource = (tpl.get("Resources") or {}).get(logical_id)
    if not resource:
        raise RuntimeError(f"template.yaml has no {logical_id}")
    return dict(resource.get("Properties") or {})


def pool_definition(tpl: dict[str, Any]) -> dict[str, Any]:
    """CreateUserPool's arguments from template.yaml's user pool (CloudFormation and the API share names)."""
    props = _properties(tpl, USER_POOL_RESOURCE)
    name = props.get("UserPoolName", "dashboard")
    if isinstance(name, dict) and isinstance(name.get("Fn::Sub"), str):  # !Sub ${AWS::StackName}-dashboard
        name = name["Fn::Sub"]
    definition: dict[str, Any] = {"PoolName": str(name).replace("${AWS::StackName}", LOCAL_STACK_NAME)}
    for key in ("UsernameAttributes", "AutoVerifiedAttributes", "AdminCreateUserConfig", "AccountRecoverySetting",
                "Policies", "MfaConfiguration", "Schema"):
        if key in props:
            definition[key] = props[key]
    return definition


def client_definition(tpl: dict[str, Any]) -> dict[str, Any]:
    """CreateUserPoolClient's arguments (without UserPoolId) from template.yaml's app client."""
    props = _properties(tpl, CLIENT_RESOURCE)
    definition: dict[str, Any] = {"ClientName": str(props.get("ClientName", "dashboard"))}
    for key in ("GenerateSecret", "ExplicitAuthFlows", "PreventUserExistenceErrors", "ReadAttributes",
                "WriteAttributes", "IdTokenValidity", "AccessTokenValidity", "RefreshTokenValidity",
                "TokenValidityUnits", "EnableTokenRevocation"):
        if key in props:
            definition[key] = props[key]
    return definition


def create_pool(endpoint: str, region: str, tpl: dict[str, Any]) -> Pool:
    """The template's user pool and app client on the cognito-idp server at `endpoint` (moto)."""
    import boto3

    client = boto3.client("cognito-idp", region_name=region, endpoint_url=endpoint or None)
    definition = pool_definition(tpl)
    existing = [p for p in client.list_user_pools(MaxResults=60)["UserPools"] if p["Name"] == definition["PoolName"]]
    pool_id = existing[0]["Id"] if existing else client.create_user_pool(**definition)["UserPool"]["Id"]
    if "SOFTWARE_TOKEN_MFA" in (_properties(tpl, USER_POOL_RESOURCE).get("EnabledMfas") or []):
        # CloudFormation's EnabledMfas is the API's SetUserPoolMfaConfig
        client.set_user_pool_mfa_config(UserPoolId=pool_id, SoftwareTokenMfaConfiguration={"Enabled": True},
                                        MfaConfiguration=definition.get("MfaConfiguration", "OPTIONAL"))
    wanted = client_definition(tpl)
    clients = [c for c in client.list_user_pool_clients(UserPoolId=pool_id, MaxResults=60)["UserPoolClients"]
               if c["ClientName"] == wanted["ClientName"]]
    client_id = clients[0]["ClientId"] if clients else \
        client.create_user_pool_client(UserPoolId=pool_id, **wanted)["UserPoolClient"]["ClientId"]
    return Pool(endpoint, region, pool_id, client_id)


# ---------------------------------------------------------------------------------------------- users


def create_user(pool: Pool, *, principal: str, email: str, password: str | None = None,
                temporary_password: str | None = None) -> dict[str, Any]:
    """A sign-in acting as `principal`: AdminCreateUser (no invitation mail), then, with `password`,
    AdminSetUserPassword as permanent; with `temporary_password` only, the person must choose a new
    password at the first sign-in (NEW_PASSWORD_REQUIRED). Returns {email, principal, sub}."""
    from onysoft import principals

    principals.parse(principal)  # raises PrincipalError (a ValueError) for a malformed principal
    client = pool.client()
    created = client.admin_create_user(
        UserPoolId=pool.pool_id, Username=email, MessageAction="SUPPRESS",
        UserAttributes=[{"Name": "email", "Value": email}, {"Name": "email_verified", "Value": "true"},
                        {"Name": PRINCIPAL_CLAIM, "Value": principal}],
        **({"TemporaryPassword": temporary_password} if temporary_password else {}),
    )
    if password:
        client.admin_set_user_password(UserPoolId=pool.pool_id, Username=email, Password=password, Permanent=True)
    attributes = {a["Name"]: a["Value"] for a in created["User"].get("Attributes", [])}
    return {"email": email, "principal": principal, "sub": attributes.get("sub")}


def demo_email(principal: str) -> str:
    """The demo sign-in of a demo principal: user:… → user@, org:demo → org@, partner:demo → partner@…"""
    return f"{principal.split(':', 1)[0]}@{DEMO_EMAIL_DOMAIN}"


def seed_users(pool: Pool, state_dir: Path, demo_principals: list[str]) -> list[dict[str, str]]:
    """The demo sign-ins, then the ones `onysoft users create` made locally; returns the demo sign-ins."""
    demo = []
    for principal in demo_principals:
        email = demo_email(principal)
        _create_if_missing(pool, principal=principal, email=email, password=DEMO_PASSWORD)
        demo.append({"principal": principal, "email": email, "password": DEMO_PASSWORD})
    for saved in read_saved_users(state_dir):
        _create_if_missing(pool, **saved)
    return demo


def _create_if_missing(pool: Pool, *, principal: str, email: str, password: str) -> None:
    from botocore.exceptions import ClientError

    try:
        create_user(pool, principal=principal, email=email, password=password)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "UsernameExistsException":
            raise


def read_saved_users(state_dir: Path) -> list[dict[str, str]]:
    path = Path(state_dir) / USERS_FILE
    if not path.is_file():
        return []
    try:
        users = json.loads(path.read_text(encoding="utf-8")).get("users") or []
        return [{k: str(u[k]) for k in ("principal", "email", "password")} for u in users]
    except (ValueError, KeyError, TypeError, AttributeError):
        return []


def save_user(state_dir: Path, *, principal: str, email: str, password: str) -> None:
    """Remember a local sign-in for the next `onysoft dev` start (atomically, mode 0600)."""
    path = Path(state_dir) / USERS_FILE
    users = [u for u in read_saved_users(state_dir) if u["email"].lower() != email.lower()]
    users.append({"principal": principal, "email": email, "password": password})
    from onysoft_tools.local.state import write_atomically

    write_atomically(path, json.dumps({"note": USERS_NOTE, "users": users}, indent=2).encode("utf-8"), mode=0o600)


# ---------------------------------------------------------------------------------------------- sign-in


def initiate_auth(pool: Pool, email: str, password: str, *, mfa_code: str | None = None,
                  totp_secret: str | None = None) -> dict[str, Any]:
    """InitiateAuth USER_PASSWORD_AUTH, as the browser dashboard does: the AuthenticationResult
    (IdToken, AccessToken, RefreshToken, ExpiresIn), or SignInError. A SOFTWARE_TOKEN_MFA challenge is
    answered with `mfa_code`, or a code computed from `totp_secret`."""
    from botocore.exceptions import ClientError

    client = pool.client()
    try:
        answer = client.initiate_auth(ClientId=pool.client_id, AuthFlow="USER_PASSWORD_AUTH",
                                      AuthParameters={"USERNAME": email, "PASSWORD": password})
        if answer.get("ChallengeName") == "SOFTWARE_TOKEN_MFA" and (mfa_code or totp_secret):
            answer = client.respond_to_auth_challenge(
                ClientId=pool.client_id, ChallengeName="SOFTWARE_TOKEN_MFA", Session=answer["Session"],
                ChallengeResponses={"USERNAME": email,
                                    "SOFTWARE_TOKEN_MFA_CODE": mfa_code or fresh_totp_code(totp_secret or "")})
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code in ("NotAuthorizedException", "UserNotFoundException"):
            raise SignInError("Incorrect email or password.") from None
        if code == "CodeMismatchException":
            raise SignInError("That authenticator code is not the right one (or has expired).") from None
        raise SignInError(exc.response.get("Error", {}).get("Message") or str(exc)) from None
    if "AuthenticationResult" not in answer:
        if answer.get("ChallengeName") == "SOFTWARE_TOKEN_MFA":
            raise SignInError("this sign-in has multi-factor authentication: give --mfa-code with the code your "
                              "authenticator app shows")
        raise SignInError(f"the user pool asks for {answer.get('ChallengeName')}: sign in once in the dashboard "
                          "to answer it")
    return answer["AuthenticationResult"]


# ---------------------------------------------------------------------------------------------- TOTP


def totp_code(secret: str, at: float | None = None) -> str:
    """The six-digit code an authenticator app shows for a base32 `secret` at time `at` (RFC 6238)."""
    import base64
    import hashlib
    import hmac
    import struct

    key = base64.b32decode(secret.upper() + "=" * (-len(secret) % 8))
    counter = int((time.time() if at is None else at) // TOTP_STEP)
    digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    return f"{(struct.unpack('>I', digest[offset:offset + 4])[0] & 0x7FFFFFFF) % 1_000_000:06d}"


def fresh_totp_code(secret: str, margin: float = 3.0) -> str:
    """A code that stays valid for at least `margin` seconds (waits for the next step when this one ends
    sooner): Cognito and moto accept only the current step's code."""
    left = TOTP_STEP - time.time() % TOTP_STEP
    if left < margin:
        time.sleep(left + 0.05)
    return totp_code(secret)


def set_up_totp(pool: Pool, access_token: str) -> str:
    """What the dashboard's setup does for a signed-in person: AssociateSoftwareToken, VerifySoftwareToken
    with a code, SetUserMFAPreference (TOTP enabled and preferred). Returns the secret."""
    client = pool.client()
    secret = client.associate_software_token(AccessToken=access_token)["SecretCode"]
    client.verify_software_token(AccessToken=access_token, UserCode=fresh_totp_code(secret),
                                 FriendlyDeviceName="onysoft CLI")
    client.set_user_mfa_preference(AccessToken=access_token,
                                   SoftwareTokenMfaSettings={"Enabled": True, "PreferredMfa": True})
    return secret


# ---------------------------------------------------------------------------------------------- authorizer


_jwks_cache: dict[str, tuple[float, Any]] = {}


def _jwks(pool: Pool) -> Any:
    import httpx
    import jwt

    cached = _jwks_cache.get(pool.jwks_url)
    if cached and cached[0] > time.monotonic():
        return cached[1]
    response = httpx.get(pool.jwks_url, timeout=5.0)
    response.raise_for_status()
    keys = jwt.PyJWKSet.from_dict(response.json())
    _jwks_cache[pool.jwks_url] = (time.monotonic() + JWKS_CACHE_SECONDS, keys)
    return keys


def verify(pool: Pool, authorization: str | None, *, now: float | None = None, jwks: Any = None) -> dict:
    """The claims of the ID token in an Authorization header value (`Bearer <token>` or the bare token),
    checked as API Gateway's Cognito authorizer checks it; InvalidToken otherwise."""
    import jwt

    if not authorization:
        raise InvalidToken("no token")
    token = authorization.strip()
    if token[:7].lower() == "bearer ":
        token = token[7:].strip()
    try:
        header = jwt.get_unverified_header(token)
        if header.get("alg") != "RS256":
            raise InvalidToken("not an RS256 token")
        keys = jwks if jwks is not None else _jwks(pool)
        key = next((k for k in keys.keys if k.key_id == header.get("kid")), None)
        if key is None:
            raise InvalidToken("unknown signing key")
        # Expiry is checked below against `now` (tests move the clock); everything else by PyJWT.
        claims = jwt.decode(token, key.key, algorithms=["RS256"], audience=pool.client_id, issuer=pool.issuer,
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


def clear_jwks_cache() -> None:
    _jwks_cache.clear()
