"""The billing fake (onysoft_tools.fake_billing) bills what a provider would: the money invariant's proof is only
as strong as its bill. Literal amounts, worked out by hand."""

import asyncio
import json

import pytest

from onysoft_tools.fake_billing import Biller


def _drain(answer) -> list[dict]:
    async def read():
        events = []
        async for line in answer:
            data = line.removeprefix("data: ").strip()
            events.append(data if data == "[DONE]" else json.loads(data))
        return events
    return asyncio.run(read())


def _body(directive: str, **fields) -> dict:
    # "hi [[ledger …]]" is 3 + len(directive) + 11 bytes of text
    return {"model": "fake-ledger", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": f"hi [[ledger {directive}]]"}], **fields}


def test_it_bills_the_prompt_it_was_sent_and_the_output_it_wrote_within_the_limit():
    biller = Biller()
    status, _, answer = biller.answer(_body("id=a out=500 events=3", max_completion_tokens=120, n=2))
    events = _drain(answer)
    [bill] = biller.of("a")
    # "user" (4) + "hi [[ledger id=a out=500 events=3]]" (35) + 3 per message = 42; a third cached
    assert (status, bill.prompt, bill.cached) == (200, 42, 14)
    assert bill.completion == 240  # 120 per answer (the limit beat out=500), two answers
    assert events[-2]["usage"]["completion_tokens"] == 240 and events[-1] == "[DONE]"
    assert sum(1 for e in events if e != "[DONE]" and e["choices"] and e["choices"][0]["delta"]) == 6


def test_a_cut_stream_is_billed_in_full_and_an_error_status_not_at_all():
    biller = Biller()
    _, _, answer = biller.answer(_body("id=b out=40 cut=1 usage=full"))
    with pytest.raises(RuntimeError):
        _drain(answer)
    [bill] = biller.of("b")
    assert bill.cut and bill.completion == 40
    status, _, _ = biller.answer(_body("id=c first=500"))
    status_again, _, _ = biller.answer(_body("id=c first=500 out=7"))
    first, second = biller.of("c")
    assert (status, first.completion, first.prompt) == (500, 0, 0)
    assert (status_again, second.attempt, second.completion) == (200, 2, 7)


def test_usage_only_in_total_tokens_hides_the_reasoning_from_completion_tokens():
    biller = Biller()
    _, _, answer = biller.answer(_body("id=d out=100 kind=reasoning usage=total"))
    usage = _drain(answer)[-2]["usage"]
    [bill] = biller.of("d")
    assert usage["completion_tokens"] == 50 and usage["total_tokens"] - usage["prompt_tokens"] == 100 == bill.completion
