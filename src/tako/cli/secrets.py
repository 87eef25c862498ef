"""`tako secrets`: set, rm, ls, sync and key export/import. Values come from a masked prompt, stdin or a
file, never from the command line, and are never printed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO

import click
from rich.table import Table
from rich.text import Text

from tako.cli.confirm import Confirmation, confirm_or_require_yes
from tako.cli.context import CliContext, get_cli
from tako.cli.render import print_json, print_message, print_success, print_warning
from tako.errors import SecretsError, TakoError, UsageError
from tako.protocol import MAX_ENV_VALUE_BYTES
from tako.secrets import keys, service
from tako.secrets.names import check_env_name, check_secret_name
from tako.secrets.store import SecretStore
from tako.secrets.value import Secret

DEFAULT_ENV = "production"

env_option = click.option(
    "--env",
    "env",
    default=DEFAULT_ENV,
    show_default=True,
    metavar="ENV",
    help="Environment.",
)


def _stdin_bytes() -> BinaryIO:
    # Bytes, not text: the value reaches the store exactly as typed, whatever the locale.
    return sys.stdin.buffer


def _declared_envs(project_dir: Path) -> list[str]:
    """Envs declared in tako.toml; none if it does not load (the secrets commands still work then)."""
    from tako.config.project import load_project

    try:
        return sorted(load_project(project_dir).envs)
    except TakoError:
        return []


@click.group()
def secrets() -> None:
    """Encrypted per-environment secrets, delivered to the app's `.env` at deploy and by `sync`."""


# --- set ---------------------------------------------------------------------------------------


@secrets.command("set")
@env_option
@click.option(
    "--from-file",
    "from_file",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=str),
    metavar="PATH",
    help="Take the whole content of PATH as the value, verbatim (newlines included); '-' reads all of stdin.",
)
@click.argument("name")
@click.argument("extra", nargs=-1, metavar="")
def set_cmd(env: str, name: str, from_file: str | None, extra: tuple[str, ...]) -> None:
    """Set secret NAME for an environment.

    On a terminal the value is asked with a masked prompt; otherwise exactly one line is read from stdin
    (without its trailing newline). The value is never taken from the command line.
    """
    if extra or "=" in name:
        # Caught here so that click's "unexpected extra argument (...)" does not echo the value back.
        raise UsageError(
            "secret values are never taken from the command line (process lists and shell history keep them)",
            hint="run `tako secrets set NAME` and type the value at the prompt, or give it as one line on "
            "stdin; if that value is real, consider rotating it",
        )
    check_env_name(env)
    check_secret_name(name)
    cli = get_cli()
    project_dir = cli.project_dir()
    value = _read_value(cli, name, env, from_file)
    result = service.set_secret(project_dir, env, name, value, home=cli.home)
    print_success(cli.console, f"{'Updated' if result.replaced else 'Set'} {name} for {env}.")
    if result.key_created is not None:
        print_message(
            cli.console,
            f"Created the key for {env} at {result.key_created}. Keep a copy somewhere safe and share it "
            f"with your team: `tako secrets key export --env {env}`.",
        )
    declared = _declared_envs(project_dir)
    if declared and env not in declared and env != "development":
        print_warning(cli.err_console, f"env {env} is not declared in tako.toml ({', '.join(declared)} are)")
    print_message(
        cli.console, f"Running apps get it with `tako secrets sync --env {env}` or the next deploy."
    )


def _read_value(cli: CliContext, name: str, env: str, from_file: str | None) -> Secret:
    # Reads stop one byte past the limit: enough to know a value is too large without holding all of it.
    limit = MAX_ENV_VALUE_BYTES + 1
    if from_file is not None:
        if from_file == "-":
            raw = _stdin_bytes().read(limit)
        else:
            try:
                with open(from_file, "rb") as handle:
                    raw = handle.read(limit)
            except OSError as exc:
                raise UsageError(f"cannot read {from_file}: {exc.strerror}") from None
    elif cli.interactive:
        # click asks again on an empty answer; the confirmation catches a mistyped masked value.
        typed: str = click.prompt(
            f"Value of {name} for {env}",
            hide_input=True,
            confirmation_prompt=True,
            prompt_suffix=": ",
            err=True,
        )
        return _checked(Secret(typed), name)
    else:
        line = _stdin_bytes().readline(limit + 1)  # + 1: the newline
        raw = line[:-1] if line.endswith(b"\n") else line
    if len(raw) > MAX_ENV_VALUE_BYTES:
        raise service.value_too_large(name, f"more than {MAX_ENV_VALUE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        # `from None`: the exception object holds the raw bytes.
        raise UsageError("the secret value is not valid UTF-8 text") from None
    return _checked(Secret(text), name)


def _checked(value: Secret, name: str) -> Secret:
    if not value.reveal():
        raise UsageError(
            "refusing to set an empty secret value",
            hint="give the value on a terminal prompt, or as one line on stdin",
        )
    service.check_value(value, name)
    return value


# --- rm ----------------------------------------------------------------------------------------


@secrets.command("rm")
@click.option(
    "--env", "env", default=None, metavar="ENV", help="Remove only from this env (default: every env)."
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (required off a terminal).")
@click.argument("name")
def rm_cmd(env: str | None, yes: bool, name: str) -> None:
    """Remove secret NAME from one environment, or from every environment."""
    if env is not None:
        check_env_name(env)
    check_secret_name(name, reserved_ok=True)
    cli = get_cli()
    project_dir = cli.project_dir()
    present = service.envs_with_secret(project_dir, name)
    targets = present if env is None else [e for e in present if e == env]
    env_flag = f"--env {env} " if env is not None else ""  # ends in a space: a prefix of the name
    if not targets:
        where = f"env {env}" if env is not None else "any env"
        raise SecretsError(f"secret {name} is not set in {where}", hint="list secrets with `tako secrets ls`")
    where = ", ".join(targets)
    if not yes:
        ask = Confirmation(
            question=f"Remove secret {name} from {where}?",
            refusal=f"not removing {name} from {where}: confirmation needed and stdin is not a terminal",
            hint=f"confirm with --yes: `tako secrets rm {env_flag}{name} --yes`",
            declined=f"Secret {name} not removed.",
        )
        confirm_or_require_yes(cli, ask)
    removed = service.remove_secret(project_dir, name, env)
    print_success(cli.console, f"Removed {name} from {', '.join(removed)}.")
    syncs = " and ".join(f"`tako secrets sync --env {e}`" for e in removed)
    print_message(cli.console, f"Running apps keep it until {syncs}.")


# --- ls ----------------------------------------------------------------------------------------


@secrets.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def ls_cmd(as_json: bool) -> None:
    """Show which secrets each environment has (never their values)."""
    cli = get_cli()
    project_dir = cli.project_dir()
    store = SecretStore.load(project_dir)
    names = store.names()
    envs = sorted(set(names) | set(_declared_envs(project_dir)))
    all_names = sorted(store.all_names())
    gaps = {env: lacking for env in envs if (lacking := store.missing(env))}
    if as_json:
        print_json(
            cli.console,
            {
                "envs": envs,
                "secrets": {
                    name: [env for env in envs if name in names.get(env, set())] for name in all_names
                },
                "missing": gaps,
            },
        )
        return
    if not all_names:
        print_message(cli.console, "No secrets yet. Set one with `tako secrets set --env ENV NAME`.")
        return
    table = Table(box=None, show_edge=False, pad_edge=False, header_style="bold")
    table.add_column("NAME", no_wrap=True)
    for env in envs:
        table.add_column(env, justify="center", no_wrap=True)
    for name in all_names:
        present = [name in names.get(env, set()) for env in envs]
        table.add_row(Text(name), *(Text("✓", "green") if p else Text("—", "red") for p in present))
    cli.console.print(table)
    if gaps:
        print_warning(
            cli.err_console, "some envs lack secrets that other envs have; deploys to them will fail:"
        )
        for env, lacking in gaps.items():
            for name in lacking:
                print_message(
                    cli.err_console, f"  {env}: {name} missing — `tako secrets set --env {env} {name}`"
                )


# --- sync --------------------------------------------------------------------------------------


@secrets.command("sync")
@click.option("--env", "env", default=None, metavar="ENV", help="Only this env (default: every env).")
def sync_cmd(env: str | None) -> None:
    """Rewrite `.env` of the current release on every server and reload the app with zero downtime."""
    if env is not None:
        check_env_name(env)
    cli = get_cli()
    project_dir = cli.project_dir()
    try:
        from tako.deploy.sync import run_sync  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError as exc:
        if exc.name not in ("tako.deploy.sync", "tako.deploy"):
            raise
        raise TakoError(
            "`tako secrets sync` is not available in this build of Tako (tako.deploy.sync is missing)",
            hint="deploy again to deliver secrets: `tako deploy --env ENV`",
        ) from None
    code: int = run_sync(project_dir, env, cli.console)
    if code:
        click.get_current_context().exit(code)


# --- key export / import -----------------------------------------------------------------------


@secrets.group("key")
def key_group() -> None:
    """Export or import the key of an environment (share it with your team out of band)."""


# Clipboard tools, each with the variable that says a display is there. The key goes on stdin.
_CLIPBOARDS: list[tuple[str, list[str], str | None]] = [
    ("wl-copy", [], "WAYLAND_DISPLAY"),
    ("xclip", ["-selection", "clipboard"], "DISPLAY"),
    ("xsel", ["--clipboard", "--input"], "DISPLAY"),
    ("pbcopy", [], None),
]


def find_clipboard() -> list[str] | None:
    """The command that copies stdin to the clipboard, or None when this machine has no usable one."""
    for tool, args, display_var in _CLIPBOARDS:
        if tool == "pbcopy" and sys.platform != "darwin":
            continue
        if display_var is not None and not os.environ.get(display_var):
            continue
        path = shutil.which(tool)
        if path:
            return [path, *args]
    return None


@key_group.command("export")
@env_option
@click.option("--stdout", "to_stdout", is_flag=True, help="Print the key on stdout instead of the clipboard.")
def key_export_cmd(env: str, to_stdout: bool) -> None:
    """Copy the key of an environment to the clipboard (or print it with --stdout)."""
    check_env_name(env)
    cli = get_cli()
    text = keys.encode_key(keys.read_key(env, cli.home))
    if to_stdout:
        # Only the key on stdout, so it can be piped into `tako secrets key import` elsewhere.
        click.echo(text)
        print_warning(
            cli.err_console, f"this is the key for {env}: anyone who has it can decrypt its secrets"
        )
        return
    clipboard = find_clipboard()
    if clipboard is None:
        raise UsageError(
            "no clipboard available (looked for wl-copy, xclip, xsel, pbcopy)",
            hint=f"pass --stdout to print the key: `tako secrets key export --env {env} --stdout`",
        )
    try:
        # stdout/stderr to DEVNULL: xclip stays in the background owning the selection and would keep
        # a captured pipe open forever.
        subprocess.run(
            clipboard,
            input=(text + "\n").encode("ascii"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise TakoError(
            f"copying the key to the clipboard with {Path(clipboard[0]).name} failed ({type(exc).__name__})",
            hint=f"print it instead: `tako secrets key export --env {env} --stdout`",
        ) from None
    print_success(
        cli.err_console,
        f"Copied the key for {env} to the clipboard. Import it elsewhere with "
        f"`tako secrets key import --env {env}`.",
    )


@key_group.command("import")
@env_option
def key_import_cmd(env: str) -> None:
    """Import the key of an environment from a masked prompt or one line of stdin.

    If the environment has secrets, the key must decrypt them; otherwise nothing is saved.
    """
    check_env_name(env)
    cli = get_cli()
    project_dir = cli.project_dir()
    if cli.interactive:
        text: str = click.prompt(f"Key for {env}", hide_input=True, prompt_suffix=": ", err=True)
    else:
        try:
            text = _stdin_bytes().readline().decode("ascii")
        except UnicodeDecodeError:
            raise SecretsError("not a valid key: expected base64 of exactly 32 bytes", exit_code=2) from None
    key = keys.parse_key(text)
    result = service.import_key(project_dir, env, key, home=cli.home)
    if result.unchanged:
        print_message(cli.console, f"The key for {env} at {result.path} is already this key.")
    else:
        verb = "Replaced" if result.replaced else "Saved"
        print_success(cli.console, f"{verb} the key for {env} at {result.path}.")
    if result.verified:
        print_message(cli.console, f"It decrypts {result.verified} secret(s) of {env}.")
    else:
        print_message(cli.console, f"{env} has no secrets yet; the key will encrypt the first one you set.")
    if result.undecryptable:
        print_warning(
            cli.err_console,
            f"it does not decrypt {', '.join(result.undecryptable)} (altered values?); set them again with "
            f"`tako secrets set --env {env} NAME`",
        )
