"""The Python a server runs apps with, as wheel tags see it: the probe command that asks the server, and
its answer parsed into a `TargetPython`."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from tako.deploy.python.layout import SERVER_PYTHON
from tako.errors import DeployError
from tako.remote.executor import Command, cmd

# Runs on the server with its stdlib only (`packaging` may be absent): manylinux tags are derived from the
# glibc version the same way packaging.tags does (manylinux_2_N for N down to 17/5, plus legacy aliases).
_PROBE_SCRIPT = r"""
import json, os, platform, sys, sysconfig
machine = platform.machine().lower()
arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
if arch == "x86_64" and sys.maxsize <= 2**32:
    arch = "i686"
glibc = None
try:
    name, ver = os.confstr("CS_GNU_LIBC_VERSION").split()
    if name == "glibc":
        glibc = tuple(int(p) for p in ver.split(".")[:2])
except (AttributeError, ValueError, OSError):
    pass
plats = []
if sys.platform.startswith("linux") and glibc and glibc[0] == 2:
    oldest = 5 if arch in ("x86_64", "i686") else 17
    legacy = {(2, 17): "manylinux2014", (2, 12): "manylinux2010", (2, 5): "manylinux1"}
    for minor in range(glibc[1], oldest - 1, -1):
        plats.append("manylinux_2_%d_%s" % (minor, arch))
        alias = legacy.get((2, minor))
        if alias and (alias == "manylinux2014" or arch in ("x86_64", "i686")):
            plats.append("%s_%s" % (alias, arch))
if sys.platform.startswith("linux"):
    plats.append("linux_%s" % arch)
else:
    plats.append(sysconfig.get_platform().replace("-", "_").replace(".", "_"))
free = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
v = sys.version_info
print(json.dumps({
    "version": "%d.%d" % (v[0], v[1]),
    "full_version": platform.python_version(),
    "implementation": "cp" if sys.implementation.name == "cpython" else sys.implementation.name,
    "abi": "cp%d%d%s" % (v[0], v[1], "t" if free else ""),
    "platforms": plats,
    "executable": sys.executable,
    "glibc": "%d.%d" % glibc if glibc else None,
}))
"""

PROBE_COMMAND: Command = cmd(SERVER_PYTHON, "-c", _PROBE_SCRIPT)
"""Run on the server; prints one JSON object describing its python3 (see parse_probe)."""


@dataclass(frozen=True)
class TargetPython:
    """The Python a server runs apps with, as wheel tags see it."""

    version: str  # "3.11"
    implementation: str  # "cp"
    abi: str  # "cp311"
    platforms: tuple[str, ...]  # most specific first: manylinux_2_36_x86_64, ..., linux_x86_64

    def describe(self) -> str:
        impl = {"cp": "CPython", "pp": "PyPy"}.get(self.implementation, self.implementation)
        main = self.platforms[0] if self.platforms else "unknown platform"
        return f"{impl} {self.version} on {main}"

    def pip_args(self) -> list[str]:
        """pip download options selecting wheels for exactly this target."""
        args = ["--python-version", self.version, "--implementation", self.implementation]
        for abi in (self.abi, "abi3", "none"):
            args += ["--abi", abi]
        for plat in self.platforms:
            args += ["--platform", plat]
        return args


def parse_probe(output: str) -> TargetPython:
    """Read PROBE_COMMAND's output; DeployError if the server's python3 printed something else."""
    try:
        data = json.loads(output.strip().splitlines()[-1])
        target = TargetPython(
            version=str(data["version"]),
            implementation=str(data["implementation"]),
            abi=str(data["abi"]),
            platforms=tuple(str(p) for p in data["platforms"]),
        )
    except (IndexError, ValueError, KeyError, TypeError) as exc:
        raise DeployError(
            f"could not read the server's Python description: {output.strip()[:200]!r}",
            hint=f"the server needs {SERVER_PYTHON} (3.9 or newer) for Python apps",
        ) from exc
    if not re.fullmatch(r"\d+\.\d+", target.version) or not target.platforms:
        raise DeployError(f"the server's Python description is incomplete: {output.strip()[:200]!r}")
    return target
