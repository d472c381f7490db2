"""`onysoft users create` and `onysoft token`: dashboard sign-ins in the Cognito user pool (the local gateway's
moto pool, or AWS's from the environment)."""

from __future__ import annotations

import argparse
import secrets
from datetime import timedelta

from botocore.exceptions import ClientError

from onysoft import clock, mfa, principals
from onysoft_tools import settings
from onysoft_tools.local import cognito

from .output import UsageError, output


def _user_pool() -> cognito.Pool:
    try:
        return cognito.Pool.from_env()
    except LookupError as exc:
        raise UsageError(str(exc)) from None


def _check_principal(text: str) -> None:
    try:
        principals.parse(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _principal_sign_in(pool: cognito.Pool, principal: str) -> tuple[str, str]:
    """A local sign-in made (or reset) for the principal, with a fresh random password."""
    if not pool.endpoint:
        raise UsageError("--principal works with a local gateway's user pool only; in AWS give --email and "
                         "--password")
    _check_principal(principal)
    email = f"{principal.replace(':', '.')}@principals.onysoft.local"
    password = secrets.token_urlsafe(18) + "aA1"
    try:
        cognito.create_user(pool, principal=principal, email=email, password=password)
    except pool.client().exceptions.UsernameExistsException:
        pool.client().admin_set_user_password(UserPoolId=pool.pool_id, Username=email, Password=password,
                                              Permanent=True)
        # Its TOTP secret was not kept: off, and set up again below when the principal needs it.
        pool.client().admin_set_user_mfa_preference(UserPoolId=pool.pool_id, Username=email,
                                                    SoftwareTokenMfaSettings={"Enabled": False,
                                                                              "PreferredMfa": False})
    return email, password


def token(args: argparse.Namespace) -> int:
    """An ID token from the user pool's InitiateAuth, as the dashboard gets one. `--principal` (local pools
    only) first makes (or resets) a sign-in for that principal with a fresh random password."""
    pool = _user_pool()
    if args.principal:
        email, password = _principal_sign_in(pool, args.principal)
    elif args.email and args.password:
        email, password = args.email, args.password
    else:
        raise UsageError("give --email and --password (or, with a local gateway, --principal)")
    try:
        result = cognito.initiate_auth(pool, email, password, mfa_code=args.mfa_code)
        if args.principal and mfa.required(principals.parse(args.principal)):
            # The dashboard API takes the operator only from a sign-in with TOTP: set up, then signed in again
            # answering the challenge, as a person does in the web app.
            secret = cognito.set_up_totp(pool, result["AccessToken"])
            result = cognito.initiate_auth(pool, email, password, totp_secret=secret)
    except cognito.SignInError as exc:
        raise UsageError(str(exc)) from None
    claims = cognito.verify(pool, result["IdToken"]) if pool.endpoint else {}
    expires_at = clock.to_iso(clock.utc_now() + timedelta(seconds=int(result["ExpiresIn"])))
    view = {"token": result["IdToken"], "principal": claims.get(cognito.PRINCIPAL_CLAIM, args.principal),
            "email": email, "expires_at": expires_at}
    return output(args, view, lambda: result["IdToken"])


def create(args: argparse.Namespace) -> int:
    """A dashboard sign-in: AdminCreateUser plus a permanent password, in the local pool or AWS's."""
    pool = _user_pool()
    _check_principal(args.principal)
    try:
        view = cognito.create_user(pool, principal=args.principal, email=args.email, password=args.password)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        if error.get("Code") == "UsernameExistsException":
            raise UsageError(f"a sign-in with the email {args.email} already exists") from None
        if error.get("Code") in ("InvalidPasswordException", "InvalidParameterException"):
            raise UsageError(error.get("Message") or error.get("Code")) from None
        raise
    if pool.endpoint:  # the local pool lives in memory: kept for the next `onysoft dev`
        cognito.save_user(settings.state_dir(args.state_dir), principal=args.principal, email=args.email,
                          password=args.password)
    view["user_pool_id"] = pool.pool_id
    required = mfa.required(principals.parse(args.principal))
    view["mfa"] = "required" if required else "optional"
    how = ("Its first sign-in in the dashboard sets up an authenticator app (TOTP: scan the QR code, enter a code); "
           "required for the operator: the API answers 403 mfa_required until then, and every later sign-in "
           "asks for a code." if required else
           "Multi-factor sign-in (an authenticator app, TOTP) is offered in the dashboard: Two-step sign-in.")
    return output(args, view, lambda: f"Created sign-in {args.email} acting as {args.principal}.\n{how}")


def register(commands, leaf) -> None:
    p = leaf(commands, "token", token, "print a dashboard ID token from the user pool (InitiateAuth)")
    p.add_argument("--email", metavar="EMAIL")
    p.add_argument("--password", metavar="PASSWORD")
    p.add_argument("--principal", metavar="P", help="local gateway only: a sign-in acting as user:<account_id>, "
                   "org:<org_id>, partner:<partner_id> or operator, made for the occasion")
    p.add_argument("--mfa-code", metavar="CODE", help="the six-digit code of your authenticator app, for a "
                   "sign-in with multi-factor authentication (TOTP)")
    group = commands.add_parser("users", help="dashboard sign-ins (the Cognito user pool)")
    sub = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = leaf(sub, "create", create, "create a dashboard sign-in acting as a principal")
    p.add_argument("--principal", required=True, metavar="PRINCIPAL",
                   help="user:<account_id>, org:<org_id>, partner:<partner_id> or operator")
    p.add_argument("--email", required=True, metavar="EMAIL")
    p.add_argument("--password", required=True, metavar="PASSWORD", help="permanent; the pool's password policy")
