"""`tako servers add | ls | rm` through click's runner, with TAKO_HOME in a temp dir."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tako.cli.context import CliContext
from tako.cli.main import cli
from tako.cli.render import make_console
from tako.config.inventory import ServerEntry, load_inventory


@pytest.fixture(autouse=True)
def _restore_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`tako -C DIR` changes directory like `git -C`; start each test in tmp_path and restore cwd after."""
    monkeypatch.chdir(tmp_path)


def run(tmp_path: Path, *args: str, obj: CliContext | None = None, input: str | None = None) -> Result:
    return CliRunner().invoke(
        cli,
        ["-C", str(tmp_path), *args],
        obj=obj,
        input=input,
        env={"TAKO_HOME": str(tmp_path / "home")},
        catch_exceptions=False,
    )


def terminal(tmp_path: Path) -> CliContext:
    return CliContext(
        console=make_console(width=100),
        err_console=make_console(stderr=True, width=100),
        stdin_isatty=True,
        stdout_isatty=True,
        home=tmp_path / "home",
        cwd=tmp_path,
    )


def inventory(tmp_path: Path) -> list[ServerEntry]:
    return list(load_inventory(tmp_path / "home" / "config.toml").servers)


def add(tmp_path: Path, host: str, name: str, *extra: str) -> Result:
    return run(tmp_path, "servers", "add", host, "--name", name, "--no-test", *extra)


def test_add_and_ls(tmp_path: Path) -> None:
    result = add(tmp_path, "10.0.0.2", "web2", "--description", "second box [eu]")
    assert result.exit_code == 0, result.output
    assert "Added server web2 (10.0.0.2:22)" in result.stdout
    assert add(tmp_path, "web1.example.com", "web1", "--port", "2222").exit_code == 0
    assert inventory(tmp_path) == [
        ServerEntry("web2", "10.0.0.2", 22, "second box [eu]"),
        ServerEntry("web1", "web1.example.com", 2222, ""),
    ]
    result = run(tmp_path, "servers", "ls")
    assert result.exit_code == 0
    lines = [line.rstrip() for line in result.stdout.splitlines()]
    assert lines == [
        "NAME  HOST              PORT  DESCRIPTION",
        "web1  web1.example.com  2222",
        "web2  10.0.0.2          22    second box [eu]",
    ]
    result = run(tmp_path, "servers", "ls", "--json")
    assert json.loads(result.stdout)[0] == {
        "name": "web1",
        "host": "web1.example.com",
        "port": 2222,
        "description": "",
    }


def test_ls_empty_has_a_hint(tmp_path: Path) -> None:
    result = run(tmp_path, "servers", "ls")
    assert result.exit_code == 0
    assert "No servers configured." in result.stdout
    assert "tako servers add HOST --name NAME" in result.stdout


def closed_port() -> int:
    """A loopback port nobody listens on: a real SSH probe to it fails fast with "connection refused"."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_readding_identical_entry_is_a_no_op(tmp_path: Path) -> None:
    add(tmp_path, "10.0.0.1", "web1")
    (tmp_path / "home" / "known_hosts").write_text("10.0.0.1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake\n")
    before = (tmp_path / "home" / "config.toml").read_bytes()
    # Without --no-test too: the host key is recorded and nothing changes, so nothing is probed.
    result = run(tmp_path, "servers", "add", "10.0.0.1", "--name", "web1")
    assert result.exit_code == 0
    assert "already configured" in result.stdout
    assert (tmp_path / "home" / "config.toml").read_bytes() == before


def test_readding_without_a_recorded_key_probes(tmp_path: Path) -> None:
    port = closed_port()
    add(tmp_path, "127.0.0.1", "web1", "--port", str(port))
    assert (
        run(
            tmp_path, "servers", "add", "127.0.0.1", "--name", "web1", "--port", str(port), "--no-test"
        ).exit_code
        == 0
    )
    result = run(tmp_path, "servers", "add", "127.0.0.1", "--name", "web1", "--port", str(port))
    assert result.exit_code == 1
    assert f"cannot connect to 127.0.0.1:{port}" in result.stderr
    assert inventory(tmp_path) == [ServerEntry("web1", "127.0.0.1", port)]


def test_description_change_updates(tmp_path: Path) -> None:
    add(tmp_path, "10.0.0.1", "web1")
    result = add(tmp_path, "10.0.0.1", "web1", "--description", "new")
    assert result.exit_code == 0
    assert "Updated" in result.stdout
    assert inventory(tmp_path) == [ServerEntry("web1", "10.0.0.1", 22, "new")]


def test_conflicts(tmp_path: Path) -> None:
    add(tmp_path, "10.0.0.1", "web1")
    result = add(tmp_path, "10.0.0.9", "web1")
    assert result.exit_code == 2
    assert "error: server 'web1' is already configured with host 10.0.0.1:22" in result.stderr
    assert "hint: to change it, remove it first: `tako servers rm web1`" in result.stderr
    result = add(tmp_path, "10.0.0.1", "web1", "--port", "2200")
    assert result.exit_code == 2
    result = add(tmp_path, "10.0.0.1", "other")
    assert result.exit_code == 2
    assert "10.0.0.1:22 is already configured as server 'web1'" in result.stderr
    assert add(tmp_path, "10.0.0.1", "other", "--port", "2200").exit_code == 0


def test_invalid_input(tmp_path: Path) -> None:
    result = add(tmp_path, "10.0.0.1", "Web_1")
    assert result.exit_code == 2
    assert "invalid server name 'Web_1'" in result.stderr
    result = add(tmp_path, "tako@10.0.0.1", "web1")
    assert result.exit_code == 2
    assert "without a user" in result.stderr
    result = add(tmp_path, "10.0.0.1:2222", "web1")
    assert "--port" in result.stderr
    assert add(tmp_path, "10.0.0.1", "web1", "--port", "0").exit_code == 2
    assert run(tmp_path, "servers", "add", "10.0.0.1").exit_code == 2  # --name is required
    assert inventory(tmp_path) == []


def test_failed_probe_adds_nothing(tmp_path: Path) -> None:
    port = closed_port()
    result = run(tmp_path, "servers", "add", "127.0.0.1", "--name", "web1", "--port", str(port))
    assert result.exit_code == 1
    assert f"error: web1: cannot connect to 127.0.0.1:{port}" in result.stderr
    assert "--no-test" in result.stderr
    assert inventory(tmp_path) == []


def test_rm_off_a_terminal_needs_yes(tmp_path: Path) -> None:
    add(tmp_path, "10.0.0.1", "web1")
    result = run(tmp_path, "servers", "rm", "web1")
    assert result.exit_code == 2
    assert "without confirmation" in result.stderr
    assert "--yes" in result.stderr
    assert "cancelled" not in result.output.lower()
    assert len(inventory(tmp_path)) == 1
    result = run(tmp_path, "servers", "rm", "web1", "--yes")
    assert result.exit_code == 0
    assert "Removed server web1" in result.stdout
    assert inventory(tmp_path) == []


def test_rm_asks_on_a_terminal(tmp_path: Path) -> None:
    add(tmp_path, "10.0.0.1", "web1")
    result = run(tmp_path, "servers", "rm", "web1", obj=terminal(tmp_path), input="n\n")
    assert result.exit_code == 1
    assert "Remove server web1 (10.0.0.1:22)" in result.stderr
    assert "not removed" in result.stderr
    assert len(inventory(tmp_path)) == 1
    result = run(tmp_path, "servers", "rm", "web1", obj=terminal(tmp_path), input="y\n")
    assert result.exit_code == 0
    assert inventory(tmp_path) == []


def test_rm_unknown_lists_known(tmp_path: Path) -> None:
    add(tmp_path, "10.0.0.1", "web1")
    add(tmp_path, "10.0.0.2", "db")
    result = run(tmp_path, "servers", "rm", "web2", "--yes")
    assert result.exit_code == 2
    assert "error: unknown server 'web2'" in result.stderr
    assert "known servers: db, web1" in result.stderr


def test_rm_warns_when_the_project_still_maps_it(tmp_path: Path) -> None:
    add(tmp_path, "10.0.0.1", "web1")
    (tmp_path / "tako.toml").write_text(
        '[tako]\nname = "app"\n[envs.production]\nroute = "a.com"\n[servers.web1]\nenv = "production"\n'
    )
    result = run(tmp_path, "servers", "rm", "web1", "--yes")
    assert result.exit_code == 0
    assert "still maps [servers.web1]" in result.stderr


def test_rm_forgets_the_host_key(tmp_path: Path) -> None:
    known_hosts = tmp_path / "home" / "known_hosts"
    add(tmp_path, "10.0.0.1", "web1", "--no-test")
    add(tmp_path, "10.0.0.1", "web1-ssh2", "--port", "2222", "--no-test")
    other = "[10.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOther\n"
    known_hosts.write_text("10.0.0.1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake\n" + other)
    result = run(tmp_path, "servers", "rm", "web1", "--yes")
    assert result.exit_code == 0
    assert f"Forgot its host key in {known_hosts}" in result.stdout
    assert known_hosts.read_text() == other  # the same machine's other port keeps its key
    assert oct(known_hosts.stat().st_mode & 0o777) == "0o600"
    # A server whose key was never recorded: nothing to forget, nothing said.
    add(tmp_path, "10.0.0.3", "web3", "--no-test")
    result = run(tmp_path, "servers", "rm", "web3", "--yes")
    assert result.exit_code == 0 and "Forgot" not in result.stdout
    assert known_hosts.read_text() == other
