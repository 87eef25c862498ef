"""The global server inventory `~/.tako/config.toml`: `[[servers]]` with name, host, and optionally port,
user and description (port and user left out: `~/.ssh/config` or the defaults, 22 and `tako`, decide).

Reads validate strictly; writes go through tomlkit so the user's comments and layout survive, and replace
the file atomically.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import AoT, Table

from tako.config.loading import NAME_RULES, Source, did_you_mean, name_problem, read_toml, write_atomic
from tako.config.paths import ensure_dir, inventory_path
from tako.errors import ConfigError, UsageError

DEFAULT_PORT = 22
_KEYS = ("name", "host", "port", "user", "description")
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?\Z")
# POSIX portable user names (what useradd accepts by default), at most 32 characters.
_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\Z")
_HEADER = """\
# Tako's server inventory. Manage it with `tako servers add | ls | rm`, or edit it by hand.
# Each server: name (used in tako.toml [servers.<name>]), host, and optionally port and user (default: what
# ~/.ssh/config says for the host, else 22 and tako) and description.
"""


@dataclass(frozen=True)
class ServerEntry:
    name: str
    host: str
    port: int | None = None  # None: ~/.ssh/config's Port for the host, else 22
    description: str = ""
    user: str | None = None  # None: ~/.ssh/config's User for the host, else tako

    @property
    def endpoint(self) -> str:
        """`host:port` (just `host` when the port is not set), with IPv6 hosts in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    def same_endpoint(self, other: ServerEntry) -> bool:
        return self.host.lower() == other.host.lower() and (self.port or DEFAULT_PORT) == (
            other.port or DEFAULT_PORT
        )


@dataclass(frozen=True)
class Inventory:
    servers: tuple[ServerEntry, ...] = ()

    def get(self, name: str) -> ServerEntry | None:
        for entry in self.servers:
            if entry.name == name:
                return entry
        return None

    def require(self, name: str) -> ServerEntry:
        """The named server, or a UsageError listing the known ones."""
        entry = self.get(name)
        if entry is not None:
            return entry
        raise UsageError(f"unknown server {name!r}", hint=self.unknown_hint(name))

    def unknown_hint(self, name: str) -> str:
        names = self.names()
        if not names:
            return f"no servers are configured; add one with `tako servers add HOST --name {name}`"
        close = did_you_mean(name, names)
        known = "known servers: " + ", ".join(names)
        return f"{close} ({known})" if close else known

    def names(self) -> list[str]:
        return sorted(entry.name for entry in self.servers)

    def find_endpoint(self, host: str, port: int | None) -> ServerEntry | None:
        probe = ServerEntry("-", host, port)
        for entry in self.servers:
            if entry.same_endpoint(probe):
                return entry
        return None


class AddOutcome(enum.Enum):
    ADDED = "added"
    UNCHANGED = "unchanged"  # the identical entry already exists
    UPDATED = "updated"  # same name, host and port; the description or the user changed


def host_problem(host: str) -> str | None:
    """Why `host` is not a usable host name or IP address, or None."""
    if not host:
        return "must not be empty"
    if "@" in host:
        return 'must be a host name or address without a user (give the user with --user / user = "NAME")'
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return "must not contain a port; set the port separately (--port / port = N)"
        return None
    if not _HOSTNAME.match(host):
        return "may contain only letters, digits, '.', '-' and '_'"
    return None


def user_problem(user: str) -> str | None:
    """Why `user` is not a usable login name, or None."""
    if not _USER.match(user):
        return "expected a login name: letters, digits, '_', '.', '-' (not first), at most 32 characters"
    return None


def normalize_host(host: str) -> str:
    """Strip surrounding whitespace and the brackets of `[ipv6]`."""
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


def validate_entry(entry: ServerEntry) -> None:
    """UsageError when a new entry (from the command line) is invalid."""
    problem = name_problem(entry.name)
    if problem:
        raise UsageError(
            f"invalid server name {entry.name!r}: {problem}",
            hint=NAME_RULES,
        )
    problem = host_problem(entry.host)
    if problem:
        raise UsageError(f"invalid host {entry.host!r}: {problem}")
    if entry.port is not None and not 1 <= entry.port <= 65535:
        raise UsageError(f"invalid port {entry.port}: expected 1-65535")
    if entry.user is not None:
        problem = user_problem(entry.user)
        if problem:
            raise UsageError(f"invalid user {entry.user!r}: {problem}")


def load_inventory(path: Path | None = None) -> Inventory:
    """The inventory at `path` (default `~/.tako/config.toml`); a missing file is an empty inventory."""
    path = path or inventory_path()
    if not path.exists():
        return Inventory()
    data, source = read_toml(path)
    return parse_inventory(data, source)


def parse_inventory(data: dict[str, Any], source: Source) -> Inventory:
    source.check_keys(data, [], ["servers"], what="table")
    raw = data.get("servers", [])
    if not isinstance(raw, list):
        raise source.error(
            ["servers"], "expected [[servers]] entries", hint="write each server as [[servers]]"
        )
    entries: list[ServerEntry] = []
    for index, item in enumerate(raw):
        path: list[str | int] = ["servers", index]
        table = source.table(item, path)
        source.check_keys(table, path, _KEYS)
        for required in ("name", "host"):
            if required not in table:
                raise source.error(path, f"missing required key {required}")
        name = source.string(table["name"], [*path, "name"], allow_empty=True)
        problem = name_problem(name)
        if problem:
            raise source.error([*path, "name"], f"invalid server name {name!r}: {problem}")
        host = source.string(table["host"], [*path, "host"], allow_empty=True)
        problem = host_problem(host)
        if problem:
            raise source.error([*path, "host"], f"invalid host {host!r}: {problem}")
        port = None
        if "port" in table:
            port = source.integer(table["port"], [*path, "port"], minimum=1, what="a port number (1-65535)")
            if port > 65535:
                raise source.error([*path, "port"], f"expected a port number (1-65535), got {port}")
        description = ""
        if "description" in table:
            description = source.string(table["description"], [*path, "description"], allow_empty=True)
        user = None
        if "user" in table:
            user = source.string(table["user"], [*path, "user"], allow_empty=True)
            problem = user_problem(user)
            if problem:
                raise source.error([*path, "user"], f"invalid user {user!r}: {problem}")
        entry = ServerEntry(name, host, port, description, user)
        for earlier in entries:
            if earlier.name == name:
                raise source.error([*path, "name"], f"server name {name!r} is used twice")
            if earlier.same_endpoint(entry):
                raise source.error(
                    [*path, "host"], f"{entry.endpoint} is already configured as server {earlier.name!r}"
                )
        entries.append(entry)
    return Inventory(tuple(entries))


def plan_add(inventory: Inventory, entry: ServerEntry) -> AddOutcome:
    """What adding `entry` would do; UsageError if it conflicts with an existing server."""
    validate_entry(entry)
    existing = inventory.get(entry.name)
    if existing is not None:
        if not existing.same_endpoint(entry):
            raise UsageError(
                f"server {entry.name!r} is already configured with host {existing.endpoint}",
                hint=f"to change it, remove it first: `tako servers rm {entry.name}`",
            )
        if (existing.description, existing.user) == (entry.description, entry.user):
            return AddOutcome.UNCHANGED
        return AddOutcome.UPDATED
    other = inventory.find_endpoint(entry.host, entry.port)
    if other is not None:
        raise UsageError(
            f"{entry.endpoint} is already configured as server {other.name!r}",
            hint=f"use that name, or remove it first: `tako servers rm {other.name}`",
        )
    return AddOutcome.ADDED


def add_server(entry: ServerEntry, path: Path | None = None) -> AddOutcome:
    """Add (or update the description of) a server, keeping the file's comments."""
    path = path or inventory_path()
    entry = replace(entry, host=normalize_host(entry.host))
    outcome = plan_add(load_inventory(path), entry)
    if outcome is AddOutcome.UNCHANGED:
        return outcome
    doc = _read_document(path)
    servers = _servers_array(doc, path)
    if outcome is AddOutcome.UPDATED:
        table = servers[_index_of(servers, entry.name)]
        for key, value in (("user", entry.user), ("description", entry.description)):
            if value:
                table[key] = value
            elif key in table:
                del table[key]
    else:
        table = tomlkit.table()
        table.add("name", entry.name)
        table.add("host", entry.host)
        if entry.port is not None:
            table.add("port", entry.port)
        if entry.user is not None:
            table.add("user", entry.user)
        if entry.description:
            table.add("description", entry.description)
        table.trivia.indent = "\n"  # a blank line before each new [[servers]], as a person would write it
        servers.append(table)
    _write_document(path, doc)
    return outcome


def remove_server(name: str, path: Path | None = None) -> ServerEntry:
    """Remove the named server and return it; UsageError listing the known servers if there is none."""
    path = path or inventory_path()
    entry = load_inventory(path).require(name)
    doc = _read_document(path)
    servers = _servers_array(doc, path)
    del servers[_index_of(servers, name)]
    if len(servers) == 0:
        del doc["servers"]
    _write_document(path, doc)
    return entry


def _read_document(path: Path) -> tomlkit.TOMLDocument:
    if not path.exists():
        return tomlkit.parse(_HEADER)
    return tomlkit.parse(path.read_text(encoding="utf-8"))


def _servers_array(doc: tomlkit.TOMLDocument, path: Path) -> AoT:
    if "servers" not in doc:
        doc.append("servers", tomlkit.aot())
    servers = doc["servers"]
    if not isinstance(servers, AoT):
        # e.g. `servers = [{...}]` written by hand: valid TOML, but tomlkit cannot append tables to it.
        raise ConfigError(
            str(path),
            "cannot edit servers written as an inline array",
            key="servers",
            hint="rewrite each server as a [[servers]] table, then retry",
        )
    return servers


def _index_of(servers: AoT, name: str) -> int:
    for index, table in enumerate(servers):
        if isinstance(table, Table | dict) and table.get("name") == name:
            return index
    raise LookupError(name)  # load_inventory already confirmed the name exists


def _write_document(path: Path, doc: tomlkit.TOMLDocument) -> None:
    ensure_dir(path.parent)
    write_atomic(path, tomlkit.dumps(doc), mode=0o600)
