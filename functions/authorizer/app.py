"""REQUEST authorizer for /v1: Bearer sk-ony-… (or x-api-key on Anthropic's routes) → allow with the caller's
context, or 401.

Thin on purpose: the decision is onysoft.authorization.authorize. Nothing logged here holds a key.
"""

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.data_classes import event_source
from aws_lambda_powertools.utilities.data_classes.api_gateway_authorizer_event import (
    APIGatewayAuthorizerRequestEvent,
    APIGatewayAuthorizerResponse,
)

from onysoft.authorization import Denied, authorize
from onysoft.keys import ANTHROPIC_PATHS

logger = Logger()


@event_source(data_class=APIGatewayAuthorizerRequestEvent)
def handler(event: APIGatewayAuthorizerRequestEvent, context) -> dict:
    try:
        # Headers are case-insensitive in Powertools v3. x-api-key counts on Anthropic's routes only (template.yaml:
        # their authorizer, AnthropicKeyAuthorizer, has no identity source, so API Gateway calls it without either).
        caller = authorize(event.headers.get("Authorization"), event.headers.get("x-api-key"),
                           anthropic=event.resource in ANTHROPIC_PATHS)
    except Denied as denial:
        logger.info("key denied", extra={"reason": denial.reason, "key_id": denial.key_id})
        if denial.message:  # a leaked key: a Deny whose context says why (template.yaml, ACCESS_DENIED: 401)
            return _deny(event, denial)
        # API Gateway answers 401 (its UNAUTHORIZED gateway response) to exactly this error.
        raise Exception("Unauthorized") from None  # noqa: TRY002
    arn = event.parsed_arn
    policy = APIGatewayAuthorizerResponse(
        principal_id=caller.key_id, region=arn.region, aws_account_id=arn.aws_account_id,
        api_id=arn.api_id, stage=arn.stage, context=caller.to_authorizer_context(),
    )
    # Wildcard resource: API Gateway caches this answer per key for every route, not just this one.
    policy.allow_all_routes()
    logger.info("key allowed", extra={"key_id": caller.key_id, "key_type": caller.key_type})
    return policy.asdict()


def _deny(event: APIGatewayAuthorizerRequestEvent, denial: Denied) -> dict:
    """A Deny for every route (cached like an Allow), with the 401's code and message in its context."""
    arn = event.parsed_arn
    policy = APIGatewayAuthorizerResponse(
        principal_id=denial.key_id or "denied", region=arn.region, aws_account_id=arn.aws_account_id,
        api_id=arn.api_id, stage=arn.stage, context={"error_code": "key_leaked", "error_message": denial.message})
    policy.deny_all_routes()
    return policy.asdict()
