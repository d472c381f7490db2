"""How much to hold before forwarding: an upper bound of the request's cost, and a true one (docs/BILLING.md).

- Prompt: every token of text is at least one byte of the request body, so the body's bytes bound the text
  tokens (the JSON around the messages more than covers the per-message tokens), less the bytes of inline base64
  media payloads, which are bounded instead: each image, audio or document part adds the model's catalog bound
  for its kind, and a tool the provider expands (Anthropic's bash, text editor…) adds what the provider adds
  (onysoft.request_policy, which also refuses a part the catalog cannot bound). Audio tokens are held at the audio
  price; a prompt bound above the model's long-context threshold is held at the tier's prices.
- Output: the gateway owns the output limit. It holds the client's `max_completion_tokens` / `max_tokens`,
  or else the model's `max_output_tokens` (default DEFAULT_MAX_OUTPUT_TOKENS), never more than that cap,
  × `n`; and it sends exactly that per-answer limit upstream, in the provider's field (onysoft.forwarding).
- When the balance cannot cover that but can cover the prompt and at least MIN_OUTPUT_TOKENS of output,
  and the client set no output limit, the hold shrinks to what the balance affords (and so does the limit
  sent upstream): a balance that can pay for a short answer is not refused.
- The hold is also what a request costs when its usage cannot be known (a timeout after the send, a cut stream,
  the deadline): provider_usage.of_hold.
"""

from dataclasses import dataclass
from decimal import Decimal

from onysoft import errors, money
from onysoft.catalog import ModelPrice
from onysoft.provider_usage import Usage
from onysoft.request_policy import InputBound

DEFAULT_MAX_OUTPUT_TOKENS = 16_384
MIN_OUTPUT_TOKENS = 16
MAX_CHOICES = 128  # OpenAI's own bound on `n`
MAX_OUTPUT_LIMIT = 2**31 - 1  # a client limit beyond this is not a number any provider takes
OUTPUT_LIMIT_FIELDS = ("max_completion_tokens", "max_tokens")
# Per route: the client's output limit field(s).
OUTPUT_FIELDS = {"chat.completions": OUTPUT_LIMIT_FIELDS, "responses": ("max_output_tokens",),
                 "messages": ("max_tokens",), "embeddings": ()}
STANDARD_SERVICE_TIERS = (None, "auto", "default")
# An answer the proxy assembles for a client that did not ask for a stream is kept in memory: past this size it
# is not sent (the client is told why; the call is charged what it used). A request whose logprobs alone could
# pass it is refused before the hold (LOGPROB_BYTES: one token's logprob entry in the answer's JSON, an upper
# estimate, and as much again per top_logprobs alternative).
MAX_ANSWER_BYTES = 16 * 1024 * 1024
LOGPROB_BYTES = 120


@dataclass(frozen=True)
class HoldPlan:
    prompt_tokens: int
    output_tokens: int  # held output, all answers together: the per-answer limit sent upstream × n
    client_set_output_limit: bool
    micros: int
    shrunk: bool = False  # sized down to the balance
    choices: int = 1
    media_parts: int = 0
    audio_tokens: int = 0  # the part of prompt_tokens bounded as audio (held at the audio price)

    @property
    def rate_tokens(self) -> int:
        """What the request counts against its key's tokens per minute at the hold: all it may use (the prompt
        bound, media included, and the held output); the settle gives back what it did not use."""
        return self.prompt_tokens + self.output_tokens

    @property
    def output_limit(self) -> int:
        """The one output limit the gateway sends upstream (per answer)."""
        return self.output_tokens // max(self.choices, 1)

    def as_usage(self) -> Usage:
        """Everything the hold covers, as a bill: what a call whose usage cannot be known is charged."""
        return Usage(self.prompt_tokens, self.output_tokens, audio_tokens=self.audio_tokens, estimated=True)


@dataclass(frozen=True)
class ChargeFactors:
    """Everything a charge depends on, fixed at hold time and stored in the usage record."""

    price: ModelPrice
    markup_bp: int
    fx_rate: Decimal
    fx_rate_at: str

    def provider_cost_usd(self, usage: Usage) -> Decimal:
        """What the provider bills for `usage`, in USD, at the catalog's prices (onysoft.catalog.ModelPrice)."""
        return self.price.cost_usd(usage)

    def charge_micros(self, usage: Usage) -> int:
        return money.charge_micros(self.provider_cost_usd(usage), self.markup_bp, self.fx_rate)


def whole_number(body: dict, field: str, low: int, high: int) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise errors.bad_request(f"'{field}' must be a whole number from {low} to {high}.", field, "invalid_value")
    return value


def validate(endpoint: str, body: dict) -> None:
    """400 before any hold for a billing number that is not a whole number in range, and for a chat option whose
    value changes the provider's price in a way the catalog does not know (which fields may be sent at all is
    onysoft.request_policy's allow-list)."""
    if endpoint != "chat.completions":
        return
    limits = {field: whole_number(body, field, 1, MAX_OUTPUT_LIMIT) for field in OUTPUT_LIMIT_FIELDS}
    whole_number(body, "n", 1, MAX_CHOICES)
    whole_number(body, "top_logprobs", 0, 20)
    if None not in limits.values() and len(set(limits.values())) > 1:
        raise errors.bad_request(
            "Set one output limit: 'max_completion_tokens' and 'max_tokens' were both given, with different "
            "values.", "max_tokens", "conflicting_output_limits")
    tier = body.get("service_tier")
    if tier not in STANDARD_SERVICE_TIERS:
        raise errors.bad_request(
            f"service_tier {tier!r} is not offered on this gateway: its price is not in the catalog. Use 'auto' "
            "or 'default'.", "service_tier", "unpriced_option")
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise errors.bad_request("Only text output is offered on this gateway ('modalities': ['text']).",
                                 "modalities", "unpriced_option")
    if body.get("store") not in (None, False):
        raise errors.bad_request("'store' is not offered on this gateway: completions are not stored at the "
                                 "provider (every key shares the platform's provider account); send store: false "
                                 "or leave it out.", "store", "stateful_option")


def _requested_output(body: dict, endpoint: str = "chat.completions") -> int | None:
    """The client's limit (validate() has made both fields agree, or one absent)."""
    for field in OUTPUT_FIELDS[endpoint]:
        value = body.get(field)
        if value is not None:
            return value
    return None


def choices(body: dict) -> int:
    """How many answers the request asks for (`n`, validated); 1 when absent."""
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and 0 < n <= MAX_CHOICES else 1


def output_cap(price: ModelPrice) -> int:
    return price.max_output_tokens or DEFAULT_MAX_OUTPUT_TOKENS


def _check_answer_size(body: dict, output_tokens: int) -> None:
    """Logprobs make an answer's JSON ~LOGPROB_BYTES per token per alternative: refuse what cannot fit."""
    if not body.get("logprobs"):
        return
    alternatives = 1 + (body.get("top_logprobs") or 0)
    if output_tokens * alternatives * LOGPROB_BYTES > MAX_ANSWER_BYTES and not body.get("stream"):
        raise errors.bad_request(
            f"This request's answer could be larger than the {MAX_ANSWER_BYTES // (1024 * 1024)} MB the gateway "
            "assembles for a client that does not stream: lower 'max_tokens', 'n' or 'top_logprobs', or stream it.",
            "top_logprobs", "response_too_large")


def plan_hold(endpoint: str, body: dict, body_size: int, factors: ChargeFactors,
              bound: InputBound = InputBound()) -> HoldPlan:
    prompt_bound = max(body_size - bound.payload_bytes, 1) + bound.media_tokens + bound.tool_tokens
    if endpoint == "embeddings":
        return HoldPlan(prompt_bound, 0, False, factors.charge_micros(Usage(prompt_bound, 0)),
                        media_parts=bound.media_parts)
    requested = _requested_output(body, endpoint)
    answers = choices(body) if endpoint == "chat.completions" else 1
    per_answer = min(requested or output_cap(factors.price), output_cap(factors.price))
    output_bound = per_answer * answers
    if endpoint == "chat.completions":
        _check_answer_size(body, output_bound)
    usage = Usage(prompt_bound, output_bound, audio_tokens=bound.audio_tokens)
    return HoldPlan(prompt_bound, output_bound, requested is not None, factors.charge_micros(usage),
                    choices=answers, media_parts=bound.media_parts, audio_tokens=bound.audio_tokens)


def shrink_to_balance(plan: HoldPlan, balance_micros: int, factors: ChargeFactors) -> HoldPlan | None:
    """The largest hold the balance affords, or None when not even a short answer fits."""
    if plan.client_set_output_limit or plan.output_tokens == 0 or balance_micros <= 0:
        return None
    answers = plan.choices

    def cost(per_answer: int) -> int:
        return factors.charge_micros(Usage(plan.prompt_tokens, per_answer * answers, audio_tokens=plan.audio_tokens))

    low, high = MIN_OUTPUT_TOKENS, plan.output_tokens // answers
    if low > high or cost(low) > balance_micros:
        return None
    while low < high:  # binary search: charge is monotonic in output tokens
        mid = (low + high + 1) // 2
        if cost(mid) <= balance_micros:
            low = mid
        else:
            high = mid - 1
    return HoldPlan(plan.prompt_tokens, low * answers, False, cost(low), shrunk=True, choices=answers,
                    media_parts=plan.media_parts, audio_tokens=plan.audio_tokens)
