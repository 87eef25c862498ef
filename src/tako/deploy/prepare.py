"""Everything a deploy does locally before touching a server: resolve the env and its servers, build,
version, archive, and render the release `.env`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from tako.config import envfile
from tako.config.inventory import Inventory, load_inventory
from tako.config.paths import known_hosts_path
from tako.config.project import ProjectConfig, load_project
from tako.deploy import python
from tako.deploy.archive import build_archive, list_files
from tako.deploy.build import run_build
from tako.deploy.layout import AppLayout
from tako.deploy.plan import DependencyInstaller, DeployPlan, DeployTarget
from tako.deploy.releases import release_info
from tako.deploy.report import Outcome
from tako.deploy.version import compute_version
from tako.errors import DeployError, SecretsError, StepFailed, UsageError
from tako.protocol import MAX_ENV_BYTES
from tako.remote.connection import ServerAddress
from tako.remote.executor import Command
from tako.remote.fanout import HostResult

RESERVED = ("ENV", "TAKO_BUILD")


@dataclass(frozen=True)
class Prepared:
    project: ProjectConfig
    plan: DeployPlan
    targets: list[DeployTarget]
    # Servers that failed before their steps could start (e.g. the Python probe could not reach them).
    early_failures: tuple[Outcome, ...]


def resolve_targets(project: ProjectConfig, inventory: Inventory, env: str) -> list[DeployTarget]:
    """The servers of `env` with their scaling settings; clear errors for unknown or unmapped servers."""
    if env == "development":
        raise UsageError(
            "the development environment is for local runs and cannot be deployed",
            hint="deploy another environment, e.g. `tako deploy --env production`",
        )
    project.env(env)  # raises with the list of known envs
    mappings = project.servers_for_env(env)
    if not mappings:
        raise UsageError(
            f"no server is mapped to environment {env!r} in {project.file}",
            hint=f'add one: [servers.<name>] env = "{env}" (servers you know: '
            + (", ".join(s.name for s in inventory.servers) or "none yet; run `tako servers add`")
            + ")",
        )
    targets = []
    for mapping in mappings:
        entry = inventory.get(mapping.name)
        if entry is None:
            raise UsageError(
                f"server {mapping.name!r} (servers.{mapping.name} in {project.file}) "
                "is not in your inventory",
                hint=f"add it with `tako servers add HOST --name {mapping.name}`",
            )
        targets.append(
            DeployTarget(
                ServerAddress.of(entry),
                instances=mapping.instances,
                idle_timeout=mapping.idle_timeout,
            )
        )
    return targets


def env_values(project: ProjectConfig, env: str, version: str) -> dict[str, str]:
    """Merged vars (docs/tako-toml.md, "Variables"), then secrets, then the reserved names Tako sets."""
    from tako.secrets import load_env_secrets, missing_secrets

    missing = missing_secrets(project.root, env)
    if missing:
        names = ", ".join(missing)
        raise SecretsError(
            f"environment {env!r} lacks secrets that other environments define: {names}",
            hint="\n".join(f"set it with `tako secrets set --env {env} {name}`" for name in missing),
        )
    values = dict(project.merged_vars(env))
    secrets = load_env_secrets(project.root, env)  # each value within MAX_ENV_VALUE_BYTES, or it raised
    for name, secret in sorted(secrets.items()):
        values[name] = secret.reveal()
    for name in RESERVED:
        values.pop(name, None)
    values["ENV"] = env
    values["TAKO_BUILD"] = version
    _check_env_size(values, set(secrets), env)
    return values


def _check_env_size(values: dict[str, str], secret_names: set[str], env: str) -> None:
    """DeployError when the whole environment is more than an app's process can be given (each
    `NAME=value` string with its terminating NUL, as the kernel counts it); names the largest values."""
    sizes = {name: len(name.encode()) + len(value.encode()) + 2 for name, value in values.items()}
    total = sum(sizes.values())
    if total <= MAX_ENV_BYTES:
        return
    largest = sorted(sizes, key=lambda name: (-sizes[name], name))[:5]
    shown = ", ".join(
        f"{name} ({'secret' if name in secret_names else 'tako.toml'}, {sizes[name] // 1024} KiB)"
        for name in largest
    )
    raise DeployError(
        f"the environment of {env} is {total // 1024} KiB in {len(values)} variables; at most "
        f"{MAX_ENV_BYTES // (1024 * 1024)} MiB can be given to an app (Linux refuses to start a program "
        f"with more); the largest: {shown}",
        hint="ship large data (certificate bundles, key stores) as files of the app and keep only their "
        f"paths in variables; remove a secret with `tako secrets rm --env {env} NAME --yes`",
    )


def check_static_dirs(project: ProjectConfig) -> None:
    """Each `[tako] static` directory exists once the build ran and has files that go into the release
    (tako-server refuses a release without it, after the upload)."""
    if not project.static:
        return
    shipped = {str(path.parent) for path in list_files(project.root, project.exclude)}
    for prefix, directory in project.static.items():
        where = f"{project.file}: [tako].static {prefix!r}: {directory!r}"
        if not (project.root / directory).is_dir():
            raise UsageError(
                f"{where} is not a directory of the project after the build",
                hint="create it (or have [tako].build create it), or fix the path in tako.toml",
            )
        inside = str(PurePosixPath(directory))  # as git lists it: no "./", "//" or trailing "/"
        if not any(parent == inside or parent.startswith(inside + "/") for parent in shipped):
            raise UsageError(
                f"{where} has no file that goes into the release",
                hint="files listed in .gitignore or in [tako].exclude are not deployed: "
                "take the directory out of them (build output is often ignored)",
            )


def prepare(project_dir: Path, env: str, *, output: Callable[[str], None]) -> Prepared:
    project = load_project(project_dir)
    inventory = load_inventory()
    targets = resolve_targets(project, inventory, env)
    env_config = project.env(env)
    if not project.start:
        raise UsageError(
            f"{project.file}: [tako].start is not set, so the server would not know how to run the app",
            hint='add e.g. start = "python3 app.py" (it must listen on 127.0.0.1:$PORT)',
        )
    run_build(project.build, project.root, output=output)
    check_static_dirs(project)
    version = compute_version(project.root)
    values = env_values(project, env, version)
    app_json = {
        "name": project.name,
        "version": version,
        "start": project.start,
        "health_check": project.health_check,
        "env": env,
        "request_buffering": project.request_buffering,
        "compression": project.compression,
        "https": project.https,
        "static": dict(project.static),
        "release": release_info(project.root, version),  # who deploys which commit, when
    }
    deps = _python_dependencies(project, targets, output)
    targets = [t for t in targets if t.address.name not in {f.server.name for f in deps.early_failures}]
    archive = build_archive(project.root, version, app_json, project.exclude, extra_dirs=deps.extra_dirs)
    plan = DeployPlan(
        app=project.name,
        version=version,
        env=env,
        routes=env_config.routes,
        archive=archive.path,
        archive_size=archive.size,
        unpacked_size=archive.unpacked_size,
        wheel_size=archive.wheel_size,
        env_file=envfile.render(values).encode(),
        known_hosts=known_hosts_path(),
        installers=deps.installers,
        after_prune=deps.after_prune,
        release_command=project.release,
        release_timeout=project.release_timeout,
        fleet=project.fleet,
        keep_releases=project.keep_releases,
        maintenance_allow=project.maintenance_allow,
    )
    return Prepared(project, plan, targets, deps.early_failures)


@dataclass(frozen=True)
class _Dependencies:
    """What a Python app's dependencies add to a deploy."""

    extra_dirs: dict[str, Path] = field(default_factory=dict)  # wheelhouses shipped in the archive
    installers: tuple[DependencyInstaller, ...] = ()  # the "python" step
    after_prune: tuple[Command, ...] = ()
    early_failures: tuple[Outcome, ...] = ()  # servers whose Python could not be probed


def _python_dependencies(
    project: ProjectConfig, targets: list[DeployTarget], output: Callable[[str], None]
) -> _Dependencies:
    reqs = python.detect_requirements(project.root)
    if reqs is None:
        return _Dependencies()
    output(f"Python dependencies from {reqs.source.name}: probing the servers' Python")
    app_dir = AppLayout(project.name).app_dir
    probes = asyncio.run(python.probe_targets([t.address for t in targets], known_hosts_path(), app_dir))
    found = {p.server.name: p.value.target for p in probes if p.ok and p.value is not None}
    installed = {p.server.name: p.value.venv_keys for p in probes if p.ok and p.value is not None}
    failures: tuple[Outcome, ...] = tuple(
        HostResult(p.server, error=StepFailed("python", p.error.message, hint=p.error.hint))
        for p in probes
        if p.error is not None
    )
    if not found:
        return _Dependencies(early_failures=failures)
    built = python.build_wheelhouses(reqs, found, output, installed)
    return _Dependencies(
        built.extra_dirs,
        (python.install_step(built),),
        tuple(python.prune_commands(app_dir)),
        failures,
    )
