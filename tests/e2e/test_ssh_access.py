"""Logging in the way OpenSSH users expect, against a testbed host's real sshd: the default key file, an
ssh-agent holding an encrypted key, a passphrase typed on a terminal, a `~/.ssh/config` alias
(HostName, Port, User, IdentityFile, ProxyJump), and `--user` stored in the inventory. No TAKO_SSH_KEY."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import select
import shutil
import signal
import subprocess
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.e2e.conftest import TakoCLI, user_home_with_key
from tests.support.processes import stop_process
from tests.support.projects import make_project
from tests.support.testbed import Host, Testbed

pytestmark = pytest.mark.e2e

NAME = "web"
PASSPHRASE_ENV = "TEST_KEY_PASSPHRASE"  # how the askpass script gets the passphrase (never argv)


@pytest.fixture(scope="module")
def host(testbed: Testbed) -> Host:
    return testbed.up("sshacc")[0]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A user's HOME with an empty ~/.ssh (0700)."""
    user_home = tmp_path / "user"
    (user_home / ".ssh").mkdir(parents=True)
    user_home.chmod(0o700)
    (user_home / ".ssh").chmod(0o700)
    return user_home


def connects(tako: TakoCLI, env: dict[str, str], name: str = NAME) -> None:
    """`tako servers status` logs in and finds tako-server running."""
    status = tako.ok("servers", "status", name, env=env)
    assert "installed" in status.stdout and "NOT installed" not in status.stdout, status.stdout


def new_key(path: Path, passphrase: str = "") -> str:
    """A fresh ed25519 key pair made by ssh-keygen; returns the public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", "test-key", "-f", str(path)],
        check=True,
        timeout=30,
    )
    return Path(f"{path}.pub").read_text().strip()


@pytest.fixture
def authorize(host: Host) -> Iterator[Authorizer]:
    authorizer = Authorizer(host)
    try:
        yield authorizer
    finally:
        authorizer.revoke_all()


class Authorizer:
    """Adds public keys to tako's authorized_keys on the host, and removes them again."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.added: list[str] = []

    def __call__(self, public_key: str) -> None:
        result = self.host.exec(
            ["sh", "-c", 'printf "%s\\n" "$1" >> "$HOME/.ssh/authorized_keys"', "sh", public_key], user="tako"
        )
        assert result.returncode == 0, result.stderr
        self.added.append(public_key)

    def revoke_all(self) -> None:
        for key in self.added:
            self.host.exec(
                [
                    "sh",
                    "-c",
                    'grep -vxF "$1" "$HOME/.ssh/authorized_keys" > "$HOME/.ssh/ak.tmp"; '
                    'mv "$HOME/.ssh/ak.tmp" "$HOME/.ssh/authorized_keys"',
                    "sh",
                    key,
                ],
                user="tako",
            )


# --- (1) the default key file -----------------------------------------------------------------------


def test_default_key_file_is_used(host: Host, tako: TakoCLI, home: Path) -> None:
    """README's "Using it" as a new user does it: the usual ~/.ssh/id_ed25519, nothing else set."""
    user_home_with_key(host.key, home)
    env = {"HOME": str(home)}
    added = tako.ok("servers", "add", host.address, "--name", NAME, env=env)
    assert "host key recorded" in added.stdout
    assert (tako.home / "known_hosts").read_text().startswith(f"{host.address} ssh-ed25519 ")
    connects(tako, env)


# --- (2) an ssh-agent holding an encrypted key --------------------------------------------------------


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[str]:
    """A private ssh-agent (foreground, so this test owns and stops it); yields its socket path."""
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert proc.poll() is None, "ssh-agent exited"
            assert time.monotonic() < deadline, "ssh-agent did not create its socket"
            time.sleep(0.02)
        yield str(sock)
    finally:
        stop_process(proc)


def ssh_add(agent_sock: str, key: Path, passphrase: str, tmp_path: Path) -> None:
    """`ssh-add KEY` answering the passphrase prompt through SSH_ASKPASS, as a desktop session does."""
    askpass = tmp_path / "askpass"
    askpass.write_text(f'#!/bin/sh\nprintf "%s\\n" "${PASSPHRASE_ENV}"\n')
    askpass.chmod(0o700)
    env = {
        **os.environ,
        "SSH_AUTH_SOCK": agent_sock,
        "SSH_ASKPASS": str(askpass),
        "SSH_ASKPASS_REQUIRE": "force",
        PASSPHRASE_ENV: passphrase,
    }
    result = subprocess.run(
        ["ssh-add", str(key)], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr


def test_agent_holding_an_encrypted_key(
    host: Host, tako: TakoCLI, home: Path, agent: str, authorize: Authorizer, tmp_path: Path
) -> None:
    key = home / ".ssh" / "id_ed25519"
    authorize(new_key(key, passphrase="correct horse"))
    env = {"HOME": str(home)}
    # Without the agent and without a terminal the key cannot be used, and the error says what to do.
    refused = tako.run("servers", "add", host.address, "--name", NAME, env=env)
    assert refused.returncode == 1
    assert f"SSH login as tako@{host.address} was refused" in refused.stderr
    assert "~/.ssh/id_ed25519 (encrypted, and there is no terminal" in refused.stderr
    assert "ssh-add ~/.ssh/id_ed25519" in refused.stderr
    assert "correct horse" not in refused.stderr

    ssh_add(agent, key, "correct horse", tmp_path)
    env["SSH_AUTH_SOCK"] = agent
    tako.ok("servers", "add", host.address, "--name", NAME, env=env)
    connects(tako, env)


# --- (2b) the passphrase typed on a terminal ------------------------------------------------------------


def run_on_terminal(tako: TakoCLI, args: list[str], env: dict[str, str], answer: str) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as its controlling terminal and stdin; type `answer` at the
    passphrase prompt. Returns the exit status and everything written to the terminal."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [tako.executable, *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=tako.env(env),
        start_new_session=True,  # the pty becomes the controlling terminal (/dev/tty) on open
        preexec_fn=_take_terminal,
    )
    os.close(slave)
    output = b""
    answered = False
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the other side closed (EIO on Linux)
                    break
                if not chunk:
                    break
                output += chunk
                if not answered and b"Enter passphrase for key" in output:
                    os.write(master, answer.encode() + b"\n")
                    answered = True
            elif proc.poll() is not None:
                break
        status = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        os.close(master)
    return status, output.decode(errors="replace")


def _take_terminal() -> None:
    """In the child, after setsid: make its stdin (the pty) the controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def test_passphrase_asked_on_a_terminal(
    host: Host, tako: TakoCLI, home: Path, authorize: Authorizer, tmp_path: Path
) -> None:
    authorize(new_key(home / ".ssh" / "id_ed25519", passphrase="on the tty"))
    env = {"HOME": str(home), "TERM": "xterm"}
    add = ["servers", "add", host.address, "--name", NAME]
    status, output = run_on_terminal(tako, add, env, "on the tty")
    assert status == 0, output
    assert "Enter passphrase for key '~/.ssh/id_ed25519':" in output
    assert "on the tty" not in output  # not echoed
    assert "bcrypt" not in output and "Warning" not in output
    assert "host key recorded" in output
    # During a deploy the live progress lines stand aside for the prompt.
    project = make_project(tmp_path / "project", servers={NAME: "production"})
    status, output = run_on_terminal(tako, ["-C", str(project), "deploy", "--yes"], env, "on the tty")
    assert status == 0, output
    assert "Enter passphrase for key '~/.ssh/id_ed25519':" in output
    assert "1/1 server(s) succeeded" in output
    # Ctrl-C at the prompt ends the command at once, as in ssh (exit status 130, no traceback).
    status, output = run_on_terminal(tako, ["servers", "status", NAME], env, "\x03")
    assert status == 130, output
    assert "Traceback" not in output


# --- (3) a ~/.ssh/config alias ----------------------------------------------------------------------------


class Relay:
    """127.0.0.1:<port> → a testbed host's sshd, so ~/.ssh/config can name a port other than 22."""

    def __init__(self, address: str, port: int) -> None:
        self.target = (address, port)
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> Relay:
        self._thread.start()
        assert self._ready.wait(10), "the relay did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.target), 10)
        except (OSError, TimeoutError):
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def test_ssh_config_alias(host: Host, tako: TakoCLI, home: Path) -> None:
    """HostName, Port, User and an IdentityFile not named id_*; the host key is pinned under the alias."""
    keys = home / "keys"
    keys.mkdir(mode=0o700)
    shutil.copyfile(host.key, keys / "testbed")
    (keys / "testbed").chmod(0o600)
    env = {"HOME": str(home)}
    with Relay(host.address, host.ssh_port) as relay:
        (home / ".ssh" / "config").write_text(
            "Host tb-alias\n"
            "  HostName 127.0.0.1\n"
            f"  Port {relay.port}\n"
            "  User tako\n"
            "  IdentityFile ~/keys/testbed\n"
            "Host *\n"
            "  User nobody-at-all\n"
        )
        added = tako.ok("servers", "add", "tb-alias", "--name", NAME, env=env)
        assert "Connecting to tako@tb-alias" in added.stderr
        assert (tako.home / "known_hosts").read_text().startswith("tb-alias ssh-ed25519 ")
        [row] = json.loads(tako.ok("servers", "ls", "--json", env=env).stdout)
        assert (row["host"], row["user"], row["port"]) == ("tb-alias", "tako", relay.port)
        connects(tako, env)


def test_proxy_jump(host: Host, tako: TakoCLI, home: Path, tmp_path: Path) -> None:
    """The server is reached through a jump host (itself, here: the host's sshd forwards to its own
    loopback). The jump host is checked against ~/.ssh/known_hosts, the server against Tako's pin."""
    user_home_with_key(host.key, home)
    (home / ".ssh" / "config").write_text(
        f"Host behind-bastion\n  HostName 127.0.0.1\n  ProxyJump tako@{host.address}\n"
    )
    env = {"HOME": str(home)}
    refused = tako.run("servers", "add", "behind-bastion", "--name", NAME, env=env)
    assert refused.returncode == 1
    assert f"jump host tako@{host.address}: its host key is not in ~/.ssh/known_hosts" in refused.stderr

    (home / ".ssh" / "known_hosts").write_text(Path(host.known_hosts).read_text())
    tako.ok("servers", "add", "behind-bastion", "--name", NAME, env=env)
    assert (tako.home / "known_hosts").read_text().startswith("behind-bastion ssh-ed25519 ")
    connects(tako, env)
    # The pin holds through the jump: a different recorded key is refused.
    pinned = tako.home / "known_hosts"
    other = new_key(tmp_path / "some-other-host-key").split()
    pinned.write_text(f"behind-bastion {other[0]} {other[1]}\n")
    changed = tako.run("servers", "status", NAME, env=env)
    assert changed.returncode != 0
    assert "has changed since it was recorded" in changed.stderr


# --- (4) --user, stored in the inventory --------------------------------------------------------------------


def test_user_option_is_stored_and_wins_over_ssh_config(host: Host, tako: TakoCLI, home: Path) -> None:
    user_home_with_key(host.key, home)
    (home / ".ssh" / "config").write_text(f"Host {host.address}\n  User config-user\n")
    env = {"HOME": str(home)}
    # ~/.ssh/config's User beats Tako's default: the refusal names that user and the keys offered.
    refused = tako.run("servers", "add", host.address, "--name", NAME, env=env)
    assert refused.returncode == 1
    assert f"SSH login as config-user@{host.address} was refused" in refused.stderr
    assert "tried ~/.ssh/id_ed25519" in refused.stderr
    # An explicit --user beats ~/.ssh/config, is stored, shown and used by later commands.
    tako.ok("servers", "add", host.address, "--name", NAME, "--user", "tako", env=env)
    assert 'user = "tako"' in (tako.home / "config.toml").read_text()
    listed = tako.ok("servers", "ls", "--json", env=env).stdout
    assert '"user": "tako"' in listed
    connects(tako, env)
    # A wrong stored user: the clear refusal names it.
    refused = tako.run("servers", "add", host.address, "--name", NAME, "--user", "deploy", env=env)
    assert refused.returncode == 1
    assert f"SSH login as deploy@{host.address} was refused" in refused.stderr
    assert "ssh-copy-id -i ~/.ssh/id_ed25519.pub deploy@" in refused.stderr
    assert 'user = "tako"' in (tako.home / "config.toml").read_text()  # a failed test changes nothing
