"""Scheduled: Key Expiring (7 days and 1 day before) and Key Expired events, once each (onysoft.key_expiry)."""

from onysoft import key_expiry


def handler(event: dict, context) -> dict:
    return key_expiry.run()
