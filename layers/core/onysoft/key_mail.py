"""E-mail to an account's people when something happens to its keys or balance: the optional subscriber of the event
bus (KeyMailFunction, deployed when the stack's `NotificationSenderEmail` names a verified SES sender).

The people of an account are the dashboard sign-ins whose principal owns it (`user:<account_id>`, or the account's
`org:`/`partner:` owner: onysoft.principals.scope_of); the operator is not mailed about every account. Cognito's
ListUsers cannot filter on a custom attribute, so a delivery lists the pool's users (60 a page) and keeps the
owner's: fine for a dashboard's pool, and events are rare (one per crossing). One message per person (no one sees
another's address), plain text, nothing in it that the event does not hold: never a secret.

Locally nothing is mailed: `onysoft events` shows what would be.
"""

from __future__ import annotations

import logging
import os

from onysoft import config, events
from onysoft.models import Account
from onysoft.principals import CLAIM, scope_of

logger = logging.getLogger("onysoft.key_mail")

SENDER_ENV = "ONYSOFT_MAIL_FROM"
POOL_ENV = "ONYSOFT_USER_POOL_ID"


def _client(service: str):
    import boto3

    return boto3.client(service, region_name=config.region())


def recipients(account: Account) -> list[str]:
    """The e-mail addresses of the enabled sign-ins whose principal owns the account."""
    owner = scope_of(account)
    pool = os.environ.get(POOL_ENV)
    if not owner or not pool:
        return []
    found, token = [], None
    idp = _client("cognito-idp")
    while True:
        page = idp.list_users(UserPoolId=pool, AttributesToGet=["email", CLAIM], Limit=60,
                              **({"PaginationToken": token} if token else {}))
        for user in page.get("Users", []):
            attributes = {a["Name"]: a["Value"] for a in user.get("Attributes", [])}
            if user.get("Enabled", True) and attributes.get(CLAIM) == owner and attributes.get("email"):
                found.append(attributes["email"])
        token = page.get("PaginationToken")
        if not token:
            return sorted(set(found))


def _key(detail: dict) -> str:
    name = detail.get("name")
    return f"“{name}” ({detail.get('display')})" if name else str(detail.get("display") or detail.get("key_id"))


def compose(detail_type: str, detail: dict) -> tuple[str, str]:
    """(subject, plain-text body) of one event's message."""
    account = detail.get("account_id")
    if detail_type == events.KEY_LEAKED:
        where = f" at {detail['url']}" if detail.get("url") else ""
        subject = f"Onysoft: API key {_key(detail)} was found in public and revoked"
        body = (f"GitHub found the API key {_key(detail)} of account {account} in public{where}. It was revoked at "
                f"{detail.get('leaked_at')}: requests with it are refused.\n\nCreate a new key in the dashboard, put "
                "it where the old one was used, and remove the old one from your code and its history.")
    elif detail_type == events.KEY_ROTATED:
        subject = f"Onysoft: API key {_key(detail)} was rotated"
        body = (f"The API key {detail.get('key_id')} of account {account} got a new secret ({detail.get('display')}) "
                f"at {detail.get('rotated_at')}. The previous secret ({detail.get('previous_display')}) works until "
                f"{detail.get('grace_until')}.")
    elif detail_type == events.KEY_EXPIRING:
        expires = detail.get("expires_at") or ""
        subject = f"Onysoft: API key {_key(detail)} expires {'on ' + expires[:10] if expires else 'soon'}"
        body = (f"The API key {_key(detail)} of account {account} expires {'at ' + expires if expires else 'soon'}. "
                "Rotate it or create a new one before then, or give it a later expiry.")
    elif detail_type == events.KEY_EXPIRED:
        expires = detail.get("expires_at") or ""
        subject = f"Onysoft: API key {_key(detail)} has expired"
        body = (f"The API key {_key(detail)} of account {account} has expired{' at ' + expires if expires else ''}: "
                "requests with it are refused.")
    else:  # balance and spend-limit events: what they say, as they say it
        subject = f"Onysoft: {detail_type} on account {account}"
        body = "\n".join(f"{name}: {value}" for name, value in sorted(detail.items()) if value is not None)
    return subject, body + "\n\n(Onysoft AI Gateway. This message holds no key.)\n"


def deliver(event: dict) -> dict:
    """Mail one bus event to its account's people. Returns how many messages went out."""
    if not isinstance(event, dict) or not isinstance(event.get("detail") or {}, dict):
        # Not what the bus sends: retrying it would fail the same way (issue 23: poison cannot stick).
        logger.error("key mail: not a bus event; nothing sent", extra={"event_type": type(event).__name__})
        return {"sent": 0}
    detail_type, detail = event.get("detail-type"), event.get("detail") or {}
    sender = os.environ.get(SENDER_ENV)
    if detail_type not in events.DETAIL_TYPES or not sender or not detail.get("account_id"):
        return {"sent": 0}
    try:
        account = Account.get(detail["account_id"], consistent_read=True)
    except Account.DoesNotExist:
        return {"sent": 0}
    people = recipients(account)
    subject, body = compose(detail_type, detail)
    ses = _client("sesv2")
    for address in people:
        ses.send_email(FromEmailAddress=sender, Destination={"ToAddresses": [address]},
                       Content={"Simple": {"Subject": {"Data": subject[:200], "Charset": "UTF-8"},
                                           "Body": {"Text": {"Data": body, "Charset": "UTF-8"}}}})
    logger.info("key event mailed", extra={"detail_type": detail_type, "account_id": account.account_id,
                                           "recipients": len(people)})
    return {"sent": len(people)}
