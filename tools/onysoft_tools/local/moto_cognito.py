"""RevokeToken for the local user pool: moto's cognito-idp (5.2) does not implement it.

The dashboard's sign-out revokes its refresh token with RevokeToken (the app client has EnableTokenRevocation),
then signs out with GlobalSignOut. Without this, moto answers RevokeToken with an error and the revocation
could not be seen locally. What it does, as Cognito does: the refresh token of this app client no longer
refreshes (REFRESH_TOKEN_AUTH: NotAuthorizedException), and the access tokens issued from it stop working for
the user pool API (GetUser, AssociateSoftwareToken…). An unknown or already revoked token is no error (Cognito
answers 200); a token of another app client is UnauthorizedException. ID tokens are not revocable anywhere:
API Gateway's Cognito authorizer accepts them until they expire, hence the template's 15 minutes.
"""

from __future__ import annotations

from typing import Any

_installed = False


def revoke(backend: Any, token: str, client_id: str) -> None:
    from moto.cognitoidp.exceptions import NotAuthorizedError

    for pool in backend.user_pools.values():
        found = pool.refresh_tokens.get(token)
        if not found:
            continue
        owner_client, username, origin_jti = found
        if owner_client != client_id:
            raise NotAuthorizedError("The token was not issued to this client.")
        pool.refresh_tokens[token] = None
        for access_token, (_, user) in list(pool.access_tokens.items()):
            if user == username and _origin_jti(access_token) == origin_jti:
                pool.access_tokens.pop(access_token)
        return


def _origin_jti(token: str) -> str | None:
    import jwt

    try:
        return jwt.decode(token, options={"verify_signature": False}).get("origin_jti")
    except jwt.PyJWTError:
        return None


def install() -> None:
    """Give moto's cognito-idp backend and its responses RevokeToken (idempotent)."""
    global _installed
    if _installed:
        return
    from moto.cognitoidp.models import CognitoIdpBackend
    from moto.cognitoidp.responses import CognitoIdpResponse
    from moto.core.responses import EmptyResult

    def revoke_token(self, token: str, client_id: str) -> None:
        revoke(self, token, client_id)

    def revoke_token_response(self):
        self.backend.revoke_token(self._get_param("Token"), self._get_param("ClientId"))
        return EmptyResult()

    CognitoIdpBackend.revoke_token = revoke_token
    CognitoIdpResponse.revoke_token = revoke_token_response
    _installed = True
