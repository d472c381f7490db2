"""The state file of earlier `onysoft dev` versions (`<state dir>/tables.json`, format onysoft-dev-tables/1,
written by a 2 s full-scan autosave): migrated once into the journal, then renamed out of the way.

Migration rather than refusal: the file holds a developer's accounts, keys and usage; putting its items back
through DynamoDB's own API (BatchWriteItem, journaled like any write) keeps them, and the original file stays
next to the new state as `tables.json.migrated`. A file that is not that format (damaged, or from some other
tool) is not guessed at: `LegacyStateError` carries a message saying what to do.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("onysoft.dev")

LEGACY_FILE = "tables.json"
LEGACY_FORMAT = "onysoft-dev-tables/1"
MIGRATED_SUFFIX = ".migrated"


class LegacyStateError(RuntimeError):
    """tables.json exists but cannot be migrated: the message says why and what to do."""


def _decode_value(value: dict) -> dict:
    """A typed DynamoDB value from the file: binary was stored as base64 text."""
    (kind, inner), = value.items()
    if kind == "B":
        return {"B": base64.b64decode(inner)}
    if kind == "BS":
        return {"BS": [base64.b64decode(b) for b in inner]}
    if kind == "L":
        return {"L": [_decode_value(v) for v in inner]}
    if kind == "M":
        return {"M": {k: _decode_value(v) for k, v in inner.items()}}
    return value


def pending(state_dir: Path) -> Path | None:
    path = state_dir / LEGACY_FILE
    return path if path.is_file() else None


def migrate(client: Any, names: dict[str, str], path: Path) -> int:
    """Put every item of an old tables.json into the tables (logical id → table name), then rename the file.
    Returns how many items were migrated."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LegacyStateError(
            f"{path} is a state file of an earlier onysoft dev, and it cannot be read ({exc}). Move it away "
            f"(the gateway then starts with empty tables and a new seed) or restore a good copy.") from None
    if not isinstance(data, dict) or data.get("format") != LEGACY_FORMAT or not isinstance(data.get("tables"), dict):
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise LegacyStateError(
            f"{path} is not a state file this version can migrate (format {found!r}, expected "
            f"{LEGACY_FORMAT!r}). Move it away to start with empty tables.")
    from botocore.exceptions import ClientError

    migrated = 0
    try:
        for logical_id, items in data["tables"].items():
            table = names.get(logical_id)
            if table is None:
                logger.warning("%s has table %s, which template.yaml no longer defines: skipped", path, logical_id)
                continue
            for start in range(0, len(items), 25):
                pending_items: dict = {table: [
                    {"PutRequest": {"Item": {k: _decode_value(v) for k, v in item.items()}}}
                    for item in items[start:start + 25]
                ]}
                for _ in range(20):
                    pending_items = client.batch_write_item(RequestItems=pending_items).get("UnprocessedItems") or {}
                    if not pending_items:
                        break
                    time.sleep(0.05)
                else:
                    raise LegacyStateError(f"could not migrate every item of {table} from {path}")
            migrated += len(items)
    except (ValueError, TypeError, AttributeError, KeyError, ClientError) as exc:
        raise LegacyStateError(f"{path} has an item this version cannot read ({type(exc).__name__}: {exc}). "
                               "Move it away to start with empty tables.") from None
    path.rename(path.with_name(path.name + MIGRATED_SUFFIX))
    return migrated
