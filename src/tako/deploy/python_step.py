"""Python dependencies in a deploy: ask each server for its Python, build one wheelhouse per distinct
target locally, ship them in the release, and give each release its venv on the server (offline)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tako.config.paths import tako_home
from tako.deploy import python_deps
from tako.deploy.pipeline import DeployTarget, StepReporter
from tako.errors import DeployError, RemoteError
from tako.remote.executor import Command, Executor
from tako.remote.fanout import HostResult, fan_out


@dataclass(frozen=True)
class PythonDeps:
    """Wheelhouses to ship (archive path → local dir) and which one each server installs."""

    extra_dirs: dict[str, Path]
    key_by_server: dict[str, str]


@dataclass(frozen=True)
class ServerPython:
    """What the probe learnt about one server."""

    target: python_deps.TargetPython
    venv_keys: frozenset[str]  # complete venvs the app already has there (shared/venvs/<key>)


async def probe_targets(
    targets: list[DeployTarget], known_hosts: Path, app_dir: str
) -> list[HostResult[ServerPython]]:
    async def probe(ex: Executor) -> ServerPython:
        result = await ex.run(Command(tuple(python_deps.PROBE_COMMAND)), check=False, what="python probe")
        if not result.ok:
            raise DeployError(
                f"cannot run {python_deps.SERVER_PYTHON} on the server: {result.stderr.strip()[:300]}",
                hint="Python apps need python3 and python3-venv on the server (apt-get install python3-venv)",
            )
        target = python_deps.parse_probe(result.stdout)
        keys = await ex.run(
            Command(tuple(python_deps.remote_installed_keys_command(app_dir))), check=False, what="venv list"
        )
        # Not knowing which venvs exist only means shipping the wheelhouse anyway.
        venv_keys = python_deps.parse_installed_keys(keys.stdout) if keys.ok else frozenset()
        return ServerPython(target, venv_keys)

    return await fan_out([t.address for t in targets], known_hosts, probe)


def build_wheelhouses(
    reqs: python_deps.Requirements,
    targets: dict[str, python_deps.TargetPython],
    output: Callable[[str], None],
    installed: Mapping[str, frozenset[str]] | None = None,
) -> PythonDeps:
    """One wheelhouse per distinct target; a missing wheel fails here, before anything is uploaded.

    A target whose venv every one of its servers already has (`installed`: server -> venv keys) is neither
    built nor shipped: those servers only link the release to it.
    """
    cache = tako_home() / "cache" / "wheels"
    extra: dict[str, Path] = {}
    key_by_server: dict[str, str] = {}
    servers_by_target: dict[python_deps.TargetPython, list[str]] = {}
    for server, target in sorted(targets.items()):
        servers_by_target.setdefault(target, []).append(server)
    for target, servers in servers_by_target.items():
        key = python_deps.requirements_key(reqs, target)
        if installed is not None and all(key in installed.get(s, frozenset()) for s in servers):
            output(
                f"wheelhouse for {target.describe()} unchanged (cache hit): already installed on "
                f"{', '.join(servers)}, not shipped"
            )
        else:
            house = python_deps.build_wheelhouse(reqs, target, cache, output=output)
            extra[python_deps.wheelhouse_rel(house.key)] = house.path
            key = house.key
        for server in servers:
            key_by_server[server] = key
    return PythonDeps(extra, key_by_server)


def install_hook(deps: PythonDeps) -> Callable[[Executor, str, StepReporter], Awaitable[None]]:
    """The pipeline step that installs the release's venv from its wheelhouse."""

    async def install(ex: Executor, release_dir: str, step: StepReporter) -> None:
        key = deps.key_by_server[ex.address.name]
        step("python", "installing Python dependencies")
        for argv in python_deps.remote_install_commands(release_dir, python_deps.wheelhouse_rel(key), key):
            try:
                result = await ex.run(Command(tuple(argv)), what="dependency install", timeout=900)
            except RemoteError as exc:
                raise DeployError(f"installing Python dependencies failed: {exc.message}") from exc
            for line in result.stdout.splitlines():
                if line.strip():
                    step("python", line.strip())

    return install


def prune_commands(app_dir: str) -> list[Command]:
    return [Command(tuple(argv)) for argv in python_deps.remote_prune_commands(app_dir)]
