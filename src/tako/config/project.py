"""`tako.toml`: the project's config, validated once at load into frozen models.

Layout (see docs/tako-toml.md): `[tako]` app settings, `[vars]` / `[vars.<env>]` variables, `[envs.<env>]`
routes plus inline variables, `[servers]` scaling defaults and `[servers.<name>]` server-to-env mappings.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from tako.config.loading import (
    NAME_RULES,
    KeyPath,
    Source,
    describe,
    did_you_mean,
    find_line,
    is_valid_name,
    name_problem,
    read_toml,
    sanitize_name,
)
from tako.config.static_mounts import EXAMPLE as STATIC_EXAMPLE
from tako.config.static_mounts import directory_problem, prefix_problem
from tako.errors import ConfigError, UsageError
from tako.protocol.client_networks import ALLOW_HINT, MAX_ALLOW_ENTRIES, parse_network
from tako.protocol.limits import MAX_ENV_VALUE_BYTES, MAX_IDLE_TIMEOUT, MAX_INSTANCES
from tako.routing import ACCEPTED_FORMS, RouteError, RoutePattern, parse_route

if TYPE_CHECKING:
    from tako.config.inventory import Inventory

PROJECT_FILE = "tako.toml"
DEVELOPMENT = "development"
DEFAULT_HEALTH_CHECK = "/_tako/status"
DEFAULT_INSTANCES = 0
DEFAULT_IDLE_TIMEOUT = 300
# Releases kept on each server, the live one included (`[servers] keep_releases`); at least the live one
# and one to roll back to.
DEFAULT_KEEP_RELEASES = 5
MIN_KEEP_RELEASES = 2
# Set by Tako (deploy) or by tako-server for every instance; a config value could only be silently lost.
RESERVED_VARS = frozenset({"ENV", "TAKO_BUILD", "PORT", "HOST", "TAKO_APP", "TAKO_INSTANCE", "TAKO_DATA_DIR"})

_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

_TOP_LEVEL = ("tako", "vars", "envs", "servers", "deploy")
_TAKO_KEYS = (
    "name",
    "build",
    "start",
    "health_check",
    "exclude",
    "request_buffering",
    "compression",
    "https",
    "release",
    "release_timeout",
    "maintenance_allow",
    "static",
)
_DEPLOY_KEYS = ("strategy", "batch", "atomic")
STRATEGIES = ("parallel", "rolling")
DEFAULT_RELEASE_TIMEOUT = 600
_SCALING_KEYS = ("instances", "idle_timeout")
_SERVER_KEYS = ("env", "instances", "idle_timeout")
_SERVERS_ONLY_KEYS = ("keep_releases",)  # [servers] itself, never [servers.<name>]
_ROUTE_KEYS = ("route", "routes")

_EMPTY: Mapping[str, str] = MappingProxyType({})

__all__ = [
    "DEVELOPMENT",
    "PROJECT_FILE",
    "RESERVED_VARS",
    "EnvConfig",
    "FleetSettings",
    "ProjectConfig",
    "ServerMapping",
    "check_servers_known",
    "detect_app_name",
    "find_project_dir",
    "is_valid_name",
    "load_project",
    "name_problem",
    "parse_project",
    "sanitize_name",
]


@dataclass(frozen=True)
class EnvConfig:
    """One environment: its routes (as written) and its inline `[envs.<env>]` variables."""

    name: str
    routes: tuple[str, ...]
    vars: Mapping[str, str]


@dataclass(frozen=True)
class ServerMapping:
    """`[servers.<name>]`: the env a server belongs to, with `[servers]` defaults already applied."""

    name: str
    env: str
    instances: int
    idle_timeout: int


@dataclass(frozen=True)
class FleetSettings:
    """`[deploy]`: how the servers of an env switch to a new release."""

    strategy: str = "parallel"  # "parallel": all at once; "rolling": `batch` servers at a time
    batch: int = 1
    atomic: bool = False  # every server prepared before any switches; a failed switch switches back


@dataclass(frozen=True)
class ProjectConfig:
    """A validated tako.toml. `vars` is `[vars]`, `env_vars[E]` is `[vars.E]`."""

    file: Path
    root: Path
    name: str
    build: str | None
    start: str | None
    health_check: str
    exclude: tuple[str, ...]
    vars: Mapping[str, str]
    env_vars: Mapping[str, Mapping[str, str]]
    envs: Mapping[str, EnvConfig]
    instances: int
    idle_timeout: int
    servers: Mapping[str, ServerMapping]
    # false: the proxy streams request bodies to the app as they arrive (large uploads, progress)
    request_buffering: bool = True
    # false: tako-server never compresses the app's responses (docs/proxy.md, "Compression")
    compression: bool = True
    # false: tako-server's HTTP listener serves the app instead of redirecting to HTTPS, and no certificate
    # is requested for its hosts (docs/proxy.md, "Apps served over plain HTTP")
    https: bool = True
    keep_releases: int = DEFAULT_KEEP_RELEASES
    release: str = ""  # [tako] release: run once per deploy, before any server switches
    release_timeout: int = DEFAULT_RELEASE_TIMEOUT
    fleet: FleetSettings = FleetSettings()
    # clients (addresses or CIDR ranges) that still reach the app while `tako maintenance on`
    maintenance_allow: tuple[str, ...] = ()
    # URL prefix -> directory of the release that tako-server serves itself (docs/proxy.md, "Static files")
    static: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    def env(self, name: str) -> EnvConfig:
        """The named env. `development` always exists (implicitly with no routes and no inline vars)."""
        found = self.envs.get(name)
        if found is not None:
            return found
        if name == DEVELOPMENT:
            return EnvConfig(DEVELOPMENT, (), _EMPTY)
        known = sorted(self.envs)
        hint = did_you_mean(name, known, template="did you mean --env {}?")
        if hint is None:
            hint = (
                f"environments in {self.file.name}: {', '.join(known)}"
                if known
                else f"declare it in {self.file.name}: [envs.{name}] with a route"
            )
        raise UsageError(f"unknown environment {name!r}", hint=hint)

    def servers_for_env(self, env: str) -> list[ServerMapping]:
        """The servers mapped to `env`, sorted by name."""
        return sorted((s for s in self.servers.values() if s.env == env), key=lambda s: s.name)

    def merged_vars(self, env: str) -> dict[str, str]:
        """`[vars]` < `[vars.E]` < inline `[envs.E]` (later wins). Deploy adds secrets, ENV and TAKO_BUILD."""
        config = self.env(env)
        merged = dict(self.vars)
        merged.update(self.env_vars.get(env, _EMPTY))
        merged.update(config.vars)
        return merged


# -- names ---------------------------------------------------------------------------------------------


def detect_app_name(project_dir: Path) -> str | None:
    """The app name from pyproject.toml `[project].name`, package.json `name`, or the directory name.

    Unreadable or malformed metadata files are skipped: they are the app's business, not Tako's.
    """
    for candidate in _metadata_names(project_dir):
        name = sanitize_name(candidate)
        if name:
            return name
    return sanitize_name(project_dir.resolve().name)


def _metadata_names(project_dir: Path) -> list[str]:
    names: list[str] = []
    try:
        pyproject = tomllib.loads((project_dir / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        pyproject = {}
    project = pyproject.get("project")
    if isinstance(project, dict) and isinstance(project.get("name"), str):
        names.append(project["name"])
    poetry = pyproject.get("tool", {}).get("poetry") if isinstance(pyproject.get("tool"), dict) else None
    if isinstance(poetry, dict) and isinstance(poetry.get("name"), str):
        names.append(poetry["name"])
    try:
        package = json.loads((project_dir / "package.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        package = {}
    if isinstance(package, dict) and isinstance(package.get("name"), str):
        names.append(package["name"])
    return names


# -- loading -------------------------------------------------------------------------------------------


def find_project_dir(start: Path) -> Path | None:
    """The nearest directory at or above `start` holding a tako.toml, or None."""
    current = start.resolve()
    for directory in (current, *current.parents):
        if (directory / PROJECT_FILE).is_file():
            return directory
    return None


def load_project(project_dir: Path) -> ProjectConfig:
    """Read and validate `<project_dir>/tako.toml`."""
    file = project_dir / PROJECT_FILE
    if not file.is_file():
        raise ConfigError(
            str(file), "not found", hint=f"run `tako init` in {project_dir} to create a commented template"
        )
    data, source = read_toml(file)
    return parse_project(data, source, file=file, root=project_dir)


def parse_project(data: dict[str, Any], source: Source, *, file: Path, root: Path) -> ProjectConfig:
    """Validate parsed tako.toml data. Every error names the file and the key path."""
    source.check_keys(data, [], _TOP_LEVEL, what="table")
    tako = source.table(data.get("tako", {}), ["tako"])
    source.check_keys(tako, ["tako"], _TAKO_KEYS)

    name = _app_name(source, tako, root)
    build = source.string(tako["build"], ["tako", "build"]) if "build" in tako else None
    start = source.string(tako["start"], ["tako", "start"]) if "start" in tako else None
    health_check = DEFAULT_HEALTH_CHECK
    if "health_check" in tako:
        health_check = source.string(tako["health_check"], ["tako", "health_check"])
        if not health_check.startswith("/") or any(ch.isspace() for ch in health_check):
            raise source.error(
                ["tako", "health_check"],
                f"expected a URL path starting with '/', got {health_check!r}",
                hint=f'for example health_check = "{DEFAULT_HEALTH_CHECK}"',
            )
    exclude = tuple(source.string_list(tako["exclude"], ["tako", "exclude"])) if "exclude" in tako else ()

    envs = _envs(source, data.get("envs", {}))
    global_vars, env_vars = _vars(source, data.get("vars", {}), envs)
    instances, idle_timeout, servers = _servers(source, data.get("servers", {}), envs)

    return ProjectConfig(
        file=file,
        root=root,
        name=name,
        build=build,
        start=start,
        health_check=health_check,
        exclude=exclude,
        vars=global_vars,
        env_vars=env_vars,
        envs=MappingProxyType(envs),
        instances=instances,
        idle_timeout=idle_timeout,
        servers=MappingProxyType(servers),
        request_buffering=_switch(
            source, tako, "request_buffering", "false streams request bodies to the app as they arrive"
        ),
        compression=_switch(source, tako, "compression", "false: tako-server never compresses responses"),
        https=_switch(source, tako, "https", "false: served over plain HTTP, no certificate"),
        keep_releases=_keep_releases(source, data.get("servers", {})),
        release=source.string(tako["release"], ["tako", "release"]) if "release" in tako else "",
        release_timeout=_release_timeout(source, tako),
        fleet=_fleet(source, data.get("deploy", {})),
        maintenance_allow=_maintenance_allow(source, tako),
        static=_static(source, tako, root),
    )


def _switch(source: Source, tako: dict[str, Any], key: str, meaning: str) -> bool:
    """A `[tako]` key that is true or false, true when absent."""
    value = tako.get(key, True)
    if not isinstance(value, bool):
        raise source.error(
            ["tako", key], f"expected true or false, got {describe(value)}", hint=f"{key} = {meaning}"
        )
    return value


def _maintenance_allow(source: Source, tako: dict[str, Any]) -> tuple[str, ...]:
    """`[tako] maintenance_allow`: each entry an IPv4/IPv6 address or CIDR range (checked here, so a typo
    is an error with its line before anything is sent)."""
    if "maintenance_allow" not in tako:
        return ()
    path: KeyPath = ["tako", "maintenance_allow"]
    entries = source.string_list(tako["maintenance_allow"], path)
    for index, entry in enumerate(entries):
        try:
            parse_network(entry)
        except ValueError as exc:
            raise source.error([*path, index], str(exc), hint=ALLOW_HINT) from None
    if len(entries) > MAX_ALLOW_ENTRIES:
        raise source.error(path, f"{len(entries)} entries; at most {MAX_ALLOW_ENTRIES} are allowed")
    return tuple(entries)


def _static(source: Source, tako: dict[str, Any], root: Path) -> Mapping[str, str]:
    """`[tako] static`: URL prefix -> directory of the project, relative and inside it (its existence is
    checked after the build, when the release is made)."""
    if "static" not in tako:
        return _EMPTY
    path: KeyPath = ["tako", "static"]
    table = source.table(tako["static"], path)
    mounts: dict[str, str] = {}
    for prefix, raw in table.items():
        directory = source.string(raw, [*path, prefix])
        problem = prefix_problem(prefix) or directory_problem(directory)
        if problem is None and not (root / directory).resolve().is_relative_to(root.resolve()):
            problem = f"the directory {directory!r} leads out of the project (a symlink)"
        if problem is not None:
            raise source.error([*path, prefix], problem, hint=f"for example {STATIC_EXAMPLE}")
        if prefix.rstrip("/") in mounts:
            raise source.error([*path, prefix], f"the URL prefix {prefix!r} is given twice")
        mounts[prefix.rstrip("/")] = directory
    return MappingProxyType(mounts)


def _release_timeout(source: Source, tako: dict[str, Any]) -> int:
    if "release_timeout" not in tako:
        return DEFAULT_RELEASE_TIMEOUT
    return source.integer(
        tako["release_timeout"], ["tako", "release_timeout"], minimum=1, what="a positive number of seconds"
    )


def _fleet(source: Source, raw: Any) -> FleetSettings:
    """`[deploy]`: strategy ("parallel" or "rolling"), batch (servers at a time when rolling), atomic."""
    table = source.table(raw, ["deploy"])
    source.check_keys(table, ["deploy"], _DEPLOY_KEYS)
    strategy = source.string(table.get("strategy", "parallel"), ["deploy", "strategy"])
    if strategy not in STRATEGIES:
        raise source.error(
            ["deploy", "strategy"],
            f"expected one of {', '.join(repr(s) for s in STRATEGIES)}, got {strategy!r}",
            hint='strategy = "rolling" with batch = N switches N servers at a time',
        )
    batch = 1
    if "batch" in table:
        batch = source.integer(table["batch"], ["deploy", "batch"], minimum=1, what="a positive integer")
        if strategy != "rolling":
            raise source.error(
                ["deploy", "batch"],
                "batch only applies to rolling deploys",
                hint='add strategy = "rolling" to [deploy], or remove batch',
            )
    atomic = table.get("atomic", False)
    if not isinstance(atomic, bool):
        raise source.error(
            ["deploy", "atomic"],
            f"expected true or false, got {describe(atomic)}",
            hint="atomic = true: no server switches unless every server prepared the release",
        )
    return FleetSettings(strategy, batch, atomic)


def _app_name(source: Source, tako: dict[str, Any], root: Path) -> str:
    if "name" in tako:
        name = source.string(tako["name"], ["tako", "name"], allow_empty=True)
        problem = name_problem(name)
        if problem:
            suggestion = sanitize_name(name)
            raise source.error(
                ["tako", "name"],
                f"invalid app name {name!r}: {problem}",
                hint=f'for example name = "{suggestion}"' if suggestion else NAME_RULES,
            )
        return name
    detected = detect_app_name(root)
    if detected is None:
        raise source.error(
            ["tako"],
            f"no app name: cannot derive one from {root.name!r}",
            hint=f'set name = "..." ({NAME_RULES})',
        )
    return detected


def _check_env_name(source: Source, name: str, path: KeyPath) -> None:
    problem = name_problem(name)
    if problem:
        raise source.error(path, f"invalid environment name {name!r}: {problem}", hint=NAME_RULES)


def _var(source: Source, name: str, value: Any, path: KeyPath) -> str:
    if not _VAR_NAME.match(name):
        raise source.error(
            path,
            f"invalid variable name {name!r}",
            hint="variable names are letters, digits and '_', not starting with a digit",
        )
    if name in RESERVED_VARS:
        raise source.error(
            path,
            f"{name} is reserved: Tako sets it for every instance",
            hint="reserved names: " + ", ".join(sorted(RESERVED_VARS)),
        )
    if not isinstance(value, str):
        shown = str(value).lower() if isinstance(value, bool) else str(value)
        scalar = isinstance(value, int | float | bool)
        raise source.error(
            path,
            f"variable values must be strings, got {describe(value)}",
            hint=f'quote it: {name} = "{shown}"' if scalar else None,
        )
    size = len(value.encode())
    if size > MAX_ENV_VALUE_BYTES:
        raise source.error(
            path,
            f"the value is {size} bytes; a variable is at most {MAX_ENV_VALUE_BYTES // 1024} KiB",
            hint="instances get their variables in their environment, where Linux refuses larger ones; "
            "ship large data as a file of the app and put its path in the variable",
        )
    return value


def _envs(source: Source, raw: Any) -> dict[str, EnvConfig]:
    table = source.table(raw, ["envs"])
    envs: dict[str, EnvConfig] = {}
    for env_name, env_raw in table.items():
        path: list[str | int] = ["envs", env_name]
        _check_env_name(source, env_name, path)
        env_table = source.table(env_raw, path)
        inline: dict[str, str] = {}
        for key, value in env_table.items():
            if key in _ROUTE_KEYS:
                continue
            key_path = [*path, key]
            if isinstance(value, dict):
                raise source.error(
                    key_path,
                    "unknown table",
                    hint=f"[envs.{env_name}] holds route/routes and string variables; "
                    f"env-specific variables can also go in [vars.{env_name}]",
                )
            looks_like = did_you_mean(key, _ROUTE_KEYS)
            if looks_like and (key.islower() or isinstance(value, list)):
                # A lowercase near-miss of route/routes is far likelier a typo than a variable name.
                raise source.error(key_path, "unknown key", hint=looks_like)
            inline[key] = _var(source, key, value, key_path)
        routes = _routes(source, env_name, env_table)
        envs[env_name] = EnvConfig(env_name, routes, MappingProxyType(inline))
    return envs


def _routes(source: Source, env_name: str, env_table: dict[str, Any]) -> tuple[str, ...]:
    path: list[str | int] = ["envs", env_name]
    if "route" in env_table and "routes" in env_table:
        raise source.error(
            [*path, "routes"],
            "set either route or routes, not both",
            hint='use routes = ["a.example.com", "b.example.com"] for several',
        )
    texts: list[tuple[str, list[str | int]]] = []
    if "route" in env_table:
        route_path = [*path, "route"]
        value = env_table["route"]
        if isinstance(value, list):
            raise source.error(route_path, "expected a string", hint="use routes = [...] for a list")
        texts.append((source.string(value, route_path, allow_empty=True), route_path))
    elif "routes" in env_table:
        routes_path = [*path, "routes"]
        value = env_table["routes"]
        if isinstance(value, str):
            raise source.error(
                routes_path, "expected a list of strings", hint='use route = "..." for one route'
            )
        if not isinstance(value, list):
            source.string_list(value, routes_path)  # raises with the type found
        for index, item in enumerate(value):
            texts.append(
                (source.string(item, [*routes_path, index], allow_empty=True), [*routes_path, index])
            )

    if not texts and env_name != DEVELOPMENT:
        raise source.error(
            [*path, "routes"] if "routes" in env_table else path,
            f"environment {env_name!r} has no route",
            hint=f'add route = "app.example.com" to [envs.{env_name}]: '
            "every environment except development needs at least one route",
        )
    seen: dict[RoutePattern, str] = {}
    for text, route_path in texts:
        if not text.strip():
            raise source.error(route_path, "a route must not be empty", hint='for example "app.example.com"')
        try:
            parsed = parse_route(text)
        except RouteError as exc:
            raise source.error(
                route_path, f"invalid route {text!r}: {exc.problem}", hint=ACCEPTED_FORMS
            ) from exc
        if parsed in seen:
            same = "" if text == seen[parsed] else f" (both mean {parsed})"
            raise source.error(route_path, f"route {text!r} is listed twice{same}", hint="remove one of them")
        seen[parsed] = text
    return tuple(text for text, _ in texts)


def _vars(
    source: Source, raw: Any, envs: Mapping[str, EnvConfig]
) -> tuple[Mapping[str, str], Mapping[str, Mapping[str, str]]]:
    table = source.table(raw, ["vars"])
    global_vars: dict[str, str] = {}
    per_env: dict[str, Mapping[str, str]] = {}
    for key, value in table.items():
        if not isinstance(value, dict):
            global_vars[key] = _var(source, key, value, ["vars", key])
            continue
        path: list[str | int] = ["vars", key]
        _check_env_name(source, key, path)
        if key not in envs and key != DEVELOPMENT:
            known = sorted({*envs, DEVELOPMENT})
            raise source.error(
                path,
                f"unknown environment {key!r}",
                hint=did_you_mean(key, known, template="did you mean [vars.{}]?")
                or f"declare [envs.{key}] (environments: {', '.join(known)})",
            )
        per_env[key] = MappingProxyType(
            {name: _var(source, name, v, [*path, name]) for name, v in value.items()}
        )
    return MappingProxyType(global_vars), MappingProxyType(per_env)


def _scaling(
    source: Source, table: dict[str, Any], path: KeyPath, instances: int, idle: int
) -> tuple[int, int]:
    if "instances" in table:
        instances = source.integer(
            table["instances"], [*path, "instances"], minimum=0, what="a non-negative integer (0 = on demand)"
        )
        if instances > MAX_INSTANCES:
            raise source.error(
                [*path, "instances"],
                f"at most {MAX_INSTANCES}, got {instances}",
                hint=f"Tako runs at most {MAX_INSTANCES} instances per app per server (one process each); "
                "add servers to the env for more",
            )
    if "idle_timeout" in table:
        idle = source.integer(
            table["idle_timeout"],
            [*path, "idle_timeout"],
            minimum=0,
            what="a non-negative number of seconds (0 = never stop idle instances)",
        )
        if idle > MAX_IDLE_TIMEOUT:
            raise source.error(
                [*path, "idle_timeout"],
                f"at most {MAX_IDLE_TIMEOUT} seconds (one week), got {idle}",
                hint="to keep instances running whatever the traffic, set instances = N instead",
            )
    return instances, idle


def _servers(
    source: Source, raw: Any, envs: Mapping[str, EnvConfig]
) -> tuple[int, int, dict[str, ServerMapping]]:
    table = source.table(raw, ["servers"])
    for key, value in table.items():
        if key not in (*_SCALING_KEYS, *_SERVERS_ONLY_KEYS) and not isinstance(value, dict):
            raise source.error(
                ["servers", key],
                "unknown key",
                hint=did_you_mean(key, _SCALING_KEYS)
                or f"[servers] holds instances, idle_timeout and [servers.<name>] tables; "
                f'map a server with [servers.{key}] env = "production"',
            )
    instances, idle = _scaling(
        source,
        {k: v for k, v in table.items() if k in _SCALING_KEYS},
        ["servers"],
        DEFAULT_INSTANCES,
        DEFAULT_IDLE_TIMEOUT,
    )
    deployable = sorted(name for name in envs if name != DEVELOPMENT)
    servers: dict[str, ServerMapping] = {}
    for server_name, server_raw in table.items():
        if server_name in (*_SCALING_KEYS, *_SERVERS_ONLY_KEYS):
            continue
        path: list[str | int] = ["servers", server_name]
        problem = name_problem(server_name)
        if problem:
            raise source.error(path, f"invalid server name {server_name!r}: {problem}", hint=NAME_RULES)
        server = source.table(server_raw, path)
        source.check_keys(server, path, _SERVER_KEYS)
        if "env" not in server:
            example = deployable[0] if deployable else "production"
            raise source.error(path, "missing required key env", hint=f'add env = "{example}"')
        env = source.string(server["env"], [*path, "env"])
        if env == DEVELOPMENT:
            raise source.error(
                [*path, "env"],
                "servers cannot be mapped to the development environment",
                hint="development is for running locally; map servers to production, staging, ...",
            )
        if env not in envs:
            raise source.error(
                [*path, "env"],
                f"unknown environment {env!r}",
                hint=did_you_mean(env, deployable, template='did you mean env = "{}"?')
                or f"declare [envs.{env}] with a route"
                + (f" (environments: {', '.join(deployable)})" if deployable else ""),
            )
        server_instances, server_idle = _scaling(source, server, path, instances, idle)
        servers[server_name] = ServerMapping(server_name, env, server_instances, server_idle)
    return instances, idle, servers


def check_servers_known(project: ProjectConfig, inventory: Inventory) -> None:
    """Every `[servers.<name>]` must name a server of the global inventory (`tako servers add`)."""
    known = {entry.name for entry in inventory.servers}
    for name in sorted(project.servers):
        if name in known:
            continue
        close = did_you_mean(name, known, template="did you mean [servers.{}]? Otherwise add")
        fix = f"`tako servers add HOST --name {name}`"
        raise ConfigError(
            str(project.file),
            f"server {name!r} is not in the server inventory (tako servers ls)",
            key=f"servers.{name}",
            line=_line_of(project.file, ["servers", name]),
            hint=f"{close} it with {fix}" if close else f"add it with {fix}",
        )


def _line_of(file: Path, path: KeyPath) -> int | None:
    try:
        return find_line(file.read_text(encoding="utf-8"), path)
    except (OSError, UnicodeDecodeError):
        return None


def _keep_releases(source: Source, raw: Any) -> int:
    """`[servers] keep_releases`: how many releases each server keeps, the live one included."""
    if not isinstance(raw, dict) or "keep_releases" not in raw:
        return DEFAULT_KEEP_RELEASES
    value = raw["keep_releases"]
    if not isinstance(value, int) or isinstance(value, bool) or value < MIN_KEEP_RELEASES:
        raise source.error(
            ["servers", "keep_releases"],
            f"expected an integer of at least {MIN_KEEP_RELEASES}, got {describe(value)}",
            hint="each server keeps the live release and at least one before it, for `tako rollback`",
        )
    return value
