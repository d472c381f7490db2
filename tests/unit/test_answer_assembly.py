"""A whole answer put back together from a provider's stream (onysoft.answer_assembly): the gateway always asks for
a stream (its usage comes with it), and a client that asked for none gets what the API would have answered whole.
Event sequences in the shapes OpenAI and Anthropic document, tool calls and reasoning included."""

from onysoft.answer_assembly import ChatAnswer, MessagesAnswer, ResponsesAnswer


def test_chat_chunks_become_one_completion_with_tool_calls_reasoning_and_logprobs():
    answer = ChatAnswer()
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m",
            "system_fingerprint": "fp"}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "reasoning_content": "Let me "}}]},
        {**base, "choices": [{"index": 0, "delta": {"reasoning_content": "think."}}]},
        {**base, "choices": [{"index": 0, "delta": {"content": "Calling"},
                              "logprobs": {"content": [{"token": "Calling", "logprob": -0.1}]}}]},
        {**base, "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_", "arguments": "{\"ci"}}]}}]},
        {**base, "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"name": "weather", "arguments": "ty\": \"Ankara\"}"}}]}}]},
        {**base, "choices": [{"index": 1, "delta": {"role": "assistant", "content": "second"}}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"},
                             {"index": 1, "delta": {}, "finish_reason": "stop"}]},
        {**base, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}},
        "not a chunk", {"choices": ["not a choice"]},  # hostile input is skipped, never trusted
    ]
    for chunk in chunks:
        answer.feed(chunk)
    assert answer.answer() == {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "m", "system_fingerprint": "fp",
        "choices": [
            {"index": 0, "finish_reason": "tool_calls",
             "logprobs": {"content": [{"token": "Calling", "logprob": -0.1}]},
             "message": {"role": "assistant", "reasoning_content": "Let me think.", "content": "Calling",
                         "tool_calls": [{"id": "call_1", "type": "function",
                                         "function": {"name": "get_weather", "arguments": "{\"city\": \"Ankara\"}"}}]}},
            {"index": 1, "finish_reason": "stop", "logprobs": None,
             "message": {"role": "assistant", "content": "second"}},
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21},
    }


def test_a_responses_stream_answers_with_its_final_response():
    answer = ResponsesAnswer()
    final = {"id": "resp_1", "object": "response", "status": "completed", "output": [],
             "usage": {"input_tokens": 3, "output_tokens": 4}}
    for event in ({"type": "response.created", "response": {"id": "resp_1", "status": "in_progress"}},
                  {"type": "response.output_text.delta", "delta": "hi"},
                  {"type": "response.completed", "response": final}):
        answer.feed(event)
    assert answer.answer() == final
    assert ResponsesAnswer().answer() is None  # a stream that never completed is no answer


def test_anthropic_events_become_one_message_with_thinking_text_and_tool_input():
    answer = MessagesAnswer()
    events = [
        {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "c",
                                              "content": [], "stop_reason": None,
                                              "usage": {"input_tokens": 10, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Hmm."}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "sig"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Let me check."}},
        {"type": "content_block_start", "index": 2,
         "content_block": {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"ci"}},
        {"type": "content_block_delta", "index": 2,
         "delta": {"type": "input_json_delta", "partial_json": "ty\": \"Izmir\"}"}},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
         "usage": {"output_tokens": 40}},
        {"type": "message_stop"},
    ]
    for event in events:
        answer.feed(event)
    assert answer.answer() == {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "c", "stop_reason": "tool_use",
        "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 40},
        "content": [{"type": "thinking", "thinking": "Hmm.", "signature": "sig"},
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Izmir"}}],
    }
