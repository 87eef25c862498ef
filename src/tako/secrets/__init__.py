"""Encrypted per-environment secrets: the `Secret` type, keys, the `.tako/secrets` store and operations."""

from __future__ import annotations

from tako.secrets.keys import key_path, keys_dir
from tako.secrets.service import (
    ImportResult,
    SetResult,
    import_key,
    load_env_secrets,
    missing_secrets,
    remove_secret,
    secret_names,
    set_command,
    set_secret,
)
from tako.secrets.store import SecretStore, store_path
from tako.secrets.value import REDACTED, Secret

__all__ = [
    "REDACTED",
    "ImportResult",
    "Secret",
    "SecretStore",
    "SetResult",
    "import_key",
    "key_path",
    "keys_dir",
    "load_env_secrets",
    "missing_secrets",
    "remove_secret",
    "secret_names",
    "set_command",
    "set_secret",
    "store_path",
]
