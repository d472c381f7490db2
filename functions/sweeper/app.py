"""Scheduled: close holds that crashed invocations left open (onysoft.sweeper): settle those whose request
left the gateway, release the rest. Records it cannot close are counted (SweeperCloseFailures) and skipped; after
5 failed runs one is quarantined (QuarantinedHolds, its alarm; `onysoft sweep quarantined`)."""

from onysoft import open_holds, sweeper, telemetry


def handler(event: dict, context) -> dict:
    result = sweeper.close_stale_holds()
    # Then what is still open too long (the StaleHoldsAlarm) and what is quarantined (QuarantinedHoldsAlarm), with
    # the run's counts, as metrics and a log line.
    telemetry.record_sweep(result, open_holds.count_older_than(), sweeper.count_quarantined())
    return result
