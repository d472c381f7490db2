"""The local gateway's state: the template's tables on the DynamoDB endpoint, whether this is a first run
(nothing journaled, no earlier version's state file to migrate, or, on a DynamoDB of the user's own, never
seeded), and the atomic writes of the small files kept in the state dir."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from onysoft_tools import template
from onysoft_tools.local.moto_process import DUMMY_ACCESS_KEY, DUMMY_SECRET_KEY, REGION


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Temp file, fsync, rename: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def create_tables(endpoint: str, tpl: dict, env: dict[str, str]) -> tuple[Any, dict[str, str]]:
    """The template's tables under the names `env` gives them: (a DynamoDB client, {logical id: table name})."""
    import boto3

    client = boto3.client("dynamodb", endpoint_url=endpoint, region_name=REGION,
                          aws_access_key_id=DUMMY_ACCESS_KEY, aws_secret_access_key=DUMMY_SECRET_KEY)
    names = {logical_id: env[env_var] for logical_id, env_var in template.TABLE_ENV.items()}
    template.create_tables(client, tpl, names)
    return client, names


def first_run(client: Any, names: dict[str, str], state: Path, *, external: bool, had_state: bool,
              seeded_marker: Path) -> bool:
    """Whether to seed. On moto server (which loaded the journal and snapshot itself), a first run is one with
    neither (nor an earlier version's state file, migrated here into the journal). A DynamoDB endpoint of the
    user's own keeps its own data: a first run is one that never seeded it (no `seeded_marker` file)."""
    from onysoft_tools.local import legacy_state

    if external:
        return not seeded_marker.exists()
    legacy = legacy_state.pending(state)
    if legacy is not None:
        count = legacy_state.migrate(client, names, legacy)
        print(f"onysoft dev: migrated {count} items from {legacy} (an earlier version's state file; "
              f"kept as {legacy.name}{legacy_state.MIGRATED_SUFFIX}) into the journal", file=sys.stderr)
    return not had_state and legacy is None
