"""What a provider says a call used, read as hostile input: the numbers a charge is computed from.

Shapes understood (docs/BILLING.md, "Settle"):
- OpenAI: prompt_tokens (cached reads included, `prompt_tokens_details.cached_tokens`; cache writes, where a
  provider reports them, `prompt_tokens_details.cache_write_tokens`), completion_tokens (reasoning included,
  `completion_tokens_details.reasoning_tokens`). DeepSeek's `prompt_cache_hit_tokens` is a cached read.
- Anthropic: `cache_read_input_tokens` and `cache_creation_input_tokens` are reported beside the input tokens,
  not inside them: they are added to the prompt.
- Reasoning reported beside the completion (total_tokens = prompt + completion + reasoning) is added to it.
- Output the provider did not itemize still counts: the completion is at least total_tokens − prompt_tokens
  (hidden thinking reported only in the total).
- Audio input tokens (`prompt_tokens_details.audio_tokens`, inside the prompt) are counted apart: the catalog
  prices them at the model's audio price. Audio output is never asked for (text only): reported, it is nonsense.
A count that is missing where it is needed, not a whole number, negative, absurdly large, or inconsistent
(cached above the prompt) makes the whole usage untrusted: the caller bills the hold, marked estimated.
"""

import logging
from dataclasses import dataclass

logger = logging.getLogger("onysoft.provider_usage")
MAX_SANE_TOKENS = 100_000_000  # no context window or answer is this large: a bigger count is not a count


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int  # every input token billed: uncached + cached reads + cache writes
    completion_tokens: int  # every output token billed, reasoning included
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    audio_tokens: int = 0  # audio input tokens (in prompt_tokens), priced at the catalog's audio price
    estimated: bool = False


class _Nonsense(ValueError):
    pass


def _count(container, field: str, required: bool = False) -> int:
    value = container.get(field) if isinstance(container, dict) else None
    if value is None:
        if required:
            raise _Nonsense(f"{field} missing")
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SANE_TOKENS:
        raise _Nonsense(f"{field} = {str(value)[:40]!r}")
    return value


def _read(raw: dict, output_expected: bool) -> Usage:
    reported_prompt = _count(raw, "prompt_tokens", required=True)
    completion = _count(raw, "completion_tokens", required=output_expected)
    prompt_details, completion_details = raw.get("prompt_tokens_details"), raw.get("completion_tokens_details")
    cached = _count(prompt_details, "cached_tokens") or _count(raw, "prompt_cache_hit_tokens")
    writes = _count(prompt_details, "cache_write_tokens")
    # Anthropic: cache reads and writes beside the input tokens.
    beside_read, beside_write = _count(raw, "cache_read_input_tokens"), _count(raw, "cache_creation_input_tokens")
    prompt = reported_prompt + beside_read + beside_write
    cached, writes = cached + beside_read, writes + beside_write
    reasoning = _count(completion_details, "reasoning_tokens")
    audio = _count(prompt_details, "audio_tokens")
    if _count(completion_details, "audio_tokens"):
        raise _Nonsense("audio output tokens (the gateway asks for text only)")
    total = _count(raw, "total_tokens")
    if reasoning and total == reported_prompt + completion + reasoning:
        completion += reasoning  # reported beside the completion, not inside it
    elif reasoning > completion:
        raise _Nonsense("reasoning_tokens above completion_tokens")
    if total > reported_prompt + completion:
        completion = total - reported_prompt  # output the provider counted but did not itemize
    if cached + writes + audio > prompt:
        raise _Nonsense("cached, cache-write and audio tokens above the prompt")
    return Usage(prompt, completion, cached, writes, reasoning, audio)


def read(raw, *, output_expected: bool = True, request_id: str = "") -> Usage | None:
    """The provider's usage, or None when it sent none or sent numbers that cannot be trusted."""
    if not isinstance(raw, dict):
        return None
    try:
        return _read(raw, output_expected)
    except _Nonsense as why:
        logger.warning("provider usage not trusted", extra={"request_id": request_id, "why": str(why)})
        return None


def of_hold(prompt_tokens: int, output_tokens: int, audio_tokens: int = 0) -> Usage:
    """The bill when the provider's usage cannot be known (docs/BILLING.md): the hold's own bound, the prompt
    (its audio part at the audio price) and all the output it allowed. Marked estimated."""
    return Usage(prompt_tokens, output_tokens, audio_tokens=audio_tokens, estimated=True)
