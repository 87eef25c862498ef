"""`tako init`: write a commented tako.toml template for the app in a directory."""

from __future__ import annotations

from pathlib import Path

import click
import tomlkit

from tako.cli.confirm import Confirmation, confirm_or_require_yes
from tako.cli.context import CliContext, pass_cli
from tako.cli.render import print_message, print_success
from tako.config.loading import NAME_RULES, name_problem, write_atomic
from tako.config.project import DEFAULT_HEALTH_CHECK, PROJECT_FILE, detect_app_name
from tako.detect import detect_framework
from tako.errors import UsageError

FALLBACK_NAME = "app"
PLACEHOLDER_START = "uvicorn main:app --host 127.0.0.1 --port $PORT"
EXAMPLE_RELEASE = "python manage.py migrate"


def _toml_string(value: str) -> str:
    return tomlkit.string(value).as_string()


def render_template(app_name: str, start: str | None, comment: str | None, release: str | None = None) -> str:
    """The text of a new tako.toml: every setting shown, optional ones commented out with their defaults.

    `start` is the detected start command (None: a placeholder to replace); `comment` explains where it
    came from (e.g. "Detected FastAPI in main.py") and is written as comment lines above it. `release`, a
    detected release command (Django's migrations), is written set; otherwise it is shown commented out.
    """
    return "\n".join(
        (_header(), _tako_section(app_name, start, comment, release), _vars_and_envs(app_name), _servers())
    )


def _start_lines(start: str | None, comment: str | None) -> list[str]:
    lines = [f"# {line}".rstrip() for line in comment.splitlines()] if comment else []
    if start is None:
        lines += [
            "# Replace with your app's command, for example:",
            '#   start = "gunicorn --bind 127.0.0.1:$PORT app:app"',
            '#   start = "node server.js"',
        ]
    lines.append(f"start = {_toml_string(start or PLACEHOLDER_START)}")
    return lines


def _header() -> str:
    return """\
# tako.toml: how Tako builds, runs and routes this app. Reference: docs/tako-toml.md
# Commented-out settings are optional; the values shown are their defaults or examples.
"""


def _tako_section(app_name: str, start: str | None, comment: str | None, release: str | None) -> str:
    start_block = "\n".join(_start_lines(start, comment))
    release_line = (
        f"release = {_toml_string(release)}" if release else f"# release = {_toml_string(EXAMPLE_RELEASE)}"
    )
    return f"""\
[tako]
# App name: 1-63 characters of a-z, 0-9 and '-', starting with a letter.
name = "{app_name}"

# Command run locally (through the shell, in this directory) before the app is packed.
# build = "npm run build"

# Command that starts one instance on the server, run with /bin/sh -c in the release directory.
# The app must listen on 127.0.0.1:$PORT.
{start_block}

# Command run once per deploy (database migrations), on one server, in the new release with its
# environment, before any server switches to it; if it fails, nothing switches.
{release_line}

# Path probed on every instance; any answer below 500 counts as healthy.
# health_check = "{DEFAULT_HEALTH_CHECK}"

# Extra glob patterns to leave out of the deploy archive (.git, .tako, .env*, __pycache__, .venv and
# node_modules are always left out).
# exclude = ["tests/*", "*.sqlite3"]
"""


def _vars_and_envs(app_name: str) -> str:
    route = f"{app_name}.example.com"
    return f"""\
# Variables (strings) for every environment. Later wins: [vars] < [vars.<env>] < [envs.<env>] < secrets.
# Tako sets ENV, TAKO_BUILD, PORT, HOST, TAKO_APP and TAKO_INSTANCE itself; they cannot be set here.
[vars]
# LOG_LEVEL = "info"

# Variables for one environment.
# [vars.production]
# LOG_LEVEL = "warning"

# Environments. Each one except development needs a route: host, *.host, optionally followed by
# /exact/path or /prefix/*.  Deploy with `tako deploy --env production`.
[envs.production]
route = "{route}"
# routes = ["{route}", "www.{route}"]   # several routes: use routes instead of route
# SENTRY_ENVIRONMENT = "production"   # inline variables for this environment

# [envs.staging]
# route = "staging.{route}"
"""


def _servers() -> str:
    return """\
# Scaling defaults for every server below.
[servers]
# instances = 0        # instances kept running; 0 = started by the first request, stopped when idle
# idle_timeout = 300   # seconds without requests before instances above the minimum stop

# Map servers from `tako servers ls` to an environment (`tako servers add HOST --name web1` adds one).
# [servers.web1]
# env = "production"
# instances = 2        # overrides the defaults above for this server
# idle_timeout = 600
"""


def write_project_file(directory: Path, text: str) -> Path:
    """Write tako.toml into `directory` (created if missing), replacing any existing file atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / PROJECT_FILE
    write_atomic(path, text)
    return path


@click.command(short_help=f"Write a commented {PROJECT_FILE} template.")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("-f", "--force", is_flag=True, help=f"Overwrite an existing {PROJECT_FILE}.")
@click.option("--name", help="App name (default: from pyproject.toml, package.json or the directory name).")
@pass_cli
def init(cli: CliContext, directory: Path | None, force: bool, name: str | None) -> None:
    """Write a commented tako.toml in DIRECTORY (default: the current directory)."""
    target = (cli.cwd / directory) if directory is not None else cli.cwd
    if name is not None:
        problem = name_problem(name)
        if problem:
            raise UsageError(f"invalid app name {name!r}: {problem}", hint=NAME_RULES)
    path = target / PROJECT_FILE
    if path.exists() and not force:
        ask = Confirmation(
            question=f"{path} already exists. Overwrite it?",
            refusal=f"{path} already exists",
            hint="pass --force to overwrite it",
            declined=f"{path} not overwritten.",
        )
        confirm_or_require_yes(cli, ask)
    app_name = name or detect_app_name(target) or FALLBACK_NAME
    detection = detect_framework(target)
    text = render_template(app_name, detection.start, detection.comment, detection.release)
    written = write_project_file(target, text)
    print_success(cli.console, f"Wrote {written} for app {app_name!r}.")
    print_message(cli.console, "Next steps:")
    for step in (
        f"1. Set `start` in {PROJECT_FILE} to the command that runs your app on $PORT.",
        f"2. Set the production route (now {app_name}.example.com).",
        "3. Add a server: tako servers add HOST --name web1",
        f'4. Map it in {PROJECT_FILE}: [servers.web1] env = "production"',
        "5. Deploy: tako deploy --env production",
    ):
        print_message(cli.console, f"   {step}")
