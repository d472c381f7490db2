"""template.yaml is the only schema: the PynamoDB models must say the same keys and indexes."""

from onysoft import models
from onysoft_tools import template

MODEL_OF_TABLE = {
    "ApiKeysTable": models.ApiKey, "AccountsTable": models.Account, "UsageTable": models.UsageRecord,
    "RateLimitsTable": models.RateLimitCounter, "CatalogTable": models.CatalogEntry,
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
        template_indexes = {g["IndexName"]: _keys(g["KeySchema"]) for g in definition.get("GlobalSecondaryIndexes", [])}
        model_indexes = {
            g["index_name"]: {k["KeyType"]: k["AttributeName"] for k in g["key_schema"]}
            for g in schema["global_secondary_indexes"]
        }
        assert template_indexes == model_indexes, logical


def test_models_read_their_table_names_from_the_template_environment_variables():
    env_of_model = {model: env for model, env in models._MODEL_TABLE_ENV.items()}
    tpl = template.load_template()
    assert {MODEL_OF_TABLE[logical]: env for logical, env in template.table_env(tpl).items()} == env_of_model
