"""Secret operations used by the CLI and by deploy: load an env's secrets, set, remove, import a key.

Each function takes the project dir, validates names, holds the store lock for read-modify-write and
raises SecretsError with a fix-it hint; none of them ever puts a value in a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tako.errors import SecretsError, UsageError
from tako.secrets import crypto, keys
from tako.secrets.names import check_env_name, check_secret_name
from tako.secrets.store import SecretStore, locked
from tako.secrets.value import Secret


def load_env_secrets(project_dir: Path, env: str, *, home: Path | None = None) -> dict[str, Secret]:
    """Every secret of `env`, decrypted, sorted by name. `{}` if the env has none (no key needed then).

    SecretsError if the key is missing or does not match, or a value was tampered with or moved.
    `home` is the Tako home holding `keys/` (default `$TAKO_HOME` or `~/.tako`).
    """
    check_env_name(env)
    store = SecretStore.load(project_dir)
    if not store.has_env(env):
        return {}
    return store.decrypt_env(env, keys.read_key(env, home), keys.key_path(env, home))


def missing_secrets(project_dir: Path, env: str) -> list[str]:
    """Names that other envs define and `env` lacks, sorted."""
    check_env_name(env)
    return SecretStore.load(project_dir).missing(env)


def secret_names(project_dir: Path) -> dict[str, set[str]]:
    """env -> names of its secrets (envs without secrets are absent)."""
    return SecretStore.load(project_dir).names()


def set_command(env: str, name: str) -> str:
    """The command that sets `name` in `env`, for error hints."""
    return f"tako secrets set --env {env} {name}"


@dataclass(frozen=True)
class SetResult:
    replaced: bool
    key_created: Path | None  # the new key file, when this call created the env's key


def set_secret(
    project_dir: Path, env: str, name: str, value: Secret, *, home: Path | None = None
) -> SetResult:
    """Encrypt `value` as secret `name` of `env`, creating the env's key if the env has no secrets yet.

    If the env already has secrets, the local key must open at least one of them: a different key
    would leave the env with values that no single key decrypts.
    """
    check_env_name(env)
    check_secret_name(name)
    check_value(value)
    with locked(project_dir):
        store = SecretStore.load(project_dir)
        path = keys.key_path(env, home)
        created: Path | None = None
        if store.has_env(env):
            key = keys.read_key(env, home)
            opened, _failed = store.count_decryptable(env, key)
            if opened == 0:
                raise SecretsError(
                    f"the key at {path} does not decrypt the existing secrets of env {env}; "
                    f"refusing to add {name} with it",
                    hint=(
                        f"import the right key with `tako secrets key import --env {env}`, or start over "
                        f"by removing the env's secrets (`tako secrets rm --env {env} NAME --yes`)"
                    ),
                )
        elif keys.has_key(env, home):
            key = keys.read_key(env, home)
        else:
            key = crypto.generate_key()
            created = keys.write_key(env, key, home)
        replaced = store.put(env, name, value, key)
        store.save()
    return SetResult(replaced=replaced, key_created=created)


def check_value(value: Secret) -> None:
    plain = value.reveal()
    if not plain:
        raise UsageError(
            "refusing to set an empty secret value", hint="remove a secret with `tako secrets rm`"
        )
    try:
        plain.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (undecodable terminal input); `from None` keeps the text out of tracebacks.
        raise UsageError("the secret value is not valid UTF-8 text") from None
    if "\x00" in plain:
        # execve() cannot pass NUL in an environment variable; the app would never see the full value.
        raise UsageError("secret values cannot contain NUL bytes")


def remove_secret(project_dir: Path, name: str, env: str | None = None) -> list[str]:
    """Remove `name` from `env`, or from every env when `env` is None; returns the envs it left."""
    if env is not None:
        check_env_name(env)
    with locked(project_dir):
        store = SecretStore.load(project_dir)
        targets = store.envs_with(name) if env is None else [env]
        removed = store.remove(name, targets)
        if not removed:
            where = f"env {env}" if env is not None else "any env"
            raise SecretsError(
                f"secret {name} is not set in {where}", hint="list secrets with `tako secrets ls`"
            )
        store.save()
    return removed


def envs_with_secret(project_dir: Path, name: str) -> list[str]:
    return SecretStore.load(project_dir).envs_with(name)


@dataclass(frozen=True)
class ImportResult:
    path: Path
    verified: int  # secrets of the env that the key opens
    undecryptable: list[str]  # secrets it does not open although it opens others (altered values)
    replaced: bool  # an existing, different key file was replaced
    unchanged: bool  # the same key was already there


def import_key(project_dir: Path, env: str, key: bytes, *, home: Path | None = None) -> ImportResult:
    """Save `key` as the key of `env`, after checking it opens the env's secrets (if it has any)."""
    check_env_name(env)
    store = SecretStore.load(project_dir)
    verified, undecryptable = store.count_decryptable(env, key)
    if store.has_env(env) and verified == 0:
        raise SecretsError(
            f"this key does not decrypt the secrets of env {env} in {store.path}; not saved",
            hint=f"export the key of env {env} again from a machine where `tako secrets ls` works for it",
        )
    path = keys.key_path(env, home)
    existing: bytes | None = None
    had_file = path.exists()
    if had_file:
        try:
            existing = keys.read_key(env, home)
        except SecretsError:
            existing = None  # an unusable key file is simply replaced
    unchanged = existing == key
    if not unchanged:
        keys.write_key(env, key, home)
    return ImportResult(
        path=path,
        verified=verified,
        undecryptable=undecryptable,
        replaced=had_file and not unchanged,
        unchanged=unchanged,
    )
