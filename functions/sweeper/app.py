"""Scheduled: close holds that crashed invocations left open (onysoft.sweeper). Records it cannot close are
counted in the SweeperCloseFailures metric (namespace Onysoft), to alarm on."""

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from onysoft import sweeper

logger = Logger()
metrics = Metrics(namespace="Onysoft")


@metrics.log_metrics
def handler(event: dict, context) -> dict:
    result = sweeper.close_stale_holds()
    metrics.add_metric(name="SweeperCloseFailures", unit=MetricUnit.Count, value=result["close_failures"])
    metrics.add_metric(name="SweeperSettledHolds", unit=MetricUnit.Count, value=result["settled"])
    metrics.add_metric(name="SweeperReleasedHolds", unit=MetricUnit.Count, value=result["released"])
    logger.info("stale holds swept", extra=result)
    return result
