"""PynamoDB models of the six tables. template.yaml holds the schema; a test checks these match it.

Table names come from the environment (onysoft.config); `bind_tables()` re-reads them, so tools that
load settings after import (the CLI reading dev.env) point the models at the right tables.
"""

import os

from pynamodb.attributes import ListAttribute, NumberAttribute, UnicodeAttribute
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex, KeysOnlyProjection
from pynamodb.models import Model

from onysoft import config
from onysoft.dynamo_transport import LeanClient

# One botocore DynamoDB client per place it talks to (see GatewayModel). Keyed by what botocore reads when it
# builds a client, so a test or tool that changes region or endpoint never gets a client for the old one.
_shared_clients: dict[tuple, object] = {}


def _table_meta(env_var: str) -> type:
    """A model's Meta: the table the environment names (bind_tables re-reads it) in the configured region."""
    return type("Meta", (), {"table_name": config.table_name(env_var), "region": config.region(),
                             "max_pool_connections": config.dynamodb_threads()})


def _index(index_name: str, projection, hash_key: str, range_key: str | None = None) -> GlobalSecondaryIndex:
    """A global secondary index as template.yaml declares it: its name, what it projects, its (string) keys."""
    attributes = {"Meta": type("Meta", (), {"index_name": index_name, "projection": projection}),
                  hash_key: UnicodeAttribute(hash_key=True)}
    if range_key:
        attributes[range_key] = UnicodeAttribute(range_key=True)
    return type(f"_{index_name}_index", (GlobalSecondaryIndex,), attributes)()


def _client_identity(connection) -> tuple:
    return (connection.region, connection.host, os.environ.get("AWS_ENDPOINT_URL_DYNAMODB"),
            os.environ.get("AWS_ENDPOINT_URL"), config.lean_dynamodb())


class GatewayModel(Model):
    """PynamoDB builds a botocore session and client per model class, lazily: four of them on the proxy's
    first billed request (~200 ms measured, and as many connection pools). Every model here hands its
    connection the same client instead; each keeps its own table metadata."""

    @classmethod
    def _get_connection(cls):
        table_connection = super()._get_connection()
        inner = table_connection.connection
        if inner._client is None:  # PynamoDB's lazy client slot: fill it with the shared one
            identity = _client_identity(inner)
            shared = _shared_clients.get(identity)
            if shared is None:
                built = inner.client  # PynamoDB builds botocore's client, with its timeouts and retries
                _shared_clients[identity] = built if not config.lean_dynamodb() else LeanClient(
                    built, inner._connect_timeout_seconds, inner._read_timeout_seconds)
                inner._client = _shared_clients[identity]
            else:
                inner._client = shared
        return table_connection


# The ApiKeys and Accounts indexes project keys only: every request's hold and settle update the key and
# account items, and an ALL projection would rewrite each index entry too (+1 WRU per index per write).
# Readers of these indexes (dashboard, CLI) fetch the items themselves, which are also consistent reads.
class ApiKey(GatewayModel):
    Meta = _table_meta("ONYSOFT_TABLE_API_KEYS")

    key_hash = UnicodeAttribute(hash_key=True)  # SHA-256 hex of the whole key; never the key
    key_id = UnicodeAttribute()
    display = UnicodeAttribute()
    name = UnicodeAttribute(default="")
    key_type = UnicodeAttribute()
    account_id = UnicodeAttribute()
    currency = UnicodeAttribute()
    status = UnicodeAttribute(default="active")
    created_at = UnicodeAttribute()
    last_used_at = UnicodeAttribute(null=True)
    deleted_at = UnicodeAttribute(null=True)
    expires_at = UnicodeAttribute(null=True)
    spend_limit_micros = NumberAttribute(null=True)  # in the account's currency
    limit_reset = UnicodeAttribute(null=True)  # daily | weekly | monthly; absent = never (a lifetime limit)
    # Written before issue 16 only (a key's count and spend are now the usage rollup's: onysoft.usage_rollup).
    request_count = NumberAttribute(null=True)
    spend_micros = NumberAttribute(null=True)
    rpm = NumberAttribute(null=True)
    tpm = NumberAttribute(null=True)
    max_parallel = NumberAttribute(null=True)  # requests in flight at once (onysoft.parallel); absent: no limit
    models = ListAttribute(of=UnicodeAttribute, null=True)
    fallbacks = ListAttribute(of=UnicodeAttribute, null=True)  # default fallback models, tried in order
    # Rotation (onysoft.api_keys.rotate_key). The key's current item: when it last got a new secret, until when
    # the secret before works, and that secret's display form. An old secret's item (status `rotated`): when it
    # was replaced, when its grace ends (then 401), and `purge_at`, the table's TTL attribute (epoch seconds):
    # DynamoDB deletes the item after its grace.
    rotated_at = UnicodeAttribute(null=True)
    grace_until = UnicodeAttribute(null=True)
    previous_display = UnicodeAttribute(null=True)
    purge_at = NumberAttribute(null=True)
    # A leak report revoked it (onysoft.leaks; status `leaked`): when, where the secret was found, and how.
    leaked_at = UnicodeAttribute(null=True)
    leak_url = UnicodeAttribute(null=True)
    leak_source = UnicodeAttribute(null=True)
    # Expiry notices (onysoft.key_expiry): `expiry_watch` ("watch") puts a key with an expiry in the sparse
    # by_expiry index until it is told it expired; `expiry_notified` is the last notice sent (7d, 1d, expired).
    expiry_watch = UnicodeAttribute(null=True)
    expiry_notified = UnicodeAttribute(null=True)

    by_account = _index("by_account", KeysOnlyProjection(), "account_id", "created_at")
    by_key_id = _index("by_key_id", KeysOnlyProjection(), "key_id")
    by_expiry = _index("by_expiry", KeysOnlyProjection(), "expiry_watch", "expires_at")


class Account(GatewayModel):
    Meta = _table_meta("ONYSOFT_TABLE_ACCOUNTS")

    account_id = UnicodeAttribute(hash_key=True)
    kind = UnicodeAttribute()
    currency = UnicodeAttribute()
    name = UnicodeAttribute(default="")
    owner = UnicodeAttribute(null=True)  # org id (projects) or partner id (partner accounts)
    balance_micros = NumberAttribute(default=0)
    topped_up_micros = NumberAttribute(default=0)  # all top-ups ever: the ledger's left-hand side
    markup_bp = NumberAttribute()
    created_at = UnicodeAttribute()
    # Balance shards (onysoft.balances): absent = 1, today's layout (the balance above is shard 0).
    shards = NumberAttribute(null=True)  # how many shards holds and top-ups use now (1–64)
    shards_max = NumberAttribute(null=True)  # the most ever set: every view and consolidation reads 0 … max-1
    # Balance alerts (onysoft.balance_alerts): the threshold, and when each alert fired (absent: armed).
    alert_below_micros = NumberAttribute(null=True)  # Balance Low below this, in the account's currency
    alert_low_at = UnicodeAttribute(null=True)  # Balance Low fired (a top-up to the threshold re-arms it)
    alert_exhausted_at = UnicodeAttribute(null=True)  # Balance Exhausted fired (a top-up above zero re-arms it)
    # Requests in flight at once over all the account's keys (onysoft.parallel): the limit (absent: none), and
    # shard 0's count of them (each balance shard counts the holds it funds, against its share of the limit).
    max_parallel = NumberAttribute(null=True)
    in_flight = NumberAttribute(null=True)

    # Listing (onysoft.account_index): `listed` ("all") and `name_key` ("<lower-cased name>#<account_id>") key the
    # operator's by_name index and an owner's by_owner_name; set at creation and rename, never by a request.
    listed = UnicodeAttribute(null=True)
    name_key = UnicodeAttribute(null=True)

    # Ceilings the operator set (onysoft.ceilings; absent: the key type's default): the most a tenant may give
    # one key, and how many keys the account may have. `keys_count`: its keys that are not deleted, kept in the
    # transaction that creates or deletes one (absent: not counted yet; counted at the next key creation).
    ceiling_rpm = NumberAttribute(null=True)
    ceiling_tpm = NumberAttribute(null=True)
    ceiling_max_parallel = NumberAttribute(null=True)
    ceiling_keys = NumberAttribute(null=True)
    keys_count = NumberAttribute(null=True)

    by_owner = _index("by_owner", KeysOnlyProjection(), "owner", "account_id")
    by_name = _index("by_name", KeysOnlyProjection(), "listed", "name_key")
    by_owner_name = _index("by_owner_name", KeysOnlyProjection(), "owner", "name_key")


class BalanceShard(GatewayModel):
    """Shard k ≥ 1 of an account's balance (onysoft.balances), in the Accounts table under a partition key of
    its own (`<account_id>#<k>`); shard 0 is the account item itself. No `owner`: in no index."""

    Meta = _table_meta("ONYSOFT_TABLE_ACCOUNTS")

    account_id = UnicodeAttribute(hash_key=True)  # "<account_id>#<k>"
    shard_of = UnicodeAttribute(null=True)  # the account
    balance_micros = NumberAttribute(default=0)
    in_flight = NumberAttribute(null=True)  # the holds this shard funds now, for the account's max_parallel


class OwnedAccounts(GatewayModel):
    """How many accounts of one kind an org or partner owns, and the most it may own (onysoft.ceilings). In the
    Accounts table under `owner#<owner>#<kind>` partition keys, never an account id; no `kind` or `owner`, so
    in no index and in no list of accounts."""

    Meta = _table_meta("ONYSOFT_TABLE_ACCOUNTS")

    account_id = UnicodeAttribute(hash_key=True)  # owner#<owner>#<kind>
    accounts_count = NumberAttribute(null=True)  # kept in the transaction that creates each account
    ceiling_accounts = NumberAttribute(null=True)  # absent: the key type's default


class UsageRecord(GatewayModel):
    Meta = _table_meta("ONYSOFT_TABLE_USAGE")

    account_id = UnicodeAttribute(hash_key=True)  # the account, or `<account_id>#<k>` (onysoft.usage_shards)
    sk = UnicodeAttribute(range_key=True)  # "<created_at>#<request_id>"
    request_id = UnicodeAttribute()
    key_id = UnicodeAttribute()
    created_at = UnicodeAttribute()
    status = UnicodeAttribute()  # pending | settled | failed
    hold_state = UnicodeAttribute(null=True)  # "open#<shard>" only while the hold is open (sparse index)
    key_hash = UnicodeAttribute(null=True)  # to update the key's counters at settle; a hash, never the key
    endpoint = UnicodeAttribute(null=True)  # chat.completions | embeddings
    stream = UnicodeAttribute(null=True)  # "true" | "false"
    model = UnicodeAttribute(null=True)
    provider = UnicodeAttribute(null=True)
    upstream_model = UnicodeAttribute(null=True)
    currency = UnicodeAttribute(null=True)
    hold_micros = NumberAttribute(default=0)
    balance_shard = NumberAttribute(null=True)  # the balance shard the hold took from (absent: 0)
    hold_prompt_tokens = NumberAttribute(default=0)
    hold_output_tokens = NumberAttribute(default=0)
    rate_window = NumberAttribute(null=True)  # the rate-limit window the request was counted in
    rate_tokens = NumberAttribute(null=True)  # the tokens it was counted for there (the settle gives back the rest)
    # Where the hold counts as a request in flight (onysoft.parallel): "key", "account" or "key,account"; the
    # settle, release or sweeper gives those slots back with it. Absent: counted nowhere.
    parallel = UnicodeAttribute(null=True)
    spend_period = UnicodeAttribute(null=True)  # the key's spend-limit period the hold counts against
    spend_limit_micros = NumberAttribute(null=True)  # that limit, as it was then (onysoft.balance_alerts)
    charge_micros = NumberAttribute(default=0)
    uncharged_micros = NumberAttribute(null=True)  # records from before overruns became debts (issue 10)
    overrun = UnicodeAttribute(null=True)  # "true": the provider reported more than the hold; charged in full
    overrun_micros = NumberAttribute(null=True)  # charge − hold, a debt the balance carries
    sent_at = UnicodeAttribute(null=True)  # when the request left for the upstream (absent: it never did)
    cached_tokens = NumberAttribute(null=True)  # input tokens read from the provider's cache (in prompt_tokens)
    cache_write_tokens = NumberAttribute(null=True)  # input tokens written to the cache (in prompt_tokens)
    reasoning_tokens = NumberAttribute(null=True)  # output tokens spent reasoning (in completion_tokens)
    cached_input_usd_per_mtok = UnicodeAttribute(null=True)
    cache_write_usd_per_mtok = UnicodeAttribute(null=True)
    tokens_per_image = NumberAttribute(null=True)  # records before issue 22: the one bound every media part had
    media_parts = NumberAttribute(null=True)  # image, audio and document parts the prompt bound counted
    hold_audio_tokens = NumberAttribute(null=True)  # the part of hold_prompt_tokens bounded as audio
    audio_tokens = NumberAttribute(null=True)  # audio input tokens billed (in prompt_tokens), at the audio price
    audio_input_usd_per_mtok = UnicodeAttribute(null=True)
    tier_above_tokens = NumberAttribute(null=True)  # the model's long-context tier, as priced (onysoft.catalog)
    tier_input_usd_per_mtok = UnicodeAttribute(null=True)
    tier_output_usd_per_mtok = UnicodeAttribute(null=True)
    estimate_reason = UnicodeAttribute(null=True)  # why the usage was not known and the hold was charged
    prompt_tokens = NumberAttribute(default=0)
    completion_tokens = NumberAttribute(default=0)
    # Every factor of the charge, so it can be recomputed (decimal strings, never floats).
    input_usd_per_mtok = UnicodeAttribute(null=True)
    output_usd_per_mtok = UnicodeAttribute(null=True)
    markup_bp = NumberAttribute(null=True)
    fx_rate = UnicodeAttribute(null=True)
    fx_rate_at = UnicodeAttribute(null=True)
    provider_cost_usd = UnicodeAttribute(null=True)
    usage_estimated = UnicodeAttribute(null=True)  # "true" when tokens were estimated (stream cut)
    upstream_status = NumberAttribute(null=True)
    error_code = UnicodeAttribute(null=True)
    error_message = UnicodeAttribute(null=True)
    settled_at = UnicodeAttribute(null=True)
    # Fallbacks: the models that failed before the one that answered ("model: code"), in order. `model` and its
    # prices name the model that answered once settled (the one held for while pending: the most expensive).
    fallback_attempts = ListAttribute(of=UnicodeAttribute, null=True)
    requested_model = UnicodeAttribute(null=True)  # the body's `model` when another model answered
    # A stale hold the sweeper could not close (onysoft.sweeper): its failed tries, the last error, and when it
    # was quarantined (hold_state "quarantined": out of the open#<n> shards, still pending, its money still held).
    sweep_attempts = NumberAttribute(null=True)
    sweep_error = UnicodeAttribute(null=True)
    quarantined_at = UnicodeAttribute(null=True)

    # One key's records (onysoft.usage_shards): "<key_id>" or "<key_id>#<balance shard>", set by the hold's Put only.
    key_shard = UnicodeAttribute(null=True)

    open_holds = _index("open_holds", AllProjection(), "hold_state", "created_at")
    by_key_shard = _index("by_key_shard", KeysOnlyProjection(), "key_shard", "sk")


class RateLimitCounter(GatewayModel):
    Meta = _table_meta("ONYSOFT_TABLE_RATE_LIMITS")

    # "<key_id>#<window>" (rate; "<key_id>#<window>#<k>" for balance shard k >= 1), "<key_id>#spend#<period>" or
    # "<key_id>#parallel"
    counter_id = UnicodeAttribute(hash_key=True)
    requests = NumberAttribute(null=True)
    tokens = NumberAttribute(null=True)
    spend_micros = NumberAttribute(null=True)
    limit_reached_at = UnicodeAttribute(null=True)  # a spend counter: Spend Limit Reached fired (once a period)
    in_flight = NumberAttribute(null=True)  # "<key_id>#parallel": the key's requests in flight (no TTL)
    expires_at = NumberAttribute()  # epoch seconds, the table's TTL attribute


class CatalogEntry(GatewayModel):
    Meta = _table_meta("ONYSOFT_TABLE_CATALOG")

    kind = UnicodeAttribute(hash_key=True)  # model | fx | setting
    id = UnicodeAttribute(range_key=True)
    provider = UnicodeAttribute(null=True)
    upstream_model = UnicodeAttribute(null=True)
    # Prices and rates as decimal strings: a DynamoDB number would come back as a float.
    input_usd_per_mtok = UnicodeAttribute(null=True)
    output_usd_per_mtok = UnicodeAttribute(null=True)
    rate = UnicodeAttribute(null=True)  # fx items: units of the currency per USD, a decimal string
    enabled = UnicodeAttribute(null=True)  # "true" | "false"
    max_output_tokens = NumberAttribute(null=True)  # the output cap a hold is sized for (default in hold_sizing)
    cached_input_usd_per_mtok = UnicodeAttribute(null=True)  # absent: cached input at the input price
    cache_write_usd_per_mtok = UnicodeAttribute(null=True)  # absent: cache writes at the input price
    tokens_per_image = NumberAttribute(null=True)  # prompt bound per image part (absent: images refused)
    tokens_per_audio = NumberAttribute(null=True)  # per audio part (absent: audio refused)
    tokens_per_document = NumberAttribute(null=True)  # per document or file part (absent: refused)
    audio_input_usd_per_mtok = UnicodeAttribute(null=True)  # absent: audio input refused
    tier_above_tokens = NumberAttribute(null=True)  # long-context tier (onysoft.catalog.ModelPrice)
    tier_input_usd_per_mtok = UnicodeAttribute(null=True)
    tier_output_usd_per_mtok = UnicodeAttribute(null=True)
    updated_at = UnicodeAttribute(null=True)


class AuditRecord(GatewayModel):
    """Who did what to which account or key, and when (onysoft.audit). Kept in the Usage table, under
    partition keys of its own (`audit#<scope>`) that are never an account id, so an account's usage query
    never meets one; it has no `key_id` or `hold_state`, so it is in neither of that table's indexes."""

    Meta = _table_meta("ONYSOFT_TABLE_USAGE")

    account_id = UnicodeAttribute(hash_key=True)  # "audit#<scope>": audit#user:acct_…, audit#org:…, audit#all
    sk = UnicodeAttribute(range_key=True)  # "<at>#<audit_id>"
    audit_id = UnicodeAttribute()
    at = UnicodeAttribute()
    actor = UnicodeAttribute()  # the principal: user:acct_…, org:…, partner:…, operator
    actor_sub = UnicodeAttribute(null=True)  # the signed-in person (Cognito `sub`)
    action = UnicodeAttribute()  # account.create | account.update | account.topup | key.create | key.delete
    target_account_id = UnicodeAttribute()
    target_key_id = UnicodeAttribute(null=True)  # not `key_id`: usage listings filter on key_id
    details = UnicodeAttribute(null=True)  # JSON object: what changed (never a key)
    request_id = UnicodeAttribute(null=True)


class IdempotencyRecord(GatewayModel):
    """A money-moving request carried out under an idempotency key (onysoft.idempotency). In the Usage table
    under `idem#<account_id>` partitions, never an account id; no `key_id` or `hold_state`, so in no index."""

    Meta = _table_meta("ONYSOFT_TABLE_USAGE")

    account_id = UnicodeAttribute(hash_key=True)  # idem#<account_id>
    sk = UnicodeAttribute(range_key=True)  # <operation>#<the client's idempotency key>
    request = UnicodeAttribute()  # JSON of what was asked, to refuse the same key with another request
    at = UnicodeAttribute()  # not `created_at`: no attribute of an index key here


class TopUpRecord(GatewayModel):
    """One top-up, written in the same transaction as the balance change (onysoft.topups): what the monthly
    statements list. In the Usage table under `topup#<account_id>` partitions, never an account id; no `key_id`,
    `hold_state` or `created_at`, so in no index and never usage."""

    Meta = _table_meta("ONYSOFT_TABLE_USAGE")

    account_id = UnicodeAttribute(hash_key=True)  # topup#<account_id>
    sk = UnicodeAttribute(range_key=True)  # <at>#<topup_id>: a month's top-ups are one Query
    topup_id = UnicodeAttribute()
    at = UnicodeAttribute()
    amount_micros = NumberAttribute()
    currency = UnicodeAttribute()
    actor = UnicodeAttribute()  # the principal that made it (operator), or "system" (a direct call: seeding)
    actor_sub = UnicodeAttribute(null=True)  # the person: Cognito `sub`, or cli:<user>@<host>
    actor_email = UnicodeAttribute(null=True)  # the person's email, from the ID token
    idempotency_key = UnicodeAttribute(null=True)
    request_id = UnicodeAttribute(null=True)


class StatementRecord(GatewayModel):
    """A closed month's statement, as it was first issued (onysoft.statements): it never changes. In the Usage
    table under `stmt#<account_id>` partitions, like the audit log; in no index."""

    Meta = _table_meta("ONYSOFT_TABLE_USAGE")

    account_id = UnicodeAttribute(hash_key=True)  # stmt#<account_id>
    sk = UnicodeAttribute(range_key=True)  # YYYY-MM
    document = UnicodeAttribute()  # the statement, JSON
    closed_at = UnicodeAttribute()  # when it was issued (frozen)


class UsageRollup(GatewayModel):
    """An account's (`acct#<account_id>`) or a key's (`key#<key_id>`) usage on one UTC day for one model, kept
    by the rollup function from the Usage table's stream (onysoft.usage_rollup); the dashboard's totals."""

    Meta = _table_meta("ONYSOFT_TABLE_USAGE_ROLLUPS")

    pk = UnicodeAttribute(hash_key=True)  # acct#<account_id> | key#<key_id>
    sk = UnicodeAttribute(range_key=True)  # <day>#<currency>#<model>
    account_id = UnicodeAttribute(null=True)
    day = UnicodeAttribute(null=True)
    currency = UnicodeAttribute(null=True)
    model = UnicodeAttribute(null=True)
    requests = NumberAttribute(default=0)
    pending = NumberAttribute(default=0)
    settled = NumberAttribute(default=0)
    failed = NumberAttribute(default=0)
    prompt_tokens = NumberAttribute(default=0)
    completion_tokens = NumberAttribute(default=0)
    charge_micros = NumberAttribute(default=0)  # settled charges only
    # Settled records' USD figures and debts (issue 26; onysoft.usage_rollup): absent on totals from before it.
    charge_usd_micros = NumberAttribute(null=True)  # the charges in USD at the rates pinned on the records
    provider_cost_usd_micros = NumberAttribute(null=True)  # what the providers billed, USD
    costed = NumberAttribute(null=True)  # settled records counted in the two above (settled - costed: missing)
    overrun_micros = NumberAttribute(null=True)  # the part of the charges beyond their holds: debts
    # An account's all-time item (`acct#<account_id>`, "total"): when it was opened, at the account's creation.
    # Absent: the account is older than the item (issue 26), whose totals then miss its earlier requests.
    opened = UnicodeAttribute(null=True)


class RollupMarker(GatewayModel):
    """What of one usage record the totals count now (onysoft.usage_rollup): makes the rollup idempotent.
    In the UsageRollups table under `rec#` partition keys; expires by TTL once no stream record can repeat."""

    Meta = _table_meta("ONYSOFT_TABLE_USAGE_ROLLUPS")

    record = UnicodeAttribute(hash_key=True, attr_name="pk")  # rec#<account_id>#<usage record sk>
    sk = UnicodeAttribute(range_key=True)  # "counted"
    version = NumberAttribute()
    account_id = UnicodeAttribute()
    key_id = UnicodeAttribute()
    status = UnicodeAttribute()
    day = UnicodeAttribute()
    currency = UnicodeAttribute(null=True)
    model = UnicodeAttribute(null=True)
    prompt_tokens = NumberAttribute(default=0)
    completion_tokens = NumberAttribute(default=0)
    charge_micros = NumberAttribute(default=0)
    charge_usd_micros = NumberAttribute(null=True)  # issue 26: absent on markers written before it (0)
    provider_cost_usd_micros = NumberAttribute(null=True)
    costed = NumberAttribute(null=True)
    overrun_micros = NumberAttribute(null=True)
    expires_at = NumberAttribute()  # epoch seconds, the table's TTL attribute


_MODEL_TABLE_ENV = {
    ApiKey: "ONYSOFT_TABLE_API_KEYS",
    Account: "ONYSOFT_TABLE_ACCOUNTS",
    BalanceShard: "ONYSOFT_TABLE_ACCOUNTS",  # shares the Accounts table (its own partition keys)
    OwnedAccounts: "ONYSOFT_TABLE_ACCOUNTS",  # likewise
    UsageRecord: "ONYSOFT_TABLE_USAGE",
    RateLimitCounter: "ONYSOFT_TABLE_RATE_LIMITS",
    CatalogEntry: "ONYSOFT_TABLE_CATALOG",
    AuditRecord: "ONYSOFT_TABLE_USAGE",  # shares the Usage table (its own partition keys)
    IdempotencyRecord: "ONYSOFT_TABLE_USAGE",  # likewise
    TopUpRecord: "ONYSOFT_TABLE_USAGE",  # likewise
    StatementRecord: "ONYSOFT_TABLE_USAGE",  # likewise
    UsageRollup: "ONYSOFT_TABLE_USAGE_ROLLUPS",
    RollupMarker: "ONYSOFT_TABLE_USAGE_ROLLUPS",  # shares the rollups table (its own partition keys)
}
ALL_MODELS = tuple(_MODEL_TABLE_ENV)


def bind_tables() -> None:
    """Point every model at the tables and region the environment names now."""
    _shared_clients.clear()
    for model, env_var in _MODEL_TABLE_ENV.items():
        model.Meta.table_name = config.table_name(env_var)
        model.Meta.region = config.region()
        model.Meta.max_pool_connections = config.dynamodb_threads()
        model._connection = None
