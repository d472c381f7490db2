"""Money: integer micro-units of a currency, Decimal prices, one rounding rule (always up).

charge = ceil(provider_cost_usd × (1 + markup) × fx) micro-units (DESIGN.md, "Money").
"""

import re
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal

MICROS_PER_UNIT = 1_000_000
_AMOUNT_PATTERN = re.compile(r"\d+(\.\d{1,6})?")
_PCT_PATTERN = re.compile(r"\d+(\.\d{1,2})?")
BP_PER_PCT = 100


class MoneyError(ValueError):
    """Bad money input (negative, malformed, too precise)."""


def parse_amount(text: str) -> int:
    """'12.5' → 12_500_000 micro-units. Positive, at most 6 decimals, no exponent, no sign."""
    text = text.strip()
    if not _AMOUNT_PATTERN.fullmatch(text):
        raise MoneyError(f"amount must be a positive decimal number with at most 6 decimals, got {text!r}")
    micros = int(Decimal(text) * MICROS_PER_UNIT)
    if micros <= 0:
        raise MoneyError("amount must be greater than zero")
    return micros


def format_micros(micros: int) -> str:
    """12_500_000 → '12.500000': exact, six decimals, as a decimal string."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_UNIT)
    return f"{sign}{whole}.{frac:06d}"


def parse_markup_pct(text: str) -> int:
    """'30' or '12.5' (percent) → basis points (3000, 1250). At most 2 decimals, not negative."""
    text = str(text).strip()
    if not _PCT_PATTERN.fullmatch(text):
        raise MoneyError(f"markup must be a percentage like 30 or 12.5 (at most 2 decimals), got {text!r}")
    return int(Decimal(text) * BP_PER_PCT)


def markup_pct(markup_bp: int) -> int | float:
    """Basis points → the JSON number of DESIGN.md's `markup_pct` (30 means 30%)."""
    whole, rest = divmod(markup_bp, BP_PER_PCT)
    return whole if rest == 0 else float(Decimal(markup_bp) / BP_PER_PCT)


def usd_cost(tokens: int, usd_per_mtok: Decimal) -> Decimal:
    """Exact provider cost in USD of `tokens` at a price per million tokens."""
    return Decimal(tokens) * usd_per_mtok / Decimal(1_000_000)


def charge_micros(provider_cost_usd: Decimal, markup_bp: int, fx_rate: Decimal) -> int:
    """The one rounding rule: the marked-up, converted cost, rounded up to a whole micro-unit."""
    amount = provider_cost_usd * (Decimal(10_000 + markup_bp) / Decimal(10_000)) * fx_rate
    return int((amount * MICROS_PER_UNIT).to_integral_value(rounding=ROUND_CEILING))


# Margin (onysoft.margin): every settled usage record contributes two USD figures, each a whole number of USD
# micro-units rounded once, per record, by these rules; reports add those integers, so every figure is the
# exact sum of its records' figures in any grouping. Rounded so that a margin is never overstated: the
# provider's cost up, the charge's USD value down.

def usd_micros_up(amount_usd: Decimal) -> int:
    """A USD amount (a record's exact provider cost) in whole USD micro-units, rounded up."""
    return int((amount_usd * MICROS_PER_UNIT).to_integral_value(rounding=ROUND_CEILING))


def usd_micros_of_charge(charge_micros: int, fx_rate: Decimal) -> int:
    """A charge in micro-units of its currency, in USD micro-units at the rate pinned on its record (units of
    the currency per USD; 1 for a USD account), rounded down."""
    return int((Decimal(charge_micros) / fx_rate).to_integral_value(rounding=ROUND_FLOOR))


def percent(part: int, whole: int) -> int | float | None:
    """part / whole in percent, to two decimals (half even); None when whole is 0. A JSON number, like markup_pct."""
    if not whole:
        return None
    value = (Decimal(part) * 100 / Decimal(whole)).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)
    return int(value) if value == value.to_integral_value() else float(value)
