"""Upstream providers: where each one is and where its key comes from (providers.json is the data).

Locally ONYSOFT_PROVIDER_<NAME>_BASE_URL / _API_KEY override; in AWS the key is a Secrets Manager secret
read through Powertools Parameters (cached for SECRET_MAX_AGE seconds). The client's sk-ony key is never
sent upstream: the upstream request is built from scratch with the provider's key.
"""

import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SECRET_MAX_AGE = 300
MOCK = "mock"
EVERY_PROVIDER_APIS = ("chat.completions", "embeddings")  # OpenAI-compatible: what every provider serves


@dataclass(frozen=True)
class Provider:
    name: str
    base_url: str
    secret: str
    output_limit_field: str
    apis: tuple[str, ...] = EVERY_PROVIDER_APIS
    keyless: bool = False

    def serves(self, endpoint: str) -> bool:
        return endpoint in self.apis


class ProviderUnavailable(Exception):
    """The provider is unknown or has no key configured."""


@cache
def _registry() -> dict[str, dict]:
    data = json.loads((Path(__file__).with_name("providers.json")).read_text())
    return {name: entry for name, entry in data.items() if not name.startswith("_")}


def _env(name: str, suffix: str) -> str | None:
    return os.environ.get(f"ONYSOFT_PROVIDER_{name.upper()}_{suffix}") or None


def get_provider(name: str) -> Provider:
    entry = _registry().get(name)
    if entry is None:
        raise ProviderUnavailable(f"unknown provider {name!r}")
    base_url = _env(name, "BASE_URL") or entry["base_url"]
    return Provider(name, base_url.rstrip("/"), entry.get("secret", ""), entry.get("output_limit_field", "max_tokens"),
                    EVERY_PROVIDER_APIS + tuple(entry.get("apis", ())), bool(entry.get("keyless")))


def api_key(provider: Provider) -> str:
    if provider.keyless:
        return ""
    local = _env(provider.name, "API_KEY")
    if local:
        return local
    if not provider.secret or os.environ.get("AWS_LAMBDA_FUNCTION_NAME") is None:
        raise ProviderUnavailable(f"no API key configured for provider {provider.name!r}")
    from aws_lambda_powertools.utilities import parameters  # only in AWS, only when needed

    try:
        return str(parameters.get_secret(provider.secret, max_age=SECRET_MAX_AGE))
    except Exception as exc:  # noqa: BLE001 - any failure to read the secret means: not configured
        raise ProviderUnavailable(f"could not read the key of provider {provider.name!r}") from exc
