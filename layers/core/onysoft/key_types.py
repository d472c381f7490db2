"""The key-type registry: the only place where the four key types' account kind, currency,
default markup and default limits live (DESIGN.md, "Key types")."""

from dataclasses import dataclass


@dataclass(frozen=True)
class KeyType:
    name: str
    account_kind: str  # a key of this type charges an account of this kind
    currency: str
    default_markup_bp: int  # basis points: 5000 = 50%
    description: str
    markup_min_bp: int = 0
    markup_max_bp: int = 100_000  # 1000%: a sanity bound, not a business rule
    default_rpm: int = 60  # requests per minute, per key, unless the key sets its own
    default_tpm: int = 200_000  # tokens per minute
    # The operator's ceilings for an account of this type's kind when it sets none (onysoft.ceilings): the most
    # a tenant may give one key (rpm, tpm, max_parallel), how many keys the account may have, and how many
    # accounts of this kind one owner (org or partner) may have (None: no owner creates this kind).
    ceiling_rpm: int = 300
    ceiling_tpm: int = 1_000_000
    ceiling_max_parallel: int = 10
    ceiling_keys: int = 10
    ceiling_accounts: int | None = None


PARTNER_MARKUP_MAX_BP = 20_000  # 200%: the most a partner may charge on top of the provider's price

KEY_TYPES: dict[str, KeyType] = {
    kt.name: kt
    for kt in (
        # Ceilings (docs/ARCHITECTURE.md, "Limits and abuse", says why these numbers): 5x the default rpm and
        # tpm at least, one key never past a quarter of the stage's 200 requests/s.
        KeyType("user", "user", "TRY", 5000, "a person's own key; platform standard markup",
                default_rpm=60, default_tpm=200_000,
                ceiling_rpm=300, ceiling_tpm=1_000_000, ceiling_max_parallel=10, ceiling_keys=10),
        KeyType("project", "project", "TRY", 5000, "an org project's key; markup set per project",
                default_rpm=600, default_tpm=1_000_000,
                ceiling_rpm=1500, ceiling_tpm=5_000_000, ceiling_max_parallel=50, ceiling_keys=50,
                ceiling_accounts=100),
        # Partners set their own markups, within the platform's bounds (0-200%).
        KeyType("partner_project", "partner_project", "USD", 5000, "a partner's own project",
                markup_max_bp=PARTNER_MARKUP_MAX_BP, default_rpm=1200, default_tpm=2_000_000,
                ceiling_rpm=3000, ceiling_tpm=10_000_000, ceiling_max_parallel=100, ceiling_keys=100,
                ceiling_accounts=20),
        KeyType("partner_customer", "partner_customer", "TRY", 3000, "a partner's end customer",
                markup_max_bp=PARTNER_MARKUP_MAX_BP, default_rpm=120, default_tpm=400_000,
                ceiling_rpm=600, ceiling_tpm=2_000_000, ceiling_max_parallel=20, ceiling_keys=20,
                ceiling_accounts=1000),
    )
}

ACCOUNT_KINDS: tuple[str, ...] = tuple(kt.account_kind for kt in KEY_TYPES.values())


def key_type_for_account_kind(kind: str) -> KeyType:
    for kt in KEY_TYPES.values():
        if kt.account_kind == kind:
            return kt
    raise KeyError(f"unknown account kind: {kind}")
