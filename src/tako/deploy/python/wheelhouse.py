"""Build a wheelhouse on the developer's machine: wheels for one server's Python, cached under its key.

Binary packages must have a wheel for the target on the index; source-only packages and local-path
packages are built here and accepted only if the result is pure Python (`*-none-any.whl`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tako.deploy.python import reqfile
from tako.deploy.python.layout import COMPLETE_MARKER, PINNED_REQUIREMENTS
from tako.deploy.python.pip import Pip, find_pip, tail
from tako.deploy.python.requirements import SKIP_DIRS, Requirements, requirements_key
from tako.deploy.python.target import TargetPython
from tako.errors import DeployError


@dataclass(frozen=True)
class Wheelhouse:
    path: Path  # directory of .whl files plus PINNED_REQUIREMENTS
    key: str
    cache_hit: bool


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

    `pip_env` replaces os.environ for the pip processes (tests use it to bypass local pip configuration).
    """
    key = requirements_key(reqs, target)
    final = cache_dir / key
    if not refresh and (final / COMPLETE_MARKER).is_file():
        output(f"wheelhouse for {target.describe()} unchanged (cache hit)")
        return Wheelhouse(path=final, key=key, cache_hit=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{key}-", dir=cache_dir) as tmp:
        work = Path(tmp)
        pip = find_pip(work, reqs.base_dir, pip_env)
        wheels = _Builder(reqs, target, work, pip, output).build()
        _write_pins(wheels)
        (wheels / COMPLETE_MARKER).write_text(key + "\n")
        _publish(wheels, final, refresh=refresh)
    count = sum(1 for _ in final.glob("*.whl"))
    output(f"wheelhouse for {target.describe()} built ({count} wheels)")
    return Wheelhouse(path=final, key=key, cache_hit=False)


def _publish(wheels: Path, final: Path, *, refresh: bool) -> None:
    """Move a finished wheelhouse to its cache entry."""
    if final.exists() and (refresh or not (final / COMPLETE_MARKER).is_file()):
        shutil.rmtree(final)  # an incomplete leftover, or the one being refreshed
    try:
        wheels.rename(final)
    except OSError:
        # A concurrent build of the same key finished first; its result is equivalent.
        if not (final / COMPLETE_MARKER).is_file():
            raise


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
        lines.append(f"{reqfile.canonical_name(name)}=={version}")
    (wheels / PINNED_REQUIREMENTS).write_text("\n".join(lines) + "\n")


@dataclass(frozen=True)
class _Resolved:
    name: str
    version: str
    url: str  # the artifact pip chose for the local interpreter
    lines: tuple[str, ...]  # hash options to carry over from the user's file


@dataclass
class _Builder:
    """One wheelhouse build: local-path packages first, then a fast all-binary download, else per package."""

    reqs: Requirements
    target: TargetPython
    work: Path
    pip: Pip
    output: Callable[[str], None]
    wheels: Path = field(init=False)
    options: list[str] = field(init=False)  # the file's index/find-links options, for one-package files

    def __post_init__(self) -> None:
        self.wheels = self.work / "wheels"
        self.wheels.mkdir()
        self.options = []

    def build(self) -> Path:
        """The directory of wheels for every requirement; DeployError naming the packages that have none."""
        text = self._prepare_local()
        req_file = self.work / "requirements.txt"
        req_file.write_text(text)
        self.options = reqfile.source_options(text)
        self.output(f"downloading wheels for {self.target.describe()}")
        fast = self.pip.download(self.target, self.wheels, req_file, what="download wheels")
        if fast.returncode == 0:
            return self.wheels
        # Some package has no wheel for the target (or the requirements don't resolve at all): resolve
        # locally, then fetch or build package by package to know exactly which one is the problem.
        for stale in self.wheels.glob("*.whl"):
            stale.unlink()
        self.output("not every package has a wheel for the target; checking package by package")
        missing: list[str] = []
        for pkg in self._resolve(req_file, fast.stderr):
            problem = self._fetch_one(pkg)
            if problem is not None:
                missing.append(f"{pkg.name}=={pkg.version}{problem}")
        if missing:
            raise DeployError(
                f"no wheel for the server's Python ({self.target.describe()}, "
                f"ABI {self.target.abi}): {'; '.join(missing)}",
                hint="pick a version of that package that publishes wheels for the server's Python and "
                "platform, or run a server whose Python has them; nothing was uploaded",
            )
        return self.wheels

    def _prepare_local(self) -> str:
        """Build local-path requirements into wheels and point the requirements text at those wheels."""
        lines = list(reqfile.logical_lines(self.reqs.text))
        for original, path in self.reqs.local_packages():
            line = self._local_wheel_line(original, path)
            lines = [line if candidate == original else candidate for candidate in lines]
        return reqfile.absolutize_includes("\n".join(lines) + "\n", self.reqs.base_dir)

    def _local_wheel_line(self, original: str, path: Path) -> str:
        """Build the local package at `path` into a pure wheel; the requirement line naming that wheel."""
        if not path.exists():
            raise DeployError(
                f"{self.reqs.source.name}: local requirement {original.strip()!r} does not exist ({path})"
            )
        built_dir = self.work / "local"
        before = set(built_dir.glob("*.whl")) if built_dir.exists() else set()
        self.output(f"building local package {path.name}")
        source = path
        if path.is_dir():
            # Build from a clean copy: nothing is written into the user's tree, and a stale build/
            # directory there cannot leak old modules into the wheel.
            source = self.work / "src" / f"{len(before)}-{path.name}"
            shutil.copytree(path, source, ignore=shutil.ignore_patterns(*SKIP_DIRS, "*.egg-info"))
        res = self.pip.wheel(built_dir, str(source), what=f"build {path}")
        new = sorted(set(built_dir.glob("*.whl")) - before) if built_dir.exists() else []
        if res.returncode != 0 or len(new) != 1:
            raise DeployError(
                f"could not build local package {path}: {tail(res.stderr or res.stdout)}",
                hint="check that `pip wheel --no-deps <path>` works for it",
            )
        whl = new[0]
        if not _is_pure(whl.name):
            raise DeployError(
                f"local package {path} builds a platform-specific wheel ({whl.name}); "
                "only pure-Python local packages can be built on this machine",
            )
        line = f"{reqfile.canonical_name(_wheel_tags(whl.name)[0])} @ {whl.as_uri()}"
        if self.reqs.hashed:
            line += f" --hash=sha256:{hashlib.sha256(whl.read_bytes()).hexdigest()}"
        return line

    def _resolve(self, req_file: Path, fast_error: str) -> list[_Resolved]:
        """What pip would install for the local interpreter, with the hashes the user's file gives."""
        report = self.work / "report.json"
        dry_run = ["install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report)]
        res = self.pip.run([*dry_run, "-r", str(req_file)], what="resolve requirements")
        if res.returncode != 0:
            raise DeployError(
                f"the requirements in {self.reqs.source.name} cannot be resolved: "
                f"{tail(res.stderr or fast_error)}",
                hint="fix the requirements (try `pip install -r` locally) and deploy again",
            )
        hashes = reqfile.hash_options(self.reqs.text)
        out = []
        for item in json.loads(report.read_text()).get("install", []):
            meta = item["metadata"]
            name = reqfile.canonical_name(meta["name"])
            url = item.get("download_info", {}).get("url", "")
            out.append(_Resolved(name, meta["version"], url, tuple(hashes.get(name, ()))))
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
        res = self.pip.download(self.target, self.wheels, one, no_deps=True, what=f"download {pin}")
        if res.returncode == 0:
            return None
        artifact = pkg.url.rsplit("/", 1)[-1].split("#", 1)[0]
        if artifact.endswith(".whl") and not _is_pure(artifact):
            return ""  # a binary package: only a wheel built for the target would do
        # A source distribution (or a pure wheel the index lists only for other Pythons): build it here.
        self.output(f"building {pin} from source")
        built = self.work / f"built-{pkg.name}"
        res = self.pip.wheel(built, "-r", str(one), what=f"build {pin}")
        made = sorted(built.glob("*.whl")) if built.exists() else []
        if res.returncode != 0 or not made:
            return f" (building it from source failed: {tail(res.stderr or res.stdout, 3)})"
        if not _is_pure(made[0].name):
            return f" (its source builds a platform-specific wheel here: {made[0].name})"
        shutil.copy2(made[0], self.wheels / made[0].name)
        return None
