"""Cost per million requests from the measured counts and durations, at published on-demand prices.

Prices are for us-east-1 (US East, N. Virginia), the region whose prices could be confirmed from public
sources when this was written; samconfig.toml deploys to eu-central-1, whose prices are a little higher
(see PRICE_NOTES). No free tier, no data transfer, no CloudWatch Logs.
"""

from __future__ import annotations

PRICES_TAKEN = "2026-11-27"
REGION = "us-east-1"
PRICES = {
    "lambda_arm64_gb_second": 0.0000133334,  # USD per GB-s, arm64
    "lambda_request": 0.20 / 1e6,  # USD per request
    "apigw_rest_request": 3.50 / 1e6,  # REST API, first 333 million a month
    "ddb_wru": 0.625 / 1e6,  # on-demand write request unit (after the Nov 2024 price cut)
    "ddb_rru": 0.125 / 1e6,  # on-demand read request unit
}
PRICE_NOTES = [
    "Lambda arm64: $0.0000133334 per GB-second and $0.20 per million requests (aws.amazon.com/lambda/pricing; "
    "the arm64 rate as listed in artillery's price table `lib/platform/aws-lambda/prices.js`, 1333340e-11 USD "
    "per GB-s; the live AWS page renders its numbers client-side, so the docs corpus could not show them).",
    "API Gateway REST API: $3.50 per million requests for the first 333 million a month "
    "(aws.amazon.com/api-gateway/pricing, us-east-1, as quoted by the api-evangelist price transcription; "
    "the AWS page itself renders prices client-side). Requests refused by the authorizer (401) are not billed.",
    "DynamoDB on-demand: $0.625 per million write request units, $0.125 per million read request units "
    "(us-east-1, after the 50% cut of 1 Nov 2024; aws.amazon.com/dynamodb/pricing/on-demand, figures as quoted "
    "by airbyte.com's DynamoDB pricing guide of 21 Jul 2025). Not confirmed for eu-central-1: Frankfurt's "
    "request prices are higher than N. Virginia's (typically ~20% for DynamoDB, ~6% for API Gateway); "
    "Lambda's arm64 rate is the same there.",
]


def _memory_gb(logical_id: str) -> float:
    """The function's MemorySize in template.yaml (its own, else the Globals'), in GB."""
    from onysoft_tools import template

    tpl = template.load_template()
    own = (tpl["Resources"][logical_id].get("Properties") or {}).get("MemorySize")
    return int(own or tpl["Globals"]["Function"]["MemorySize"]) / 1024


PROXY_MEMORY_GB = _memory_gb("ProxyFunction")
AUTHORIZER_MEMORY_GB = _memory_gb("AuthorizerFunction")


def ddb_usd(rru: float, wru: float) -> float:
    return rru * PRICES["ddb_rru"] + wru * PRICES["ddb_wru"]


def lambda_usd(memory_gb: float, duration_ms: float) -> float:
    billed_ms = max(1.0, float(int(duration_ms + 0.999)))  # billed per 1 ms, rounded up
    return PRICES["lambda_request"] + memory_gb * billed_ms / 1000 * PRICES["lambda_arm64_gb_second"]


def per_million(kinds: dict, proxy_ms: float, upstream_ms_cases: list[float], authorizer: dict) -> dict:
    """USD per million requests of each kind, split by service, for each assumed upstream time."""
    auth_miss_ddb = ddb_usd(authorizer["rru"], 0)
    auth_miss_lambda = lambda_usd(AUTHORIZER_MEMORY_GB, authorizer["ms"])
    out = {}
    for label, kind in kinds.items():
        rows = []
        for upstream_ms in upstream_ms_cases if kind["upstream_called"] else [0.0]:
            apigw = PRICES["apigw_rest_request"]
            proxy = lambda_usd(PROXY_MEMORY_GB, proxy_ms + upstream_ms)
            ddb = ddb_usd(kind["rru"], kind["wru"])
            cached = apigw + proxy + ddb
            rows.append({"upstream_ms": upstream_ms, "apigw": apigw * 1e6, "lambda": proxy * 1e6,
                         "ddb": ddb * 1e6, "total_cached": cached * 1e6,
                         "total_uncached": (cached + auth_miss_ddb + auth_miss_lambda) * 1e6})
        out[label] = rows
    return {"kinds": out, "authorizer_miss_usd_per_million": (auth_miss_ddb + auth_miss_lambda) * 1e6}
