"""How much to hold before forwarding: an upper bound of the request's cost, not a guess.

- Prompt: every token of a text prompt is at least one byte of the request body, so the body's size in
  bytes bounds the prompt tokens (the JSON around the messages more than covers the per-message tokens).
- Output: the client's `max_completion_tokens` / `max_tokens` (× `n`), or else the model's output cap
  (catalog `max_output_tokens`, default DEFAULT_OUTPUT_CAP). The gateway does not impose that cap on the
  upstream (a model with a smaller limit would reject it); in the rare answer longer than the cap, the
  charge is capped at the hold and the difference recorded (`uncharged_micros`): a customer's balance
  never goes below zero.
- When the balance cannot cover that but can cover the prompt and at least MIN_OUTPUT_TOKENS of output,
  and the client set no output limit, the hold shrinks to what the balance affords and the upstream is
  asked for no more than that many tokens: a balance that can pay for a short answer is not refused.
"""

from dataclasses import dataclass
from decimal import Decimal

from onysoft import money
from onysoft.catalog import ModelPrice

DEFAULT_OUTPUT_CAP = 16_384
MIN_OUTPUT_TOKENS = 16


@dataclass(frozen=True)
class HoldPlan:
    prompt_tokens: int
    output_tokens: int
    client_set_output_limit: bool
    micros: int
    shrunk: bool = False  # sized down to the balance: the upstream must then be capped to output_tokens


@dataclass(frozen=True)
class ChargeFactors:
    """Everything a charge depends on, fixed at hold time and stored in the usage record."""

    price: ModelPrice
    markup_bp: int
    fx_rate: Decimal
    fx_rate_at: str

    def provider_cost_usd(self, prompt_tokens: int, completion_tokens: int) -> Decimal:
        return (money.usd_cost(prompt_tokens, self.price.input_usd_per_mtok)
                + money.usd_cost(completion_tokens, self.price.output_usd_per_mtok))

    def charge_micros(self, prompt_tokens: int, completion_tokens: int) -> int:
        return money.charge_micros(self.provider_cost_usd(prompt_tokens, completion_tokens), self.markup_bp,
                                   self.fx_rate)


def _requested_output(body: dict) -> int | None:
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def choices(body: dict) -> int:
    """How many answers the request asks for (`n`); 1 when it is missing or not a sane whole number."""
    n = body.get("n", 1)
    return n if isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 128 else 1


def plan_hold(endpoint: str, body: dict, body_size: int, factors: ChargeFactors) -> HoldPlan:
    prompt_bound = max(body_size, 1)
    if endpoint == "embeddings":
        return HoldPlan(prompt_bound, 0, False, factors.charge_micros(prompt_bound, 0))
    requested = _requested_output(body)
    output_bound = (requested or factors.price.max_output_tokens or DEFAULT_OUTPUT_CAP) * choices(body)
    return HoldPlan(prompt_bound, output_bound, requested is not None,
                    factors.charge_micros(prompt_bound, output_bound))


def shrink_to_balance(plan: HoldPlan, balance_micros: int, body: dict, factors: ChargeFactors) -> HoldPlan | None:
    """The largest hold the balance affords, or None when not even a short answer fits."""
    if plan.client_set_output_limit or plan.output_tokens == 0:
        return None
    answers = choices(body)
    low, high = MIN_OUTPUT_TOKENS, plan.output_tokens // answers
    if factors.charge_micros(plan.prompt_tokens, low * answers) > balance_micros:
        return None
    while low < high:  # binary search: charge is monotonic in output tokens
        mid = (low + high + 1) // 2
        if factors.charge_micros(plan.prompt_tokens, mid * answers) <= balance_micros:
            low = mid
        else:
            high = mid - 1
    output = low * answers
    return HoldPlan(plan.prompt_tokens, output, False, factors.charge_micros(plan.prompt_tokens, output), shrunk=True)
