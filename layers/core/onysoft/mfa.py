"""Multi-factor sign-in: the operator acts only from a sign-in that has TOTP MFA turned on.

The user pool's MFA stays OPTIONAL (ON would force it on every tenant's people), so the pool alone cannot
require it of one principal. The dashboard API does: a request whose principal is in REQUIRED_FOR is answered
403 `mfa_required` until that person's Cognito user has TOTP (SOFTWARE_TOKEN_MFA) enabled, read with
AdminGetUser. From then on every sign-in of that user meets Cognito's SOFTWARE_TOKEN_MFA challenge, so an ID
token the API accepts for the operator was issued after a TOTP code. The web app answers `mfa_required` with
its TOTP setup (AssociateSoftwareToken, VerifySoftwareToken, SetUserMFAPreference).

A positive answer is kept CACHE_SECONDS per process (one AdminGetUser per operator per minute, not one per
request); a negative one is never kept, so the first request after the setup passes.
"""

from __future__ import annotations

import os
import time

from onysoft import config, principals
from onysoft.errors import GatewayError

REQUIRED_FOR = frozenset({principals.OPERATOR})
SOFTWARE_TOKEN = "SOFTWARE_TOKEN_MFA"  # noqa: S105 - the MFA type's name, not a secret
CACHE_SECONDS = 60.0
POOL_ENV = "ONYSOFT_USER_POOL_ID"

_enabled_until: dict[tuple[str, str], float] = {}  # (pool id, username) -> monotonic time the answer expires


def required(principal: principals.Principal) -> bool:
    return principal.kind in REQUIRED_FOR


def mfa_required_error() -> GatewayError:
    return GatewayError(403, "This principal must sign in with multi-factor authentication: set up an authenticator "
                             "app (TOTP) in the dashboard, then sign in again.", "invalid_request_error",
                        "mfa_required")


def _client():
    import boto3

    # Locally the pool is moto's: the endpoint `onysoft dev` names (botocore's own variable for this service is
    # AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER; the project uses this one everywhere, the web app's config too).
    return boto3.client("cognito-idp", region_name=config.region(),
                        endpoint_url=os.environ.get("AWS_ENDPOINT_URL_COGNITO_IDP") or None)


def totp_enabled(username: str) -> bool:
    """True when the pool's user has TOTP MFA enabled (UserMFASettingList); it is then Cognito's preferred
    factor or the only one, so every password sign-in is challenged for a code."""
    pool_id = os.environ.get(POOL_ENV, "")
    if not pool_id or not username:
        return False  # fail closed: no pool, no proof
    cached = _enabled_until.get((pool_id, username))
    if cached is not None and cached > time.monotonic():
        return True
    from botocore.exceptions import ClientError

    try:
        user = _client().admin_get_user(UserPoolId=pool_id, Username=username)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "UserNotFoundException":
            return False  # a token outliving its user
        raise
    enabled = SOFTWARE_TOKEN in (user.get("UserMFASettingList") or [])
    if enabled:
        _enabled_until[(pool_id, username)] = time.monotonic() + CACHE_SECONDS
    else:
        _enabled_until.pop((pool_id, username), None)
    return enabled


def check(principal: principals.Principal, claims: dict) -> None:
    """Raise 403 `mfa_required` when the principal needs MFA and the claims' user has none."""
    if not required(principal):
        return
    username = str(claims.get("cognito:username") or claims.get("sub") or "")
    if not totp_enabled(username):
        raise mfa_required_error()


def forget() -> None:
    """Drop the cached answers (tests; a process that must re-read at once)."""
    _enabled_until.clear()
