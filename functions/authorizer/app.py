"""REQUEST authorizer for /v1: Bearer sk-ony-… → allow with the caller's context, or 401.

Thin on purpose: the decision is onysoft.authorization.authorize. Nothing logged here holds a key.
"""

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.data_classes import event_source
from aws_lambda_powertools.utilities.data_classes.api_gateway_authorizer_event import (
    APIGatewayAuthorizerRequestEvent,
    APIGatewayAuthorizerResponse,
)

from onysoft.authorization import Denied, authorize

logger = Logger()


@event_source(data_class=APIGatewayAuthorizerRequestEvent)
def handler(event: APIGatewayAuthorizerRequestEvent, context) -> dict:
    try:
        caller = authorize(event.headers.get("Authorization"))  # case-insensitive in Powertools v3
    except Denied as denial:
        logger.info("key denied", extra={"reason": denial.reason, "key_id": denial.key_id})
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
