"""Secret operations used by the CLI and by deploy: load an env's secrets, set, remove, import a key.

Each function takes the project dir, validates names, holds the store lock for read-modify-write and
raises SecretsError with a fix-it hint; none of them ever puts a value in a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tako.errors import SecretsError, UsageError
from tako.protocol.limits import MAX_ENV_VALUE_BYTES
from tako.secrets import crypto, keys
from tako.secrets.names import check_env_name, check_secret_name
from tako.secrets.store import SecretStore, locked
from tako.secrets.value import Secret


def load_env_secrets(project_dir: Path, env: str, *, home: Path | None = None) -> dict[str, Secret]:
    """Every secret of `env`, decrypted, sorted by name. `{}` if the env has none (no key needed then).

    SecretsError if the key is missing or does not match, a value was tampered with or moved, or is
    too large to be delivered (MAX_ENV_VALUE_BYTES).
    `home` is the Tako home holding `keys/` (default `$TAKO_HOME` or `~/.tako`).
    """
    check_env_name(env)
    store = SecretStore.load(project_dir)
    if not store.has_env(env):
        return {}
    values = store.decrypt_env(env, keys.read_key(env, home), keys.key_path(env, home))
    for name, value in values.items():
        check_stored_size(env, name, value)
    return values


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
    check_value(value, name)
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


def check_value(value: Secret, name: str) -> None:
    """UsageError (exit 2) unless `value` can be delivered to an app as the variable `name`."""
    plain = value.reveal()
    if not plain:
        raise UsageError(
            "refusing to set an empty secret value", hint="remove a secret with `tako secrets rm`"
        )
    try:
        size = len(plain.encode("utf-8"))
    except UnicodeEncodeError:
        # Lone surrogates (undecodable terminal input); `from None` keeps the text out of tracebacks.
        raise UsageError("the secret value is not valid UTF-8 text") from None
    if size > MAX_ENV_VALUE_BYTES:
        raise value_too_large(name, f"{size} bytes")
    if "\x00" in plain:
        # execve() cannot pass NUL in an environment variable; the app would never see the full value.
        raise UsageError("secret values cannot contain NUL bytes")


def value_too_large(name: str, size: str) -> UsageError:
    """The error for a value over MAX_ENV_VALUE_BYTES; `size` says how large it is, as far as known."""
    return UsageError(
        f"the value of {name} is {size}: a secret value is at most {MAX_ENV_VALUE_BYTES // 1024} KiB "
        f"({MAX_ENV_VALUE_BYTES} bytes of UTF-8)",
        hint="an app receives its secrets in its environment, where Linux refuses any one variable over "
        "128 KiB; ship large data (certificate bundles, key stores) as a file of the app or keep it on "
        "the server, and put its path in a secret",
    )


def check_stored_size(env: str, name: str, value: Secret) -> None:
    """SecretsError naming the secret and env when a stored value is over the limit (a store written
    before the limit existed, or by hand): deploy and sync stop here, before anything is uploaded."""
    size = len(value.reveal().encode("utf-8"))
    if size > MAX_ENV_VALUE_BYTES:
        raise SecretsError(
            f"secret {name} of env {env} is {size} bytes; at most {MAX_ENV_VALUE_BYTES // 1024} KiB can be "
            "delivered to an app (Linux refuses larger environment variables)",
            hint=f"set a smaller value with `{set_command(env, name)}` (a large file belongs with the app, "
            f"its path in the secret), or remove it with `tako secrets rm --env {env} {name} --yes`",
        )


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
