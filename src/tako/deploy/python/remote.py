"""The server half of a deploy's Python dependencies: the commands (as values: constant scripts, data as
positional parameters), the probe, the install step after the extract, and the venv cleanup after pruning.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tako.deploy.python.layout import (
    COMPLETE_MARKER,
    PINNED_REQUIREMENTS,
    SERVER_PYTHON,
    VENV_DIR,
    WHEELHOUSE_DIR,
    wheelhouse_rel,
)
from tako.deploy.python.local import PythonDeps
from tako.deploy.python.target import PROBE_COMMAND, TargetPython, parse_probe
from tako.errors import DeployError, RemoteError
from tako.remote.connection import ServerAddress
from tako.remote.executor import Command, Executor, sh
from tako.remote.fanout import HostResult, fan_out

STEP = "python"
"""The deploy step the install reports under (and a failed install is reported at)."""
CACHE_HIT_MARKER = "dependencies unchanged (cache hit)"
INSTALLED_MARKER = "dependencies installed"
INSTALL_TIMEOUT = 900.0  # seconds: pip installing a large wheelhouse on a small server

# (step name, what it is doing): the deploy's progress reporter, which names the step a failure is at.
Reporter = Callable[[str, str], None]
InstallStep = Callable[[Executor, str, Reporter], Awaitable[None]]

# Positional parameters: $1 release dir, $2 wheelhouse dir relative to it, $3 key. The venv lives at
# <app>/shared/venvs/<key> (virtualenvs are not relocatable, so it is built at its final path) and the
# release gets a relative symlink `.venv -> ../../shared/venvs/<key>`. The completion marker is written
# last, so an interrupted install is redone by the next deploy. The shipped wheelhouse is removed from the
# release.
_INSTALL = f"""
set -eu
release=$1; wheels=$release/$2; key=$3
venvs=$(cd "$(dirname "$release")/.." && pwd -P)/shared/venvs
venv=$venvs/$key
mkdir -p "$venvs"
if [ -f "$venv/{COMPLETE_MARKER}" ]; then
  echo "{CACHE_HIT_MARKER}"
else
  rm -rf "$venv"
  unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_REQUIRE_VIRTUALENV PYTHONPATH
  export PIP_CONFIG_FILE=/dev/null PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1
  if [ ! -f "$wheels/{PINNED_REQUIREMENTS}" ]; then
    echo "the release has no wheelhouse at $2 and the server has no cached environment $key" \\
      "(removed since the deploy began?); deploy again" >&2
    exit 3
  fi
  {SERVER_PYTHON} -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --no-index --no-cache-dir --find-links "$wheels" \\
    -r "$wheels/{PINNED_REQUIREMENTS}"
  echo "$key" > "$venv/{COMPLETE_MARKER}"
  echo "{INSTALLED_MARKER} ($(grep -c . "$wheels/{PINNED_REQUIREMENTS}") packages)"
fi
ln -sfn "../../shared/venvs/$key" "$release/{VENV_DIR}"
rm -rf "$release/{WHEELHOUSE_DIR}"
"""

# $1 app dir: the keys of the complete venvs the app has on the server, one a line.
_INSTALLED_KEYS = f"""
for f in "$1"/shared/venvs/*/{COMPLETE_MARKER}; do
  [ -f "$f" ] && basename "$(dirname "$f")"
done
exit 0
"""

# $1 app dir: remove cached venvs that no release links to any more (run after pruning releases).
_PRUNE_VENVS = f"""
set -eu
[ -d "$1/shared/venvs" ] || exit 0
used=$(for l in "$1"/releases/*/{VENV_DIR} "$1"/releases/.*/{VENV_DIR}; do
  [ -L "$l" ] && basename "$(readlink "$l")"
done; true)
for v in "$1"/shared/venvs/*; do
  [ -e "$v" ] || continue
  name=$(basename "$v")
  printf '%s\\n' "$used" | grep -qxF "$name" || rm -rf "$v"
done
"""


def install_command(release_dir: str, key: str) -> Command:
    """Give `release_dir` its `.venv` from the wheelhouse shipped in it, reusing the server's venv for
    `key` when it is complete. Prints CACHE_HIT_MARKER, or a line starting with INSTALLED_MARKER."""
    return sh(_INSTALL, release_dir, wheelhouse_rel(key), key)


def installed_keys_command(app_dir: str) -> Command:
    """Prints the keys of the complete venvs under `app_dir/shared/venvs`, one a line."""
    return sh(_INSTALLED_KEYS, app_dir)


def parse_installed_keys(output: str) -> frozenset[str]:
    return frozenset(
        line.strip() for line in output.splitlines() if re.fullmatch(r"[0-9a-f]{24}", line.strip())
    )


def prune_commands(app_dir: str) -> tuple[Command, ...]:
    """Remove cached venvs under `app_dir/shared/venvs` that no release links to (after pruning)."""
    return (sh(_PRUNE_VENVS, app_dir),)


@dataclass(frozen=True)
class ServerPython:
    """What the probe learnt about one server."""

    target: TargetPython
    venv_keys: frozenset[str]  # complete venvs the app already has there (shared/venvs/<key>)


async def probe_targets(
    servers: Sequence[ServerAddress], known_hosts: Path, app_dir: str
) -> list[HostResult[ServerPython]]:
    """Ask every server, in parallel, for its Python and the app's complete venvs."""

    async def probe(ex: Executor) -> ServerPython:
        result = await ex.run(PROBE_COMMAND, check=False, what="python probe")
        if not result.ok:
            raise DeployError(
                f"cannot run {SERVER_PYTHON} on the server: {result.stderr.strip()[:300]}",
                hint="Python apps need python3 and python3-venv on the server (apt-get install python3-venv)",
            )
        target = parse_probe(result.stdout)
        keys = await ex.run(installed_keys_command(app_dir), check=False, what="venv list")
        # Not knowing which venvs exist only means shipping the wheelhouse anyway.
        return ServerPython(target, parse_installed_keys(keys.stdout) if keys.ok else frozenset())

    return await fan_out(list(servers), known_hosts, probe)


def install_step(deps: PythonDeps) -> InstallStep:
    """The deploy step, run after the extract: install the staged release's venv from its wheelhouse."""

    async def install(ex: Executor, release_dir: str, report: Reporter) -> None:
        key = deps.key_by_server[ex.address.name]
        report(STEP, "installing Python dependencies")
        try:
            result = await ex.run(
                install_command(release_dir, key), what="dependency install", timeout=INSTALL_TIMEOUT
            )
        except RemoteError as exc:
            raise DeployError(f"installing Python dependencies failed: {exc.message}") from exc
        for line in result.stdout.splitlines():
            if line.strip():
                report(STEP, line.strip())

    return install
