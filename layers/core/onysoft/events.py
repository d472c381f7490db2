"""Key and balance events: the one place the gateway tells the outside world that something happened to a key
or a balance (DESIGN.md, "Events").

    from onysoft import events
    events.emit(events.KEY_ROTATED, events.about_key(record, grace_until=...))

Where an event goes:
- in AWS, to the EventBridge bus named by ONYSOFT_EVENT_BUS (template.yaml's EventBus; source `onysoft`, the
  detail type as the event's `detail-type`), for rules to route (the optional e-mail subscriber, a customer's
  own target);
- locally, and whenever ONYSOFT_EVENTS_FILE names a file (`onysoft dev` sets it to `<state dir>/events.jsonl`
  and writes it to dev.env, so the CLI's events land there too), as one JSON line appended to that file, in the
  shape an EventBridge target receives (`id`, `time`, `source`, `detail-type`, `detail`). `onysoft events`
  reads it.

Rules every emitter keeps: one event per crossing (a key rotated once, a balance crossing its threshold once),
never one per request; the detail names the account and the key (its display form) and never holds a secret
(an `sk-ony-` key anywhere in it drops the event, logged); emitting never fails the caller: `emit` never
raises, and its AWS client waits at most a few seconds.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import uuid
from typing import Any

from onysoft import clock

SOURCE = "onysoft"
BUS_ENV = "ONYSOFT_EVENT_BUS"
FILE_ENV = "ONYSOFT_EVENTS_FILE"
FILE_NAME = "events.jsonl"  # `onysoft dev`'s file in its state dir

# The detail types (EventBridge `detail-type`; the same names in events.jsonl). DESIGN.md lists them.
KEY_ROTATED = "Key Rotated"
KEY_LEAKED = "Key Leaked"
KEY_EXPIRING = "Key Expiring"
KEY_EXPIRED = "Key Expired"
BALANCE_LOW = "Balance Low"
BALANCE_EXHAUSTED = "Balance Exhausted"
SPEND_LIMIT_REACHED = "Spend Limit Reached"
DETAIL_TYPES = (KEY_ROTATED, KEY_LEAKED, KEY_EXPIRING, KEY_EXPIRED, BALANCE_LOW, BALANCE_EXHAUSTED,
                SPEND_LIMIT_REACHED)

# Anything that looks like a key (the whole secret or its 48 hex digits): such a detail is never sent.
_SECRET = re.compile(r"sk-ony-[0-9a-fA-F]{16,}|\b[0-9a-f]{48}\b")

logger = logging.getLogger("onysoft.events")
_client_lock = threading.Lock()
_clients: dict[tuple, Any] = {}


def about_key(record: Any, **extra: Any) -> dict:
    """The detail of an event about a key: its account, id and display form (never the key nor its hash),
    plus `extra`. `record` is an ApiKey item (or anything with those attributes)."""
    return {"account_id": record.account_id, "key_id": record.key_id, "display": record.display,
            "name": getattr(record, "name", None) or "", **extra}


def _holds_a_secret(detail: dict) -> bool:
    return bool(_SECRET.search(json.dumps(detail, default=str)))


def envelope(detail_type: str, detail: dict, *, event_id: str | None = None, time: str | None = None) -> dict:
    """The event as an EventBridge target receives it (without account, region and resources)."""
    return {"version": "0", "id": event_id or str(uuid.uuid4()), "detail-type": detail_type, "source": SOURCE,
            "time": time or clock.now_iso(), "detail": detail}


def emit(detail_type: str, detail: dict) -> None:
    """Send one event to the bus (AWS) or append it to the events file (local). Never raises: a lost event is
    logged, never an error for the request or command that caused it."""
    try:
        if detail_type not in DETAIL_TYPES:
            logger.error("unknown event type: not sent", extra={"detail_type": detail_type})
            return
        if _holds_a_secret(detail):
            logger.error("event detail holds something like a key: not sent", extra={"detail_type": detail_type})
            return
        event = envelope(detail_type, detail)
        path, bus = os.environ.get(FILE_ENV), os.environ.get(BUS_ENV)
        if path:
            _append(path, event)
        elif bus:
            _put(bus, event)
        else:
            logger.info("no event bus or events file configured: event not sent",
                        extra={"detail_type": detail_type})
    except Exception:  # noqa: BLE001 - emitting never fails the caller
        logger.exception("event not sent", extra={"detail_type": detail_type})


def _append(path: str, event: dict) -> None:
    """One write() of one line with O_APPEND: lines from several processes (the gateway, CLI commands) never
    interleave."""
    line = (json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _client():
    """One EventBridge client per region and endpoint, with short timeouts and one retry: an event is not
    worth holding a request for."""
    from onysoft import config

    identity = (config.region(), os.environ.get("AWS_ENDPOINT_URL_EVENTS"), os.environ.get("AWS_ENDPOINT_URL"))
    with _client_lock:
        client = _clients.get(identity)
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.client("events", region_name=identity[0], config=Config(
                connect_timeout=2, read_timeout=3, retries={"max_attempts": 2, "mode": "standard"}))
            _clients[identity] = client
        return client


def _put(bus: str, event: dict) -> None:
    answer = _client().put_events(Entries=[{
        "EventBusName": bus, "Source": SOURCE, "DetailType": event["detail-type"],
        "Detail": json.dumps(event["detail"], separators=(",", ":")),
    }])
    if answer.get("FailedEntryCount"):
        failed = (answer.get("Entries") or [{}])[0]
        logger.error("event bus refused the event", extra={"detail_type": event["detail-type"],
                                                           "error": failed.get("ErrorCode")})


def read_file(path: str | os.PathLike[str]) -> list[dict]:
    """Every event in an events file, oldest first (a torn last line, still being written, is left out)."""
    events = []
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.endswith("\n") and line.strip():
                    try:
                        events.append(json.loads(line))
                    except ValueError:
                        continue
    except FileNotFoundError:
        return []
    return events
