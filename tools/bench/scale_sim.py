"""How many requests a second one account, and one key, can sustain within DynamoDB's partition limits.

`python -m tools.bench.scale_sim` (`make bench-scale`): a deterministic model, in integer arithmetic, driven by
the gateway's recorded per-request write pattern (tools/bench/fixtures/write_pattern_<name>.json, recorded by
tools/bench/write_pattern.py with the BENCHMARKS §3 recorder; re-record with `make bench-scale-record`).

DynamoDB's rules modelled (developer guide: "Partitions and data distribution", "Burst and adaptive capacity",
"Service quotas"):
- a partition serves at most 1,000 write units and 3,000 read units a second; adaptive capacity can isolate a
  hot item on a partition of its own ("split for heat") but an item never splits, so one item's ceiling is
  one partition's;
- an item collection whose sort key only grows (Usage: `<created_at>#<request_id>`, its `by_key` index
  likewise) is not split for heat either: every new record lands at the end of the same range, so one
  partition key value of it is one partition;
- each write's units are what the recorder measured: 2 per KB for an item in a transaction, 1 per KB
  otherwise, index entries 1 per KB (never doubled).

A partition is one (table or index, partition key value). The pattern's partition keys are templates
(`{account}`, `{key}`, `{key_hash}`, `{window}`, `{open_shard}`, `{shard}`); one scenario gives each
placeholder how many values the load spreads over: one account; `keys` keys (1 for the one-key scenario);
one rate window at a time; 16 open-holds shards; `shards` shards. Load is spread evenly (round-robin), so
the busiest of S partitions takes ceil(L / S) requests of L. A partition whose writes are *coalesced* (say a
key's `last_used_at`, written at most once a minute; capped here at once a second, an upper bound) takes
at most `cap` writes a second whatever the load.

Not modelled, so every ceiling here is an upper bound: transaction conflicts on a hot item (two
transactions on one item at once: one is cancelled and retried), retries of throttled requests (they add
load past the knee), burst capacity (up to 300 s of unused capacity, which delays throttling but does not
raise the ceiling), and the account-level table quota (40,000 units a second per on-demand table by
default, adjustable: reported as the table's load).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from .write_pattern import pattern_path

PARTITION_WCU = 1000
PARTITION_RCU = 3000
TABLE_QUOTA = 40_000  # on-demand default per table, read and write each (adjustable on request)
OPEN_SHARDS = 16  # onysoft.billing.OPEN_SHARDS
PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Flow:
    """Load one request puts on one partition group (a template: spread over `spread` partitions)."""

    name: str  # "<table>[/<index>] <partition template>"
    wcu: int = 0  # write units per request on the group (x100: reads can be half units)
    rcu: int = 0
    spread: int = 1
    cap_per_second: int | None = None  # writes coalesced to at most this many a second per partition
    read_spread: int | None = None  # reads spread over fewer partitions than writes (None: `spread`)

    def max_requests(self) -> int | None:
        """Requests a second this group can take before one of its partitions passes a limit (None: no limit)."""
        limits = []
        write_limit = PARTITION_WCU * 100 // self.wcu * self.spread if self.wcu else None
        if write_limit is not None and (self.cap_per_second is None
                                        or self.cap_per_second * self.wcu > PARTITION_WCU * 100):
            limits.append(write_limit)  # not coalesced, or coalesced to more than a partition takes
        if self.rcu:
            limits.append(PARTITION_RCU * 100 // self.rcu * (self.read_spread or self.spread))
        return min(limits) if limits else None

    def load(self, requests: int) -> tuple[int, int]:
        """(WCU, RCU) a second on this group's busiest partition at `requests` a second (x100)."""
        busiest = math.ceil(requests / self.spread)
        writes = busiest if self.cap_per_second is None else min(busiest, self.cap_per_second)
        return writes * self.wcu, math.ceil(requests / (self.read_spread or self.spread)) * self.rcu


@dataclass
class Model:
    """Which recorded writes are made, and how they are spread or coalesced."""

    shards: int = 1  # values of `{shard}` in a recorded sharded pattern
    keys: int = 1  # keys the account's traffic comes from
    shard: set[str] = field(default_factory=set)  # roles spread over `shards` partitions in this model
    coalesce: dict[str, int] = field(default_factory=dict)  # role -> writes a second per partition
    drop: set[str] = field(default_factory=set)  # roles whose writes are not made
    read_all: set[str] = field(default_factory=set)  # sharded roles whose reads take every shard, every request


ROLES = {  # role -> (table, index or None, partition template)
    "account": ("accounts", None, "{account}"),
    "key": ("api-keys", None, "{key_hash}"),
    "rate": ("rate-limits", None, "{key}#{window}"),
    "usage": ("usage", None, "{account}"),
    "usage_by_key": ("usage", "by_key", "{key}"),
    "open_holds": ("usage", "open_holds", "{open_shard}"),
    "usage_by_key_shard": ("usage", "by_key_shard", "{key}"),  # issue 23: `<key_id>[#<shard>]`, put by the hold
}


def role_of(table: str, index: str | None, template: str) -> str:
    for role, (t, i, p) in ROLES.items():
        if (t, i) == (table, index) and template.replace("#{shard}", "") == p:
            return role
    return f"{table}/{index or '-'} {template}"


def load_pattern(name_or_path: str | Path) -> dict:
    path = Path(name_or_path)
    if not path.suffix:
        path = pattern_path(str(name_or_path))
    return json.loads(path.read_text())


def flows(pattern: dict, model: Model, request: str = "billed") -> list[Flow]:
    """Group one request's recorded reads and writes by partition template, spread and coalesced by `model`."""
    per_group: dict[tuple[str, str | None, str], list[int]] = {}
    for call in pattern["requests"][request]["calls"]:
        for write in call["writes"]:
            group = per_group.setdefault((write["table"], write.get("index"), write["partition"]), [0, 0])
            group[0] += round(write["units"] * 100)
        for read in call["reads"]:
            group = per_group.setdefault((read["table"], None, read["partition"]), [0, 0])
            group[1] += round(read["units"] * 100)
    result = []
    for (table, index, template), (wcu, rcu) in sorted(per_group.items(), key=lambda kv: str(kv[0])):
        role = role_of(table, index, template)
        if role in model.drop:
            continue
        spread = 1
        for placeholder in PLACEHOLDER.findall(template):
            spread *= {"key": model.keys, "key_hash": model.keys, "open_shard": OPEN_SHARDS,
                       "shard": model.shards}.get(placeholder, 1)
        read_spread = None
        if role in model.shard and "{shard}" not in template:
            read_spread = spread if role in model.read_all else None
            spread *= model.shards
        name = f"{table}{'/' + index if index else ''} {template}"
        result.append(Flow(name, wcu, rcu, spread, model.coalesce.get(role), read_spread))
    return result


def ceiling(groups: list[Flow]) -> tuple[int | None, str]:
    """Requests a second the busiest partition allows, and which group that is."""
    best, limiting = None, "none"
    for group in groups:
        limit = group.max_requests()
        if limit is not None and (best is None or limit < best):
            best, limiting = limit, group.name
    return best, limiting


def served(groups: list[Flow], offered: int) -> int:
    """Requests a second served at `offered` a second: the excess is throttled."""
    limit, _ = ceiling(groups)
    return offered if limit is None else min(offered, limit)


def table_load(groups: list[Flow], requests: int) -> dict[str, int]:
    """Write units a second on each table (index writes included) at `requests` a second."""
    totals: dict[str, int] = {}
    for group in groups:
        table = group.name.split()[0].split("/")[0]
        writes = requests
        if group.cap_per_second is not None:
            writes = min(math.ceil(requests / group.spread), group.cap_per_second) * min(group.spread, requests)
        totals[table] = totals.get(table, 0) + writes * group.wcu // 100
    return totals


# ---------------------------------------------------------------------------------------------- scenarios

OFFERED = [100, 250, 500, 1000, 2000, 5000, 10000]
ACCOUNT_KEYS = 100  # the one-account scenario: its traffic comes from this many keys


# What the recorded after-pattern spreads over an account's N shards (its bench account has one, recorded as the
# bare id): the balance shard, the usage records' partition and the key's rate-limit counter (issue 16). The
# key item is read before each hold and written (last_used_at) at most once a minute (onysoft.key_use; capped
# here at once a second, an upper bound).
SHARDED = {"account", "usage", "rate", "usage_by_key_shard"}  # a key's by_key_shard entries follow its records
KEY_WRITES_PER_SECOND = 1


def after_model(shards: int, keys: int, recorded_after: bool) -> Model:
    """The sharded design (issue 16). A recorded after-pattern: its balance, usage and rate-counter partitions
    spread over `shards`, the key item's write coalesced. Without one, the before-pattern transformed the same
    way (its by_key index entries spread too)."""
    if recorded_after:  # the x-ratelimit headers read every counter of the key (one BatchGetItem)
        return Model(shards=shards, keys=keys, shard=SHARDED, coalesce={"key": KEY_WRITES_PER_SECOND},
                     read_all={"rate"})
    return Model(shards=shards, keys=keys, shard={"account", "usage", "usage_by_key", "rate"},
                 coalesce={"key": KEY_WRITES_PER_SECOND})


def scenarios(shards: list[int] | int = (8, 32), before: str = "before", after: str = "after") -> list[dict]:
    before_pattern = load_pattern(before)
    try:
        after_pattern, recorded = load_pattern(after), True
    except FileNotFoundError:
        after_pattern, recorded = before_pattern, False
    counts = [shards] if isinstance(shards, int) else list(shards)
    rows = []
    for scope, keys in (("one account", ACCOUNT_KEYS), ("one key", 1)):
        runs = [("before", before_pattern, Model(keys=keys), before_pattern["name"])]
        for n in counts:
            runs.append((f"after ({n} shards)", after_pattern, after_model(n, keys, recorded),
                         after_pattern["name"] if recorded else f"{before_pattern['name']}, modelled"))
        for label, pattern, model, source in runs:
            groups = flows(pattern, model)
            limit, limiting = ceiling(groups)
            rows.append({"scope": scope, "pattern": label, "source": source, "ceiling": limit,
                         "limiting": limiting, "curve": [(load, served(groups, load)) for load in OFFERED],
                         "groups": groups, "wru_per_request": sum(g.wcu for g in groups) / 100})
    return rows


def by_shard_count(after: str = "after", before: str = "before") -> list[tuple[int, ...]]:
    """(shards, one account's ceiling, one key's ceiling) for the sharded pattern."""
    try:
        pattern, recorded = load_pattern(after), True
    except FileNotFoundError:
        pattern, recorded = load_pattern(before), False
    return [tuple([n] + [ceiling(flows(pattern, after_model(n, keys, recorded)))[0] for keys in (ACCOUNT_KEYS, 1)])
            for n in (1, 2, 4, 8, 16, 32, 64)]


def render(rows: list[dict]) -> str:
    lines = ["| scope | pattern | WRU/request | ceiling (req/s) | limited by | "
             + " | ".join(f"{load:,}/s" for load in OFFERED) + " |",
             "|---|---|---:|---:|---|" + "---:|" * len(OFFERED)]
    for row in rows:
        limit = f"{row['ceiling']:,}" if row["ceiling"] is not None else "none"
        lines.append(f"| {row['scope']} | {row['pattern']} | {row['wru_per_request']:g} | {limit} | "
                     f"`{row['limiting']}` | " + " | ".join(f"{s:,}" for _, s in row["curve"]) + " |")
    lines.append("")
    lines.append("Served requests a second at each offered load (the rest is throttled). Source of each pattern: "
                 + "; ".join(sorted({f"{r['pattern'].split(' (')[0]}: `{r['source']}`" for r in rows})) + ".")
    lines.append("")
    lines.append("Per partition group, "
                 "one request's units and the spread:")
    lines.append("")
    lines.append("| scope | pattern | partition (table/index, key) | WRU/request | RRU/request | spread over | "
                 "coalesced to | ceiling (req/s) |")
    lines.append("|---|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        for g in row["groups"]:
            limit = g.max_requests()
            lines.append(f"| {row['scope']} | {row['pattern']} | `{g.name}` | {g.wcu / 100:g} | {g.rcu / 100:g} | "
                         f"{g.spread} | {str(g.cap_per_second) + '/s' if g.cap_per_second else '–'} | "
                         f"{f'{limit:,}' if limit is not None else 'none'} |")
    return "\n".join(lines)


def render_shards(rows: list[tuple[int, ...]]) -> str:
    lines = ["| shards | one account (req/s) | one key (req/s) |", "|---:|" + "---:|" * (len(rows[0]) - 1)]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:,}" if v is not None else "none" for v in row) + " |")
    return "\n".join(lines)


BEGIN, END = "<!-- scale_sim:begin -->", "<!-- scale_sim:end -->"


def update_doc(path: Path, text: str) -> None:
    doc = path.read_text()
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    path.write_text(doc[:start] + "\n" + text + "\n" + doc[end:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--before", default="before", help="fixture name or path of today's pattern")
    parser.add_argument("--after", default="after", help="fixture name or path of the sharded pattern")
    parser.add_argument("--write-doc", action="store_true", help="rewrite docs/SCALE.md's simulation section")
    args = parser.parse_args()
    text = render(scenarios(args.shards, args.before, args.after))
    text += "\n\nCeiling of the sharded pattern by shard count:\n\n" + render_shards(
        by_shard_count(args.after, args.before))
    print(text)
    if args.write_doc:
        from .common import ROOT

        update_doc(ROOT / "docs" / "SCALE.md", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
