"""Dashboard API (/dashboard/*): people manage their keys, partners their customers, org admins their projects.

A Powertools REST API resolver with request validation (pydantic models) and an OpenAPI document with
Swagger UI at /dashboard/docs. API Gateway's Cognito authorizer has checked the caller's ID token before
this runs and passes its claims in `requestContext.authorizer.claims`; the `custom:principal` claim says
who the caller acts as (onysoft.principals). Every decision is in onysoft.operations (the one door the CLI
uses too): this module only parses HTTP, calls an operation and renders its view. Errors are OpenAI's
envelope, like every other answer of the gateway.
"""

import base64
import hashlib
import json
import os
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer
from aws_lambda_powertools.event_handler.openapi.params import Body, Header, Query
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from onysoft import ceilings, errors, expiry, mfa, money, principals
from onysoft.audit import Actor
from onysoft.key_types import ACCOUNT_KINDS
from onysoft.operations import accounts, keys, paging
from onysoft.operations.audit_log import audit_log as read_audit_log
from onysoft.operations.reports import margin_report
from onysoft.operations.statements import statement as read_statement
from onysoft.operations.statements import to_csv as statement_csv
from onysoft.operations.usage import usage as read_usage

logger = Logger()

DOCS_PATH = "/dashboard/docs"
SECURITY_SCHEME = "DashboardCognito"  # the name of the API's Cognito authorizer in template.yaml
OPENAPI = {
    "title": "Onysoft AI Gateway dashboard API",
    "version": "1.0.0",
    "description": (
        "Accounts, API keys, usage and the audit log of the Onysoft AI Gateway. Sign in with the user pool and "
        "send the ID token as `Authorization: Bearer <token>`. An account or key you may not see answers 404, "
        "exactly as if it did not exist. Money: balances and charges are decimal strings in the account's "
        "currency (`balance`), and exact integers in micro-units (`balance_micros`: 1 TRY = 1000000)."
    ),
    "security_schemes": {SECURITY_SCHEME: HTTPBearer(bearerFormat="JWT", description="Cognito ID token")},
    "security": [{SECURITY_SCHEME: []}],
}



class DashboardResolver(APIGatewayRestResolver):
    """Powertools' REST resolver whose OpenAPI document says what this API answers to bad input: 400 in
    OpenAI's error envelope (see validation_error below), never Powertools' own 422 body."""

    def get_openapi_schema(self, **kwargs):
        schema = super().get_openapi_schema(**kwargs)
        for path_item in (schema.paths or {}).values():
            for method in ("get", "post", "patch", "put", "delete"):
                operation = getattr(path_item, method, None)
                if operation is not None and operation.responses:
                    operation.responses.pop(422, None)
                    operation.responses.pop("422", None)
        if schema.components and schema.components.schemas:
            for name in ("HTTPValidationError", "ValidationError", "ResponseValidationError"):
                schema.components.schemas.pop(name, None)
        return schema


app = DashboardResolver(enable_validation=True)
app.enable_swagger(path=DOCS_PATH, **OPENAPI)

JSON = {"Content-Type": "application/json"}
Name = Annotated[str, StringConstraints(max_length=200)]
ModelName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]+/[^\s]+$", max_length=200)]
MarkupPct = Annotated[Decimal, Field(ge=0, le=1000, decimal_places=2, description="30 means 30%")]


class AccountCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal[ACCOUNT_KINDS]  # type: ignore[valid-type]
    name: Name = ""
    markup_pct: MarkupPct | None = Field(None, description="default: the kind's standard markup (30% customers)")
    owner: str | None = Field(None, max_length=64, description="org or partner id: the operator only; "
                                                                "others create accounts they own")


class AccountUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    markup_pct: MarkupPct | None = None
    name: Name | None = None
    alert_below: Annotated[Decimal, Field(ge=0, le=1_000_000_000, decimal_places=6)] | None = Field(
        None, description="a Balance Low event when the balance crosses below this (the account's currency); 0: none")
    max_parallel: int | None = Field(None, ge=0, le=100_000, description="requests in flight at once over all the "
                                                                        "account's keys (operator only); 0: no limit")
    # The operator's ceilings (onysoft.ceilings; 0: back to the key type's default).
    ceiling_rpm: int | None = Field(None, ge=0, le=1_000_000, description="operator: the most rpm a tenant may "
                                                                          "give one of this account's keys")
    ceiling_tpm: int | None = Field(None, ge=0, le=1_000_000_000, description="operator: likewise, tpm")
    ceiling_max_parallel: int | None = Field(None, ge=0, le=100_000, description="operator: likewise, max_parallel")
    ceiling_keys: int | None = Field(None, ge=0, le=100_000, description="operator: how many keys the account may "
                                                                         "have (not deleted)")
    ceiling_accounts: int | None = Field(None, ge=0, le=1_000_000, description="operator: how many accounts of "
                                                                               "this kind its owner may have")


class TopUp(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: Annotated[Decimal, Field(gt=0, le=1_000_000_000, decimal_places=6,
                                     description="in currency units, e.g. 12.5")]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name = ""
    rpm: int | None = Field(None, ge=1, le=1_000_000, description="requests per minute (default: the key type's)")
    tpm: int | None = Field(None, ge=1, le=1_000_000_000, description="tokens per minute (default: the key type's)")
    max_parallel: int | None = Field(None, ge=0, le=100_000, description="requests in flight at once; 0 or absent: "
                                                                        "no limit")
    models: list[ModelName] | None = Field(None, max_length=100, description="allow-list; default: every model")
    expires_at: str | None = Field(None, max_length=40, description="ISO 8601 time; default: never")
    spend_limit: Decimal | None = Field(None, gt=0, le=1_000_000_000, decimal_places=6,
                                        description="most this key may spend, in the account's currency; default: "
                                                    "no limit but the balance")


class KeyUpdate(BaseModel):
    """A key's limits: a value changes one, null takes it back to its default (a field left out: unchanged)."""

    model_config = ConfigDict(extra="forbid")

    rpm: int | None = Field(None, ge=1, le=1_000_000, description="requests per minute; null: the default")
    tpm: int | None = Field(None, ge=1, le=1_000_000_000, description="tokens per minute; null: the default")
    max_parallel: int | None = Field(None, ge=0, le=100_000, description="requests in flight at once; null or 0: "
                                                                        "no limit (a tenant's key: the ceiling)")


class KeyRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace: str = Field("24h", max_length=20, description="how long the old secret keeps working: a duration like "
                                                         "90s, 15m, 12h, 30d (at most 30d), or `now`")


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None
    param: str | None


class ErrorEnvelope(BaseModel):
    """OpenAI's error envelope: every error this API answers."""

    error: ErrorDetail


_ERROR_MEANING = {
    400: "Bad request (validation)", 401: "No valid sign-in token",
    403: "Not allowed for your principal (`mfa_required`: the operator signs in with TOTP MFA)",
    404: "No such account or key (or not yours: the same answer)",
    409: "The idempotency key was used for a different request",
}


def _responses(success: int, description: str, *errors_: int) -> dict:
    answers: dict = {success: {"description": description}}
    for status in (400, 401, *errors_):
        answers[status] = {"description": _ERROR_MEANING[status],
                           "content": {"application/json": {"model": ErrorEnvelope}}}
    return answers


# ---------------------------------------------------------------------------------------------- helpers


def _claims(event: dict) -> dict:
    authorizer = (event.get("requestContext") or {}).get("authorizer") or {}
    claims = authorizer.get("claims")
    return claims if isinstance(claims, dict) else {}


def _actor() -> Actor:
    event = app.current_event.raw_event
    claims = _claims(event)
    return Actor(principals.from_claims(claims), sub=claims.get("sub"),
                 request_id=(event.get("requestContext") or {}).get("requestId"), email=claims.get("email"))


def _error(exc: errors.GatewayError) -> Response:
    return Response(status_code=exc.status, content_type="application/json", body=json.dumps(exc.envelope()),
                    headers=dict(exc.headers))


def _markup_bp(value: Decimal | None) -> int | None:
    return None if value is None else int(value * money.BP_PER_PCT)


# ---------------------------------------------------------------------------------------------- routes


@app.get("/dashboard/accounts", summary="The accounts you may see, with balances, by name, paginated",
         responses=_responses(200, '{"principal": ..., "accounts": [...], "next": cursor or null, '
                                   '"skipped": unreadable items left out}'))
def list_accounts(
    search: Annotated[str | None, Query(max_length=200, description="names starting with this (any case), or "
                                                                    "an account id (that account)")] = None,
    cursor: Annotated[str | None, Query(description="`next` of the previous page")] = None,
    limit: Annotated[int | None, Query(ge=1, le=paging.MAX_PAGE)] = None,
) -> dict:
    actor = _actor()
    return {"principal": str(actor.principal),
            **accounts.list_accounts(actor, search=search, cursor=cursor, limit=limit)}


@app.post("/dashboard/accounts", summary="Create an account (partner: customers and projects; operator: any)",
          responses=_responses(201, "The new account", 403))
def create_account(body: AccountCreate):
    account = accounts.create_account(_actor(), kind=body.kind, name=body.name,
                                       markup_bp=_markup_bp(body.markup_pct), owner=body.owner)
    return account, 201


@app.patch("/dashboard/accounts/<account_id>",
           summary="Change an account's markup (partner, operator), name, balance alert threshold, max_parallel or "
                   "ceilings "
                   "(operator)",
           responses=_responses(200, "The account", 403, 404))
def update_account(account_id: str, body: AccountUpdate) -> dict:
    alert = None if body.alert_below is None else int(body.alert_below * money.MICROS_PER_UNIT)
    given = {name: getattr(body, f"ceiling_{name}") for name in ceilings.NAMES}
    return accounts.update_account(_actor(), account_id, markup_bp=_markup_bp(body.markup_pct), name=body.name,
                                   alert_below_micros=alert, max_parallel=body.max_parallel, ceiling_values=given)


@app.post("/dashboard/accounts/<account_id>/topup", summary="Add to an account's balance (operator only)",
          responses=_responses(200, "The account (a replay: header `Idempotent-Replayed: true`)", 403, 404, 409))
def top_up(account_id: str, body: TopUp, idempotency_key: Annotated[str | None, Header(
        description="Optional. A retry with the same key and amount is not added twice; the same key with "
                    "another amount is a 409.")] = None):
    view, replayed = accounts.top_up(_actor(), account_id, int(body.amount * money.MICROS_PER_UNIT),
                                      idempotency_key)
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return Response(status_code=200, content_type="application/json", body=json.dumps(view), headers=headers)


@app.get("/dashboard/accounts/<account_id>/keys", summary="List an account's API keys",
         responses=_responses(200, '{"keys": [...]}', 404))
def list_keys(account_id: str, include_deleted: Annotated[bool, Query()] = False) -> dict:
    return keys.list_keys(_actor(), account_id, include_deleted=include_deleted)


@app.post("/dashboard/accounts/<account_id>/keys",
          summary="Create an API key (the response holds the key: shown once, never again)",
          responses=_responses(201, "The key (`key`) and its record", 404))
def create_key(account_id: str, body: KeyCreate):
    created = keys.create_key(_actor(), account_id, name=body.name, rpm=body.rpm, tpm=body.tpm,
                                   models=body.models, expires_at=body.expires_at,
                                   spend_limit_micros=None if body.spend_limit is None
                                   else int(body.spend_limit * money.MICROS_PER_UNIT), max_parallel=body.max_parallel)
    return created, 201


@app.delete("/dashboard/keys/<key_id>", summary="Delete an API key (it stops working at once)",
            responses=_responses(200, "The deleted key's record", 404))
def delete_key(key_id: str) -> dict:
    return keys.delete_key(_actor(), key_id)


@app.patch("/dashboard/keys/<key_id>",
           summary="Change an API key's rpm or tpm (a tenant's: at most its account's ceilings)",
           responses=_responses(200, "The key's record", 404))
def update_key(key_id: str, body: KeyUpdate) -> dict:
    # Only the fields sent: one left out stays as it is (an empty body answers the key unchanged).
    return keys.update_key(_actor(), key_id, **{name: getattr(body, name) for name in body.model_fields_set})


@app.post("/dashboard/keys/<key_id>/rotate",
          summary="Rotate an API key: a new secret (in the response: shown once), the same key id, limits and "
                  "history; the old secret works until the grace ends",
          responses=_responses(200, "The key with its new secret (`key`); a replay: `key` null, header "
                                    "`Idempotent-Replayed: true`", 404, 409))
def rotate_key(key_id: str, body: Annotated[KeyRotate | None, Body()] = None,
               idempotency_key: Annotated[str | None, Header(
                   description="Optional. A retry with the same key makes no second secret; the same key with "
                               "another grace is a 409.")] = None):
    wanted = (body or KeyRotate()).grace
    try:
        grace = 0 if wanted.strip().lower() in ("now", "0") else expiry.parse_duration(wanted)
    except ValueError:
        raise errors.bad_request("grace must be a duration like 90s, 15m, 12h or 30d, or 'now'", "grace") from None
    view, replayed = keys.rotate_key(_actor(), key_id, grace_seconds=grace, idempotency_key=idempotency_key)
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return Response(status_code=200, content_type="application/json", body=json.dumps(view), headers=headers)


@app.get("/dashboard/accounts/<account_id>/usage",
         summary="Usage records between two times, newest first, paginated; totals by day and model",
         responses=_responses(200, '{"records": [...], "next": cursor or null, "totals": {...}}', 404))
def usage(
    account_id: str,
    from_: Annotated[str | None, Query(alias="from", description="ISO 8601; default: `to` - 30 days")] = None,
    to: Annotated[str | None, Query(description="ISO 8601, exclusive; default: now")] = None,
    key_id: Annotated[str | None, Query(description="only this key's records")] = None,
    cursor: Annotated[str | None, Query(description="`next` of the previous page")] = None,
    limit: Annotated[int | None, Query(ge=1, le=paging.MAX_PAGE)] = None,
) -> dict:
    return read_usage(_actor(), account_id, start=from_, end=to, key_id=key_id, cursor=cursor, limit=limit)


@app.get("/dashboard/accounts/<account_id>/statement",
         summary="An account's statement for a month: opening balance, top-ups, charges, debts, closing balance",
         responses=_responses(200, "The statement (JSON), or its lines as CSV with ?format=csv", 404))
def statement(
    account_id: str,
    month: Annotated[str, Query(description="YYYY-MM (UTC)")],
    format: Annotated[Literal["json", "csv"], Query(description="json (default) or csv")] = "json",  # noqa: A002
):
    document = read_statement(_actor(), account_id, month)
    if format == "json":
        return document
    filename = f"statement-{document['account_id']}-{document['month']}.csv"
    return Response(status_code=200, content_type="text/csv; charset=utf-8", body=statement_csv(document),
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@app.get("/dashboard/audit", summary="The audit log of your accounts and keys, newest first",
         responses=_responses(200, '{"records": [...], "next": cursor or null}', 404))
def audit_log(
    account_id: Annotated[str | None, Query(description="only this account's records")] = None,
    cursor: Annotated[str | None, Query(description="`next` of the previous page")] = None,
    limit: Annotated[int | None, Query(ge=1, le=paging.MAX_PAGE)] = None,
) -> dict:
    return read_audit_log(_actor(), account_id=account_id, cursor=cursor, limit=limit)


@app.get("/dashboard/reports/margin",
         summary="Margin by partner, account, model or day (operator: everything; a partner: its own revenue)",
         responses=_responses(200, '{"rows": [...], "totals": {...}} over whole UTC days', 403))
def margin(
    from_: Annotated[str, Query(alias="from", description="first UTC day, YYYY-MM-DD")],
    to: Annotated[str, Query(description="last UTC day, YYYY-MM-DD (included)")],
    by: Annotated[str, Query(description="partner, account, model or day")] = "account",
) -> dict:
    return margin_report(_actor(), start=from_, end=to, by=by)


# ---------------------------------------------------------------------------------------------- errors


@app.exception_handler(errors.GatewayError)
def gateway_error(exc: errors.GatewayError) -> Response:
    return _error(exc)


@app.exception_handler(RequestValidationError)
def validation_error(exc: RequestValidationError) -> Response:
    first = (exc.errors() or [{}])[0]
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    param = ".".join(location) or None
    message = str(first.get("msg") or "invalid request")
    if first.get("type") == "json_invalid":
        message, param = "The request body is not valid JSON.", None
    elif param:
        message = f"Invalid {param}: {message}"
    return _error(errors.bad_request(message, param))


@app.not_found
def unknown_route(exc: NotFoundError) -> Response:
    event = app.current_event
    return _error(errors.not_found(f"Unknown request URL: {event.http_method} {event.path}.", code="unknown_url"))


@app.exception_handler(Exception)
def unexpected(exc: Exception) -> Response:
    logger.exception("dashboard request failed")
    return _error(errors.internal_error())


# ---------------------------------------------------------------------------------------------- the web app

# The browser dashboard's files, served by this function on the API's own stage (no second host, no CDN).
#
# GET /dashboard (and /dashboard/) answers index.html, GET /dashboard/static/<file> the app's script and
# style sheet, GET /dashboard/config.json what the page needs to sign in (region, user pool endpoint and app
# client id: public values, never a secret). These routes have no authorizer: a browser fetches them before
# anyone signs in, and they hold no data. Every JSON API route stays behind the Cognito authorizer.
#
# Caching: index.html and config.json are revalidated on every load (no-cache); index.html names each asset
# with its content hash (`static/app.js?v=<hash>`), so an asset asked for with its current hash is
# immutable for a year and a deploy is picked up at the next page load.

WEB_DIR = Path(__file__).resolve().parent / "web"
ASSETS = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8",
          "qrcode.js": "text/javascript; charset=utf-8"}  # qrcode.js: the TOTP setup's QR code, drawn in the page
INDEX_PATH = "/dashboard"
ASSET_PATH = "/dashboard/static/{file}"
CONFIG_PATH = "/dashboard/config.json"
PUBLIC_RESOURCES = (INDEX_PATH, ASSET_PATH, CONFIG_PATH)


def cognito_endpoint() -> str:
    """Where the browser calls InitiateAuth: the local pool's endpoint, or the region's Cognito endpoint."""
    local = os.environ.get("AWS_ENDPOINT_URL_COGNITO_IDP")
    if local:
        return local.rstrip("/") + "/"
    return f"https://cognito-idp.{os.environ.get('AWS_REGION', 'us-east-1')}.amazonaws.com/"


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def security_headers() -> dict[str, str]:
    # Only this stage's own files run; the page talks to this API and to the user pool, nothing else.
    csp = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
           f"connect-src 'self' {_origin(cognito_endpoint())}; base-uri 'none'; form-action 'none'; "
           "frame-ancestors 'none'")
    return {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY"}


@cache
def _asset(name: str) -> tuple[bytes, str]:
    body = (WEB_DIR / name).read_bytes()
    return body, hashlib.sha256(body).hexdigest()[:16]


@cache
def _index() -> bytes:
    html = (WEB_DIR / "index.html").read_text(encoding="utf-8")
    for name in ASSETS:
        html = html.replace(f"static/{name}", f"static/{name}?v={_asset(name)[1]}")
    return html.encode("utf-8")


def _answer(status: int, body: bytes, content_type: str, cache_control: str, **extra: str) -> dict:
    headers = {"Content-Type": content_type, "Cache-Control": cache_control, **security_headers(), **extra}
    return {"statusCode": status, "headers": headers, "body": body.decode("utf-8"), "isBase64Encoded": False}


def _not_found() -> dict:
    # The route exists (unlike an unknown_url): only the file does not.
    body = json.dumps({"error": {"message": "No such file in the dashboard app.", "type": "invalid_request_error",
                                 "code": "file_not_found", "param": "file"}}).encode()
    return _answer(404, body, "application/json", "no-cache")


def handle_web(event: dict) -> dict:
    """The answer to a request for one of PUBLIC_RESOURCES."""
    resource = event.get("resource")
    if resource == INDEX_PATH:
        if not str(event.get("path") or "").endswith("/"):
            # Relative URLs in the page (static/…, config.json, accounts) need the trailing slash.
            return _answer(301, b"", "text/plain", "no-cache", Location="dashboard/")
        return _answer(200, _index(), "text/html; charset=utf-8", "no-cache")
    if resource == CONFIG_PATH:
        config = {"region": os.environ.get("AWS_REGION", "us-east-1"), "cognitoEndpoint": cognito_endpoint(),
                  "clientId": os.environ.get("ONYSOFT_USER_POOL_CLIENT_ID", "")}
        return _answer(200, json.dumps(config).encode(), "application/json", "no-cache")
    name = ((event.get("pathParameters") or {}).get("file")) or ""
    if name not in ASSETS:
        return _not_found()
    body, digest = _asset(name)
    version = (event.get("queryStringParameters") or {}).get("v")
    cache_control = "public, max-age=31536000, immutable" if version == digest else "no-cache"
    return _answer(200, body, ASSETS[name], cache_control, ETag=f'"{digest}"')


# ---------------------------------------------------------------------------------------------- entry


def _plain_error(exc: errors.GatewayError) -> dict:
    return {"statusCode": exc.status, "headers": dict(JSON), "body": json.dumps(exc.envelope()),
            "isBase64Encoded": False}


def _unauthorized() -> dict:
    error = errors.GatewayError(401, "Sign in to the dashboard: send your ID token as 'Authorization: Bearer <token>'.",
                                "invalid_request_error", "invalid_token")
    return {"statusCode": 401, "headers": {**JSON, "WWW-Authenticate": "Bearer"},
            "body": json.dumps(error.envelope()), "isBase64Encoded": False}


def _inline_hashes(html: str, tag: str) -> list[str]:
    """CSP sources ('sha256-…') of the page's inline <tag> elements, read as a browser does: each ends at the
    first closing tag (Swagger UI's page inlines its bundle, so 'self' alone would block it)."""
    sources, position = [], 0
    while (start := html.find(f"<{tag}>", position)) != -1:
        end = html.find(f"</{tag}>", start)
        if end == -1:
            break
        content = html[start + len(tag) + 2:end]
        sources.append("'sha256-" + base64.b64encode(hashlib.sha256(content.encode("utf-8")).digest()).decode() + "'")
        position = end + len(tag) + 3
    return sources


def docs_security_headers(html: str) -> dict[str, str]:
    """The API document's page (Swagger UI, served inline by Powertools): its own scripts only, by hash."""
    scripts = " ".join(_inline_hashes(html, "script")) or "'none'"
    csp = (f"default-src 'none'; script-src {scripts}; "
           "style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
           "form-action 'none'; frame-ancestors 'none'")
    return {**security_headers(), "Content-Security-Policy": csp}


def _secured(event: dict, response: dict) -> dict:
    """Every dashboard answer (API, errors, the document) carries the web app's security headers."""
    body = response.get("body") or ""
    html = event.get("resource") == DOCS_PATH and isinstance(body, str) and body.lstrip().startswith("<")
    extra = docs_security_headers(body) if html else security_headers()
    if isinstance(response.get("multiValueHeaders"), dict):
        headers = response["multiValueHeaders"]
        for name, value in extra.items():
            headers.setdefault(name, [value])
    else:
        headers = response.setdefault("headers", {})
        for name, value in extra.items():
            headers.setdefault(name, value)
    return response


def handler(event: dict, context) -> dict:
    # API Gateway's Cognito authorizer turns away a missing or bad token before this runs; a token whose
    # principal claim is missing or malformed is turned away here, before any route or validation runs.
    if event.get("resource") in PUBLIC_RESOURCES and event.get("httpMethod") == "GET":
        return handle_web(event)
    if event.get("resource") != DOCS_PATH:
        claims = _claims(event)
        try:
            principal = principals.from_claims(claims)
        except principals.PrincipalError:
            return _secured(event, _unauthorized())
        try:
            mfa.check(principal, claims)  # the operator: only from a sign-in with TOTP (onysoft.mfa)
        except errors.GatewayError as exc:
            return _secured(event, _plain_error(exc))
        except Exception:  # noqa: BLE001 - the user pool did not answer: refused, never let through
            logger.exception("MFA check failed")
            return _secured(event, _plain_error(errors.internal_error()))
    return _secured(event, app.resolve(event, context))
