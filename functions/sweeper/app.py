"""Scheduled: close holds that crashed invocations left open (onysoft.sweeper): settle those whose request
left the gateway, release the rest. Records it cannot close are counted (SweeperCloseFailures) and skipped."""

from onysoft import open_holds, telemetry
from onysoft.sweeper import close_stale_holds


def handler(event: dict, context) -> dict:
    result = close_stale_holds()
    # Then what is still open too long (the StaleHoldsAlarm), with the run's counts, as metrics and a log line.
    telemetry.record_sweep(result, open_holds.count_older_than())
    return result
