"""Python dependencies of an app: find them, build a wheelhouse for each server's Python on the developer's
machine, and the server-side commands that install it offline into a per-release virtualenv (cached by key).

Flow: run PROBE_COMMAND on a server -> parse_probe -> build_wheelhouse(detect_requirements(...)) -> ship
`<wheelhouse>/` inside the release as `.tako-wheels/<key>/` -> run remote_install_commands on the server.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from tako.deploy.python.uvlock import uv_lock_requirements
from tako.errors import ConfigError, DeployError

# Bumped whenever the wheelhouse layout or build rules change, so old cache entries are not reused.
CACHE_FORMAT = "1"
WHEELHOUSE_DIR = ".tako-wheels"
"""Directory in the release archive that holds one wheelhouse per target key: `.tako-wheels/<key>/`."""
PINNED_REQUIREMENTS = "requirements.txt"
"""File inside a wheelhouse pinning every wheel in it; the server installs exactly this set."""
CACHE_HIT_MARKER = "dependencies unchanged (cache hit)"
INSTALLED_MARKER = "dependencies installed"
VENV_DIR = ".venv"

# --- probing the server's Python -------------------------------------------------------------------------

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

SERVER_PYTHON = "/usr/bin/python3"
PROBE_COMMAND: list[str] = [SERVER_PYTHON, "-c", _PROBE_SCRIPT]
"""argv to run on the server; prints one JSON object describing its python3 (see parse_probe)."""


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
            hint=f"the server needs {SERVER_PYTHON} (3.8 or newer) for Python apps",
        ) from exc
    if not re.fullmatch(r"\d+\.\d+", target.version) or not target.platforms:
        raise DeployError(f"the server's Python description is incomplete: {output.strip()[:200]!r}")
    return target


# --- finding the project's requirements ------------------------------------------------------------------


@dataclass(frozen=True)
class Requirements:
    """A project's dependencies as requirements-file text for pip."""

    source: Path  # the file they came from: requirements.txt, uv.lock or pyproject.toml
    text: str  # requirements-file lines (options such as --hash and -r included)
    base_dir: Path  # relative paths in `text` are relative to this directory (the project)

    @property
    def hashed(self) -> bool:
        """True when pip must run in --require-hashes mode (any line carries a hash)."""
        return any("--hash" in line for line in _logical_lines(self.text))


def detect_requirements(project_dir: Path) -> Requirements | None:
    """The project's Python dependencies, or None when it has none.

    Order: `requirements.txt` (hashes honoured), then `uv.lock` (exported with its hashes), then
    `pyproject.toml` `[project].dependencies`. An empty list counts as none.
    """
    req_file = project_dir / "requirements.txt"
    if req_file.is_file():
        text = req_file.read_text()
        if not any(_strip_comment(line) for line in _logical_lines(text)):
            return None
        return Requirements(source=req_file, text=text, base_dir=project_dir)
    lock = project_dir / "uv.lock"
    if lock.is_file():
        text = uv_lock_requirements(lock)
        return Requirements(source=lock, text=text, base_dir=project_dir) if text.strip() else None
    pyproject = project_dir / "pyproject.toml"
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(pyproject), f"invalid TOML: {exc}") from exc
        deps = data.get("project", {}).get("dependencies", [])
        if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
            raise ConfigError(str(pyproject), "expected a list of strings", key="project.dependencies")
        if deps:
            return Requirements(source=pyproject, text="\n".join(deps) + "\n", base_dir=project_dir)
    return None


def _logical_lines(text: str) -> Iterator[str]:
    """Requirements-file lines with backslash continuations joined."""
    buf = ""
    for raw in text.splitlines():
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1] + " "
            continue
        yield buf + raw
        buf = ""
    if buf:
        yield buf


def _strip_comment(line: str) -> str:
    return re.sub(r"(^|\s)#.*$", "", line).strip()


_NAME_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _is_local_path(spec: str) -> bool:
    """A requirement naming a local directory or file (`./sdk`, `../x`, `/abs`, `.`, `file:...`)."""
    return (
        spec in (".", "..")
        or spec.startswith(("./", "../", "/", "file:"))
        or bool(re.match(r"^[A-Za-z0-9._-]+\s*@\s*file:", spec))
    )


def _local_path(spec: str, base_dir: Path) -> Path:
    if "@" in spec and not spec.startswith(("./", "../", "/")):
        spec = spec.split("@", 1)[1].strip()
    if spec.startswith("file://"):
        spec = spec[len("file://") :]
    elif spec.startswith("file:"):
        spec = spec[len("file:") :]
    spec = re.split(r"\s*;", spec, maxsplit=1)[0].strip()
    return (base_dir / spec).resolve()


def _local_requirements(reqs: Requirements) -> list[tuple[str, Path]]:
    """(original line, resolved path) for every local-path requirement in the top-level file."""
    found = []
    for line in _logical_lines(reqs.text):
        spec = _strip_comment(line)
        if spec.startswith(("-e ", "--editable ", "--editable=")):
            spec = re.sub(r"^(-e|--editable)[\s=]+", "", spec)
        if spec and not spec.startswith("-") and _is_local_path(spec):
            found.append((line, _local_path(spec, reqs.base_dir)))
    return found


def _included_files(reqs: Requirements) -> list[Path]:
    out = []
    for line in _logical_lines(reqs.text):
        m = re.match(r"^\s*(-r|-c|--requirement|--constraint)[\s=]+(\S+)", line)
        if m:
            out.append((reqs.base_dir / m.group(2)).resolve())
    return out


# --- the cache key ---------------------------------------------------------------------------------------

_SKIP_DIRS = {".git", "__pycache__", "build", "dist", ".venv", ".tox", ".mypy_cache", ".pytest_cache"}


def _tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_file():
        h.update(path.read_bytes())
        return h.hexdigest()
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(files):
            file = Path(root) / name
            h.update(str(file.relative_to(path)).encode() + b"\0")
            h.update(file.read_bytes() + b"\0")
    return h.hexdigest()


def requirements_key(reqs: Requirements, target: TargetPython) -> str:
    """Cache key: the requirements (and files or local packages they name) plus the target's tags."""
    h = hashlib.sha256()
    h.update(f"tako-wheelhouse/{CACHE_FORMAT}\n".encode())
    h.update(json.dumps(asdict(target), sort_keys=True).encode() + b"\n")
    h.update(reqs.text.encode() + b"\n")
    for inc in _included_files(reqs):
        h.update(inc.read_bytes() if inc.is_file() else b"<missing>")
    for _line, path in _local_requirements(reqs):
        h.update(_tree_digest(path).encode() if path.exists() else b"<missing>")
    return h.hexdigest()[:24]


# --- building the wheelhouse -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Wheelhouse:
    path: Path  # directory of .whl files plus PINNED_REQUIREMENTS
    key: str
    cache_hit: bool


_COMPLETE = ".tako-complete"


def build_wheelhouse(
    reqs: Requirements,
    target: TargetPython,
    cache_dir: Path,
    *,
    output: Callable[[str], None],
    refresh: bool = False,
    pip_env: Mapping[str, str] | None = None,
) -> Wheelhouse:
    """Wheels for `reqs` on `target`, cached under `cache_dir/<key>`; DeployError if one can't be had.

    Binary packages must have a wheel for the target on the index; source-only packages are built here
    and accepted only if the result is pure Python (`*-none-any.whl`). `pip_env` replaces os.environ for
    the pip processes (tests use it to bypass local pip configuration).
    """
    key = requirements_key(reqs, target)
    final = cache_dir / key
    if not refresh and (final / _COMPLETE).is_file():
        output(f"wheelhouse for {target.describe()} unchanged (cache hit)")
        return Wheelhouse(path=final, key=key, cache_hit=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ if pip_env is None else pip_env)
    env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    env["PIP_NO_INPUT"] = "1"
    with tempfile.TemporaryDirectory(prefix=f".{key}-", dir=cache_dir) as tmp:
        work = Path(tmp)
        wheels = work / "wheels"
        wheels.mkdir()
        builder = _Builder(reqs, target, work, wheels, env, output)
        builder.build()
        _write_pins(wheels)
        (wheels / _COMPLETE).write_text(key + "\n")
        if final.exists() and (refresh or not (final / _COMPLETE).is_file()):
            shutil.rmtree(final)  # an incomplete leftover, or the one being refreshed
        try:
            wheels.rename(final)
        except OSError:
            # A concurrent build of the same key finished first; its result is equivalent.
            if not (final / _COMPLETE).is_file():
                raise
    count = sum(1 for _ in final.glob("*.whl"))
    output(f"wheelhouse for {target.describe()} built ({count} wheels)")
    return Wheelhouse(path=final, key=key, cache_hit=False)


def _wheel_tags(filename: str) -> tuple[str, str, str, str]:
    """(name, version, abi tag, platform tag) of a wheel file name."""
    parts = filename[: -len(".whl")].split("-")
    if len(parts) < 5:
        raise DeployError(f"not a wheel file name: {filename}")
    return parts[0], parts[1], parts[-2], parts[-1]


def _is_pure(filename: str) -> bool:
    _name, _version, abi, plat = _wheel_tags(filename)
    return abi == "none" and plat == "any"


def _write_pins(wheels: Path) -> None:
    lines = []
    for whl in sorted(wheels.glob("*.whl")):
        name, version, _abi, _plat = _wheel_tags(whl.name)
        lines.append(f"{_canonical(name)}=={version}")
    (wheels / PINNED_REQUIREMENTS).write_text("\n".join(lines) + "\n")


@dataclass(frozen=True)
class _Resolved:
    name: str
    version: str
    url: str  # the artifact pip chose for the local interpreter
    lines: tuple[str, ...]  # hash options to carry over from the user's file


class _Builder:
    """One wheelhouse build: local-path packages first, then a fast all-binary download, else per package."""

    def __init__(
        self,
        reqs: Requirements,
        target: TargetPython,
        work: Path,
        wheels: Path,
        env: dict[str, str],
        output: Callable[[str], None],
    ) -> None:
        self.reqs = reqs
        self.target = target
        self.work = work
        self.wheels = wheels
        self.env = env
        self.output = output
        self.pip = _pip_command(work)
        self.options: list[str] = []  # the file's index/find-links options, for the one-package files

    def _run(self, args: list[str], *, what: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [*self.pip, *args],
                cwd=self.reqs.base_dir,
                env=self.env,
                capture_output=True,
                text=True,
                check=False,
            )
        except OSError as exc:
            raise DeployError(f"could not run pip to {what}: {exc}") from exc

    def build(self) -> None:
        text = self._prepare_local()
        req_file = self.work / "requirements.txt"
        req_file.write_text(text)
        self.options = _source_options(text)
        self.output(f"downloading wheels for {self.target.describe()}")
        fast = self._run(
            [
                "download",
                "--only-binary=:all:",
                *self.target.pip_args(),
                "-d",
                str(self.wheels),
                "-r",
                str(req_file),
            ],
            what="download wheels",
        )
        if fast.returncode == 0:
            return
        # Some package has no wheel for the target (or the requirements don't resolve at all): resolve
        # locally, then fetch or build package by package to know exactly which one is the problem.
        for stale in self.wheels.glob("*.whl"):
            stale.unlink()
        self.output("not every package has a wheel for the target; checking package by package")
        resolved = self._resolve(req_file, fast.stderr)
        missing: list[str] = []
        for pkg in resolved:
            problem = self._fetch_one(pkg)
            if problem is not None:
                missing.append(f"{pkg.name}=={pkg.version}{problem}")
        if missing:
            names = "; ".join(missing)
            raise DeployError(
                f"no wheel for the server's Python ({self.target.describe()}, "
                f"ABI {self.target.abi}): {names}",
                hint="pick a version of that package that publishes wheels for the server's Python and "
                "platform, or run a server whose Python has them; nothing was uploaded",
            )

    def _prepare_local(self) -> str:
        """Build local-path requirements into wheels and point the requirements text at those wheels."""
        text = self.reqs.text
        local = _local_requirements(self.reqs)
        if not local:
            return _absolutize_includes(text, self.reqs.base_dir)
        built_dir = self.work / "local"
        lines = list(_logical_lines(text))
        for original, path in local:
            if not path.exists():
                raise DeployError(
                    f"{self.reqs.source.name}: local requirement {original.strip()!r} does not exist ({path})"
                )
            before = set(built_dir.glob("*.whl")) if built_dir.exists() else set()
            self.output(f"building local package {path.name}")
            source = path
            if path.is_dir():
                # Build from a clean copy: nothing is written into the user's tree, and a stale build/
                # directory there cannot leak old modules into the wheel.
                source = self.work / "src" / f"{len(before)}-{path.name}"
                shutil.copytree(path, source, ignore=shutil.ignore_patterns(*_SKIP_DIRS, "*.egg-info"))
            res = self._run(
                ["wheel", "--use-pep517", "--no-deps", "-w", str(built_dir), str(source)],
                what=f"build {path}",
            )
            new = sorted(set(built_dir.glob("*.whl")) - before) if built_dir.exists() else []
            if res.returncode != 0 or len(new) != 1:
                raise DeployError(
                    f"could not build local package {path}: {_tail(res.stderr or res.stdout)}",
                    hint="check that `pip wheel --no-deps <path>` works for it",
                )
            whl = new[0]
            if not _is_pure(whl.name):
                raise DeployError(
                    f"local package {path} builds a platform-specific wheel ({whl.name}); "
                    "only pure-Python local packages can be built on this machine",
                )
            name = _wheel_tags(whl.name)[0]
            line = f"{_canonical(name)} @ {whl.as_uri()}"
            if self.reqs.hashed:
                line += f" --hash=sha256:{hashlib.sha256(whl.read_bytes()).hexdigest()}"
            lines = [line if candidate == original else candidate for candidate in lines]
        return _absolutize_includes("\n".join(lines) + "\n", self.reqs.base_dir)

    def _resolve(self, req_file: Path, fast_error: str) -> list[_Resolved]:
        report = self.work / "report.json"
        res = self._run(
            [
                "install",
                "--dry-run",
                "--ignore-installed",
                "--quiet",
                "--report",
                str(report),
                "-r",
                str(req_file),
            ],
            what="resolve requirements",
        )
        if res.returncode != 0:
            raise DeployError(
                f"the requirements in {self.reqs.source.name} cannot be resolved: "
                f"{_tail(res.stderr or fast_error)}",
                hint="fix the requirements (try `pip install -r` locally) and deploy again",
            )
        hashes = _hash_options(self.reqs.text)
        out = []
        for item in json.loads(report.read_text()).get("install", []):
            meta = item["metadata"]
            name = _canonical(meta["name"])
            out.append(
                _Resolved(
                    name=name,
                    version=meta["version"],
                    url=item.get("download_info", {}).get("url", ""),
                    lines=tuple(hashes.get(name, ())),
                )
            )
        return out

    def _fetch_one(self, pkg: _Resolved) -> str | None:
        """Put a wheel of `pkg` for the target into the wheelhouse; else say why none can be had ("" if
        the package simply publishes no wheel for the target)."""
        pin = f"{pkg.name}=={pkg.version}"
        if pkg.url.startswith("file:") and pkg.url.endswith(".whl"):
            # A local package prepared by _prepare_local: already a pure wheel.
            src = Path(pkg.url[len("file://") :])
            shutil.copy2(src, self.wheels / src.name)
            return None
        one = self.work / f"one-{pkg.name}.txt"
        # Where the package came from (a private index, a find-links directory) must be searched again.
        one.write_text("".join(f"{opt}\n" for opt in self.options) + " ".join([pin, *pkg.lines]) + "\n")
        res = self._run(
            [
                "download",
                "--no-deps",
                "--only-binary=:all:",
                *self.target.pip_args(),
                "-d",
                str(self.wheels),
                "-r",
                str(one),
            ],
            what=f"download {pin}",
        )
        if res.returncode == 0:
            return None
        artifact = pkg.url.rsplit("/", 1)[-1].split("#", 1)[0]
        if artifact.endswith(".whl") and not _is_pure(artifact):
            return ""  # a binary package: only a wheel built for the target would do
        # A source distribution (or a pure wheel the index lists only for other Pythons): build it here.
        self.output(f"building {pin} from source")
        built = self.work / f"built-{pkg.name}"
        res = self._run(
            ["wheel", "--use-pep517", "--no-deps", "-w", str(built), "-r", str(one)], what=f"build {pin}"
        )
        made = sorted(built.glob("*.whl")) if built.exists() else []
        if res.returncode != 0 or not made:
            return f" (building it from source failed: {_tail(res.stderr or res.stdout, 3)})"
        if not _is_pure(made[0].name):
            return f" (its source builds a platform-specific wheel here: {made[0].name})"
        shutil.copy2(made[0], self.wheels / made[0].name)
        return None


def _hash_options(text: str) -> dict[str, list[str]]:
    """Per canonical package name, the `--hash=...` options given for it in a requirements file."""
    out: dict[str, list[str]] = {}
    for line in _logical_lines(text):
        spec = _strip_comment(line)
        m = _NAME_RE.match(spec)
        if not m or "--hash" not in spec:
            continue
        out[_canonical(m.group(1))] = re.findall(r"--hash[=\s]+\S+", spec)
    return out


_SOURCE_OPTION = re.compile(
    r"^\s*(-i|--index-url|--extra-index-url|--no-index|-f|--find-links|--trusted-host|--pre|--prefer-binary)"
    r"(?=[\s=]|$)"
)


def _source_options(text: str) -> list[str]:
    """The requirements file's lines that say where packages come from (indexes, find-links)."""
    return [_strip_comment(line) for line in _logical_lines(text) if _SOURCE_OPTION.match(line)]


def _absolutize_includes(text: str, base: Path) -> str:
    """Make `-r`/`-c` paths absolute so the rewritten file can live elsewhere."""

    def fix(m: re.Match[str]) -> str:
        return f"{m.group(1)} {(base / m.group(2)).resolve()}"

    return (
        "\n".join(
            re.sub(r"^\s*(-r|-c|--requirement|--constraint)[\s=]+(\S+)", fix, line)
            for line in _logical_lines(text)
        )
        + "\n"
    )


def _tail(text: str, lines: int = 6) -> str:
    kept = [ln for ln in text.strip().splitlines() if ln.strip()][-lines:]
    return "\n".join(kept) or "(no output)"


def _pip_command(work: Path) -> list[str]:
    """pip for the running interpreter; tools installed without pip (uv tool, pipx) get a private one."""
    import importlib.util

    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    venv = work.parent / "_pip-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        res = subprocess.run(
            [sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, check=False
        )
        if res.returncode != 0:
            raise DeployError(
                f"pip is not available to build the wheelhouse: {_tail(res.stderr)}",
                hint="install tako into an environment with pip (python -m pip install tako)",
            )
    return [str(python), "-m", "pip"]


# --- installing on the server ----------------------------------------------------------------------------

# Positional parameters: $1 release dir, $2 wheelhouse dir relative to it, $3 key. The venv lives at
# <app>/shared/venvs/<key> (virtualenvs are not relocatable, so it is built at its final path) and the
# release gets a relative symlink `.venv -> ../../shared/venvs/<key>`. `.tako-complete` is written last, so
# an interrupted install is redone by the next deploy. The shipped wheelhouse is removed from the release.
_INSTALL = f"""
set -eu
release=$1; wheels=$release/$2; key=$3
venvs=$(cd "$(dirname "$release")/.." && pwd -P)/shared/venvs
venv=$venvs/$key
mkdir -p "$venvs"
if [ -f "$venv/.tako-complete" ]; then
  echo "{CACHE_HIT_MARKER}"
else
  rm -rf "$venv"
  unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_REQUIRE_VIRTUALENV PYTHONPATH
  export PIP_CONFIG_FILE=/dev/null PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1
  if [ ! -f "$wheels/requirements.txt" ]; then
    echo "the release has no wheelhouse at $2 and the server has no cached environment $key" \
      "(removed since the deploy began?); deploy again" >&2
    exit 3
  fi
  {SERVER_PYTHON} -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --no-index --no-cache-dir --find-links "$wheels" \
    -r "$wheels/requirements.txt"
  echo "$key" > "$venv/.tako-complete"
  echo "{INSTALLED_MARKER} ($(grep -c . "$wheels/requirements.txt") packages)"
fi
ln -sfn "../../shared/venvs/$key" "$release/{VENV_DIR}"
rm -rf "$release/{WHEELHOUSE_DIR}"
"""

# $1 app dir: remove cached venvs that no release links to any more (run after pruning releases).
_PRUNE_VENVS = """
set -eu
[ -d "$1/shared/venvs" ] || exit 0
used=$(for l in "$1"/releases/*/.venv "$1"/releases/.*/.venv; do
  [ -L "$l" ] && basename "$(readlink "$l")"
done; true)
for v in "$1"/shared/venvs/*; do
  [ -e "$v" ] || continue
  name=$(basename "$v")
  printf '%s\\n' "$used" | grep -qxF "$name" || rm -rf "$v"
done
"""


def wheelhouse_rel(key: str) -> str:
    """Where a wheelhouse sits inside the release archive."""
    return f"{WHEELHOUSE_DIR}/{key}"


def remote_install_commands(release_dir: str, wheelhouse_rel: str, key: str) -> list[list[str]]:
    """argv lists that give `release_dir` its `.venv`, reusing the server's cached venv for `key`.

    Prints CACHE_HIT_MARKER when the venv already existed, else a line starting with INSTALLED_MARKER.
    """
    return [["/bin/sh", "-c", _INSTALL, "tako-python-deps", release_dir, wheelhouse_rel, key]]


# $1 app dir: the keys of the complete venvs the app has on the server, one a line.
_INSTALLED_KEYS = """
for f in "$1"/shared/venvs/*/.tako-complete; do
  [ -f "$f" ] && basename "$(dirname "$f")"
done
exit 0
"""


def remote_installed_keys_command(app_dir: str) -> list[str]:
    """argv printing the keys of the complete venvs under `app_dir/shared/venvs`, one a line."""
    return ["/bin/sh", "-c", _INSTALLED_KEYS, "tako-venv-keys", app_dir]


def parse_installed_keys(output: str) -> frozenset[str]:
    return frozenset(
        line.strip() for line in output.splitlines() if re.fullmatch(r"[0-9a-f]{24}", line.strip())
    )


def remote_prune_commands(app_dir: str) -> list[list[str]]:
    """argv lists removing cached venvs under `app_dir/shared/venvs` that no release links to."""
    return [["/bin/sh", "-c", _PRUNE_VENVS, "tako-prune-venvs", app_dir]]
