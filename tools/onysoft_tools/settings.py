"""Where the tools find DynamoDB: a local gateway's `<state dir>/dev.env`, or AWS from the environment.

dev.env is KEY=VALUE lines written by `onysoft dev`: the moto server endpoint, region, dummy
credentials, the five table names and the gateway's URL. Values already in the environment win over
defaults but not over an explicit --endpoint-url/--region.
"""

import os
from pathlib import Path

DEFAULT_STATE_DIR = ".onysoft"
ENV_FILE_NAME = "dev.env"


def state_dir(explicit: str | None = None) -> Path:
    return Path(explicit or os.environ.get("ONYSOFT_STATE_DIR") or DEFAULT_STATE_DIR)


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.partition("=")
        values[name.strip()] = value.strip()
    return values


def write_env_file(path: Path, values: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# written by `onysoft dev`: how the CLI reaches this local gateway"]
    lines += [f"{name}={value}" for name, value in values.items()]
    path.write_text("\n".join(lines) + "\n")


def apply(*, state_dir_arg: str | None = None, endpoint_url: str | None = None,
          region: str | None = None) -> Path | None:
    """Put the connection settings into os.environ and rebind the models. Returns the dev.env used, if any.

    An explicit --endpoint-url means "not the local gateway": dev.env is then ignored.
    """
    used = None
    if endpoint_url is None:
        env_file = state_dir(state_dir_arg) / ENV_FILE_NAME
        if env_file.is_file():
            for name, value in read_env_file(env_file).items():
                os.environ[name] = value
            used = env_file
    else:
        os.environ["AWS_ENDPOINT_URL_DYNAMODB"] = endpoint_url
    if region:
        os.environ["AWS_REGION"] = region
        os.environ["AWS_DEFAULT_REGION"] = region
    from onysoft.models import bind_tables

    bind_tables()
    return used
