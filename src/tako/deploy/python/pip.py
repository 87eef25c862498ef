"""pip as a wheelhouse build runs it: which pip, with which environment, and the short error tails its
failures are reported with."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tako.deploy.python.target import TargetPython
from tako.errors import DeployError


@dataclass(frozen=True)
class Pip:
    """One pip, run in the project directory with a fixed environment."""

    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str]

    def run(self, args: Sequence[str], *, what: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [*self.argv, *args], cwd=self.cwd, env=self.env, capture_output=True, text=True, check=False
            )
        except OSError as exc:
            raise DeployError(f"could not run pip to {what}: {exc}") from exc

    def download(
        self, target: TargetPython, dest: Path, req_file: Path, *, what: str, no_deps: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Wheels only, for exactly `target`, of what `req_file` asks for."""
        deps = ["--no-deps"] if no_deps else []
        args = ["download", *deps, "--only-binary=:all:", *target.pip_args(), "-d", str(dest)]
        return self.run([*args, "-r", str(req_file)], what=what)

    def wheel(self, dest: Path, *source: str, what: str) -> subprocess.CompletedProcess[str]:
        """Build one package (a directory, or `-r file`) into a wheel in `dest`, without its dependencies."""
        return self.run(["wheel", "--use-pep517", "--no-deps", "-w", str(dest), *source], what=what)


def find_pip(work: Path, cwd: Path, base_env: Mapping[str, str] | None) -> Pip:
    """pip for the running interpreter; tools installed without pip (uv tool, pipx) get a private one.

    `base_env` replaces os.environ for the pip processes (tests use it to bypass local pip configuration).
    """
    env = dict(os.environ if base_env is None else base_env)
    env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    env["PIP_NO_INPUT"] = "1"
    if importlib.util.find_spec("pip") is not None:
        return Pip((sys.executable, "-m", "pip"), cwd, env)
    venv = work.parent / "_pip-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        res = subprocess.run(
            [sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, check=False
        )
        if res.returncode != 0:
            raise DeployError(
                f"pip is not available to build the wheelhouse: {tail(res.stderr)}",
                hint="install tako into an environment with pip (python -m pip install tako)",
            )
    return Pip((str(python), "-m", "pip"), cwd, env)


def tail(text: str, lines: int = 6) -> str:
    """The last non-empty lines of a tool's output, for an error message."""
    kept = [ln for ln in text.strip().splitlines() if ln.strip()][-lines:]
    return "\n".join(kept) or "(no output)"
