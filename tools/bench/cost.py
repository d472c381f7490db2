"""Cost per million requests: every AWS charge a request causes, from template.yaml and the measured figures.

`make bench-cost` (`python -m tools.bench.cost`; `make bench` runs it after the sections it reads) takes:
- from template.yaml: each function's MemorySize and architecture, the authorizer's cache TTL, WAF on or off and
  its rules, the access log's format, log retention, the rollup's batching, the alarms, the managed-instances
  option's defaults (requests per execution environment, minimum environments, target CPU) and the
  TableCapacity=provisioned option's (which tables and indexes, the scaling bounds and target utilisation);
- from docs/BENCHMARKS.md as the bench last wrote it: the units a billed request uses (section 3, so a change
  there moves this table) and their split over the tables (section 3's item sizes), the authorizer's time, the
  proxy's CPU per request (right-sizing section);
- from the code: the rollup's chunk size and the totals items a record touches (onysoft.usage_rollup), and the
  bytes the proxy logs for one request (onysoft.telemetry run in a child process, as in Lambda);
and writes section 4 of docs/BENCHMARKS.md (between its COST markers) and docs/cost_per_million.png.
Published prices, us-east-1 (on-demand unless named otherwise), below with their sources.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "BENCHMARKS.md"
CHART = ROOT / "docs" / "cost_per_million.png"
MARK_BEGIN = "<!-- COST:BEGIN (tools/bench/cost.py) -->"
MARK_END = "<!-- COST:END -->"

PRICES_TAKEN = "2026-12-03"
REGION = "us-east-1"
HOURS_PER_MONTH = 730
PRICES = {
    # Lambda (aws.amazon.com/lambda/pricing): arm64 duration and requests; the arm64 GB-s rate as artillery's
    # price table lists it (lib/platform/aws-lambda/prices.js, 1333340e-11 USD).
    "lambda_arm64_gb_second": 0.0000133334,
    "lambda_request": 0.20 / 1e6,
    # API Gateway REST API, first 333 million a month (aws.amazon.com/api-gateway/pricing).
    "apigw_rest_request": 3.50 / 1e6,
    # DynamoDB on-demand after the 1 Nov 2024 cut (aws.amazon.com/dynamodb/pricing/on-demand).
    "ddb_wru": 0.625 / 1e6,
    "ddb_rru": 0.125 / 1e6,
    # DynamoDB provisioned capacity, standard table class (aws.amazon.com/dynamodb/pricing/provisioned): per
    # capacity unit and hour provisioned, used or not; the same figures as the dynamo-autoscale gem's price table
    # (lib/dynamo-autoscale/unit_cost.rb: $0.0065 an hour per 10 WCU, per 50 RCU).
    "ddb_wcu_hour": 0.00065,
    "ddb_rcu_hour": 0.00013,
    # CloudWatch (aws.amazon.com/cloudwatch/pricing): Logs Standard ingestion and storage; custom metrics (EMF
    # creates them) and standard alarms, per month.
    "logs_ingest_gb": 0.50,
    "logs_store_gb_month": 0.03,
    "metric_month": 0.30,
    "alarm_month": 0.10,
    # WAF (aws.amazon.com/waf/pricing): per web ACL and per rule a month, per request. The Amazon IP reputation
    # rule group is an AWS managed group without a subscription fee.
    "waf_acl_month": 5.00,
    "waf_rule_month": 1.00,
    "waf_request": 0.60 / 1e6,
    # Lambda Managed Instances (aws.amazon.com/lambda/pricing, "Lambda Managed Instances"; launch posts of Dec
    # 2025): the EC2 instance's on-demand price + a 15% management fee on it, + $0.20 per million requests.
    # c7g.large (Graviton3, 2 vCPU, 4 GiB: 2 GiB per vCPU, the ratio the proxy uses) on-demand, Linux.
    "ec2_c7g_large_hour": 0.0725,
    "lmi_management_fee": 0.15,
    "lmi_request": 0.20 / 1e6,
    # VPC egress for managed instances (aws.amazon.com/vpc/pricing): NAT gateway hour and GB processed, its
    # public IPv4 address hour. A DynamoDB gateway endpoint is free.
    "nat_hour": 0.045,
    # Secrets Manager (aws.amazon.com/secrets-manager/pricing): per secret a month, per 10,000 API calls.
    "secret_call": 0.05 / 10_000,
    "nat_gb": 0.045,
    "ipv4_hour": 0.005,
}
PRICE_NOTES = [
    "Lambda arm64: $0.0000133334 per GB-second, $0.20 per million requests.",
    "API Gateway REST API: $3.50 per million requests (first 333 million a month); requests refused by the "
    "authorizer (401) are not billed.",
    "DynamoDB on-demand: $0.625 per million write request units, $0.125 per million read request units.",
    "DynamoDB provisioned (TableCapacity=provisioned): $0.00065 per write capacity unit-hour, $0.00013 per read "
    "capacity unit-hour, provisioned whether used or not.",
    "CloudWatch: Logs ingestion $0.50 per GB, storage $0.03 per GB-month (counted here uncompressed: an upper "
    "bound); custom metrics $0.30 a month each, standard alarms $0.10 a month each.",
    "WAF: $5 per web ACL and $1 per rule a month, $0.60 per million requests.",
    "Lambda Managed Instances: the instance's EC2 on-demand price plus a 15% management fee, plus $0.20 per "
    "million requests; c7g.large (2 vCPU, 4 GiB) $0.0725 an hour.",
    "NAT gateway: $0.045 an hour and $0.045 per GB processed, plus $0.005 an hour for its public IPv4 address.",
    "Sources: the AWS pricing pages named in tools/bench/cost.py (they render their figures client-side, so these "
    "are the published figures as transcribed there); eu-central-1 (samconfig.toml) is a few percent to ~20% "
    "higher for API Gateway and DynamoDB.",
]

PROVIDER_SECONDS = (0.0, 1.0, 3.0, 10.0, 30.0)
RATES = (50, 200, 1000)  # steady requests a second, for managed instances
GOALS = {3.0: 12.0, 30.0: 15.0}  # issue 25: $ per million on managed instances at 200 req/s
GOAL_RATE = 200

# Assumptions, each stated in the section this writes.
FULL_CPU_MB = 1769  # Lambda gives one vCPU at 1769 MB, proportionally less below
DYNAMO_ROUND_TRIP_MS = 6.0  # one in-region DynamoDB call (single-digit ms), as the right-sizing section assumes
PROXY_ROUND_TRIPS_ON_PATH = 3  # the key's GetItem, the hold, the settle (section 3; the counters' read overlaps)
AUTHORIZER_ROUND_TRIPS = 2
REQUESTS_PER_KEY_PER_SECOND = 1.0  # one key's steady rate: it sets how often its cached authorization expires
USAGE_RECORDS_PER_REQUEST = 2  # the usage record's stream records: the hold's Put, the settle's Update
ROLLUP_MS_PER_CHUNK = 2 * DYNAMO_ROUND_TRIP_MS  # the markers' read, the chunk's transaction
PLATFORM_LOG_BYTES = 260  # Lambda's START, END and REPORT lines of one invocation (text format)
MANAGED_CPU_HEADROOM = 1.0  # the target utilisation is the template's ProxyTargetCpuUtilization
MB_PER_REQUEST_IN_FLIGHT = 1.0  # budget per open request on a managed environment (measured RSS: well under)
RUNTIME_MB = 100  # the runtime, the adapter and the app on a managed environment, before any request
INSTANCE_VCPUS = 2  # c7g.large: two 1-vCPU execution environments
MIN_INSTANCES = 3  # Lambda spreads managed instances over three AZs by default
NAT_GATEWAYS = 3  # one per AZ (a single NAT is cheaper and a single point of failure)
PROVIDER_BYTES_PER_REQUEST = 16 * 1024  # request + response through the NAT (a chat call of a few KB each way)
CUSTOM_METRICS = 16  # EMF metric × dimension sets: telemetry.py's list with two currencies, four hold reasons
PROVIDER_SECRETS = 4  # provider keys in Secrets Manager, $0.40 a month each
SECRET_MONTH = 0.40
# TableCapacity=provisioned. Section 3's item sizes name the table of each write (the bench's short names); the
# index entries of a table's writes go to its indexes in these shares (the hold's usage Put adds an `open_holds`
# and a `by_key_shard` entry, the settle removes the `open_holds` one); a table's other indexes take no write on a
# request and sit at the scaling minimum. Reads: the key's GetItem (1 RRU, ApiKeys), the rest of section 3's
# reads are the rate counters' BatchGetItem (RateLimits); an authorizer miss reads the key and the account.
SHORT_TABLE = {"keys": "ApiKeysTable", "accounts": "AccountsTable", "usage": "UsageTable",
               "limits": "RateLimitsTable", "rollups": "UsageRollupsTable", "catalog": "CatalogTable"}
INDEX_WRITE_SHARES = {"UsageTable": {"open_holds": 2, "by_key_shard": 1}}
KEY_READ_RRU = 1.0


# ---------------------------------------------------------------------------------------------- inputs


def _template() -> dict:
    sys.path.insert(0, str(ROOT / "tools"))
    from onysoft_tools import template

    return template.load_template(ROOT / "template.yaml")


def template_facts(tpl: dict | None = None) -> dict:
    """What the template says a request runs on."""
    tpl = tpl or _template()
    res, params = tpl["Resources"], tpl["Parameters"]
    glob = tpl["Globals"]["Function"]

    def memory_mb(logical_id: str) -> int:
        return int(res[logical_id]["Properties"].get("MemorySize") or glob["MemorySize"])

    def arch(logical_id: str) -> str:
        return (res[logical_id]["Properties"].get("Architectures") or glob["Architectures"])[0]

    mapping = res["RollupStreamMapping"]["Properties"]
    acl = res.get("GatewayWebAcl", {}).get("Properties", {})
    access_format = res["GatewayApi"]["Properties"]["AccessLogSetting"]["Format"]
    return {
        "proxy_mb": memory_mb("ProxyFunction"), "authorizer_mb": memory_mb("AuthorizerFunction"),
        "rollup_mb": memory_mb("RollupFunction"),
        "archs": {arch(f) for f in ("ProxyFunction", "AuthorizerFunction", "RollupFunction")},
        "authorizer_ttl_s": int(params["AuthorizerTtlSeconds"]["Default"]),
        "waf": params["EnableWaf"]["Default"] == "true", "waf_rules": len(acl.get("Rules") or []),
        "log_retention_days": int(params["LogRetentionDays"]["Default"]),
        "access_log_format": access_format,
        "rollup_batch": int(mapping["BatchSize"]), "rollup_window_s": float(mapping["MaximumBatchingWindowInSeconds"]),
        "alarms": sum(1 for r in res.values() if r["Type"] == "AWS::CloudWatch::Alarm"),
        "tables": _provisioned_tables(res, params),
        "managed": {
            "per_env": int(params["ProxyConcurrencyPerEnvironment"]["Default"]),
            "min_envs": int(params["ProxyMinExecutionEnvironments"]["Default"]),
            "target_cpu": float(params["ProxyTargetCpuUtilization"]["Default"]) / 100,
            "max_per_env": int(params["ProxyConcurrencyPerEnvironment"]["MaxValue"]),
        },
    }


def _provisioned_tables(res: dict, params: dict) -> dict:
    """The tables TableCapacity=provisioned puts on provisioned capacity (a BillingMode that is an `!If`), each
    with its indexes, and the scaling parameters' defaults."""
    tables = {name: [g["IndexName"] for g in r["Properties"].get("GlobalSecondaryIndexes", [])]
              for name, r in res.items()
              if r["Type"] == "AWS::DynamoDB::Table" and isinstance(r["Properties"].get("BillingMode"), dict)}
    return {"indexes": tables, "target": float(params["TableTargetUtilization"]["Default"]) / 100,
            **{f"{bound}_{unit}": int(params[f"Table{bound.title()}{name}Capacity"]["Default"])
               for bound in ("min", "max") for unit, name in (("w", "Write"), ("r", "Read"))}}


def measured_figures(doc: str | None = None) -> dict:
    """The bench's own figures as docs/BENCHMARKS.md holds them (section 3 and the right-sizing section)."""
    doc = doc if doc is not None else DOC.read_text(encoding="utf-8")
    chat = re.search(r"^\| chat, non-stream \|.*\| ([\d.]+) \| ([\d.]+) \|$", doc, re.M)
    auth = re.search(r"^\| authorizer, cache miss.*\| ([\d.]+) \| 0 \|$", doc, re.M)
    auth_ms = re.search(r"authorizer's \d+ GetItems \([\d.]+ RRU; ([\d.]+) ms", doc)
    cpu = re.search(r"^\| proxy alone: \d+ chat requests[^|]*\|[^|]*\| ([\d.]+) ms / request", doc, re.M)
    managed_cpu = re.search(r"^\| proxy alone as on managed instances[^|]*\|[^|]*\| ([\d.]+) ms / request", doc,
                            re.M)
    sizes = re.search(r"^Item sizes behind the units \(chat, non-stream(.*)$", doc, re.M)
    missing = [name for name, m in (("chat units", chat), ("authorizer units", auth), ("authorizer ms", auth_ms),
                                     ("proxy CPU", cpu), ("proxy CPU on managed instances", managed_cpu),
                                     ("item sizes", sizes)) if m is None]
    if missing:
        raise SystemExit(f"docs/BENCHMARKS.md lacks {', '.join(missing)}: run `make bench` (sections 3 and memory)")
    return {"rru": float(chat[1]), "wru": float(chat[2]), "authorizer_rru": float(auth[1]),
            "authorizer_ms": float(auth_ms[1]), "proxy_cpu_ms": float(cpu[1]),
            "managed_cpu_ms": float(managed_cpu[1]), "writes": _writes_by_table(sizes[1])}


def _writes_by_table(sizes: str) -> dict:
    """{table: [item units, index-entry units]} of one billed request, from section 3's item sizes line."""
    writes: dict = {}
    for short, units, idx in re.findall(r"(?:Put|Update|Delete|ConditionCheck) ([\w-]+) \d+ B \((\d+)\+(\d+) idx\)",
                                        sizes):
        table = writes.setdefault(SHORT_TABLE.get(short, short), [0.0, 0.0])
        table[0] += float(units)
        table[1] += float(idx)
    return writes


PROXY_LOG_CHILD = """
import time
from onysoft import telemetry
telemetry.emit_request(telemetry.RequestRecord(
    request_id="c6af9ac6-7b61-41e6-9a41-93e812345678", method="POST", path="/v1/chat/completions",
    key_id="key_01JDQ8Z3W5X7Y9A1B3C5D7E9F0", account_id="acct_01JDQ8Z3W5X7Y9A1B3C5D7E9F0", currency="USD",
    model="openai/gpt-4o-mini", status=200, upstream_ms=2950, charge_micros=123456, started=time.monotonic()))
"""

AUTHORIZER_LOG_CHILD = """
from onysoft import telemetry
telemetry.logger().info("key allowed", extra={"key_id": "key_01JDQ8Z3W5X7Y9A1B3C5D7E9F0", "key_type": "user"})
"""


def _child_stdout_bytes(code: str) -> int:
    env = {**os.environ, "AWS_LAMBDA_FUNCTION_NAME": "onysoft-proxy", "POWERTOOLS_SERVICE_NAME": "onysoft-gateway",
           "POWERTOOLS_METRICS_NAMESPACE": "Onysoft", "POWERTOOLS_LOG_LEVEL": "INFO",
           "PYTHONPATH": str(ROOT / "layers" / "core")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True, timeout=60)
    return len(out.stdout)


def access_log_bytes(fmt: str) -> int:
    """The access log line of one /v1 request: the template's format with typical values."""
    typical = {
        "requestId": "c6af9ac6-7b61-41e6-9a41-93e812345678", "requestTimeEpoch": "1796278005508",
        "httpMethod": "POST", "resourcePath": "/v1/chat/completions", "status": "200",
        "responseLatency": "3012", "integrationLatency": "3009", "authorizer.key_id": "key_01JDQ8Z3W5X7Y9A1B3C5D7E9F0",
        "authorizer.account_id": "acct_01JDQ8Z3W5X7Y9A1B3C5D7E9F0", "authorizer.key_type": "user",
        "error.responseType": "-", "responseLength": "1432", "identity.sourceIp": "203.0.113.17",
    }
    line = re.sub(r"\$context\.([\w.]+)", lambda m: typical.get(m[1], "-"), " ".join(fmt.split()))
    return len(line.encode()) + 1


def log_bytes(facts: dict) -> dict:
    return {"proxy": _child_stdout_bytes(PROXY_LOG_CHILD) + PLATFORM_LOG_BYTES,
            "authorizer": _child_stdout_bytes(AUTHORIZER_LOG_CHILD) + PLATFORM_LOG_BYTES,
            "access": access_log_bytes(facts["access_log_format"])}


def rollup_units(provider_s: float, facts: dict) -> dict:
    """The usage rollup's DynamoDB units and time per request, from onysoft.usage_rollup's design: per record in a
    chunk, one marker read (strongly consistent, 1 RRU) and one marker write (transactional, 2 WRU); per chunk of
    CHUNK records, its totals items (transactional ADDs, 2 WRU each); the tpm window's give-back is the settle's
    since issue 23 (section 3's units). A call shorter than the batching window has both of its records in one
    batch: one marker, one read."""
    sys.path.insert(0, str(ROOT / "layers" / "core"))
    from onysoft import usage_rollup

    records = 1 if provider_s < facts["rollup_window_s"] else USAGE_RECORDS_PER_REQUEST
    totals_items = len(usage_rollup.totals_keys("acct_x", usage_rollup.Counted(
        status="settled", day="2026-12-03", currency="USD", model="m", key_id="k", prompt_tokens=0,
        completion_tokens=0, charge_micros=0)))
    chunk = usage_rollup.CHUNK
    # One hot key fills a chunk with its own records, so a chunk writes each totals item once (the best case;
    # a chunk of 14 different keys writes 14 × totals_items: the worst, in the text).
    wru = records * 2 + records * totals_items * 2 / chunk
    return {"wru": wru, "rru": float(records), "records": records, "totals_items": totals_items, "chunk": chunk,
            "worst_wru": records * 2 + records * totals_items * 2,
            "ms": records * ROLLUP_MS_PER_CHUNK / chunk}


# ---------------------------------------------------------------------------------------------- the model


def _lambda_usd(memory_mb: float, billed_ms: float) -> float:
    return PRICES["lambda_request"] + memory_mb / 1024 * math.ceil(billed_ms) / 1000 * PRICES["lambda_arm64_gb_second"]


def _stretch(memory_mb: float) -> float:
    return max(1.0, FULL_CPU_MB / memory_mb)


def shared_per_request(provider_s: float, facts: dict, m: dict, logs: dict, *, miss_rate: float) -> dict:
    """USD per request for everything but the proxy's compute (the same in both compute modes)."""
    roll = rollup_units(provider_s, facts)
    auth_ms = AUTHORIZER_ROUND_TRIPS * DYNAMO_ROUND_TRIP_MS + m["authorizer_ms"] * _stretch(facts["authorizer_mb"])
    authorizer = miss_rate * (_lambda_usd(facts["authorizer_mb"], auth_ms) + m["authorizer_rru"] * PRICES["ddb_rru"])
    records_per_invocation = facts["rollup_batch"]  # full batches at the rates modelled (≥ 50 req/s)
    rollup_lambda = (roll["records"] / records_per_invocation * PRICES["lambda_request"]
                     + facts["rollup_mb"] / 1024 * roll["ms"] / 1000 * PRICES["lambda_arm64_gb_second"])
    log_gb = (logs["access"] + miss_rate * logs["authorizer"]) / 1e9
    log_usd_per_gb = PRICES["logs_ingest_gb"] + PRICES["logs_store_gb_month"] * facts["log_retention_days"] / 30
    return {
        "apigw": PRICES["apigw_rest_request"],
        "waf": PRICES["waf_request"] if facts["waf"] else 0.0,
        "authorizer": authorizer,
        "ddb": (m["wru"] + _last_used_wru()) * PRICES["ddb_wru"] + m["rru"] * PRICES["ddb_rru"],
        "rollup_ddb": roll["wru"] * PRICES["ddb_wru"] + roll["rru"] * PRICES["ddb_rru"],
        "rollup_lambda": rollup_lambda,
        "logs_shared": log_gb * log_usd_per_gb,
        "_log_usd_per_gb": log_usd_per_gb,
    }


def lambda_proxy(provider_s: float, facts: dict, m: dict, logs: dict) -> dict:
    billed_ms = (provider_s * 1000 + PROXY_ROUND_TRIPS_ON_PATH * DYNAMO_ROUND_TRIP_MS
                 + m["proxy_cpu_ms"] * _stretch(facts["proxy_mb"]))
    # One environment per request in flight, each re-reading its provider's key when its cache ages out.
    secrets = billed_ms / 1000 / _secret_max_age_s() * PRICES["secret_call"]
    return {"billed_ms": billed_ms, "proxy": _lambda_usd(facts["proxy_mb"], billed_ms), "secrets": secrets}


def _last_used_wru() -> float:
    """The key's `last_used_at` (1 WRU), written at most once per LAST_USED_EVERY per key: not in section 3's
    median, so added here at the assumed requests a second per key."""
    sys.path.insert(0, str(ROOT / "layers" / "core"))
    from onysoft import key_use

    return 1 / max(1.0, key_use.LAST_USED_EVERY.total_seconds() * REQUESTS_PER_KEY_PER_SECOND)


def _secret_max_age_s() -> float:
    sys.path.insert(0, str(ROOT / "layers" / "core"))
    from onysoft import providers

    return float(providers.SECRET_MAX_AGE)


def managed_proxy(provider_s: float, rate: float, facts: dict, m: dict) -> dict:
    """The proxy on managed instances at a steady `rate`: environments for the CPU (at the target utilisation)
    or for the requests in flight (per-environment concurrency), whichever needs more, never below the floor."""
    mi = facts["managed"]
    # Many requests in one process: its DynamoDB calls in the thread pool (template.managed.json), measured as such.
    in_flight_s = provider_s + PROXY_ROUND_TRIPS_ON_PATH * DYNAMO_ROUND_TRIP_MS / 1000 + m["managed_cpu_ms"] / 1000
    by_cpu = rate * m["managed_cpu_ms"] / 1000 / (mi["target_cpu"] * MANAGED_CPU_HEADROOM)
    by_concurrency = rate * in_flight_s / mi["per_env"]
    envs = max(mi["min_envs"], math.ceil(by_cpu), math.ceil(by_concurrency))
    instances = max(MIN_INSTANCES, math.ceil(envs / INSTANCE_VCPUS))
    compute_hour = instances * PRICES["ec2_c7g_large_hour"] * (1 + PRICES["lmi_management_fee"])
    nat_hour = NAT_GATEWAYS * (PRICES["nat_hour"] + PRICES["ipv4_hour"])
    per_hour = rate * 3600
    bound = ("the floor" if envs == mi["min_envs"] and max(by_cpu, by_concurrency) <= mi["min_envs"]
             else "CPU" if by_cpu >= by_concurrency else "concurrency")
    return {"envs": envs, "instances": instances, "bound": bound,
            "proxy": PRICES["lmi_request"] + compute_hour / per_hour
            + envs * 3600 / _secret_max_age_s() * PRICES["secret_call"] / per_hour,
            "nat": nat_hour / per_hour + PROVIDER_BYTES_PER_REQUEST / 1e9 * PRICES["nat_gb"],
            "fixed_hour": (MIN_INSTANCES * PRICES["ec2_c7g_large_hour"] * (1 + PRICES["lmi_management_fee"])
                           + nat_hour)}


def provisioned_tables(provider_s: float, rate: float, facts: dict, m: dict, *, miss_rate: float) -> dict:
    """TableCapacity=provisioned at a steady `rate`: each table's and each index's capacity is the units a second it
    uses over the target utilisation (what target tracking holds), rounded up, within the scaling bounds; billed
    by the hour whether used or not. A table a request writes that the option leaves on-demand stays per unit."""
    tb = facts["tables"]
    roll = rollup_units(provider_s, facts)
    things = [(table, index) for table, indexes in tb["indexes"].items() for index in (None, *indexes)]
    writes, reads = dict.fromkeys(things, 0.0), dict.fromkeys(things, 0.0)
    on_demand_wru = 0.0
    # Section 3's total, split over the tables as its item sizes line splits it.
    scale = m["wru"] / (sum(units + idx for units, idx in m["writes"].values()) or 1)
    for table, (units, idx) in m["writes"].items():
        if table not in tb["indexes"]:
            on_demand_wru += (units + idx) * scale
            continue
        writes[(table, None)] += units * scale
        shares = INDEX_WRITE_SHARES.get(table) or dict.fromkeys(tb["indexes"][table], 1)
        for index, share in shares.items():
            writes[(table, index)] += idx * scale * share / sum(shares.values())
    writes[("ApiKeysTable", None)] += _last_used_wru()
    writes[("UsageRollupsTable", None)] += roll["wru"]
    reads[("ApiKeysTable", None)] += min(KEY_READ_RRU, m["rru"]) + miss_rate * m["authorizer_rru"] / 2
    reads[("AccountsTable", None)] += miss_rate * m["authorizer_rru"] / 2
    reads[("RateLimitsTable", None)] += max(0.0, m["rru"] - KEY_READ_RRU)
    reads[("UsageRollupsTable", None)] += roll["rru"]

    def capacity(per_request: float, low: int, high: int) -> tuple[int, bool]:
        need = per_request * rate / tb["target"]
        return min(high, max(low, math.ceil(need))), need > high

    wcu = {k: capacity(u, tb["min_w"], tb["max_w"]) for k, u in writes.items()}
    rcu = {k: capacity(u, tb["min_r"], tb["max_r"]) for k, u in reads.items()}
    total_wcu, total_rcu = sum(c for c, _ in wcu.values()), sum(c for c, _ in rcu.values())
    hour = total_wcu * PRICES["ddb_wcu_hour"] + total_rcu * PRICES["ddb_rcu_hour"]
    return {"hour": hour, "per_request": hour / (rate * 3600) + on_demand_wru * PRICES["ddb_wru"],
            "wcu": total_wcu, "rcu": total_rcu, "things": len(things),
            "by_thing": {(f"{table} {index}" if index else table): (wcu[(table, index)][0], rcu[(table, index)][0])
                         for table, index in things},
            "wru_per_request": sum(writes.values()), "rru_per_request": sum(reads.values()),
            "over_max": sorted({f"{t}/{i}" if i else t for k, (_, over) in [*wcu.items(), *rcu.items()] if over
                                for t, i in [k]}),
            "floor_hour": len(things) * (tb["min_w"] * PRICES["ddb_wcu_hour"] + tb["min_r"] * PRICES["ddb_rcu_hour"])}


def fixed_month(facts: dict) -> dict:
    """What the stack costs a month whatever its traffic (both compute modes)."""
    return {
        "WAF web ACL and its rules": (PRICES["waf_acl_month"] + PRICES["waf_rule_month"] * facts["waf_rules"])
        if facts["waf"] else 0.0,
        f"{facts['alarms']} CloudWatch alarms": facts["alarms"] * PRICES["alarm_month"],
        f"~{CUSTOM_METRICS} custom metrics (EMF)": CUSTOM_METRICS * PRICES["metric_month"],
        f"{PROVIDER_SECRETS} provider secrets (Secrets Manager)": PROVIDER_SECRETS * SECRET_MONTH,
    }


def compute(facts: dict | None = None, m: dict | None = None, logs: dict | None = None) -> dict:
    facts = facts or template_facts()
    m = m or measured_figures()
    logs = logs or log_bytes(facts)
    miss_rate = 1 / max(1.0, facts["authorizer_ttl_s"] * REQUESTS_PER_KEY_PER_SECOND)
    fixed = fixed_month(facts)
    fixed_total = sum(fixed.values())
    lam_rows = []
    for t in PROVIDER_SECONDS:
        s = shared_per_request(t, facts, m, logs, miss_rate=miss_rate)
        p = lambda_proxy(t, facts, m, logs)
        logs_usd = s["logs_shared"] + logs["proxy"] / 1e9 * s["_log_usd_per_gb"]
        row = {"provider_s": t, "billed_ms": p["billed_ms"], "proxy": p["proxy"], "secrets": p["secrets"],
               "logs": logs_usd,
               **{k: v for k, v in s.items() if not k.startswith("_") and k != "logs_shared"}}
        row["total"] = sum(v for k, v in row.items() if k not in ("provider_s", "billed_ms"))
        every = shared_per_request(t, facts, m, logs, miss_rate=1.0)  # /v1/messages: an uncached authorizer
        row["anthropic_total"] = (row["total"] - s["authorizer"] - s["logs_shared"]
                                  + every["authorizer"] + every["logs_shared"])
        lam_rows.append(row)

    def total_at(mode: str, t: float, rate: float) -> dict:
        s = shared_per_request(t, facts, m, logs, miss_rate=miss_rate)
        logs_usd = s["logs_shared"] + logs["proxy"] / 1e9 * s["_log_usd_per_gb"]
        shared = sum(v for k, v in s.items() if not k.startswith("_") and k != "logs_shared") + logs_usd
        fixed_per_request = fixed_total / HOURS_PER_MONTH / (rate * 3600)
        if mode == "lambda":
            lp = lambda_proxy(t, facts, m, logs)
            proxy = lp["proxy"] + lp["secrets"]
            return {"total": shared + proxy + fixed_per_request, "proxy": proxy, "shared": shared,
                    "fixed": fixed_per_request}
        mp = managed_proxy(t, rate, facts, m)
        on_demand_tables = s["ddb"] + s["rollup_ddb"] + miss_rate * m["authorizer_rru"] * PRICES["ddb_rru"]
        if mode == "provisioned":  # managed instances + TableCapacity=provisioned
            pt = provisioned_tables(t, rate, facts, m, miss_rate=miss_rate)
            shared += pt["per_request"] - on_demand_tables
            return {"total": shared + mp["proxy"] + mp["nat"] + fixed_per_request, "shared": shared,
                    "fixed": fixed_per_request, "tables": pt["per_request"], **mp, "capacity": pt}
        return {"total": shared + mp["proxy"] + mp["nat"] + fixed_per_request, "shared": shared,
                "fixed": fixed_per_request, "tables": on_demand_tables, **mp}

    managed_rows = [{"rate": r, "provider_s": t, "lambda": total_at("lambda", t, r),
                     "managed": total_at("managed", t, r), "provisioned": total_at("provisioned", t, r)}
                    for t in (3.0, 30.0) for r in RATES]
    break_even = {}
    for t in (3.0, 30.0):
        rate = next((r / 10 for r in range(1, 100_001)
                     if total_at("managed", t, r / 10)["total"] <= total_at("lambda", t, r / 10)["total"]), None)
        break_even[t] = rate
    # Where the provisioned tables' floor (every table and index at its minimum) is paid back, on managed instances.
    tables_break_even = {t: next((r / 10 for r in range(1, 100_001) if total_at("provisioned", t, r / 10)["total"]
                                  <= total_at("managed", t, r / 10)["total"]), None) for t in (3.0, 30.0)}
    curves = {"lambda": [(t, total_at("lambda", t, GOAL_RATE)["total"] * 1e6) for t in _grid()]}
    for r in RATES:
        curves[f"managed, {r} req/s"] = [(t, total_at("managed", t, r)["total"] * 1e6) for t in _grid()]
    curves[f"managed + provisioned tables, {GOAL_RATE} req/s"] = [
        (t, total_at("provisioned", t, GOAL_RATE)["total"] * 1e6) for t in _grid()]
    sizing = _sizing(facts, m)
    return {"facts": facts, "measured": m, "logs": logs, "miss_rate": miss_rate, "lambda": lam_rows,
            "managed": managed_rows, "break_even": break_even, "tables_break_even": tables_break_even,
            "fixed": fixed, "fixed_total": fixed_total,
            "curves": curves, "sizing": sizing,
            "rollup": {t: rollup_units(t, facts) for t in (0.0, 3.0)}}


def _grid() -> list[float]:
    return [i / 4 for i in range(0, 121)]  # 0 to 30 s


def _sizing(facts: dict, m: dict) -> dict:
    """Requests one managed execution environment (1 vCPU, 2 GB) can hold, from the measured figures."""
    mi = facts["managed"]
    cpu_rate = mi["target_cpu"] * 1000 / m["managed_cpu_ms"]  # req/s one vCPU serves at the target utilisation
    by_memory = int((2048 - RUNTIME_MB) / MB_PER_REQUEST_IN_FLIGHT)
    return {"cpu_rate": cpu_rate, "in_flight_3s": cpu_rate * 3, "in_flight_30s": cpu_rate * 30,
            "by_memory": by_memory, "chosen": mi["per_env"], "api_max": mi["max_per_env"]}


# ---------------------------------------------------------------------------------------------- output


def _usd(value: float) -> str:
    return f"${value * 1e6:.2f}"


def render(r: dict) -> str:
    f, m, logs = r["facts"], r["measured"], r["logs"]
    lam = r["lambda"]
    sz = r["sizing"]
    roll_long, roll_short = r["rollup"][3.0], r["rollup"][0.0]
    lines = [
        MARK_BEGIN,
        "## 4. Cost per million requests",
        "",
        "Written by `make bench-cost` (`tools/bench/cost.py`; part of `make bench`) from template.yaml as it is, "
        "the units and times the bench measured (sections 3 and right-sizing) and the code; chart: "
        "`docs/cost_per_million.png`. "
        f"Region **{REGION}**, on-demand prices (unless named otherwise) as published on {PRICES_TAKEN}:",
        "",
        *[f"- {note}" for note in PRICE_NOTES],
        "",
        "### On-demand Lambda (ProxyCompute=lambda, the default)",
        "",
        f"A billed chat request, USD per million, by the time the provider takes. Proxy **{f['proxy_mb']} MB** "
        f"{'/'.join(sorted(f['archs']))}: billed for the provider's time + {PROXY_ROUND_TRIPS_ON_PATH} DynamoDB "
        f"round trips on its path × {DYNAMO_ROUND_TRIP_MS:g} ms (assumed in-region) + its measured CPU "
        f"({m['proxy_cpu_ms']:g} ms a request, right-sizing section) stretched ×{_stretch(f['proxy_mb']):.2f} at "
        f"{f['proxy_mb']} MB (one vCPU at {FULL_CPU_MB} MB). Authorizer ({f['authorizer_mb']} MB): a cache miss "
        f"({m['authorizer_ms']:g} ms measured against moto, stretched, + 2 GetItems; {m['authorizer_rru']:g} RRU) "
        f"once per key per {f['authorizer_ttl_s']} s — at {REQUESTS_PER_KEY_PER_SECOND:g} request a second per key, "
        f"1 request in {1 / r['miss_rate']:.0f}. DynamoDB on the request's path: **{m['wru']:g} WRU + "
        f"{m['rru']:g} RRU** (section 3's chat row, as the bench last measured it) + the key's `last_used_at` "
        f"({_last_used_wru():.3g} WRU a request at that rate: written at most once a minute per key, "
        f"LAST_USED_EVERY). The usage rollup: "
        f"{roll_long['wru']:.2f} WRU + {roll_long['rru']:g} RRU a request when its two stream records land in "
        f"different batches (calls ≥ the {f['rollup_window_s']:g} s batching window), {roll_short['wru']:.2f} WRU + "
        f"{roll_short['rru']:g} RRU when they share one (see below), plus its invocations ({f['rollup_batch']} "
        f"records each, {f['rollup_mb']} MB). CloudWatch Logs: the access log line ({logs['access']} B, the "
        f"template's format with typical values), the proxy's log line and EMF metric documents and Lambda's "
        f"START/END/REPORT lines ({logs['proxy']} B: `onysoft.telemetry.emit_request` run as in Lambda, measured "
        f"by this tool), the authorizer's on a miss ({logs['authorizer']} B); ingestion + {f['log_retention_days']} "
        f"days' storage. WAF: {'on (EnableWaf default)' if f['waf'] else 'off'}. Provider keys: each execution "
        f"environment re-reads its provider's secret when its {_secret_max_age_s():.0f} s cache ages out, and "
        "on-demand Lambda runs one environment per request in flight.",
        "",
        "| provider time | Lambda billed | API Gateway | WAF | proxy Lambda | provider keys (Secrets Manager) | "
        "authorizer (misses) | DynamoDB "
        "(request) | DynamoDB (rollup) | rollup Lambda | CloudWatch Logs | **total** | /v1/messages (authorizer "
        "every request) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in lam:
        lines.append(
            f"| {row['provider_s']:g} s | {row['billed_ms']:,.0f} ms | {_usd(row['apigw'])} | {_usd(row['waf'])} | "
            f"{_usd(row['proxy'])} | {_usd(row['secrets'])} | {_usd(row['authorizer'])} | {_usd(row['ddb'])} | "
            f"{_usd(row['rollup_ddb'])} | "
            f"{_usd(row['rollup_lambda'])} | {_usd(row['logs'])} | **{_usd(row['total'])}** | "
            f"{_usd(row['anthropic_total'])} |")
    per_second = f["proxy_mb"] / 1024 * PRICES["lambda_arm64_gb_second"]
    fixed_lines = ", ".join(f"{name} ${usd:.2f}" for name, usd in r["fixed"].items())
    lines += [
        "",
        f"Each second of provider time adds **${per_second * 1e6:.2f} per million** (the proxy's "
        f"{f['proxy_mb']} MB waiting); at 0 s the floor is API Gateway and DynamoDB. Per month whatever the traffic "
        f"(both modes): {fixed_lines}: **${r['fixed_total']:.2f}** (in the totals below at their request rate, "
        "not in the table above). Not counted: data transfer out to clients, cold starts (INIT is billed like "
        "duration; rare at a steady rate), the dashboard, sweeper and key-expiry functions (a few thousand "
        "invocations a day), the free tier.",
        "",
        f"The rollup's units are modelled from `onysoft.usage_rollup`, not measured: per usage record in a chunk, "
        f"one marker read (1 RRU, strongly consistent) and one transactional marker write (2 WRU); per chunk of "
        f"{roll_long['chunk']} records, each of its {roll_long['totals_items']} totals items once (2 WRU) when one "
        f"hot key fills the chunk (the tpm window's give-back is the settle's, in section 3's units). When every "
        f"record in a chunk is a different "
        f"key the totals are not folded: {roll_long['worst_wru']:.0f} WRU a request instead of "
        f"{roll_long['wru']:.2f} (+{_usd((roll_long['worst_wru'] - roll_long['wru']) * PRICES['ddb_wru'])} per "
        "million).",
        "",
        "### Managed instances (ProxyCompute=managed-instances)",
        "",
        f"The proxy on Lambda Managed Instances: execution environments of 1 vCPU and 2 GB (c7g.large instances, "
        f"two environments each, at least {MIN_INSTANCES} instances over three AZs), each serving up to "
        f"**{f['managed']['per_env']}** requests at once (ProxyConcurrencyPerEnvironment), scaled to hold "
        f"{f['managed']['target_cpu']:.0%} CPU; $0.20 per million requests; the VPC's egress to the providers "
        f"through {NAT_GATEWAYS} NAT gateways ({PROVIDER_BYTES_PER_REQUEST // 1024} KB a request through them; "
        "DynamoDB through a free gateway endpoint). Everything else as above, and the monthly costs spread over "
        "the requests. USD per million requests:",
        "",
        "| provider time | req/s | on-demand Lambda | managed instances (on-demand tables, the default) | "
        "managed instances + provisioned tables | of which the proxy's compute | NAT | environments (bound by) | "
        "instances |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for row in r["managed"]:
        mg = row["managed"]
        lines.append(
            f"| {row['provider_s']:g} s | {row['rate']:,} | {_usd(row['lambda']['total'])} | "
            f"**{_usd(mg['total'])}** | **{_usd(row['provisioned']['total'])}** | {_usd(mg['proxy'])} | "
            f"{_usd(mg['nat'])} | {mg['envs']} ({mg['bound']}) | {mg['instances']} |")
    be, tbe = r["break_even"], r["tables_break_even"]
    floor_hour = managed_proxy(3.0, 1.0, f, m)["fixed_hour"]
    at_goal = next(x for x in r["managed"] if x["provider_s"] == 3.0 and x["rate"] == GOAL_RATE)
    cap = at_goal["provisioned"]["capacity"]
    unit_break_even = PRICES["ddb_wcu_hour"] / 3600 / PRICES["ddb_wru"]
    lines += [
        "",
        f"**Break-even**: managed instances cost less than on-demand Lambda above **{be[3.0]:g} req/s** for 3 s "
        f"calls and above **{be[30.0]:g} req/s** for 30 s calls (steady rates). Below that the floor dominates: "
        f"{MIN_INSTANCES} instances and {NAT_GATEWAYS} NAT gateways, ${floor_hour:.3f} an hour "
        f"(${floor_hour * HOURS_PER_MONTH:,.0f} a month) with no traffic at all; on-demand Lambda costs nothing "
        "idle. **Provisioned tables** (TableCapacity=provisioned, below) lower the per-request part and add little "
        f"to the floor: {cap['things']} tables and indexes at their minimum, ${cap['floor_hour']:.3f} an "
        f"hour (${cap['floor_hour'] * HOURS_PER_MONTH:,.0f} a month), paid back against on-demand tables above "
        f"**{tbe[3.0]:g} req/s**; a provisioned unit costs less than an on-demand one while it is on average more "
        f"than {unit_break_even:.0%} used (reads and writes alike), and auto scaling holds "
        f"{f['tables']['target']:.0%}. They take DynamoDB from {_usd(at_goal['managed']['tables'])} to "
        f"{_usd(at_goal['provisioned']['tables'])} per million at {GOAL_RATE} req/s.",
        "",
    ]
    goal_lines, goal_gaps = [], []
    for t, goal in GOALS.items():
        row = next(x for x in r["managed"] if x["provider_s"] == t and x["rate"] == GOAL_RATE)
        got = row["managed"]["total"] * 1e6
        goal_gaps.append((t, goal, got))
        goal_lines.append(f"{t:g} s: **${got:.2f}** against ≤ ${goal:g} — {'met' if got <= goal else 'NOT met'}")
    s0 = lam[0]
    floor_usd = s0["apigw"] + s0["waf"] + s0["ddb"] + s0["rollup_ddb"]
    lines += [
        f"**Goal (issue 25), managed instances at {GOAL_RATE} req/s, everything included, on-demand tables (the "
        "default)**: "
        + "; ".join(goal_lines) + ". "
        f"The proxy's compute is no longer what a request costs: API Gateway, WAF and DynamoDB (request path and "
        f"rollup) alone are {_usd(floor_usd)} per million whatever the compute, with DynamoDB's "
        f"{m['wru'] + _last_used_wru():g} + {roll_long['wru']:.1f} write units the largest part "
        f"({_usd((m['wru'] + _last_used_wru() + roll_long['wru']) * PRICES['ddb_wru'])}). "
        "What would close the gap: provisioned tables at a steady rate (TableCapacity=provisioned, below), fewer "
        "write units (the rollup's per-record markers: a per-shard checkpoint, docs/SCALE.md section 4; the hold's and "
        "the settle's transactional writes) or an HTTP API in front ($1.00 per million instead of $3.50, but no "
        "response streaming and a 30 s limit: DESIGN.md)."
        + "".join(f" At {t:g} s the goal needs {(got - goal) / 1e6 / PRICES['ddb_wru']:.1f} fewer write units a "
                  "request." for t, goal, got in goal_gaps if got > goal),
        "",
        f"**Requests per execution environment** (the template's ProxyConcurrencyPerEnvironment = {sz['chosen']}), "
        f"from the measurements: one vCPU serves {sz['cpu_rate']:.0f} requests a second at the "
        f"{f['managed']['target_cpu']:.0%} CPU target ({m['managed_cpu_ms']:g} ms of CPU each, the DynamoDB calls "
        "in the thread pool as there), so it needs "
        f"{sz['in_flight_3s']:.0f} requests in flight for 3 s calls and {sz['in_flight_30s']:,.0f} for 30 s calls "
        f"to use that CPU; memory allows {sz['by_memory']:,} at a budget of {MB_PER_REQUEST_IN_FLIGHT:g} MB per open "
        f"request (the proxy's measured RSS grows far less: right-sizing section) after {RUNTIME_MB} MB for the "
        f"runtime, adapter and app; Lambda allows {sz['api_max']:,}. {sz['chosen']:,} keeps 3 s calls CPU-bound "
        "and makes 30 s calls concurrency-bound (the table's *bound by*) with half the memory spare for a large "
        "request body. One event loop holding that many sockets is what issue 25's concurrency test checks at a "
        "smaller scale; lower the parameter if it shows otherwise.",
        "",
        *_render_provisioned(r),
        "![Cost per million requests against provider time](cost_per_million.png)",
        "",
        MARK_END,
    ]
    return "\n".join(lines) + "\n"


def _target_meeting(row: dict, goal: float, r: dict) -> int | None:
    """The lowest TableTargetUtilization (whole percent, up to AWS's 90) at which `row` meets `goal`."""
    for percent in range(int(r["facts"]["tables"]["target"] * 100) + 1, 91):
        facts = {**r["facts"], "tables": {**r["facts"]["tables"], "target": percent / 100}}
        tables = provisioned_tables(row["provider_s"], row["rate"], facts, r["measured"], miss_rate=r["miss_rate"])
        if (row["managed"]["total"] - row["managed"]["tables"] + tables["per_request"]) * 1e6 <= goal:
            return percent
    return None


def _render_provisioned(r: dict) -> list[str]:
    f, m = r["facts"], r["measured"]
    tb = f["tables"]
    at_goal = next(x for x in r["managed"] if x["provider_s"] == 3.0 and x["rate"] == GOAL_RATE)["provisioned"]
    cap = at_goal["capacity"]
    split = ", ".join(f"{table.removesuffix('Table')} {units + idx:g}" for table, (units, idx) in m["writes"].items())
    lines = [
        "### Managed instances + provisioned tables (TableCapacity=provisioned)",
        "",
        f"The tables a billed request writes ({', '.join(t.removesuffix('Table') for t in tb['indexes'])}) and "
        f"their indexes, {cap['things']} in all, on provisioned capacity, each scaled by Application Auto Scaling "
        f"to hold {tb['target']:.0%} utilisation (TableTargetUtilization) between {tb['min_w']} and "
        f"{tb['max_w']:,} write units and {tb['min_r']} and {tb['max_r']:,} read units (TableMin/Max…Capacity); "
        "the catalog stays on-demand (no write on a request). Modelled at a steady rate: each table's and index's "
        f"units a second over the target, rounded up, never below the minimum, billed by the hour. Units: section "
        f"3's {m['wru']:g} WRU split over the tables as its item sizes show ({split}; a table's index entries to its "
        "indexes: `open_holds` 2, `by_key_shard` 1), the key's `last_used_at` (ApiKeys), the rollup's (UsageRollups); "
        f"reads: the key's (ApiKeys, {KEY_READ_RRU:g}), the rate counters' (RateLimits), the authorizer's misses "
        "(ApiKeys, Accounts), the rollup's markers (UsageRollups). USD per million requests, everything else as "
        "in the table above:",
        "",
        "| provider time | req/s | managed, on-demand tables | managed, provisioned tables | DynamoDB on-demand | "
        "DynamoDB provisioned | write units provisioned | read units provisioned |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["managed"]:
        mg, pv = row["managed"], row["provisioned"]
        lines.append(
            f"| {row['provider_s']:g} s | {row['rate']:,} | {_usd(mg['total'])} | **{_usd(pv['total'])}** | "
            f"{_usd(mg['tables'])} | {_usd(pv['tables'])} | {pv['capacity']['wcu']:,} | {pv['capacity']['rcu']:,} |")
    over = sorted({name for row in r["managed"] for name in row["provisioned"]["capacity"]["over_max"]})
    goal_lines, short = [], []
    for t, goal in GOALS.items():
        row = next(x for x in r["managed"] if x["provider_s"] == t and x["rate"] == GOAL_RATE)
        got = row["provisioned"]["total"] * 1e6
        goal_lines.append(f"{t:g} s: **${got:.2f}** against ≤ ${goal:g} — {'met' if got <= goal else 'NOT met'}")
        if got > goal:
            per_wru = PRICES["ddb_wcu_hour"] / 3600 / tb["target"]  # a write unit a request, provisioned, at target
            short.append(f" At {t:g} s it needs {(got - goal) / 1e6 / per_wru:.1f} fewer write units a request")
            target = _target_meeting(row, goal, r)
            short.append(f", or a TableTargetUtilization of {target} (less headroom for a rise)." if target
                         else ".")
    biggest = sorted(cap["by_thing"].items(), key=lambda kv: -kv[1][0])[:6]
    lines += [
        "",
        f"**Goal (issue 25) with provisioned tables, managed instances at {GOAL_RATE} req/s, everything included**: "
        + "; ".join(goal_lines) + "." + "".join(short)
        + (f" Above the maximum at these rates (throttled): {', '.join(over)}." if over else "")
        + f" At {GOAL_RATE} req/s the largest capacities (write, read units): "
        + ", ".join(f"{name} {w:,}/{rd:,}" for name, (w, rd) in biggest) + ".",
        "",
        "**Caveats.** Auto scaling follows a rise, it does not lead it: it adds capacity once utilisation has been "
        "above the target for about 2 minutes (and removes it after about 15 minutes well below); DynamoDB's burst "
        "capacity (unused capacity of the last 5 minutes) takes a short spike, and the target's headroom takes a "
        f"rise of {1 / tb['target'] - 1:.0%} at once; anything more is throttled until capacity catches up. What a "
        "throttled call does here: the DynamoDB transport retries it (botocore's standard mode, 4 attempts with "
        "backoff); the hold's "
        "and the settle's transactions are retried on a throttling or capacity cancellation up to 8 times, "
        "jittered 20 ms to 1 s (`onysoft.billing._transact`); the settle as a whole up to 5 times "
        "(`onysoft.forwarding.settle`), then it is left to the sweeper, which charges the hold; a hold or the key's "
        "read still failing ends the request as a 503 `capacity_exhausted` with `Retry-After: 2`, nothing held or "
        "charged; the rollup's stream batch is retried by its event source mapping. So a burst beyond the "
        "capacity shows as latency, then 503s, for the minutes scaling takes: provisioned suits a steady rate "
        "(what managed instances are for) and on-demand stays the default. A table may switch from on-demand to "
        "provisioned at any time, back at most 4 times in 24 hours; it starts at the minimum, so raise "
        "TableMinWriteCapacity / TableMinReadCapacity to the steady need before switching a busy stack (the "
        "minimum applies to every table and index alike; changing it later sets every table's and index's "
        "capacity to it at once, as CloudFormation updates the tables, so raise it, never lower it under load). "
        "Reserved capacity (a 1- or 3-year commitment on "
        "provisioned units) would cost less again: not modelled.",
        "",
    ]
    return lines


def draw(r: dict, path: Path = CHART) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    for label, points in r["curves"].items():
        xs, ys = zip(*points, strict=True)
        style = ({"linewidth": 2.5} if label == "lambda" else {"linestyle": ":", "linewidth": 2.5}
                 if "provisioned" in label else {"linestyle": "--"})
        name = f"on-demand Lambda, {r['facts']['proxy_mb']} MB" if label == "lambda" else label
        ax.plot(xs, ys, label=name, **style)
    for t, goal in GOALS.items():
        ax.scatter([t], [goal], marker="v", color="black", zorder=5)
        ax.annotate(f"goal ${goal:g} at {t:g} s, {GOAL_RATE} req/s", (t, goal), textcoords="offset points",
                    xytext=(-6, -14), ha="right" if t > 20 else "left", fontsize=8)
    ax.set_xlabel("provider time per request (s)")
    ax.set_ylabel("USD per million requests, everything included (log scale)")
    ax.set_title(f"Cost per million billed chat requests ({REGION}, {PRICES_TAKEN} prices)")
    # Log scale: on-demand Lambda grows to hundreds of dollars, managed instances stay near the fixed floor.
    ax.set_yscale("log")
    ax.set_ylim(5, 400)
    ticks = [5, 10, 12, 15, 20, 30, 50, 100, 200, 400]
    ax.set_yticks(ticks, [f"${v}" for v in ticks])
    ax.minorticks_off()
    ax.set_xlim(0, 31)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_section(section: str, path: Path = DOC) -> None:
    """In place of the previous COST block; else in place of an unmarked section 4; else at the end."""
    text = path.read_text(encoding="utf-8")
    if MARK_BEGIN in text and MARK_END in text:
        before, rest = text.split(MARK_BEGIN, 1)
        after = rest.split(MARK_END, 1)[1].lstrip("\n")
    elif (start := text.find("## 4. Cost per million requests")) >= 0:
        before, rest = text[:start], text[start:]
        end = rest.find("\n## ", 1)
        after = rest[end + 1:] if end >= 0 else ""
    else:
        before, after = text.rstrip("\n") + "\n\n", ""
    path.write_text(before + section + ("\n" + after if after else ""), encoding="utf-8")


def main() -> int:
    result = compute()
    write_section(render(result))
    draw(result)
    summary = {f"{row['provider_s']:g} s": round(row["total"] * 1e6, 2) for row in result["lambda"]}
    print(f"wrote section 4 of {DOC.relative_to(ROOT)} and {CHART.relative_to(ROOT)}; on-demand $/M: "
          f"{json.dumps(summary)}; break-even req/s: {result['break_even']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
