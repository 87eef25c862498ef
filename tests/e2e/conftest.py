"""Fixtures for end-to-end tests: a per-session testbed (real namespaces, sshd and tako-server), a temporary
TAKO_HOME, and a runner for the `tako` CLI as a subprocess.

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
from tests.support.testbed import Testbed

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


@dataclass
class TakoCLI:
    """Runs the real `tako` CLI as a subprocess with its own TAKO_HOME."""

    home: Path
    executable: str

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {**os.environ, "TAKO_HOME": str(self.home), "NO_COLOR": "1", "COLUMNS": "200", "TERM": "dumb"}
        env.update(extra or {})
        return env

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


@pytest.fixture
def tako(tako_home: Path) -> TakoCLI:
    """`tako.run(*args, cwd=...)` runs the CLI with TAKO_HOME=tako_home."""
    return TakoCLI(tako_home, tako_executable())


def run_tako(home: Path, args: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
    """Function form of the `tako` fixture, for helpers outside tests."""
    return TakoCLI(home, tako_executable()).run(*args, **kw)  # type: ignore[arg-type]
