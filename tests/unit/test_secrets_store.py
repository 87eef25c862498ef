"""The `.tako/secrets` format, AES-256-GCM with env+name binding, key files and their modes."""

from __future__ import annotations

import base64
import os
import stat
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.cli import use_tako_home

from tako.errors import SecretsError, UsageError
from tako.protocol import MAX_ENV_VALUE_BYTES
from tako.secrets import (
    Secret,
    SecretStore,
    crypto,
    import_key,
    key_path,
    keys,
    load_env_secrets,
    missing_secrets,
    remove_secret,
    secret_names,
    set_secret,
    store_path,
)
from tako.secrets.names import MAX_SECRET_NAME_LENGTH, check_env_name, check_secret_name


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return use_tako_home(tmp_path, monkeypatch)


@pytest.fixture
def project(tmp_path: Path, home: Path) -> Path:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "tako.toml").write_text('[envs.production]\nroute = "app.example.com"\n')
    return project


TRICKY = "q\"uo'te $HOME `x` \\back\\ sp ace = eq\nnew line ünï 🐙"


def test_round_trip(project: Path) -> None:
    set_secret(project, "production", "API_KEY", Secret("k1"))
    set_secret(project, "production", "TRICKY", Secret(TRICKY))
    set_secret(project, "staging", "API_KEY", Secret("k2"))
    prod = load_env_secrets(project, "production")
    assert list(prod) == ["API_KEY", "TRICKY"]
    assert prod["API_KEY"].reveal() == "k1"
    assert prod["TRICKY"].reveal() == TRICKY
    assert load_env_secrets(project, "staging")["API_KEY"].reveal() == "k2"
    assert secret_names(project) == {"production": {"API_KEY", "TRICKY"}, "staging": {"API_KEY"}}
    assert missing_secrets(project, "staging") == ["TRICKY"]
    assert missing_secrets(project, "production") == []
    assert missing_secrets(project, "preview") == ["API_KEY", "TRICKY"]
    assert load_env_secrets(project, "preview") == {}


def test_file_format_names_in_clear_values_encrypted(project: Path) -> None:
    set_secret(project, "production", "API_KEY", Secret("plain-value-123"))
    text = store_path(project).read_text()
    assert "plain-value-123" not in text
    data = tomllib.loads(text)
    assert data["format"] == 1
    raw = base64.b64decode(data["envs"]["production"]["API_KEY"], validate=True)
    # nonce (12) + ciphertext (len of value) + tag (16)
    assert len(raw) == 12 + len("plain-value-123") + 16


def test_fresh_nonce_each_time(project: Path) -> None:
    key = crypto.generate_key()
    a = crypto.encrypt(key, "production", "A", Secret("same"))
    b = crypto.encrypt(key, "production", "A", Secret("same"))
    assert a != b


def test_stable_sorted_ordering(project: Path) -> None:
    for env in ("staging", "production", "dev"):
        for name in ("ZED", "ALPHA", "MIDDLE"):
            set_secret(project, env, name, Secret("v"))
    text = store_path(project).read_text()
    tables = [line for line in text.splitlines() if line.startswith("[")]
    assert tables == ["[envs.dev]", "[envs.production]", "[envs.staging]"]
    names = [
        line.split(" = ")[0] for line in text.splitlines() if " = " in line and not line.startswith("format")
    ]
    assert names == ["ALPHA", "MIDDLE", "ZED"] * 3
    # Rewriting without changes gives the same bytes; changing one value changes exactly one line.
    store = SecretStore.load(project)
    store.save()
    assert store_path(project).read_text() == text
    set_secret(project, "staging", "MIDDLE", Secret("new"))
    after = store_path(project).read_text().splitlines()
    changed = [i for i, (x, y) in enumerate(zip(text.splitlines(), after, strict=True)) if x != y]
    assert len(changed) == 1 and after[changed[0]].startswith("MIDDLE = ")


def test_key_file_and_dir_modes(project: Path, home: Path) -> None:
    result = set_secret(project, "production", "API_KEY", Secret("v"))
    path = home / "keys" / "production"
    assert result.key_created == path == key_path("production")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(base64.b64decode(path.read_text().strip(), validate=True)) == 32
    # The second set reuses the key.
    assert set_secret(project, "production", "OTHER", Secret("v")).key_created is None


def test_key_created_under_restrictive_and_permissive_umask(project: Path, home: Path) -> None:
    old = os.umask(0)
    try:
        set_secret(project, "production", "API_KEY", Secret("v"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(key_path("production").stat().st_mode) == 0o600
    assert stat.S_IMODE(key_path("production").parent.stat().st_mode) == 0o700


def test_wrong_key_is_a_clear_error(project: Path) -> None:
    set_secret(project, "production", "API_KEY", Secret("topsecret"))
    keys.write_key("production", crypto.generate_key())
    with pytest.raises(SecretsError) as info:
        load_env_secrets(project, "production")
    msg = str(info.value)
    assert "cannot decrypt secret API_KEY for env production" in msg
    assert f"the key at {key_path('production')} does not match" in msg
    assert "tako secrets key import --env production" in msg
    assert "topsecret" not in msg


def test_tampered_ciphertext_is_rejected(project: Path) -> None:
    set_secret(project, "production", "API_KEY", Secret("topsecret"))
    set_secret(project, "production", "OTHER", Secret("fine"))
    store = SecretStore.load(project)
    raw = bytearray(base64.b64decode(store.envs["production"]["API_KEY"]))
    raw[14] ^= 0x01
    store.envs["production"]["API_KEY"] = base64.b64encode(bytes(raw)).decode()
    store.save()
    with pytest.raises(SecretsError) as info:
        load_env_secrets(project, "production")
    msg = str(info.value)
    assert "cannot decrypt secret API_KEY for env production" in msg
    assert "altered" in msg and "tako secrets set --env production API_KEY" in msg
    assert "topsecret" not in msg and "fine" not in msg


def test_single_tampered_value_reports_key_mismatch(project: Path) -> None:
    # With one secret, a tampered value is indistinguishable from a wrong key: the message says so.
    set_secret(project, "production", "API_KEY", Secret("topsecret"))
    store = SecretStore.load(project)
    raw = bytearray(base64.b64decode(store.envs["production"]["API_KEY"]))
    raw[-1] ^= 0x80
    store.envs["production"]["API_KEY"] = base64.b64encode(bytes(raw)).decode()
    store.save()
    with pytest.raises(SecretsError, match="cannot decrypt secret API_KEY for env production"):
        load_env_secrets(project, "production")


def test_value_moved_between_names_is_rejected(project: Path) -> None:
    set_secret(project, "production", "API_KEY", Secret("one"))
    set_secret(project, "production", "DB_URL", Secret("two"))
    store = SecretStore.load(project)
    store.envs["production"]["DB_URL"] = store.envs["production"]["API_KEY"]
    store.save()
    with pytest.raises(SecretsError, match="cannot decrypt secret DB_URL for env production"):
        load_env_secrets(project, "production")


def test_value_moved_between_envs_is_rejected(project: Path) -> None:
    # Same key for both envs (imported), so only the env binding can catch the move.
    set_secret(project, "production", "API_KEY", Secret("prod"))
    keys.write_key("staging", keys.read_key("production"))
    set_secret(project, "staging", "API_KEY", Secret("stage"))
    set_secret(project, "staging", "OTHER", Secret("x"))
    store = SecretStore.load(project)
    store.envs["staging"]["API_KEY"] = store.envs["production"]["API_KEY"]
    store.save()
    with pytest.raises(SecretsError, match="cannot decrypt secret API_KEY for env staging"):
        load_env_secrets(project, "staging")


def test_missing_key(project: Path) -> None:
    set_secret(project, "production", "API_KEY", Secret("v"))
    key_path("production").unlink()
    with pytest.raises(SecretsError) as info:
        load_env_secrets(project, "production")
    assert "no key for env production" in str(info.value)
    assert str(key_path("production")) in str(info.value)
    assert "tako secrets key import --env production" in str(info.value)


def test_key_readable_by_others_is_refused(project: Path) -> None:
    set_secret(project, "production", "API_KEY", Secret("v"))
    os.chmod(key_path("production"), 0o644)
    with pytest.raises(SecretsError, match="chmod 600"):
        load_env_secrets(project, "production")


def test_malformed_key_file(project: Path) -> None:
    set_secret(project, "production", "API_KEY", Secret("v"))
    key_path("production").write_text("bm90IDMyIGJ5dGVz\n")
    with pytest.raises(SecretsError, match="is not valid: expected base64 of exactly 32 bytes"):
        load_env_secrets(project, "production")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("format = 1\n[envs.production\n", "not valid TOML"),
        ("format = 2\n", "format = 2 is not supported"),
        ("formt = 1\n", "formt: unknown key"),
        ('[envs.production]\napi_key = "x"\n', "envs.production.api_key: invalid secret name"),
        ('[envs.Prod]\nAPI_KEY = "x"\n', "envs.Prod: invalid env name"),
        ("[envs.production]\nAPI_KEY = 3\n", "expected an encrypted value"),
    ],
)
def test_malformed_store_names_the_file(project: Path, text: str, fragment: str) -> None:
    path = store_path(project)
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(SecretsError) as info:
        load_env_secrets(project, "production")
    assert str(path) in str(info.value)
    assert fragment in str(info.value)


def test_malformed_value_names_file_and_key(project: Path) -> None:
    set_secret(project, "production", "API_KEY", Secret("v"))
    path = store_path(project)
    path.write_text(path.read_text().replace('API_KEY = "', 'API_KEY = "!!'))
    with pytest.raises(SecretsError) as info:
        load_env_secrets(project, "production")
    assert f"{path}: envs.production.API_KEY: malformed value" in str(info.value)


def test_set_refuses_with_wrong_local_key(project: Path) -> None:
    set_secret(project, "production", "API_KEY", Secret("v"))
    keys.write_key("production", crypto.generate_key())
    with pytest.raises(SecretsError, match="does not decrypt the existing secrets of env production"):
        set_secret(project, "production", "NEW", Secret("x"))
    assert "NEW" not in store_path(project).read_text()


def test_set_without_key_for_existing_env_does_not_create_one(project: Path) -> None:
    set_secret(project, "production", "API_KEY", Secret("v"))
    key_path("production").unlink()
    with pytest.raises(SecretsError, match="no key for env production"):
        set_secret(project, "production", "NEW", Secret("x"))
    assert not key_path("production").exists()


def test_remove(project: Path) -> None:
    set_secret(project, "production", "API_KEY", Secret("v"))
    set_secret(project, "staging", "API_KEY", Secret("v"))
    set_secret(project, "staging", "OTHER", Secret("v"))
    assert remove_secret(project, "API_KEY", "staging") == ["staging"]
    assert secret_names(project) == {"production": {"API_KEY"}, "staging": {"OTHER"}}
    assert remove_secret(project, "API_KEY") == ["production"]
    assert secret_names(project) == {"staging": {"OTHER"}}
    with pytest.raises(SecretsError, match="secret API_KEY is not set in any env"):
        remove_secret(project, "API_KEY")


def test_import_key_verifies_against_existing_secrets(project: Path) -> None:
    set_secret(project, "production", "API_KEY", Secret("v"))
    good = keys.read_key("production")
    with pytest.raises(SecretsError, match="does not decrypt the secrets of env production"):
        import_key(project, "production", crypto.generate_key())
    assert keys.read_key("production") == good
    key_path("production").unlink()
    result = import_key(project, "production", good)
    assert result.verified == 1 and not result.replaced
    assert stat.S_IMODE(key_path("production").stat().st_mode) == 0o600
    assert load_env_secrets(project, "production")["API_KEY"].reveal() == "v"
    assert import_key(project, "production", good).unchanged
    # An env without secrets takes any valid key.
    assert import_key(project, "staging", crypto.generate_key()).verified == 0


@pytest.mark.parametrize(
    "text",
    ["", "not base64!!", base64.b64encode(b"x" * 31).decode(), base64.b64encode(b"x" * 33).decode(), "é"],
)
def test_parse_key_rejects(text: str) -> None:
    with pytest.raises(SecretsError, match="not a valid key") as info:
        keys.parse_key(text)
    assert info.value.exit_code == 2


def test_parse_key_accepts_whitespace() -> None:
    key = crypto.generate_key()
    assert keys.parse_key("  " + base64.b64encode(key).decode() + "\n") == key


@pytest.mark.parametrize("name", ["api_key", "1KEY", "_KEY", "KEY-1", "", "KÉY", "ENV", "TAKO_BUILD"])
def test_invalid_secret_names(name: str) -> None:
    with pytest.raises(SecretsError):
        check_secret_name(name)


@pytest.mark.parametrize("env", ["Prod", "1prod", "prod-", "", "a" * 64, "pro_d", "-x"])
def test_invalid_env_names(env: str) -> None:
    with pytest.raises(SecretsError):
        check_env_name(env)


def test_secret_names_are_at_most_128_characters() -> None:
    assert MAX_SECRET_NAME_LENGTH == 128
    assert check_secret_name("A" * 128) == "A" * 128
    with pytest.raises(SecretsError, match="at most 128 characters, got 5000") as info:
        check_secret_name("A" * 5000)
    assert "A" * 200 not in str(info.value)


def test_store_with_an_overlong_name_is_refused_at_load(project: Path) -> None:
    path = store_path(project)
    path.parent.mkdir()
    path.write_text(f'[envs.production]\n{"A" * 5000} = "x"\n')
    with pytest.raises(SecretsError, match="at most 128 characters") as info:
        load_env_secrets(project, "production")
    assert str(path) in str(info.value) and "A" * 200 not in str(info.value)
    assert info.value.hint is not None and "remove" in info.value.hint


def test_stored_value_over_the_limit_is_refused_naming_secret_and_env(project: Path) -> None:
    """A store written before the limit (or by hand): deploy and sync stop with the secret's name and
    env, not with the server's "Argument list too long"; `rm` and `set` still work to fix it."""
    set_secret(project, "production", "OK", Secret("v"))
    store = SecretStore.load(project)
    key = keys.read_key("production")
    store.put("production", "HUGE_CERT", Secret("x" * (MAX_ENV_VALUE_BYTES + 1)), key)
    store.save()
    with pytest.raises(SecretsError) as info:
        load_env_secrets(project, "production")
    message = str(info.value)
    assert "HUGE_CERT" in message and "production" in message and "64 KiB" in message
    assert "x" * 100 not in message
    assert info.value.hint is not None and "tako secrets set --env production HUGE_CERT" in info.value.hint
    set_secret(project, "production", "HUGE_CERT", Secret("small"))
    assert load_env_secrets(project, "production")["HUGE_CERT"].reveal() == "small"
    set_secret(project, "production", "OTHER", Secret("v"))
    store = SecretStore.load(project)
    store.put("production", "OTHER", Secret("y" * (MAX_ENV_VALUE_BYTES + 1)), key)
    store.save()
    remove_secret(project, "OTHER", "production")
    assert set(load_env_secrets(project, "production")) == {"OK", "HUGE_CERT"}


def test_valid_names() -> None:
    assert check_secret_name("A") == "A"
    assert check_secret_name("API_KEY_2") == "API_KEY_2"
    assert check_env_name("a") == "a"
    assert check_env_name("a" * 63) == "a" * 63
    assert check_env_name("pr-42") == "pr-42"


def test_empty_and_nul_values_refused(project: Path) -> None:
    with pytest.raises(UsageError, match="empty"):
        set_secret(project, "production", "API_KEY", Secret(""))
    with pytest.raises(UsageError, match="NUL"):
        set_secret(project, "production", "API_KEY", Secret("a\x00b"))
    assert not store_path(project).exists()


def test_home_can_be_injected(project: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    set_secret(project, "production", "API_KEY", Secret("v"), home=other)
    assert (other / "keys" / "production").is_file()
    assert not key_path("production").exists()
    assert load_env_secrets(project, "production", home=other)["API_KEY"].reveal() == "v"


def test_concurrent_sets_all_survive(project: Path) -> None:
    # The store lock serialises read-modify-write: no set is lost to a concurrent one.
    set_secret(project, "production", "FIRST", Secret("v"))
    names = [f"NAME_{i}" for i in range(12)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(lambda n: set_secret(project, "production", n, Secret(n.lower())), names))
    got = load_env_secrets(project, "production")
    assert set(got) == {"FIRST", *names}
    assert all(got[n].reveal() == n.lower() for n in names)


@settings(max_examples=60, deadline=None)
@given(
    value=st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), min_size=1),
    env=st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True),
    name=st.from_regex(r"[A-Z][A-Z0-9_]{0,20}", fullmatch=True),
)
def test_crypto_round_trip_property(value: str, env: str, name: str) -> None:
    key = crypto.generate_key()
    text = crypto.encrypt(key, env, name, Secret(value))
    assert crypto.decrypt(key, env, name, text).reveal() == value
    with pytest.raises(crypto.DecryptionFailed):
        crypto.decrypt(key, env, name + "X", text)


def test_surrogates_refused(project: Path) -> None:
    with pytest.raises(UsageError, match="not valid UTF-8"):
        set_secret(project, "production", "API_KEY", Secret("a\udcff"))
