"""How a server's login is decided without touching the network: explicit (inventory) beats ~/.ssh/config
beats Tako's defaults, and which keys are offered in which order."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from tako.errors import UsageError
from tako.remote import client_keys
from tako.remote.client_keys import KeyOffer
from tako.remote.connection import ServerAddress, _parse_jump
from tako.remote.ssh_config import resolve_login

# Test keys use few bcrypt rounds, which bcrypt warns about (pytest resets the CLI's own filter per test).
pytestmark = pytest.mark.filterwarnings("ignore:Warning. bcrypt.kdf:UserWarning")


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME of the test's own (so ~/.ssh is the test's), no agent, no TAKO_SSH_KEY."""
    user_home = tmp_path / "user"
    (user_home / ".ssh").mkdir(parents=True, mode=0o700)
    monkeypatch.setenv("HOME", str(user_home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.delenv("TAKO_SSH_KEY", raising=False)
    monkeypatch.setattr(client_keys, "_decrypted", {})
    return user_home


def write_config(home: Path, text: str) -> None:
    (home / ".ssh" / "config").write_text(text)


def test_defaults_without_a_config() -> None:
    login = resolve_login("10.0.0.1")
    assert (login.host, login.user, login.port) == ("10.0.0.1", "tako", 22)
    assert login.identity_files == () and login.proxy_jump is None and login.config_files == ()


def test_config_beats_defaults_and_explicit_beats_config(home: Path) -> None:
    write_config(
        home,
        "Host web\n  HostName 10.1.1.1\n  User ops\n  Port 2200\n  IdentityFile ~/.ssh/deploy_key\n"
        "  ProxyJump me@bastion:2022\n"
        "Host *\n  User everyone\n  Port 2300\n",
    )
    login = resolve_login("web")
    assert (login.host, login.user, login.port) == ("10.1.1.1", "ops", 2200)  # first match wins
    assert login.identity_files == (home / ".ssh" / "deploy_key",)
    assert login.proxy_jump == "me@bastion:2022"
    explicit = resolve_login("web", user="deploy", port=22)
    assert (explicit.host, explicit.user, explicit.port) == ("10.1.1.1", "deploy", 22)
    other = resolve_login("other")
    assert (other.host, other.user, other.port) == ("other", "everyone", 2300)
    # A jump host's default user is the local user, as with ssh; only Tako's servers default to tako.
    assert resolve_login("10.2.2.2", default_user="alice").user == "everyone"


def test_proxyjump_none_and_identity_agent(home: Path) -> None:
    write_config(home, "Host direct\n  ProxyJump none\n  IdentityAgent none\n")
    login = resolve_login("direct")
    assert login.proxy_jump is None and login.identity_agent == "none"


def test_broken_config_is_a_usage_error(home: Path) -> None:
    write_config(home, "Host web\n  Port many\n")
    with pytest.raises(UsageError) as info:
        resolve_login("web")
    assert "line 2" in info.value.message and "ssh -G web" in (info.value.hint or "")


def test_host_key_pin_is_under_the_inventory_name(home: Path) -> None:
    """Whatever ~/.ssh/config maps an alias to, its key is pinned under the alias (and the inventory's
    port), so a changed HostName or Port does not orphan the pin."""
    write_config(home, "Host web\n  HostName 10.1.1.1\n  Port 2200\n")
    assert ServerAddress("web", "web").known_hosts_name == "web"
    assert ServerAddress("web", "web", 22).known_hosts_name == "web"
    assert ServerAddress("web", "web", 2222).known_hosts_name == "[web]:2222"
    assert ServerAddress("web", "web", None, "deploy").ssh_destination == "deploy@web"
    assert ServerAddress("web", "web").ssh_destination == "tako@web"


def test_parse_jump() -> None:
    assert _parse_jump("bastion") == (None, "bastion", None)
    assert _parse_jump("me@bastion:2022") == ("me", "bastion", 2022)
    assert _parse_jump("ssh://me@[2001:db8::1]:2022") == ("me", "2001:db8::1", 2022)
    with pytest.raises(UsageError):
        _parse_jump("bastion:ssh")


def make_key(path: Path, passphrase: str | None = None) -> asyncssh.SSHKey:
    key = asyncssh.generate_private_key("ssh-ed25519")
    # Few bcrypt rounds: with ssh-keygen's 16, each decryption takes a noticeable fraction of a second.
    key.write_private_key(path, passphrase=passphrase, rounds=4)
    path.chmod(0o600)  # as ssh-keygen leaves it (ssh-add refuses anything looser)
    key.write_public_key(f"{path}.pub")
    return key


def offered(offer: KeyOffer) -> list[bytes]:
    """Every key the offer hands out, as public key data, in order."""

    async def drain() -> list[bytes]:
        keys = []
        for _ in range(20):
            key = await offer.next_key()
            if key is None:
                break
            keys.append(key.key_public_data)
        offer.close()
        return keys

    return asyncio.run(drain())


def test_default_key_files_in_order_encrypted_last(home: Path) -> None:
    ssh = home / ".ssh"
    rsa_name_encrypted = make_key(ssh / "id_rsa", passphrase="pw")
    ed = make_key(ssh / "id_ed25519")
    ecdsa = make_key(ssh / "id_ecdsa")
    make_key(ssh / "other_key")  # not a default name: not offered
    asked: list[Path] = []

    def ask(path: Path) -> str | None:
        asked.append(path)
        return "pw"

    offer = KeyOffer(resolve_login("h"), ask_passphrase=ask)
    assert offered(offer) == [ed.public_data, ecdsa.public_data, rsa_name_encrypted.public_data]
    assert asked == [ssh / "id_rsa"]  # asked only after the unencrypted keys
    assert offer.tried == ["~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa"]
    # Decrypted once per process: a second server does not ask again.
    again = KeyOffer(resolve_login("h2"), ask_passphrase=ask)
    assert offered(again)[-1] == rsa_name_encrypted.public_data and len(asked) == 1


def test_identity_file_replaces_the_defaults(home: Path) -> None:
    ssh = home / ".ssh"
    make_key(ssh / "id_ed25519")
    deploy = make_key(ssh / "deploy")
    write_config(home, "Host web\n  IdentityFile ~/.ssh/deploy\n  IdentityFile ~/.ssh/missing\n")
    offer = KeyOffer(resolve_login("web"))
    assert offered(offer) == [deploy.public_data]
    assert offer.describe() == "tried ~/.ssh/deploy; skipped ~/.ssh/missing (no such file)"


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[str]:
    """A private ssh-agent in the foreground (stopped by the test); yields its socket."""
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "ssh-agent did not start"
            time.sleep(0.02)
        yield str(sock)
    finally:
        proc.terminate()
        proc.wait(10)


def ssh_add(agent: str, key: Path) -> None:
    env = {**os.environ, "SSH_AUTH_SOCK": agent}
    subprocess.run(["ssh-add", "-q", str(key)], env=env, check=True, timeout=30, stdin=subprocess.DEVNULL)


def test_agent_keys_come_first(
    home: Path, agent: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_file = make_key(home / ".ssh" / "id_ed25519")
    in_agent = make_key(tmp_path / "agent_only")
    ssh_add(agent, tmp_path / "agent_only")
    monkeypatch.setenv("SSH_AUTH_SOCK", agent)
    offer = KeyOffer(resolve_login("h"))
    assert offered(offer) == [in_agent.public_data, on_file.public_data]
    assert offer.tried[0].startswith("ssh-agent (1 key: ")


def test_tako_ssh_key_overrides(
    home: Path, agent: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    make_key(home / ".ssh" / "id_ed25519")
    make_key(tmp_path / "agent_only")
    ssh_add(agent, tmp_path / "agent_only")
    chosen = make_key(tmp_path / "chosen")
    monkeypatch.setenv("SSH_AUTH_SOCK", agent)
    monkeypatch.setenv("TAKO_SSH_KEY", str(tmp_path / "chosen"))
    offer = KeyOffer(resolve_login("h"))
    assert offered(offer) == [chosen.public_data]  # not the agent's other key, not ~/.ssh/id_ed25519
    # When the agent holds the override key, it is used from there (no passphrase needed).
    ssh_add(agent, tmp_path / "chosen")
    offer = KeyOffer(resolve_login("h"))
    assert offered(offer) == [chosen.public_data, chosen.public_data]
    assert offer.tried[0].startswith("ssh-agent (1 key")


def test_encrypted_key_without_terminal_says_to_use_the_agent(home: Path) -> None:
    make_key(home / ".ssh" / "id_ed25519", passphrase="pw")
    offer = KeyOffer(resolve_login("h"), ask_passphrase=lambda path: None)
    assert offered(offer) == []
    assert "no key was offered" in offer.describe()
    assert "ssh-add ~/.ssh/id_ed25519" in offer.describe()


def test_wrong_passphrase_is_asked_three_times(home: Path) -> None:
    make_key(home / ".ssh" / "id_ed25519", passphrase="right")
    answers = iter(["wrong", "also wrong", "still wrong", "right"])
    offer = KeyOffer(resolve_login("h"), ask_passphrase=lambda path: next(answers))
    assert offered(offer) == []
    assert "passphrase was wrong 3 times" in offer.describe()


def test_unreachable_agent_is_reported_not_fatal(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = make_key(home / ".ssh" / "id_ed25519")
    monkeypatch.setenv("SSH_AUTH_SOCK", str(home / "gone.sock"))
    offer = KeyOffer(resolve_login("h"))
    assert offered(offer) == [key.public_data]
    assert "skipped ssh-agent at" in offer.describe()
