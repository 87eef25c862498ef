"""The `.tako/secrets` file: per env, secret names in clear and AES-256-GCM values; parse, render, lock.

The file is TOML written by Tako with sorted envs and names and one value per line, so changes diff
well in git:

    format = 1

    [envs.production]
    API_KEY = "<base64(nonce ‖ ciphertext ‖ tag)>"
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tako.errors import SecretsError
from tako.fsutil import write_atomic
from tako.secrets import crypto
from tako.secrets.names import is_env_name, secret_name_problem, shown_name
from tako.secrets.value import Secret

FORMAT_VERSION = 1
STORE_RELPATH = Path(".tako") / "secrets"
_HEADER = (
    "# Tako secrets: names in clear, values encrypted with AES-256-GCM, one key per env\n"
    "# ($TAKO_HOME/keys/<env>, never committed). Safe to commit. Written by `tako secrets`; do not edit.\n"
)


def store_path(project_dir: Path) -> Path:
    return Path(project_dir) / STORE_RELPATH


@dataclass
class SecretStore:
    """The parsed file: env -> secret name -> stored (encrypted, base64) text. Holds no plain value."""

    path: Path
    envs: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def load(cls, project_dir: Path) -> SecretStore:
        """The store of `project_dir`; an empty store if the file does not exist yet."""
        path = store_path(project_dir)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise SecretsError(f"cannot read {path}: {exc}") from exc
        return cls(path, _parse(path, text))

    # --- queries -------------------------------------------------------------------------------

    def names(self) -> dict[str, set[str]]:
        return {env: set(values) for env, values in sorted(self.envs.items())}

    def all_names(self) -> set[str]:
        return {name for values in self.envs.values() for name in values}

    def envs_with(self, name: str) -> list[str]:
        return sorted(env for env, values in self.envs.items() if name in values)

    def has_env(self, env: str) -> bool:
        return bool(self.envs.get(env))

    def missing(self, env: str) -> list[str]:
        """Names that some other env defines and `env` lacks, sorted."""
        present = self.envs.get(env, {})
        return sorted(self.all_names() - present.keys())

    # --- decryption ----------------------------------------------------------------------------

    def decrypt_env(self, env: str, key: bytes, key_path: Path) -> dict[str, Secret]:
        """Every secret of `env`, decrypted and sorted by name; SecretsError naming the first failure."""
        values = self.envs.get(env, {})
        result: dict[str, Secret] = {}
        failed: list[str] = []
        for name in sorted(values):
            try:
                result[name] = crypto.decrypt(key, env, name, values[name])
            except crypto.MalformedCiphertext as exc:
                raise self._malformed(env, name, str(exc)) from None
            except crypto.DecryptionFailed:
                failed.append(name)
        if failed:
            if result:
                # The key opens other values of this env, so this one was altered or moved here.
                raise self.tampered_error(env, failed[0], key_path)
            raise wrong_key_error(env, failed[0], key_path)
        return result

    def count_decryptable(self, env: str, key: bytes) -> tuple[int, list[str]]:
        """How many secrets of `env` the key opens, and the names it does not (malformed ones included)."""
        ok = 0
        failed: list[str] = []
        for name, text in sorted(self.envs.get(env, {}).items()):
            try:
                crypto.decrypt(key, env, name, text)
            except (crypto.MalformedCiphertext, crypto.DecryptionFailed):
                failed.append(name)
            else:
                ok += 1
        return ok, failed

    def tampered_error(self, env: str, name: str, key_path: Path) -> SecretsError:
        return SecretsError(
            f"cannot decrypt secret {name} for env {env}: its value in {self.path} was altered or copied "
            f"from another name or env (the key at {key_path} opens the other secrets of {env})",
            hint=f"set it again with `tako secrets set --env {env} {name}`",
        )

    def _malformed(self, env: str, name: str, why: str) -> SecretsError:
        return SecretsError(
            f"{self.path}: envs.{env}.{name}: malformed value ({why})",
            hint=f"set it again with `tako secrets set --env {env} {name}`",
        )

    # --- changes -------------------------------------------------------------------------------

    def put(self, env: str, name: str, value: Secret, key: bytes) -> bool:
        """Encrypt and store `value`; True if it replaced an existing value."""
        values = self.envs.setdefault(env, {})
        replaced = name in values
        values[name] = crypto.encrypt(key, env, name, value)
        return replaced

    def remove(self, name: str, envs: list[str]) -> list[str]:
        """Remove `name` from these envs; returns the envs it was removed from. Empty envs disappear."""
        removed = []
        for env in envs:
            values = self.envs.get(env)
            if values is not None and name in values:
                del values[name]
                removed.append(env)
                if not values:
                    del self.envs[env]
        return removed

    def render(self) -> str:
        parts = [_HEADER, f"format = {FORMAT_VERSION}\n"]
        for env in sorted(self.envs):
            values = self.envs[env]
            if not values:
                continue
            parts.append(f"\n[envs.{env}]\n")
            # Names and base64 text need no TOML escaping: both alphabets are validated.
            parts.extend(f'{name} = "{values[name]}"\n' for name in sorted(values))
        return "".join(parts)

    def save(self) -> None:
        """Write the file atomically (0644: it is meant to be committed)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, self.render().encode("utf-8"), mode=0o644)


def wrong_key_error(env: str, name: str, key_path: Path) -> SecretsError:
    return SecretsError(
        f"cannot decrypt secret {name} for env {env}: the key at {key_path} does not match",
        hint=f"import the right key with `tako secrets key import --env {env}`",
    )


@contextlib.contextmanager
def locked(project_dir: Path) -> Iterator[None]:
    """Serialise read-modify-write of the store between concurrent `tako secrets` processes."""
    directory = store_path(project_dir).parent
    directory.mkdir(parents=True, exist_ok=True)
    # flock on the directory itself: no lock file to leave behind or to commit by accident.
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _parse(path: Path, text: str) -> dict[str, dict[str, str]]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SecretsError(
            f"{path}: not valid TOML ({exc})",
            hint="restore it from version control (`git checkout -- .tako/secrets`)",
        ) from None
    unknown = sorted(set(data) - {"format", "envs"})
    if unknown:
        raise _bad(path, unknown[0], "unknown key")
    version = data.get("format", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise SecretsError(
            f"{path}: format = {version!r} is not supported (this Tako reads format {FORMAT_VERSION})",
            hint="upgrade Tako",
        )
    envs = data.get("envs", {})
    if not isinstance(envs, dict):
        raise _bad(path, "envs", "expected a table of envs")
    result: dict[str, dict[str, str]] = {}
    for env, values in envs.items():
        if not is_env_name(env):
            raise _bad(path, f"envs.{env}", "invalid env name")
        if not isinstance(values, dict):
            raise _bad(path, f"envs.{env}", "expected a table of secrets")
        parsed: dict[str, str] = {}
        for name, stored in values.items():
            problem = secret_name_problem(name)
            if problem is not None:
                raise _bad(
                    path,
                    f"envs.{env}.{shown_name(name, quoted=False)}",
                    f"invalid secret name ({problem})",
                    hint=f"remove that line from {path}, or restore the file from version control",
                )
            if not isinstance(stored, str):
                raise _bad(path, f"envs.{env}.{name}", "expected an encrypted value (a string)")
            parsed[name] = stored
        if parsed:
            result[env] = parsed
    return result


def _bad(path: Path, key: str, message: str, *, hint: str | None = None) -> SecretsError:
    return SecretsError(
        f"{path}: {key}: {message}",
        hint=hint or "the file is written by `tako secrets`; restore it from version control",
    )
