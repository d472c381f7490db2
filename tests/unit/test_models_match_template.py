"""template.yaml is the only schema: the PynamoDB models must say the same keys and indexes."""

from onysoft import models
from onysoft_tools import template

MODEL_OF_TABLE = {
    "ApiKeysTable": models.ApiKey, "AccountsTable": models.Account, "UsageTable": models.UsageRecord,
    "RateLimitsTable": models.RateLimitCounter, "CatalogTable": models.CatalogEntry,
    "UsageRollupsTable": models.UsageRollup,
}


def _keys(key_schema: list[dict]) -> dict[str, str]:
    return {k["KeyType"]: k["AttributeName"] for k in key_schema}


def test_every_table_has_a_model_with_the_same_keys_and_indexes():
    tpl = template.load_template()
    names = {logical: logical for logical in MODEL_OF_TABLE}
    definitions = {d["TableName"]: d for d in template.table_definitions(tpl, names)}
    assert set(definitions) == set(MODEL_OF_TABLE)
    for logical, model in MODEL_OF_TABLE.items():
        definition = definitions[logical]
        schema = model._get_schema()
        assert _keys(definition["KeySchema"]) == {
            k["KeyType"]: k["AttributeName"] for k in schema["key_schema"]
        }, logical
        # A model that believed an index projected ALL would read partial items from a KEYS_ONLY one.
        template_indexes = {g["IndexName"]: (_keys(g["KeySchema"]), g["Projection"]["ProjectionType"])
                            for g in definition.get("GlobalSecondaryIndexes", [])}
        model_indexes = {
            g["index_name"]: ({k["KeyType"]: k["AttributeName"] for k in g["key_schema"]},
                              g["projection"]["ProjectionType"])
            for g in schema["global_secondary_indexes"]
        }
        assert template_indexes == model_indexes, logical


# Models that share a table with its main model, under partition keys of their own.
SHARED_TABLE_MODELS = {models.AuditRecord: "UsageTable", models.IdempotencyRecord: "UsageTable",
                       models.TopUpRecord: "UsageTable", models.StatementRecord: "UsageTable",
                       models.BalanceShard: "AccountsTable", models.OwnedAccounts: "AccountsTable",
                       models.RollupMarker: "UsageRollupsTable"}


def test_models_read_their_table_names_from_the_template_environment_variables():
    env_of_model = {model: env for model, env in models._MODEL_TABLE_ENV.items()}
    tpl = template.load_template()
    expected = {MODEL_OF_TABLE[logical]: env for logical, env in template.table_env(tpl).items()}
    table_env = template.table_env(tpl)
    expected.update({model: table_env[logical] for model, logical in SHARED_TABLE_MODELS.items()})
    assert expected == env_of_model


def test_models_sharing_a_table_have_its_keys_and_no_index_of_their_own():
    tpl = template.load_template()
    for model, logical in SHARED_TABLE_MODELS.items():
        definitions = template.table_definitions(tpl, {k: k for k in MODEL_OF_TABLE})
        (definition,) = [d for d in definitions if d["TableName"] == logical]
        schema = model._get_schema()
        assert _keys(definition["KeySchema"]) == {k["KeyType"]: k["AttributeName"] for k in schema["key_schema"]}
        assert not schema.get("global_secondary_indexes")
        # Not in the table's sparse indexes: none of their key attributes is an attribute of this model.
        index_keys = {k["AttributeName"] for g in definition.get("GlobalSecondaryIndexes", []) for k in g["KeySchema"]}
        table_keys = set(_keys(definition["KeySchema"]).values())
        assert not (index_keys - table_keys) & set(model.get_attributes()), model
