"""`tako servers upgrade`: install on a server the tako-server of this CLI's version, then hand over.

The wheel is built here, from the source tree this CLI runs from (no package index is needed on the
server), uploaded, installed offline into tako-server's own venv (through `sudo -n` when the SSH user
cannot write the venv), and the running tako-server hands its listeners over to a process of the new version
(`tako-server handover`), so no request is dropped. The proxy's compiled modules are kept when the
server's Python is the one building the wheel; otherwise the wheel is pure Python.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tako
from tako import __version__
from tako.deploy.server_admin import restart_server
from tako.errors import CommandFailed, TakoError
from tako.remote.executor import Executor, sh

# What a wheel build of the source tree reads.
BUILD_FILES = ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "setup.py", "setup.cfg")
BUILD_PRODUCTS = ("*.so", "compiled.json", "build", "*.egg-info", "__pycache__")

# Where tako-server's venv is, its version, and its Python's tag and platform.
_PROBE = r"""
bin=$(command -v tako-server) || { echo "error=tako-server is not installed"; exit 0; }
venv=$(dirname "$(dirname "$(readlink -f "$bin")")")
echo "venv=$venv"
echo "version=$(tako-server --version 2>/dev/null | awk '{print $NF}')"
"$venv/bin/python" - <<'PY'
import sys, sysconfig
print("python=" + sys.implementation.cache_tag, sysconfig.get_platform())
PY
"""

# $1 venv, $2 wheel. uv where it is installed (install-server makes venvs without pip then), pip otherwise.
# The tako package is compiled to bytecode at install, as pip does by default: tako-server's user cannot
# write __pycache__ there, and compiling its modules at every start delays serving again after a restart.
_INSTALL = r"""
set -e
run=
[ -w "$1" ] || run="sudo -n"
if command -v uv >/dev/null 2>&1; then
  $run uv pip install --quiet --python "$1/bin/python" --no-index --no-deps --reinstall-package tako "$2"
  $run "$1/bin/python" -m compileall -q -j 0 \
    "$("$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/tako" >/dev/null
else
  # A venv made for uv has no pip: ensurepip brings the one bundled with Python (offline).
  "$1/bin/python" -m pip --version >/dev/null 2>&1 || $run "$1/bin/python" -m ensurepip --upgrade >/dev/null
  $run "$1/bin/python" -m pip install --quiet --no-index --no-deps --force-reinstall "$2"
fi
rm -f "$2"
"""


@dataclass(frozen=True)
class ServerTako:
    """What `tako servers upgrade --check` reports for one server."""

    version: str
    venv: str
    python: str  # "cpython-311 linux-x86_64"

    @property
    def current(self) -> bool:
        return self.version == __version__


async def probe(ex: Executor) -> ServerTako:
    result = await ex.run(sh(_PROBE), what="find tako-server")
    facts = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    if "error" in facts:
        raise TakoError(f"{ex.address.name}: {facts['error']}", hint="install it with scripts/install-server")
    return ServerTako(facts.get("version", ""), facts.get("venv", ""), facts.get("python", ""))


def local_python() -> str:
    return f"{sys.implementation.cache_tag} {sysconfig.get_platform()}"


def source_tree() -> Path:
    """The source tree this CLI runs from (a checkout, or an editable install of one)."""
    root = Path(tako.__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file() or not (root / "src" / "tako").is_dir():
        raise TakoError(
            f"this tako ({__version__}) does not run from a source tree, so it cannot build its wheel",
            hint="install tako-server on the server with scripts/install-server --from WHEEL instead",
        )
    return root


def build_wheel(out_dir: Path, *, pure: bool) -> Path:
    """Build this CLI's tako as a wheel into `out_dir` from a snapshot of its source tree (the build writes
    next to its sources, and the tree may be edited meanwhile)."""
    root = source_tree()
    with tempfile.TemporaryDirectory(prefix="tako-wheel-") as tmp:
        build = Path(tmp)
        for name in BUILD_FILES:
            if (root / name).is_file():
                shutil.copy2(root / name, build / name)
        shutil.copytree(root / "src", build / "src", ignore=shutil.ignore_patterns(*BUILD_PRODUCTS))
        env = {"TAKO_PURE_PYTHON": "1"} if pure else {}
        cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
        done = subprocess.run(
            [*cmd, "-w", str(out_dir), str(build)],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            check=False,
        )
    if done.returncode != 0:
        raise TakoError(
            f"building the tako {__version__} wheel failed: {done.stderr.strip()[-800:]}",
            hint="the build needs setuptools, wheel (and Cython for the compiled proxy) in this CLI's Python",
        )
    wheels = sorted(out_dir.glob("tako-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        raise TakoError(f"building the tako {__version__} wheel produced no wheel in {out_dir}")
    return wheels[-1]


async def upgrade_server(ex: Executor, wheels: dict[bool, Path]) -> str:
    """Install the wheel matching the server's Python (`wheels[True]` is pure Python, `wheels[False]` built
    by this Python) and hand over; returns the version that answers afterwards."""
    found = await probe(ex)
    wheel = wheels.get(found.python != local_python())
    if wheel is None:
        raise TakoError(f"{ex.address.name}: its Python changed since it was asked; run the upgrade again")
    remote = f"/tmp/{wheel.name}"
    await ex.upload(wheel, remote)
    result = await ex.run(sh(_INSTALL, found.venv, remote), check=False, what="install", timeout=600)
    if not result.ok:
        error = (result.stderr or result.stdout).strip()
        hint = (
            "installing into tako-server's venv needs root: connect as root, or give the SSH user "
            "passwordless sudo"
            if "sudo" in error
            else None
        )
        raise CommandFailed(f"{ex.address.name}: installing tako {__version__} failed: {error}", hint=hint)
    return await restart_server(ex)
