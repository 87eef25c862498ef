"""The keys an SSH login offers, in OpenSSH's order: the ssh-agent's keys, then key files (`IdentityFile`
from `~/.ssh/config`, else `~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa`). `TAKO_SSH_KEY` names the one key
file to use instead (the agent then offers only that key, if it holds it).

An encrypted key file is offered last, and only then decrypted: with a passphrase asked on the terminal
when there is one, otherwise it is skipped and the refusal says to add it to ssh-agent. Every key offered
or skipped is described (agent comment or file path, never key material) for that refusal's message.
"""

from __future__ import annotations

import getpass
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import asyncssh

from tako.remote.ssh_config import LoginTarget

KEY_ENV = "TAKO_SSH_KEY"
DEFAULT_KEY_FILES = ("id_ed25519", "id_ecdsa", "id_rsa")
PASSPHRASE_ATTEMPTS = 3  # as ssh's NumberOfPasswordPrompts

# Decrypted keys, shared by the connections of one command, so a deploy to several servers asks for a
# key's passphrase once. The lock keeps prompts from interleaving should two threads ever ask at once.
_decrypted: dict[Path, asyncssh.SSHKeyPair] = {}
_prompt_lock = threading.Lock()

AskPassphrase = Callable[[Path], str | None]
TerminalPause = Callable[[], AbstractContextManager[object]]

# Whatever redraws the terminal meanwhile (the deploy's live progress) stands aside while a passphrase
# is asked, or it would paint over the prompt.
_terminal_pause: TerminalPause | None = None


def set_terminal_pause(pause: TerminalPause | None) -> None:
    """Register (or, with None, remove) what to enter around a passphrase prompt."""
    global _terminal_pause
    _terminal_pause = pause


# bcrypt warns about fewer than 50 KDF rounds on every decryption, and ssh-keygen's default is 16: the
# advice is for whoever made the key, not for someone unlocking their own, so it must not reach them.
warnings.filterwarnings("ignore", message=r"Warning: bcrypt\.kdf\(\) called with only", category=UserWarning)


def terminal_passphrase(path: Path) -> str | None:
    """Ask on the terminal (None without one: stdin is not a TTY, or the user pressed Ctrl-D)."""
    if not sys.stdin.isatty():
        return None
    with _terminal_pause() if _terminal_pause is not None else nullcontext(), _interruptible():
        try:
            return getpass.getpass(f"Enter passphrase for key '{display_path(path)}': ")
        except EOFError:
            pass
    return None


@contextmanager
def _interruptible() -> Iterator[None]:
    """Ctrl-C at the prompt stops the command as Ctrl-C anywhere else does.

    asyncio.run's SIGINT handler only cancels the main task, which cannot run while the prompt blocks
    the loop: the command hung until a second Ctrl-C. So the prompt gets Python's default handler (getpass
    then restores the terminal's echo), and the interrupt is handed back to the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupted = False
    try:
        yield
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        signal.raise_signal(signal.SIGINT)  # asyncio.run's handler cancels the command cleanly


def display_path(path: Path) -> str:
    """The path with the home directory shown as `~`."""
    home = str(Path.home())
    text = str(path)
    return "~" + text[len(home) :] if text.startswith(home + os.sep) else text


class KeyOffer:
    """Hands the SSH library one key at a time and remembers what was tried."""

    def __init__(self, target: LoginTarget, *, ask_passphrase: AskPassphrase = terminal_passphrase) -> None:
        self.override = os.environ.get(KEY_ENV, "").strip()
        self.agent_path = _agent_path(target)
        self.files = self._key_files(target)
        # TAKO_SSH_KEY is the one key: the agent is asked only for it (when it holds it, an encrypted
        # key file needs no passphrase), like IdentitiesOnly.
        self.identities_only = bool(self.override) or (target.identities_only and bool(target.identity_files))
        self.ask_passphrase = ask_passphrase
        self.tried: list[str] = []
        self.skipped: list[str] = []
        self._agent: asyncssh.SSHAgentClient | None = None
        self._queue: list[asyncssh.SSHKeyPair] | None = None
        self._encrypted: list[Path] = []
        self.prompt_ended = 0.0  # time.monotonic() after the last passphrase prompt (timeouts start there)

    def _key_files(self, target: LoginTarget) -> list[tuple[Path, bool]]:
        """(path, explicit): explicit files are reported when missing; absent default files are not."""
        if self.override:
            return [(Path(self.override).expanduser(), True)]
        if target.identity_files:
            return [(path, True) for path in target.identity_files]
        ssh_dir = Path.home() / ".ssh"
        return [(ssh_dir / name, False) for name in DEFAULT_KEY_FILES]

    async def next_key(self) -> asyncssh.SSHKeyPair | None:
        """The next key to offer, or None when none is left."""
        if self._queue is None:
            self._queue = await self._agent_keys()
            self._queue += self._plain_file_keys()
        if self._queue:
            return self._queue.pop(0)
        while self._encrypted:
            path = self._encrypted.pop(0)
            try:
                # On the event loop's own thread, blocking it: other servers' logins wait (they would
                # want the same passphrase), and Ctrl-C at the prompt interrupts getpass itself, which
                # restores the terminal's echo. In a worker thread, the interpreter would wait for the
                # prompt to be answered before it could exit.
                key = self._decrypt(path)
            finally:
                self.prompt_ended = time.monotonic()
            if key is not None:
                self.tried.append(display_path(path))
                return key
        return None

    def close(self) -> None:
        if self._agent is not None:
            self._agent.close()
            self._agent = None

    def describe(self) -> str:
        """What was offered and skipped, for the refusal's message."""
        parts = []
        if self.tried:
            parts.append("tried " + ", ".join(self.tried))
        else:
            parts.append("no key was offered")
        if self.skipped:
            parts.append("skipped " + "; ".join(self.skipped))
        return "; ".join(parts)

    def public_key_to_authorize(self) -> str:
        """The `.pub` file to suggest for ssh-copy-id: the first key file Tako would use."""
        path = self.files[0][0] if self.files else Path.home() / ".ssh" / "id_ed25519"
        return display_path(path) + ".pub"

    async def _agent_keys(self) -> list[asyncssh.SSHKeyPair]:
        if not self.agent_path:
            return []
        self._agent = asyncssh.SSHAgentClient(self.agent_path)
        try:
            keys = list(await self._agent.get_keys())
        except (OSError, asyncssh.Error, ValueError) as exc:
            self.skipped.append(f"ssh-agent at {self.agent_path} ({exc or 'not answering'})")
            return []
        if self.identities_only:
            wanted = {data for path, _ in self.files if (data := _public_key_data(path)) is not None}
            keys = [key for key in keys if key.key_public_data in wanted]
        if keys:
            names = ", ".join(_agent_key_name(key) for key in keys)
            self.tried.append(f"ssh-agent ({len(keys)} key{'s' if len(keys) != 1 else ''}: {names})")
        else:
            self.tried.append("ssh-agent (no keys)")
        return keys

    def _plain_file_keys(self) -> list[asyncssh.SSHKeyPair]:
        """The unencrypted key files; encrypted ones are set aside for after everything else."""
        keys: list[asyncssh.SSHKeyPair] = []
        for path, explicit in self.files:
            shown = display_path(path)
            if not path.exists():
                if explicit:
                    self.skipped.append(f"{shown} (no such file)")
                continue
            if path in _decrypted:
                keys.append(_decrypted[path])
                self.tried.append(shown)
                continue
            try:
                loaded = asyncssh.load_keypairs([path], ignore_encrypted=True)
            except (OSError, asyncssh.Error, ValueError) as exc:
                self.skipped.append(f"{shown} ({_reason(exc)})")
                continue
            if not loaded:
                self._encrypted.append(path)
                continue
            keys.extend(loaded)
            self.tried.append(shown)
        return keys

    def _decrypt(self, path: Path) -> asyncssh.SSHKeyPair | None:
        """Asks for the passphrase (up to three times) unless the key was already decrypted."""
        shown = display_path(path)
        with _prompt_lock:
            if path in _decrypted:
                return _decrypted[path]
            for _ in range(PASSPHRASE_ATTEMPTS):
                passphrase = self.ask_passphrase(path)
                if passphrase is None:
                    self.skipped.append(
                        f"{shown} (encrypted, and there is no terminal to ask for its passphrase: "
                        f"add it to ssh-agent with `ssh-add {shown}`)"
                    )
                    return None
                try:
                    key = asyncssh.load_keypairs([path], passphrase)[0]
                except asyncssh.KeyEncryptionError:
                    print("Incorrect passphrase.", file=sys.stderr)
                    continue
                except (OSError, asyncssh.Error, ValueError, IndexError) as exc:
                    self.skipped.append(f"{shown} ({_reason(exc)})")
                    return None
                _decrypted[path] = key
                return key
            self.skipped.append(f"{shown} (encrypted; the passphrase was wrong {PASSPHRASE_ATTEMPTS} times)")
            return None


def _agent_path(target: LoginTarget) -> str | None:
    agent = target.identity_agent
    if agent is not None:
        if agent.lower() == "none":
            return None
        if agent != "SSH_AUTH_SOCK":
            return os.path.expanduser(agent)
    return os.environ.get("SSH_AUTH_SOCK") or None


def _agent_key_name(key: asyncssh.SSHKeyPair) -> str:
    comment = key.get_comment()
    return comment or key.key_algorithm.decode("ascii", "replace")


def _public_key_data(path: Path) -> bytes | None:
    """The public half of a key file (from `<file>.pub`), for IdentitiesOnly; None when unknown."""
    try:
        return asyncssh.read_public_key(f"{path}.pub").public_data
    except (OSError, asyncssh.Error, ValueError):
        return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    if isinstance(exc, asyncssh.Error):
        return exc.reason
    return str(exc)
