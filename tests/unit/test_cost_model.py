"""tools/bench/cost.py: BENCHMARKS section 4 follows the template and the bench's own figures."""

import copy
import math

import pytest

from tools.bench import cost

LOGS = {"proxy": 1300, "authorizer": 450, "access": 390}


@pytest.fixture(scope="module")
def tpl() -> dict:
    return cost._template()


@pytest.fixture(scope="module")
def figures() -> dict:
    return cost.measured_figures()


def test_the_committed_benchmarks_hold_every_figure_the_model_reads(figures):
    # A change to section 3's or the right-sizing section's layout must not leave section 4 computed from nothing.
    assert figures["wru"] > 0 and figures["rru"] > 0 and figures["proxy_cpu_ms"] > 0
    # Managed instances run the DynamoDB calls in the thread pool (on-demand Lambda: inline): their own figure.
    assert figures["managed_cpu_ms"] > 0
    assert figures["authorizer_rru"] > 0 and figures["authorizer_ms"] > 0


def test_the_request_units_come_from_section_3(figures, tpl):
    doc = cost.DOC.read_text(encoding="utf-8")
    row = next(line for line in doc.splitlines() if line.startswith("| chat, non-stream |"))
    more = row.rsplit("|", 2)[0] + f"| {figures['wru'] + 4:g} |"  # a change that adds 4 WRU a request
    changed = cost.measured_figures(doc.replace(row, more))
    assert changed["wru"] == figures["wru"] + 4
    facts = cost.template_facts(tpl)
    before = cost.shared_per_request(3.0, facts, figures, LOGS, miss_rate=0)["ddb"]
    after = cost.shared_per_request(3.0, facts, changed, LOGS, miss_rate=0)["ddb"]
    assert after - before == pytest.approx(4 * cost.PRICES["ddb_wru"])


def test_a_missing_figure_is_an_error_not_a_guess():
    with pytest.raises(SystemExit, match="proxy CPU"):
        cost.measured_figures("| chat, non-stream | 200 | 2 | 3 | 4 | ops | 2 | 12 |\n"
                              "| authorizer, cache miss | – | 2 | GetItem ×2 | 2 | 0 |\n"
                              "the authorizer's 2 GetItems (2 RRU; 9.1 ms in-process")


def test_the_proxys_memory_is_the_templates(tpl, figures):
    facts = cost.template_facts(tpl)
    assert facts["proxy_mb"] == tpl["Resources"]["ProxyFunction"]["Properties"]["MemorySize"]
    one = cost.lambda_proxy(1.0, facts, figures, LOGS)["proxy"]
    two = cost.lambda_proxy(2.0, facts, figures, LOGS)["proxy"]
    assert two - one == pytest.approx(facts["proxy_mb"] / 1024 * cost.PRICES["lambda_arm64_gb_second"])
    bigger = copy.deepcopy(tpl)
    bigger["Resources"]["ProxyFunction"]["Properties"]["MemorySize"] = 1024
    doubled = cost.lambda_proxy(2.0, cost.template_facts(bigger), figures, LOGS)["proxy"]
    assert doubled > two


def test_waf_is_charged_only_when_the_template_turns_it_on(tpl, figures):
    off = copy.deepcopy(tpl)
    off["Parameters"]["EnableWaf"]["Default"] = "false"
    on_facts, off_facts = cost.template_facts(tpl), cost.template_facts(off)
    assert cost.shared_per_request(3.0, on_facts, figures, LOGS, miss_rate=0)["waf"] == cost.PRICES["waf_request"]
    assert cost.shared_per_request(3.0, off_facts, figures, LOGS, miss_rate=0)["waf"] == 0
    assert cost.fixed_month(off_facts)["WAF web ACL and its rules"] == 0


def test_managed_environments_never_go_below_the_floor_and_follow_the_binding_limit(tpl, figures):
    facts = cost.template_facts(tpl)
    idle = cost.managed_proxy(3.0, 0.1, facts, figures)
    assert idle["envs"] == facts["managed"]["min_envs"] and idle["instances"] == cost.MIN_INSTANCES
    assert idle["bound"] == "the floor"
    long_calls = cost.managed_proxy(30.0, 1000, facts, figures)
    assert long_calls["bound"] == "concurrency"
    assert long_calls["envs"] * facts["managed"]["per_env"] >= 1000 * 30
    short_calls = cost.managed_proxy(3.0, 1000, facts, figures)
    assert short_calls["bound"] == "CPU"


def test_the_rollups_share_follows_its_batching_window(tpl):
    facts = cost.template_facts(tpl)
    short = cost.rollup_units(facts["rollup_window_s"] / 2, facts)
    long = cost.rollup_units(facts["rollup_window_s"] * 2, facts)
    assert (short["records"], long["records"]) == (1, 2)
    assert long["wru"] > short["wru"] and long["worst_wru"] > long["wru"]


def test_the_section_replaces_its_previous_version_only(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(f"# B\n\n## 3. x\n\nthree\n\n{cost.MARK_BEGIN}\nold\n{cost.MARK_END}\n\n## 5. y\n\nfive\n")
    cost.write_section(f"{cost.MARK_BEGIN}\nnew\n{cost.MARK_END}\n", doc)
    text = doc.read_text()
    assert "old" not in text and "new" in text and "three" in text and "five" in text
    assert text.index("three") < text.index("new") < text.index("five")


def test_provisioned_tables_are_the_templates_option(tpl):
    facts = cost.template_facts(tpl)
    tables = facts["tables"]
    assert set(tables["indexes"]) == {"ApiKeysTable", "AccountsTable", "UsageTable", "RateLimitsTable",
                                      "UsageRollupsTable"}
    assert tables["indexes"]["UsageTable"] == ["by_key_shard", "open_holds"]
    assert (tables["target"], tables["min_w"], tables["min_r"]) == (0.7, 5, 5)


def test_section_3s_item_sizes_split_the_write_units_over_the_tables(figures):
    writes = figures["writes"]
    assert sum(units + idx for units, idx in writes.values()) == figures["wru"]
    assert writes["UsageTable"][1] > 0 and writes["AccountsTable"][1] == 0
    line = "Item sizes behind the units (chat, non-stream): Put usage 759 B (2+2 idx); Update keys 300 B (2+0 idx)"
    assert cost._writes_by_table(line) == {"UsageTable": [2.0, 2.0], "ApiKeysTable": [2.0, 0.0]}


def test_provisioned_capacity_is_the_rate_over_the_target_with_the_minimum_as_floor(tpl, figures):
    facts = cost.template_facts(tpl)
    busy = cost.provisioned_tables(3.0, 200, facts, figures, miss_rate=0)
    usage_units, _ = figures["writes"]["UsageTable"]
    assert busy["by_thing"]["UsageTable"][0] == math.ceil(usage_units * 200 / 0.7)
    assert busy["by_thing"]["AccountsTable by_name"] == (5, 5)  # no write on a request: the minimum
    assert busy["hour"] == pytest.approx(busy["wcu"] * cost.PRICES["ddb_wcu_hour"]
                                         + busy["rcu"] * cost.PRICES["ddb_rcu_hour"])
    idle = cost.provisioned_tables(3.0, 0.01, facts, figures, miss_rate=0)
    assert idle["hour"] == pytest.approx(idle["floor_hour"])
    tighter = copy.deepcopy(facts)
    tighter["tables"]["target"] = 0.9
    assert cost.provisioned_tables(3.0, 200, tighter, figures, miss_rate=0)["hour"] < busy["hour"]


def test_provisioned_tables_cost_less_at_a_steady_rate_and_more_when_idle(tpl, figures):
    facts = cost.template_facts(tpl)
    on_demand = cost.shared_per_request(3.0, facts, figures, LOGS, miss_rate=0)
    on_demand_tables = on_demand["ddb"] + on_demand["rollup_ddb"]
    assert cost.provisioned_tables(3.0, 200, facts, figures, miss_rate=0)["per_request"] < on_demand_tables / 2
    assert cost.provisioned_tables(3.0, 0.1, facts, figures, miss_rate=0)["per_request"] > on_demand_tables
