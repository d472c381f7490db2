"""The first run's seed: catalog, a USD→TRY rate, one demo account and key per key type; and the demo keys'
file, kept so a restart can print them again (a local development convenience only: tables hold only each
key's SHA-256)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from onysoft_tools.local.state import write_atomically

logger = logging.getLogger("onysoft.dev")

DEMO_KEYS_FILE = "demo-keys.json"
DEMO_OWNER = "demo"  # the org and partner id that own the demo project and partner accounts

# Seed of a first run: (model, input USD/Mtok, output USD/Mtok, bounds and optional prices). mock/* answers offline
# and bills no media (its tokens are the words), so any bound is a true one for it; the OpenAI models get the
# image bound of a high-detail image at the largest size (2048 x 768 after scaling: 8 tiles): gpt-4o-mini bills
# 2,833 + 5,667 per tile = 48,169 tokens, gpt-4o 85 + 170 per tile = 1,445. Documents (PDF pages) and audio have no
# true bound there: refused until an operator sets one.
MOCK_MEDIA = {"tokens_per_image": 1000, "tokens_per_document": 10_000, "tokens_per_audio": 1000,
              "audio_input_usd_per_mtok": "4.00"}
SEED_MODELS = (
    ("mock/echo", "1.00", "2.00", MOCK_MEDIA),
    # the mock provider's other models (onysoft.mock_provider), so every fault the README names can be tried
    ("mock/slow-stream", "1.00", "2.00", MOCK_MEDIA),
    ("mock/cut-stream", "1.00", "2.00", {}),
    ("mock/error-500", "1.00", "2.00", {}),
    ("mock/rate-limited", "1.00", "2.00", {}),
    ("mock/timeout", "1.00", "2.00", {}),
    ("mock/embed", "0.02", "0", {}),
    ("openai/gpt-4o-mini", "0.15", "0.60", {"tokens_per_image": 48_169, "max_output_tokens": 16_384,
                                            "cached_input_usd_per_mtok": "0.075"}),
    ("openai/gpt-4o", "2.50", "10.00", {"tokens_per_image": 1_445, "max_output_tokens": 16_384,
                                        "cached_input_usd_per_mtok": "1.25"}),
)
SEED_USDTRY = "41.50"
SEED_TOPUP = "100"


@dataclass
class DemoKey:
    type: str
    currency: str
    key: str
    key_id: str
    account_id: str
    display: str
    valid: bool = True


DEMO_KEYS_NOTE = (
    "Local development only: the demo keys' plaintext, kept so `onysoft dev` can print them again after a "
    "restart. Tables hold only each key's SHA-256. Never copy this file anywhere."
)


def seed() -> list[DemoKey]:
    from onysoft import catalog, money
    from onysoft.accounts import create_account, top_up
    from onysoft.api_keys import create_key
    from onysoft.key_types import KEY_TYPES

    for model, input_price, output_price, options in SEED_MODELS:
        catalog.set_model(model, input_usd_per_mtok=input_price, output_usd_per_mtok=output_price, **options)
    catalog.set_fx("USDTRY", SEED_USDTRY)
    demo = []
    for key_type in KEY_TYPES.values():
        account = create_account(key_type.account_kind, name=f"demo {key_type.account_kind}",
                                 owner=None if key_type.account_kind == "user" else DEMO_OWNER)
        top_up(account.account_id, money.parse_amount(SEED_TOPUP))
        created = create_key(account.account_id, name=f"demo {key_type.name}")
        demo.append(DemoKey(type=created.record.key_type, currency=account.currency, key=created.plaintext,
                            key_id=created.record.key_id, account_id=account.account_id,
                            display=created.record.display))
    return demo


def write_demo_keys(path: Path, demo: list[DemoKey]) -> None:
    document = {
        "note": DEMO_KEYS_NOTE,
        "keys": [{k: v for k, v in vars(d).items() if k != "valid"} for d in demo],
    }
    write_atomically(path, (json.dumps(document, indent=2) + "\n").encode("utf-8"), mode=0o600)
    os.chmod(path, 0o600)


def read_demo_keys(path: Path) -> list[DemoKey]:
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text(encoding="utf-8")).get("keys") or []
        return [DemoKey(**{k: entry[k] for k in ("type", "currency", "key", "key_id", "account_id", "display")})
                for entry in entries]
    except (ValueError, KeyError, TypeError, AttributeError):
        logger.warning("%s is unreadable: demo keys not shown", path)
        return []


def check_demo_keys(demo: list[DemoKey]) -> None:
    """Mark the demo keys that no longer authenticate (deleted, or the tables were reset)."""
    from onysoft import keys
    from onysoft.api_keys import find_by_hash, is_usable

    for entry in demo:
        record = find_by_hash(keys.hash_key(entry.key)) if keys.is_well_formed(entry.key) else None
        entry.valid = record is not None and is_usable(record)


def demo_principals(demo: list[DemoKey]) -> list[str]:
    """The demo seed's principals: its user, the org and partner that own the demo accounts, the operator."""
    user = next((d.account_id for d in demo if d.type == "user"), None)
    return ([f"user:{user}"] if user else []) + [f"org:{DEMO_OWNER}", f"partner:{DEMO_OWNER}", "operator"]

