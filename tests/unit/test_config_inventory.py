"""~/.tako/config.toml: paths, strict loading, and comment-preserving atomic add/remove."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tako.config import paths
from tako.config.inventory import (
    AddOutcome,
    Inventory,
    ServerEntry,
    add_server,
    host_problem,
    load_inventory,
    plan_add,
    remove_server,
)
from tako.errors import ConfigError, UsageError


def test_paths_follow_tako_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAKO_HOME", str(tmp_path / "h"))
    assert paths.tako_home() == tmp_path / "h"
    assert paths.inventory_path() == tmp_path / "h" / "config.toml"
    assert paths.known_hosts_path() == tmp_path / "h" / "known_hosts"
    assert paths.keys_dir() == tmp_path / "h" / "keys"
    monkeypatch.setenv("TAKO_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert paths.tako_home() == tmp_path / ".tako"
    assert paths.inventory_path(tmp_path / "x") == tmp_path / "x" / "config.toml"


def test_missing_file_is_empty(tmp_path: Path) -> None:
    assert load_inventory(tmp_path / "config.toml") == Inventory()


def test_load(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[[servers]]\nname = "web1"\nhost = "10.0.0.1"\n\n'
        '[[servers]]\nname = "web2"\nhost = "web2.example.com"\nport = 2222\ndescription = "backup"\n'
        'user = "deploy"\n'
    )
    inventory = load_inventory(path)
    # Port and user left out stay unset: ~/.ssh/config or the defaults decide at connection time.
    assert inventory.servers == (
        ServerEntry("web1", "10.0.0.1", None, ""),
        ServerEntry("web2", "web2.example.com", 2222, "backup", user="deploy"),
    )
    assert inventory.get("web2") == ServerEntry("web2", "web2.example.com", 2222, "backup", user="deploy")
    assert inventory.get("nope") is None
    assert inventory.names() == ["web1", "web2"]
    with pytest.raises(UsageError) as info:
        inventory.require("web3")
    assert info.value.hint is not None and "web1, web2" in info.value.hint


@pytest.mark.parametrize(
    ("text", "key", "line", "fragment"),
    [
        ('[server]\nname = "a"\n', "server", 1, "unknown table"),
        ('[[servers]]\nname = "a"\nhost = "h"\nprot = 22\n', "servers[0].prot", 4, "unknown key"),
        ('[[servers]]\nname = "a"\n', "servers[0]", 1, "missing required key host"),
        ('[[servers]]\nname = "Web"\nhost = "h"\n', "servers[0].name", 2, "invalid server name"),
        ('[[servers]]\nname = "a"\nhost = "root@h"\n', "servers[0].host", 3, "without a user"),
        ('[[servers]]\nname = "a"\nhost = "h:22"\n', "servers[0].host", 3, "must not contain a port"),
        ('[[servers]]\nname = "a"\nhost = "h"\nport = 0\n', "servers[0].port", 4, "port number"),
        ('[[servers]]\nname = "a"\nhost = "h"\nport = 70000\n', "servers[0].port", 4, "port number"),
        (
            '[[servers]]\nname = "a"\nhost = "h"\n[[servers]]\nname = "a"\nhost = "i"\n',
            "servers[1].name",
            5,
            "used twice",
        ),
        (
            '[[servers]]\nname = "a"\nhost = "H"\n[[servers]]\nname = "b"\nhost = "h"\n',
            "servers[1].host",
            6,
            "already configured as server 'a'",
        ),
    ],
)
def test_errors(tmp_path: Path, text: str, key: str, line: int, fragment: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_inventory(path)
    assert info.value.key == key
    assert info.value.line == line
    assert fragment in info.value.detail
    assert info.value.file == str(path)


def test_same_host_different_port_is_allowed(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[[servers]]\nname = "a"\nhost = "h"\n[[servers]]\nname = "b"\nhost = "h"\nport = 2222\n')
    assert load_inventory(path).names() == ["a", "b"]


@pytest.mark.parametrize("host", ["10.0.0.1", "example.com", "web_1.internal", "2001:db8::1", "localhost"])
def test_valid_hosts(host: str) -> None:
    assert host_problem(host) is None


@pytest.mark.parametrize("host", ["", "tako@h", "h:22", "h o", "h/x", "[::1]"])
def test_invalid_hosts(host: str) -> None:
    assert host_problem(host) is not None


def test_add_creates_private_dir_and_file(tmp_path: Path) -> None:
    path = tmp_path / "home" / "config.toml"
    assert add_server(ServerEntry("web1", "10.0.0.1", description="main"), path) is AddOutcome.ADDED
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_inventory(path).servers == (ServerEntry("web1", "10.0.0.1", None, "main"),)
    assert "port =" not in path.read_text()  # not given, not written: ~/.ssh/config may set it
    assert add_server(ServerEntry("web2", "[2001:db8::2]", 2222), path) is AddOutcome.ADDED
    assert load_inventory(path).get("web2") == ServerEntry("web2", "2001:db8::2", 2222)
    assert [p.name for p in path.parent.iterdir()] == ["config.toml"]  # no temp files left behind


def test_add_preserves_comments_and_remove_too(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '# my servers\n\n[[servers]]\n# the big one\nname = "web1"\nhost = "10.0.0.1"  # rack 3\n'
    )
    add_server(ServerEntry("web2", "10.0.0.2"), path)
    text = path.read_text()
    assert "# my servers" in text and "# the big one" in text and "# rack 3" in text
    assert load_inventory(path).names() == ["web1", "web2"]
    assert remove_server("web2", path) == ServerEntry("web2", "10.0.0.2")
    text = path.read_text()
    assert "# the big one" in text and "# rack 3" in text
    assert load_inventory(path).names() == ["web1"]
    remove_server("web1", path)
    assert load_inventory(path) == Inventory()
    assert "# my servers" in path.read_text()


def test_add_outcomes_and_conflicts(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    add_server(ServerEntry("web1", "10.0.0.1", description="a"), path)
    before = path.read_bytes()
    assert add_server(ServerEntry("web1", "10.0.0.1", description="a"), path) is AddOutcome.UNCHANGED
    assert path.read_bytes() == before
    assert add_server(ServerEntry("web1", "10.0.0.1", description="b"), path) is AddOutcome.UPDATED
    assert load_inventory(path).require("web1").description == "b"
    with pytest.raises(UsageError) as info:
        add_server(ServerEntry("web1", "10.0.0.9"), path)
    assert info.value.hint is not None and "tako servers rm web1" in info.value.hint
    with pytest.raises(UsageError) as info:
        add_server(ServerEntry("other", "10.0.0.1"), path)
    assert "already configured as server 'web1'" in info.value.message
    with pytest.raises(UsageError):
        plan_add(Inventory(), ServerEntry("Bad_Name", "h"))
    with pytest.raises(UsageError):
        plan_add(Inventory(), ServerEntry("ok", "h", port=0))


def test_user_is_stored_updated_and_validated(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    assert add_server(ServerEntry("web1", "10.0.0.1", user="deploy"), path) is AddOutcome.ADDED
    assert 'user = "deploy"' in path.read_text()
    assert load_inventory(path).require("web1").user == "deploy"
    assert add_server(ServerEntry("web1", "10.0.0.1", user="deploy"), path) is AddOutcome.UNCHANGED
    assert add_server(ServerEntry("web1", "10.0.0.1", user="ops"), path) is AddOutcome.UPDATED
    assert load_inventory(path).require("web1").user == "ops"
    assert add_server(ServerEntry("web1", "10.0.0.1"), path) is AddOutcome.UPDATED
    assert load_inventory(path).require("web1").user is None
    assert "user =" not in path.read_text()
    for bad in ("", "-x", "a b", "a@b", "x" * 33):
        with pytest.raises(UsageError) as info:
            plan_add(Inventory(), ServerEntry("ok", "h", user=bad))
        assert "invalid user" in info.value.message


def test_invalid_user_in_file_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[[servers]]\nname = "a"\nhost = "h"\nuser = "no body"\n')
    with pytest.raises(ConfigError) as info:
        load_inventory(path)
    assert info.value.key == "servers[0].user" and info.value.line == 4


def test_unset_port_is_port_22_for_conflicts(tmp_path: Path) -> None:
    inventory = Inventory((ServerEntry("web1", "h"),))
    with pytest.raises(UsageError):
        plan_add(inventory, ServerEntry("web2", "h", port=22))
    assert plan_add(inventory, ServerEntry("web2", "h", port=2222)) is AddOutcome.ADDED
    assert plan_add(inventory, ServerEntry("web1", "h", port=22)) is AddOutcome.UNCHANGED


def test_remove_unknown_lists_known(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    add_server(ServerEntry("web1", "10.0.0.1"), path)
    with pytest.raises(UsageError) as info:
        remove_server("web9", path)
    assert info.value.hint is not None and "web1" in info.value.hint
    with pytest.raises(UsageError) as info:
        remove_server("web1", tmp_path / "empty.toml")
    assert info.value.hint is not None and "tako servers add" in info.value.hint


def test_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("")
    os.chmod(path, 0o640)
    add_server(ServerEntry("web1", "10.0.0.1"), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_inline_array_is_refused_for_edits(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('servers = [{ name = "web1", host = "h" }]\n')
    assert load_inventory(path).names() == ["web1"]
    with pytest.raises(ConfigError) as info:
        add_server(ServerEntry("web2", "i"), path)
    assert info.value.hint is not None and "[[servers]]" in info.value.hint
