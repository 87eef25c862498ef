"""`tako servers add | ls | rm` through click's runner, with TAKO_HOME and HOME (so ~/.ssh) in a temp dir."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from tests.support.cli import cli_context

from tako.cli.context import CliContext
from tako.cli.main import cli
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
        env={"TAKO_HOME": str(tmp_path / "home"), "HOME": str(tmp_path / "user"), "TAKO_SSH_KEY": None},
        catch_exceptions=False,
    )


def inventory(tmp_path: Path) -> list[ServerEntry]:
    return list(load_inventory(tmp_path / "home" / "config.toml").servers)


def add(tmp_path: Path, host: str, name: str, *extra: str) -> Result:
    return run(tmp_path, "servers", "add", host, "--name", name, "--no-test", *extra)


def test_add_and_ls(tmp_path: Path) -> None:
    result = add(tmp_path, "10.0.0.2", "web2", "--description", "second box [eu]")
    assert result.exit_code == 0, result.output
    assert "Added server web2 (10.0.0.2)" in result.stdout
    assert add(tmp_path, "web1.example.com", "web1", "--port", "2222", "--user", "deploy").exit_code == 0
    assert inventory(tmp_path) == [
        ServerEntry("web2", "10.0.0.2", None, "second box [eu]"),
        ServerEntry("web1", "web1.example.com", 2222, "", user="deploy"),
    ]
    result = run(tmp_path, "servers", "ls")
    assert result.exit_code == 0
    lines = [line.rstrip() for line in result.stdout.splitlines()]
    assert lines == [
        "NAME  HOST              USER    PORT  DESCRIPTION",
        "web1  web1.example.com  deploy  2222",
        "web2  10.0.0.2          tako    22    second box [eu]",
    ]
    result = run(tmp_path, "servers", "ls", "--json")
    assert json.loads(result.stdout)[0] == {
        "name": "web1",
        "host": "web1.example.com",
        "user": "deploy",
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
    assert inventory(tmp_path) == [ServerEntry("web1", "10.0.0.1", None, "new")]


def test_conflicts(tmp_path: Path) -> None:
    add(tmp_path, "10.0.0.1", "web1")
    result = add(tmp_path, "10.0.0.9", "web1")
    assert result.exit_code == 2
    assert "error: server 'web1' is already configured with host 10.0.0.1" in result.stderr
    assert "hint: to change it, remove it first: `tako servers rm web1`" in result.stderr
    result = add(tmp_path, "10.0.0.1", "web1", "--port", "2200")
    assert result.exit_code == 2
    result = add(tmp_path, "10.0.0.1", "other")
    assert result.exit_code == 2
    assert "10.0.0.1 is already configured as server 'web1'" in result.stderr
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
    # A sentence, not asyncio's "Connect call failed ('127.0.0.1', PORT)".
    assert f"error: web1: cannot connect to 127.0.0.1:{port}: connection refused" in result.stderr
    assert "Connect call failed" not in result.stderr
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
    result = run(tmp_path, "servers", "rm", "web1", obj=cli_context(tmp_path), input="n\n")
    assert result.exit_code == 1
    assert "Remove server web1 (10.0.0.1)" in result.stderr
    assert "not removed" in result.stderr
    assert len(inventory(tmp_path)) == 1
    result = run(tmp_path, "servers", "rm", "web1", obj=cli_context(tmp_path), input="y\n")
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


def ssh_config(tmp_path: Path, text: str) -> None:
    ssh_dir = tmp_path / "user" / ".ssh"
    ssh_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
    (ssh_dir / "config").write_text(text)


def test_ls_shows_the_login_ssh_config_and_inventory_give(tmp_path: Path) -> None:
    """Explicit (inventory) beats ~/.ssh/config beats the defaults, for user and port separately."""
    ssh_config(
        tmp_path,
        "Host alias\n  HostName 10.9.9.9\n  User ops\n  Port 2200\n"
        "Host half\n  Port 2201\n"
        "Host *.example.com\n  User wild\n",
    )
    add(tmp_path, "alias", "from-config")
    add(tmp_path, "alias", "explicit", "--user", "deploy", "--port", "2222")
    add(tmp_path, "half", "half", "--user", "deploy")
    add(tmp_path, "db.example.com", "pattern")
    add(tmp_path, "10.0.0.1", "plain")
    result = run(tmp_path, "servers", "ls", "--json")
    assert result.exit_code == 0, result.output
    logins = {row["name"]: (row["user"], row["port"]) for row in json.loads(result.stdout)}
    assert logins == {
        "from-config": ("ops", 2200),
        "explicit": ("deploy", 2222),
        "half": ("deploy", 2201),
        "pattern": ("wild", 22),
        "plain": ("tako", 22),
    }


def test_changing_the_user_updates_the_entry(tmp_path: Path) -> None:
    add(tmp_path, "10.0.0.1", "web1")
    result = add(tmp_path, "10.0.0.1", "web1", "--user", "deploy")
    assert result.exit_code == 0, result.output
    assert "Updated the user of server web1." in result.stdout
    assert inventory(tmp_path) == [ServerEntry("web1", "10.0.0.1", user="deploy")]
    result = add(tmp_path, "10.0.0.1", "web1", "--user", "bad user")
    assert result.exit_code == 2
    assert "invalid user 'bad user'" in result.stderr


def test_a_user_in_host_points_to_user_option(tmp_path: Path) -> None:
    result = add(tmp_path, "deploy@10.0.0.1", "web1")
    assert result.exit_code == 2
    assert "--user" in result.stderr


def test_broken_ssh_config_is_a_clear_error(tmp_path: Path) -> None:
    ssh_config(tmp_path, "Host alias\n  Port notanumber\n")
    add(tmp_path, "alias", "web1")
    result = run(tmp_path, "servers", "ls")
    assert result.exit_code == 2
    assert "cannot read the SSH config" in result.stderr and "line 2" in result.stderr


def test_refused_login_names_user_host_and_keys(tmp_path: Path) -> None:
    """A real SSH server (asyncssh on loopback) that accepts no key: the refusal says who, where, which
    keys were offered, which were skipped, and how to authorize one; never key material."""
    import asyncio
    import threading

    import asyncssh

    ssh_dir = tmp_path / "user" / ".ssh"
    ssh_dir.mkdir(parents=True, mode=0o700)
    key = asyncssh.generate_private_key("ssh-ed25519", comment="me@laptop")
    key.write_private_key(ssh_dir / "id_ed25519")
    encrypted = asyncssh.generate_private_key("ssh-ed25519")
    encrypted.write_private_key(ssh_dir / "id_rsa", passphrase="secret")  # the name is only a name
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    stranger = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    authorized = asyncssh.import_authorized_keys(stranger)  # offers publickey, accepts none of ours
    ready = threading.Event()
    loop_box: list[tuple[asyncio.AbstractEventLoop, asyncio.Event, int]] = []

    def serve() -> None:
        async def main() -> None:
            server = await asyncssh.listen(
                "127.0.0.1", 0, server_host_keys=[host_key], authorized_client_keys=authorized
            )
            done = asyncio.Event()
            loop_box.append((asyncio.get_running_loop(), done, server.sockets[0].getsockname()[1]))
            ready.set()
            try:
                await done.wait()
            finally:
                server.close()
                await server.wait_closed()

        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert ready.wait(10), "the loopback SSH server did not start"
        port = loop_box[0][2]
        result = run(tmp_path, "servers", "add", "127.0.0.1", "--name", "web1", "--port", str(port))
    finally:
        if loop_box:
            loop_box[0][0].call_soon_threadsafe(loop_box[0][1].set)
        thread.join(10)
    assert result.exit_code == 1, result.output
    assert "error: web1: SSH login as tako@127.0.0.1 was refused" in result.stderr
    assert "tried ~/.ssh/id_ed25519" in result.stderr
    assert "skipped ~/.ssh/id_rsa (encrypted, and there is no terminal" in result.stderr
    assert "ssh-add ~/.ssh/id_rsa" in result.stderr
    assert f"ssh-copy-id -i ~/.ssh/id_ed25519.pub -p {port} tako@127.0.0.1" in result.stderr
    assert "TAKO_SSH_PUBKEY" in result.stderr
    assert "--user" in result.stderr
    private_text = (ssh_dir / "id_ed25519").read_text()
    assert not any(line in result.stderr for line in private_text.splitlines()[1:-1])
    assert inventory(tmp_path) == []
