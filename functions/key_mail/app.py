"""Subscriber of the event bus (deployed only with a NotificationSenderEmail): mails an account's people about its
key and balance events (onysoft.key_mail). An error makes EventBridge retry the event (its retry policy)."""

from onysoft import key_mail


def handler(event: dict, context) -> dict:
    return key_mail.deliver(event)
