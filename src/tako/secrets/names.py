"""Validation of secret names (`[A-Z][A-Z0-9_]*`, at most 128 characters) and env names (`a-z0-9-`, as
in tako.toml)."""

from __future__ import annotations

import re

from tako.errors import SecretsError

# Names are environment variable names; 128 characters is far beyond any real one, and keeps names
# (which appear in clear in `.tako/secrets`, in `tako secrets ls` and in messages) readable.
MAX_SECRET_NAME_LENGTH = 128
_SECRET_NAME = re.compile(r"[A-Z][A-Z0-9_]*\Z")
_ENV_NAME = re.compile(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
# Tako sets these itself after the merge (docs/tako-toml.md): a secret of that name would be overridden.
RESERVED_NAMES = frozenset(
    {"ENV", "TAKO_BUILD", "PORT", "HOST", "TAKO_APP", "TAKO_INSTANCE", "TAKO_DATA_DIR"}
)


def is_secret_name(name: str) -> bool:
    return len(name) <= MAX_SECRET_NAME_LENGTH and bool(_SECRET_NAME.match(name))


def is_env_name(env: str) -> bool:
    return bool(_ENV_NAME.match(env))


def shown_name(name: str, *, quoted: bool = True) -> str:
    """`name` for a message, cut short when it is too long to be useful in full."""
    if len(name) <= 40:
        return repr(name) if quoted else name
    head = repr(name[:32]) if quoted else name[:32]
    return f"{head}... ({len(name)} characters)"


def secret_name_problem(name: str) -> str | None:
    """Why `name` is not a valid secret name (reserved names aside), or None."""
    if len(name) > MAX_SECRET_NAME_LENGTH:
        return f"at most {MAX_SECRET_NAME_LENGTH} characters, got {len(name)}"
    if not _SECRET_NAME.match(name):
        return "use capital letters, digits and underscores, starting with a letter"
    return None


def check_secret_name(name: str, *, reserved_ok: bool = False) -> str:
    """Return `name` if it is a valid secret name, else raise a SecretsError (exit 2) that says why.

    `reserved_ok` lets a reserved name through (to remove one that a hand-edited store holds)."""
    problem = secret_name_problem(name)
    if problem is not None:
        raise SecretsError(
            f"invalid secret name {shown_name(name)}: {problem}",
            hint="for example API_KEY or DATABASE_URL",
            exit_code=2,
        )
    if name in RESERVED_NAMES and not reserved_ok:
        raise SecretsError(
            f"{name} is reserved: Tako sets it for every instance",
            hint=f"choose another name; reserved: {', '.join(sorted(RESERVED_NAMES))}",
            exit_code=2,
        )
    return name


def check_env_name(env: str) -> str:
    """Return `env` if it is a valid environment name, else raise a SecretsError (exit 2)."""
    if not is_env_name(env):
        raise SecretsError(
            f"invalid env name {env!r}: use 1-63 characters of a-z, 0-9 and '-', "
            "starting with a letter and not ending with '-'",
            hint="for example production or staging",
            exit_code=2,
        )
    return env
