"""`onysoft events [--follow] [--json]`: the key and balance events a local gateway emitted (onysoft.events).

Locally every event is a line of `<state dir>/events.jsonl` (the file dev.env names as ONYSOFT_EVENTS_FILE).
In AWS they go to the stack's EventBridge bus, which keeps none: subscribe a target to it instead.
With --json: `{"events": [...]}`; with --json --follow, one event object per line as each arrives.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from onysoft import events
from onysoft_tools import settings

from .output import UsageError, output, table, write

FOLLOW_POLL_SECONDS = 0.2


def events_file(args: argparse.Namespace) -> Path:
    """The events file: dev.env's ONYSOFT_EVENTS_FILE (settings.apply put it in the environment), else the state
    dir's events.jsonl; a UsageError when there is no local gateway to read from."""
    named = os.environ.get(events.FILE_ENV)
    if named:
        return Path(named)
    state = settings.state_dir(getattr(args, "state_dir", None))
    if (state / settings.ENV_FILE_NAME).is_file() or (state / events.FILE_NAME).is_file():
        return state / events.FILE_NAME
    raise UsageError(f"no local gateway in {state} (no {settings.ENV_FILE_NAME}): `onysoft events` reads the events "
                     f"a local gateway wrote to <state dir>/{events.FILE_NAME}. In AWS the events go to the stack's "
                     "EventBridge bus (output EventBusName): subscribe a rule's target to it.")


def _line(event: dict) -> list:
    detail = event.get("detail") or {}
    rest = {k: v for k, v in detail.items() if k not in ("account_id", "key_id", "display", "name")}
    return [event.get("time"), event.get("detail-type"), detail.get("account_id"), detail.get("key_id"),
            detail.get("display"), json.dumps(rest, ensure_ascii=False, sort_keys=True) if rest else ""]


HEADERS = ["TIME", "EVENT", "ACCOUNT_ID", "KEY_ID", "DISPLAY", "DETAILS"]


def _follow(path: Path, args: argparse.Namespace, offset: int) -> int:
    """Print events as they are appended, until Ctrl-C."""
    buffer = b""
    try:
        while True:
            try:
                with open(path, "rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
            except FileNotFoundError:
                chunk = b""
            if chunk:
                offset += len(chunk)
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for raw in lines:
                    if not raw.strip():
                        continue
                    try:
                        event = json.loads(raw)
                    except ValueError:
                        continue
                    if args.json:
                        sys.stdout.write(json.dumps(event, ensure_ascii=False) + "\n")
                    else:
                        write("  ".join(str(cell) for cell in _line(event) if cell not in (None, "")))
                    sys.stdout.flush()
            time.sleep(FOLLOW_POLL_SECONDS)
    except KeyboardInterrupt:
        return 0


def show(args: argparse.Namespace) -> int:
    path = events_file(args)
    if args.follow:
        return _follow(path, args, 0)  # every event so far, then each new one
    found = events.read_file(path)
    return output(args, {"events": found},
                  lambda: table(HEADERS, [_line(e) for e in found]) if found else f"No events yet in {path}.")


def register(commands, leaf) -> None:
    p = leaf(commands, "events", show, "key and balance events (locally: <state dir>/events.jsonl)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing events as they come (Ctrl-C stops)")
