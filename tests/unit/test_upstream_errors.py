"""What a client is told when the provider answers an error status (onysoft.upstream.error_from_status): nothing
about the platform's provider account ever reaches a tenant (issue 23, "nothing internal leaks")."""

import json

import httpx
import pytest

from onysoft import upstream
from onysoft.providers import get_provider

ORG = "org-Q7xWb3kLmN2pRt9v"
LEAKY = (f"Rate limit reached for gpt-4o-mini in organization {ORG} on tokens per min (TPM): Limit 200000. "
         "Please try again in 1.2s. Visit https://platform.openai.com/account/rate-limits to learn more.")


def _error(status: int, message: str, headers: dict | None = None):
    body = json.dumps({"error": {"message": message, "type": "x", "code": None}}).encode()
    return upstream.error_from_status(get_provider("openai"), status, body, httpx.Headers(headers or {}))


@pytest.mark.parametrize("status", [429, 500, 503])
def test_a_429_or_5xx_is_the_gateways_own_words_and_the_providers_text_goes_to_the_log(status, caplog):
    error = _error(status, LEAKY, {"retry-after": "2"})
    assert ORG not in error.message and "organization" not in error.message and "platform.openai" not in error.message
    assert (error.status, error.code) == ((429, "upstream_rate_limited") if status == 429 else (502, "upstream_error"))
    assert error.message.startswith("The openai provider")
    assert any(getattr(r, "provider_message", "") == LEAKY for r in caplog.records)  # the operator still sees it
    if status == 429:
        assert error.headers == {"retry-after": "2"}


def test_a_4xx_about_the_request_keeps_what_the_client_needs_without_the_platforms_identifiers():
    message = ("Invalid value for 'messages[0].role': 'robot' is not one of ['system', 'user', 'assistant']. "
               "(request id req_7f3a9c2e11d04b6b9a2e5d6c7b8a9f01, project proj_Ab12Cd34Ef56, key sk-proj-****Zx9q)")
    error = _error(400, message)
    assert error.status == 400 and error.code == "upstream_bad_request"
    assert "Invalid value for 'messages[0].role': 'robot' is not one of" in error.message
    for secret in ("req_7f3a9c2e11d04b6b9a2e5d6c7b8a9f01", "proj_Ab12Cd34Ef56", "sk-proj", "Zx9q"):
        assert secret not in error.message, error.message
    # The client's own identifiers are what it needs to fix the request: kept.
    error = _error(400, "The following tool_call_ids did not have response messages: call_Q1w2E3r4T5y6")
    assert error.message.endswith("call_Q1w2E3r4T5y6")


def test_a_4xx_about_the_platforms_account_says_nothing_of_it():
    error = _error(400, "Your credit balance is too low to access the API. Please go to Plans & Billing to "
                        f"upgrade or purchase credits. Organization {ORG}.")
    assert "credit" not in error.message.lower() and ORG not in error.message and "Billing" not in error.message
    assert error.message == "The openai provider rejected the request."
