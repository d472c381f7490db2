from decimal import Decimal

import pytest

from onysoft import money


@pytest.mark.parametrize(
    ("text", "micros"),
    [("12.5", 12_500_000), ("0.000001", 1), ("1", 1_000_000), ("100.123456", 100_123_456)],
)
def test_parse_amount_is_exact(text, micros):
    assert money.parse_amount(text) == micros


@pytest.mark.parametrize("text", ["-1", "0", "0.0000001", "abc", "1e3", "", "1,5", "+3", " . ", "nan", "inf"])
def test_parse_amount_rejects_bad_input(text):
    with pytest.raises(money.MoneyError):
        money.parse_amount(text)


def test_format_micros_round_trips():
    for micros in (0, 1, 999_999, 1_000_000, 12_500_000, -3_000_001):
        text = money.format_micros(micros)
        assert Decimal(text) * money.MICROS_PER_UNIT == micros


def test_markup_pct_and_basis_points():
    assert money.parse_markup_pct("30") == 3000
    assert money.parse_markup_pct("12.5") == 1250
    assert money.markup_pct(3000) == 30
    assert money.markup_pct(1250) == 12.5
    for bad in ("-5", "abc", "12.345", "1e2"):
        with pytest.raises(money.MoneyError):
            money.parse_markup_pct(bad)


def test_charge_rounds_up_to_the_micro_unit_and_only_up():
    # 1000 tokens at 0.15 USD/Mtok = 0.00015 USD; +50% = 0.000225 USD = 225 micro-USD exactly.
    cost = money.usd_cost(1000, Decimal("0.15"))
    assert money.charge_micros(cost, 5000, Decimal(1)) == 225
    # One token at 0.15/Mtok = 0.00000015 USD → 0.15 micro-USD → rounds up to 1.
    assert money.charge_micros(money.usd_cost(1, Decimal("0.15")), 0, Decimal(1)) == 1
    # TRY: × 41.5 → 225 × 41.5 = 9337.5 → 9338.
    assert money.charge_micros(cost, 5000, Decimal("41.5")) == 9338
    # Zero cost is zero, never rounded up to 1.
    assert money.charge_micros(Decimal(0), 5000, Decimal("41.5")) == 0
