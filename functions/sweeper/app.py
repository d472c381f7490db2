"""Scheduled: release holds that crashed invocations left open (onysoft.sweeper)."""

from aws_lambda_powertools import Logger

from onysoft.sweeper import release_stale_holds

logger = Logger()


def handler(event: dict, context) -> dict:
    result = release_stale_holds()
    logger.info("stale holds swept", extra=result)
    return result
