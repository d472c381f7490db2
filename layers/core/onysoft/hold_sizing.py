"""How much to hold before forwarding: an upper bound of the request's cost, and a true one (docs/BILLING.md).

- Prompt: every token of a text prompt is at least one byte of the request body, so the body's size in bytes
  bounds the text tokens (the JSON around the messages more than covers the per-message tokens). An image,
  audio or file part is a few bytes (a URL, a file id) but many tokens: each adds the model's catalog bound
  (`tokens_per_image`, default DEFAULT_TOKENS_PER_IMAGE).
- Output: the gateway owns the output limit. It holds the client's `max_completion_tokens` / `max_tokens`,
  or else the model's `max_output_tokens` (default DEFAULT_MAX_OUTPUT_TOKENS), never more than that cap,
  × `n`; and it sends exactly that per-answer limit upstream, in the provider's field (onysoft.forwarding).
- When the balance cannot cover that but can cover the prompt and at least MIN_OUTPUT_TOKENS of output,
  and the client set no output limit, the hold shrinks to what the balance affords (and so does the limit
  sent upstream): a balance that can pay for a short answer is not refused.
"""

from dataclasses import dataclass
from decimal import Decimal

from onysoft import errors, money
from onysoft.catalog import ModelPrice

DEFAULT_MAX_OUTPUT_TOKENS = 16_384
DEFAULT_TOKENS_PER_IMAGE = 4_096
MIN_OUTPUT_TOKENS = 16
MAX_CHOICES = 128  # OpenAI's own bound on `n`
MAX_OUTPUT_LIMIT = 2**31 - 1  # a client limit beyond this is not a number any provider takes
OUTPUT_LIMIT_FIELDS = ("max_completion_tokens", "max_tokens")
# Per route: the client's output limit field(s) and the fields that hold the prompt (where media parts are).
OUTPUT_FIELDS = {"chat.completions": OUTPUT_LIMIT_FIELDS, "responses": ("max_output_tokens",),
                 "messages": ("max_tokens",), "embeddings": ()}
PROMPT_FIELDS = {"chat.completions": ("messages",), "embeddings": ("input",), "responses": ("input",),
                 "messages": ("messages", "system")}
# Part types that carry media a provider bills by content, not by the bytes of the request (OpenAI's chat
# parts, OpenAI Responses-style and Anthropic's names, which OpenAI-compatible upstreams accept).
MEDIA_PART_TYPES = frozenset({"image_url", "input_audio", "file", "image", "input_image", "input_file", "audio",
                              "document", "video", "video_url", "input_video"})
# Fields that buy something the catalog does not price: refused (400), never dropped, so a client never gets
# less than it asked for without knowing. `service_tier` is refused unless standard (below).
UNPRICED_FIELDS = {
    "web_search_options": "web search is billed per search",
    "prediction": "predicted outputs bill rejected prediction tokens beyond the output limit",
    "audio": "audio output is priced apart from text",
    "plugins": "provider plugins (web search, file parsing) are billed apart",
}
STANDARD_SERVICE_TIERS = (None, "auto", "default")


@dataclass(frozen=True)
class HoldPlan:
    prompt_tokens: int
    output_tokens: int  # held output, all answers together: the per-answer limit sent upstream × n
    client_set_output_limit: bool
    micros: int
    shrunk: bool = False  # sized down to the balance
    choices: int = 1
    media_parts: int = 0
    tokens_per_image: int = 0

    @property
    def rate_tokens(self) -> int:
        """What the request counts against its key's tokens per minute at the hold: all it may use (the prompt
        bound, media included, and the held output); the usage rollup gives back what it did not use."""
        return self.prompt_tokens + self.output_tokens

    @property
    def output_limit(self) -> int:
        """The one output limit the gateway sends upstream (per answer)."""
        return self.output_tokens // max(self.choices, 1)


@dataclass(frozen=True)
class ChargeFactors:
    """Everything a charge depends on, fixed at hold time and stored in the usage record."""

    price: ModelPrice
    markup_bp: int
    fx_rate: Decimal
    fx_rate_at: str

    def provider_cost_usd(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0,
                          cache_write_tokens: int = 0) -> Decimal:
        """Input tokens at three prices (uncached, cached reads, cache writes: both within prompt_tokens),
        output tokens (reasoning included) at the output price."""
        uncached = prompt_tokens - cached_tokens - cache_write_tokens
        return (money.usd_cost(uncached, self.price.input_usd_per_mtok)
                + money.usd_cost(cached_tokens, self.price.cached_input_price)
                + money.usd_cost(cache_write_tokens, self.price.cache_write_price)
                + money.usd_cost(completion_tokens, self.price.output_usd_per_mtok))

    def charge_micros(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0,
                      cache_write_tokens: int = 0) -> int:
        cost = self.provider_cost_usd(prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens)
        return money.charge_micros(cost, self.markup_bp, self.fx_rate)


def whole_number(body: dict, field: str, low: int, high: int) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise errors.bad_request(f"'{field}' must be a whole number from {low} to {high}.", field, "invalid_value")
    return value


def validate(endpoint: str, body: dict) -> None:
    """400 before any hold for a billing number that is not a whole number in range, and for an option that
    changes the provider's price in a way the catalog does not know."""
    if endpoint != "chat.completions":
        return
    limits = {field: whole_number(body, field, 1, MAX_OUTPUT_LIMIT) for field in OUTPUT_LIMIT_FIELDS}
    whole_number(body, "n", 1, MAX_CHOICES)
    if None not in limits.values() and len(set(limits.values())) > 1:
        raise errors.bad_request(
            "Set one output limit: 'max_completion_tokens' and 'max_tokens' were both given, with different "
            "values.", "max_tokens", "conflicting_output_limits")
    tier = body.get("service_tier")
    if tier not in STANDARD_SERVICE_TIERS:
        raise errors.bad_request(
            f"service_tier {tier!r} is not offered on this gateway: its price is not in the catalog. Use 'auto' "
            "or 'default'.", "service_tier", "unpriced_option")
    for field, why in UNPRICED_FIELDS.items():
        if body.get(field) is not None:
            raise errors.bad_request(f"'{field}' is not offered on this gateway: {why}, at a price the "
                                     "catalog does not know.", field, "unpriced_option")
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise errors.bad_request("Only text output is offered on this gateway ('modalities': ['text']).",
                                 "modalities", "unpriced_option")


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


def count_media_parts(value, depth: int = 0) -> int:
    """Image, audio and file parts anywhere in the messages (a hostile body may nest them anywhere)."""
    if depth > 64:
        return 0
    if isinstance(value, list):
        return sum(count_media_parts(item, depth + 1) for item in value)
    if not isinstance(value, dict):
        return 0
    own = 1 if value.get("type") in MEDIA_PART_TYPES else 0
    return own + sum(count_media_parts(item, depth + 1) for item in value.values() if isinstance(item, list | dict))


def output_cap(price: ModelPrice) -> int:
    return price.max_output_tokens or DEFAULT_MAX_OUTPUT_TOKENS


def plan_hold(endpoint: str, body: dict, body_size: int, factors: ChargeFactors) -> HoldPlan:
    per_part = factors.price.tokens_per_image or DEFAULT_TOKENS_PER_IMAGE
    parts = count_media_parts([body.get(field) for field in PROMPT_FIELDS[endpoint]])
    prompt_bound = max(body_size, 1) + parts * per_part
    if endpoint == "embeddings":
        return HoldPlan(prompt_bound, 0, False, factors.charge_micros(prompt_bound, 0), media_parts=parts,
                        tokens_per_image=per_part)
    requested = _requested_output(body, endpoint)
    answers = choices(body) if endpoint == "chat.completions" else 1
    per_answer = min(requested or output_cap(factors.price), output_cap(factors.price))
    output_bound = per_answer * answers
    return HoldPlan(prompt_bound, output_bound, requested is not None,
                    factors.charge_micros(prompt_bound, output_bound), choices=answers, media_parts=parts,
                    tokens_per_image=per_part)


def shrink_to_balance(plan: HoldPlan, balance_micros: int, factors: ChargeFactors) -> HoldPlan | None:
    """The largest hold the balance affords, or None when not even a short answer fits."""
    if plan.client_set_output_limit or plan.output_tokens == 0 or balance_micros <= 0:
        return None
    answers = plan.choices
    low, high = MIN_OUTPUT_TOKENS, plan.output_tokens // answers
    if low > high or factors.charge_micros(plan.prompt_tokens, low * answers) > balance_micros:
        return None
    while low < high:  # binary search: charge is monotonic in output tokens
        mid = (low + high + 1) // 2
        if factors.charge_micros(plan.prompt_tokens, mid * answers) <= balance_micros:
            low = mid
        else:
            high = mid - 1
    output = low * answers
    return HoldPlan(plan.prompt_tokens, output, False, factors.charge_micros(plan.prompt_tokens, output),
                    shrunk=True, choices=answers, media_parts=plan.media_parts,
                    tokens_per_image=plan.tokens_per_image)
