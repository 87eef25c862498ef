"""Per-environment key files: 32 random bytes, base64, at `$TAKO_HOME/keys/<env>` (file 0600, dir 0700)."""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path

from tako.config import paths
from tako.errors import SecretsError
from tako.fsutil import write_atomic
from tako.secrets.crypto import KEY_SIZE
from tako.secrets.names import check_env_name


def keys_dir(home: Path | None = None) -> Path:
    """The directory of key files under `home` (default: `$TAKO_HOME`, read at every call)."""
    return paths.keys_dir(home)


def key_path(env: str, home: Path | None = None) -> Path:
    return keys_dir(home) / check_env_name(env)


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def parse_key(text: str) -> bytes:
    """A key from its base64 text (surrounding whitespace ignored); SecretsError (exit 2) if invalid."""
    compact = text.strip()
    try:
        key = base64.b64decode(compact.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise SecretsError(
            "not a valid key: expected base64 of exactly 32 bytes",
            hint="paste the output of `tako secrets key export` from a machine that has the key",
            exit_code=2,
        ) from None
    if len(key) != KEY_SIZE:
        raise SecretsError(
            f"not a valid key: expected base64 of exactly {KEY_SIZE} bytes, got {len(key)} bytes",
            hint="paste the output of `tako secrets key export` from a machine that has the key",
            exit_code=2,
        )
    return key


def missing_key_error(env: str, path: Path) -> SecretsError:
    return SecretsError(
        f"no key for env {env}: {path} does not exist",
        hint=(
            f"import it with `tako secrets key import --env {env}` "
            f"(on a machine that has it: `tako secrets key export --env {env}`)"
        ),
    )


def has_key(env: str, home: Path | None = None) -> bool:
    return key_path(env, home).is_file()


def read_key(env: str, home: Path | None = None) -> bytes:
    """The key of `env`. SecretsError if it is missing, unreadable, open to other users, or malformed."""
    path = key_path(env, home)
    try:
        st = path.stat()
        if st.st_mode & 0o077:
            raise SecretsError(
                f"key file {path} is accessible by other users (mode {stat.S_IMODE(st.st_mode):04o})",
                hint=f"run `chmod 600 {path}`",
            )
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise missing_key_error(env, path) from None
    except (OSError, UnicodeDecodeError) as exc:
        # The message of these errors holds at most a path and a position, never key bytes.
        raise SecretsError(f"cannot read key file {path}: {type(exc).__name__}") from None
    try:
        return parse_key(text)
    except SecretsError:
        raise SecretsError(
            f"key file {path} is not valid: expected base64 of exactly {KEY_SIZE} bytes",
            hint=f"import the right key with `tako secrets key import --env {env}`",
        ) from None


def write_key(env: str, key: bytes, home: Path | None = None) -> Path:
    """Save the key of `env` atomically (0600 in a 0700 dir) and return its path."""
    if len(key) != KEY_SIZE:
        raise ValueError(f"a key is {KEY_SIZE} bytes")
    path = key_path(env, home)
    directory = path.parent
    directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    directory.mkdir(exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    write_atomic(path, (encode_key(key) + "\n").encode("ascii"), mode=0o600)
    return path
