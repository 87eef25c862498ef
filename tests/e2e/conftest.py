"""Fixtures for end-to-end tests: a per-session testbed (real namespaces, sshd and tako-server), a temporary
TAKO_HOME, and a runner for the `tako` CLI as a subprocess.

The CLI logs in the way a user's machine does: HOME is a directory of the test's whose `~/.ssh/id_ed25519`
is the testbed key (`user_ssh_env`), with no TAKO_SSH_KEY and no ssh-agent unless a test sets them.

E2E tests need root (they create network namespaces). Without it they fail with a clear message; CI is root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.support.testbed import Host, Testbed

STATE_ROOT = Path("/var/tmp")
STATE_PATTERN = "tako-e2e-"


def _prefix_for(pid: int) -> str:
    return f"e{pid}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap_stale_sessions() -> None:
    """Remove the hosts of earlier sessions that died without tearing down (SIGKILL, power loss)."""
    for state_dir in STATE_ROOT.glob(f"{STATE_PATTERN}*"):
        suffix = state_dir.name[len(STATE_PATTERN) :]
        if suffix.isdigit() and not _pid_alive(int(suffix)):
            Testbed(state_dir, _prefix_for(int(suffix))).destroy()


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail(
            "e2e tests need root: they create network namespaces, veths and a real sshd per testbed host. "
            "Run them as root (sudo .venv/bin/pytest -m e2e); CI runs as root.",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def testbed() -> Iterator[Testbed]:
    """A testbed private to this test session (own state dir and namespace prefix), torn down at the end."""
    require_root()
    _reap_stale_sessions()
    pid = os.getpid()
    bed = Testbed(STATE_ROOT / f"{STATE_PATTERN}{pid}", _prefix_for(pid))
    try:
        yield bed
    finally:
        bed.destroy()


@pytest.fixture
def tako_home(tmp_path: Path) -> Path:
    """An empty TAKO_HOME (inventory, known_hosts, keys) for one test."""
    home = tmp_path / "tako-home"
    home.mkdir(mode=0o700)
    return home


def tako_executable() -> str:
    candidate = Path(sys.executable).with_name("tako")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("tako")
    if found is None:
        pytest.fail(
            "the `tako` command is not installed: pip install -e '.[dev]' in the test venv", pytrace=False
        )
    return found


def user_home_with_key(key: str | Path, home: Path | None = None) -> Path:
    """A HOME whose `~/.ssh/id_ed25519` is a copy of `key` (0600 in a 0700 ~/.ssh), as `ssh-keygen`
    leaves it. Default: `user-home` beside the key, so a testbed's home goes away with the testbed."""
    key = Path(key)
    home = home if home is not None else key.parent / "user-home"
    ssh_dir = home / ".ssh"
    target = ssh_dir / "id_ed25519"
    if not target.exists():
        ssh_dir.mkdir(parents=True, exist_ok=True)
        home.chmod(0o700)
        ssh_dir.chmod(0o700)
        for source, name, mode in ((key, "id_ed25519", 0o600), (Path(f"{key}.pub"), "id_ed25519.pub", 0o644)):
            if source.exists():
                # Several modules may create it at once: each copies to its own name, then renames.
                partial = ssh_dir / f".{name}.{os.getpid()}"
                shutil.copyfile(source, partial)
                partial.chmod(mode)
                os.replace(partial, ssh_dir / name)
    return home


def user_ssh_env(host: Host) -> dict[str, str]:
    """CLI environment logging in to testbed hosts with the default key file `~/.ssh/id_ed25519`."""
    return {"HOME": str(user_home_with_key(host.key))}


# The developer's own settings that tools run by the CLI (pip, git) read from HOME: kept when HOME moves.
_XDG_DEFAULTS = {"XDG_CONFIG_HOME": ".config", "XDG_CACHE_HOME": ".cache"}


@dataclass
class TakoCLI:
    """Runs the real `tako` CLI as a subprocess with its own TAKO_HOME and HOME (an empty one unless the
    caller passes `user_ssh_env(host)` or its own HOME)."""

    home: Path
    executable: str

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {**os.environ, "TAKO_HOME": str(self.home), "NO_COLOR": "1", "COLUMNS": "200", "TERM": "dumb"}
        # Only what the test sets up logs in: not the machine's agent, keys or TAKO_SSH_KEY.
        for name in ("SSH_AUTH_SOCK", "SSH_AGENT_PID", "TAKO_SSH_KEY"):
            env.pop(name, None)
        real_home = Path.home()
        for name, sub in _XDG_DEFAULTS.items():
            env.setdefault(name, str(real_home / sub))
        if "GIT_CONFIG_GLOBAL" not in env and (real_home / ".gitconfig").exists():
            env["GIT_CONFIG_GLOBAL"] = str(real_home / ".gitconfig")
        env["HOME"] = str(self.empty_user_home())
        env.update(extra or {})
        return env

    def empty_user_home(self) -> Path:
        """The HOME used when the caller gives none: no ~/.ssh at all."""
        home = self.home.with_name(f"{self.home.name}-user")
        home.mkdir(mode=0o700, exist_ok=True)
        return home

    def run(
        self,
        *args: str,
        cwd: Path | str | None = None,
        input: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 180,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.executable, *args],
            cwd=cwd,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(env),
            check=False,
        )

    def ok(self, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        """Run and require exit status 0, showing the output otherwise."""
        proc = self.run(*args, **kw)  # type: ignore[arg-type]
        assert proc.returncode == 0, (
            f"tako {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
        return proc


def cli_with_server(host: Host, tmp_path_factory: pytest.TempPathFactory, name: str) -> TakoCLI:
    """A TakoCLI with a TAKO_HOME of its own (0700) and `host` added to its inventory as server `name`,
    logging in as a user does (`user_ssh_env`): for a test module's `cli` fixture."""
    home = tmp_path_factory.mktemp(f"{name}-home")
    home.chmod(0o700)
    runner = TakoCLI(home, tako_executable())
    runner.ok("servers", "add", host.address, "--name", name, env=user_ssh_env(host))
    return runner


def cli_with_hosts(hosts: Sequence[Host], tmp_path_factory: pytest.TempPathFactory) -> TakoCLI:
    """`cli_with_server` for several hosts, each added under its own name."""
    runner = cli_with_server(hosts[0], tmp_path_factory, hosts[0].name)
    for host in hosts[1:]:
        runner.ok("servers", "add", host.address, "--name", host.name, env=user_ssh_env(host))
    return runner


@pytest.fixture(scope="module")
def host(testbed: Testbed, request: pytest.FixtureRequest) -> Host:
    """The module's one testbed host, named by the module's SERVER (a module may define its own)."""
    return testbed.up(request.module.SERVER)[0]


@pytest.fixture(scope="module")
def cli(host: Host, tmp_path_factory: pytest.TempPathFactory) -> TakoCLI:
    """One TAKO_HOME for the module (its env keys and wheel cache live there), with `host` in the
    inventory under its own name."""
    return cli_with_server(host, tmp_path_factory, host.name)


@pytest.fixture
def tako(tako_home: Path) -> TakoCLI:
    """`tako.run(*args, cwd=...)` runs the CLI with TAKO_HOME=tako_home (and `env=user_ssh_env(host)` to
    log in to testbed hosts)."""
    return TakoCLI(tako_home, tako_executable())


def run_tako(home: Path, args: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
    """Function form of the `tako` fixture, for helpers outside tests."""
    return TakoCLI(home, tako_executable()).run(*args, **kw)  # type: ignore[arg-type]
