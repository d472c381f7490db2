from onysoft.key_types import ACCOUNT_KINDS, KEY_TYPES, key_type_for_account_kind


def test_registry_matches_the_product_table():
    table = {name: (kt.account_kind, kt.currency, kt.default_markup_bp) for name, kt in KEY_TYPES.items()}
    assert table == {
        "user": ("user", "TRY", 5000),
        "project": ("project", "TRY", 5000),
        "partner_project": ("partner_project", "USD", 5000),
        "partner_customer": ("partner_customer", "TRY", 3000),
    }


def test_each_account_kind_maps_back_to_its_key_type():
    assert set(ACCOUNT_KINDS) == set(KEY_TYPES)
    for kind in ACCOUNT_KINDS:
        assert key_type_for_account_kind(kind).account_kind == kind
