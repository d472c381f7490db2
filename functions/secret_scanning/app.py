"""POST /secret-scanning/github: GitHub's secret-scanning partner reports (onysoft.secret_scanning).

A public route (GitHub signs its reports; it sends no credential of ours), throttled on its own in the template.
The signature over the raw body is checked first: an unsigned or wrongly signed report is refused (401) before
anything is read. A signed one revokes every live key it names and gets GitHub's feedback (one entry per token:
its SHA-256, its type, true_positive or false_positive). Nothing logged here holds a token.
"""

import base64
import json

from aws_lambda_powertools import Logger

from onysoft import errors, github_signatures, secret_scanning

logger = Logger()
MAX_BODY_BYTES = 2 * 1024 * 1024  # 1,000 matches, each a token, a type, a URL and a source: far below this


def _answer(status: int, body) -> dict:
    return {"statusCode": status, "headers": {"Content-Type": "application/json"}, "body": json.dumps(body),
            "isBase64Encoded": False}


def _error(error: errors.GatewayError) -> dict:
    return _answer(error.status, error.envelope())


def _raw_body(event: dict) -> bytes:
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        return base64.b64decode(body)
    return body.encode("utf-8", "surrogateescape")  # the bytes GitHub signed (a REST API passes UTF-8 text)


def handler(event: dict, context) -> dict:
    headers = {str(k).lower(): v for k, v in (event.get("headers") or {}).items()}
    raw = _raw_body(event)
    if len(raw) > MAX_BODY_BYTES:
        return _error(errors.GatewayError(413, "The report is too large.", "invalid_request_error",
                                          "request_too_large"))
    try:
        signed = github_signatures.verify(raw, headers.get("github-public-key-identifier"),
                                          headers.get("github-public-key-signature"))
    except github_signatures.KeysUnavailable:
        logger.exception("GitHub's public keys are unavailable: the report cannot be checked now")
        return _error(errors.GatewayError(503, "The report's signature cannot be checked now; send it again later.",
                                          "server_error", "signature_keys_unavailable"))
    if not signed:
        logger.warning("secret-scanning report refused: no valid GitHub signature")
        return _error(errors.GatewayError(401, "This endpoint takes GitHub's signed secret-scanning reports only.",
                                          "invalid_request_error", "invalid_signature"))
    try:
        matches = secret_scanning.parse_report(raw)
    except secret_scanning.BadReport as exc:
        return _error(errors.bad_request(f"Not a secret-scanning report: {exc}.", code="invalid_report"))
    feedback = secret_scanning.handle_report(matches)
    logger.info("secret-scanning report", extra={
        "matches": len(matches), "true_positives": sum(1 for f in feedback if f["label"] == "true_positive")})
    return _answer(200, feedback)
