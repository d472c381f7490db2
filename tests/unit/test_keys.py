import re

import pytest

from onysoft import keys


def test_generated_keys_have_the_documented_format_and_are_unique():
    generated = {keys.generate_key() for _ in range(200)}
    assert len(generated) == 200
    for key in generated:
        assert re.fullmatch(r"sk-ony-[0-9a-f]{48}", key)
        assert keys.is_well_formed(key)


def test_hash_is_sha256_hex_of_the_whole_key():
    key = "sk-ony-" + "0123456789abcdef" * 3
    import hashlib

    assert keys.hash_key(key) == hashlib.sha256(key.encode()).hexdigest()
    assert key not in keys.hash_key(key)


def test_display_form_shows_four_hex_each_end_and_is_not_usable():
    key = "sk-ony-ab82" + "0" * 40 + "98bc"
    shown = keys.display_form(key)
    assert shown == "sk-ony-ab82…98bc"
    assert not keys.is_well_formed(shown)


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Basic abc", "sk-ony-" + "a" * 48, "Bearer sk-ony-" + "a" * 47,
     "Bearer sk-ony-" + "a" * 49, "Bearer sk-ony-" + "A" * 48, "Bearer sk-" + "a" * 48,
     "Bearer  sk-ony-" + "a" * 48, "Bearer sk-ony-" + "a" * 48 + " ", "Bearer sk-ony-" + "g" * 48,
     "Bearer sk-ony-" + "a" * 48 + "\n", "Bearer sk-ony-" + "a" * 48 + ",sk-ony-" + "b" * 48],
)
def test_bearer_key_rejects_anything_but_one_well_formed_key(header):
    assert keys.bearer_key(header) is None


def test_bearer_key_accepts_the_scheme_in_any_case():
    key = "sk-ony-" + "c" * 48
    assert keys.bearer_key(f"Bearer {key}") == key
    assert keys.bearer_key(f"bearer {key}") == key
