"""The release archive: which project files ship (git's view, built-in and user exclusions) and the
deterministic `.tako/build/<version>.tar.gz` with `app.json` at its root."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tako.errors import DeployError

# Never shipped, at any depth: VCS data, Tako's own state, local env files (secrets), caches, local envs.
ALWAYS_EXCLUDED_NAMES = frozenset({".git", ".tako", "__pycache__", ".venv", "node_modules"})
ENV_FILE_PREFIX = ".env"  # `.env`, `.env.local`, `.envrc`, ...

# Fixed metadata so that the same files always give the same bytes (2000-01-01T00:00:00Z: old enough to
# be obviously synthetic, new enough that tar does not warn about implausible timestamps).
ARCHIVE_MTIME = 946684800
APP_JSON = "app.json"
# At the root of every release on the server, the deploy makes `logs` a link to the app's shared logs
# directory (kept across releases), replacing whatever the archive had there.
LOGS_LINK = "logs"
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CHUNK = 1 << 20


class ExcludePatternError(ValueError):
    """An `exclude` pattern cannot be used. The message says which and why."""


@dataclass(frozen=True)
class ArchiveInfo:
    path: Path
    size: int
    sha256: str
    file_count: int  # regular files and symlinks in the archive, app.json included
    unpacked_size: int = 0  # disk the extracted release takes: every entry rounded up to 4 KiB blocks
    wheel_size: int = 0  # bytes of Python wheels shipped in it (installed into a venv on the server)


# --- exclude patterns -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    regex: re.Pattern[str]
    anchored: bool  # matched against the path from the project root, else against one name
    dir_only: bool


def _glob_to_regex(glob: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(glob):
        c = glob[i]
        if c == "*":
            if glob.startswith("**/", i):
                out.append("(?:.*/)?")
                i += 3
                continue
            if glob.startswith("**", i):
                out.append(".*")
                i += 2
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = glob.find("]", i + 1)
            if end <= i + 1:
                out.append(re.escape(c))
            else:
                body = glob[i + 1 : end].replace("\\", "\\\\")
                # A class never matches '/', like every other single-segment wildcard.
                out.append(f"[^/{body[1:]}]" if body[0] in "!^" else f"(?!/)[{body}]")
                i = end + 1
                continue
        elif c == "\\" and i + 1 < len(glob):
            out.append(re.escape(glob[i + 1]))
            i += 2
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _compile_rule(pattern: str) -> _Rule:
    text = pattern.strip()
    if not text:
        raise ExcludePatternError("an exclude pattern is empty")
    if text.startswith("!"):
        raise ExcludePatternError(
            f"exclude pattern {pattern!r}: negation ('!') is not supported; list only what to leave out"
        )
    dir_only = text.endswith("/")
    text = text.rstrip("/")
    anchored = "/" in text
    text = text.lstrip("/")
    if not text:
        raise ExcludePatternError(f"exclude pattern {pattern!r} would exclude the whole project")
    try:
        regex = re.compile(_glob_to_regex(text))
    except re.error as exc:
        raise ExcludePatternError(f"exclude pattern {pattern!r} is not a valid glob: {exc}") from None
    return _Rule(regex, anchored, dir_only)


class ExcludeMatcher:
    """gitignore-like patterns: `name` matches at any depth, `a/b` from the root, `dir/` only directories;
    `*`, `?`, `[...]` stay within one path segment, `**` spans segments. Excluding a directory excludes
    everything in it."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self._rules = [_compile_rule(p) for p in patterns]

    def _hit(self, sub: str, name: str, is_dir: bool) -> bool:
        for rule in self._rules:
            if rule.dir_only and not is_dir:
                continue
            if rule.regex.fullmatch(sub if rule.anchored else name):
                return True
        return False

    def excludes(self, rel: str, *, is_dir: bool = False) -> bool:
        """Whether the project-relative POSIX path `rel`, or a directory above it, is excluded."""
        parts = rel.split("/")
        for i, name in enumerate(parts, 1):
            last = i == len(parts)
            if is_always_excluded_name(name):
                return True
            if self._rules and self._hit("/".join(parts[:i]), name, is_dir or not last):
                return True
        return False


def is_always_excluded_name(name: str) -> bool:
    return name in ALWAYS_EXCLUDED_NAMES or name.startswith(ENV_FILE_PREFIX)


def check_exclude_patterns(patterns: Sequence[str]) -> None:
    """Raise ExcludePatternError for a pattern list_files would refuse (for config validation)."""
    ExcludeMatcher(patterns)


# --- git ------------------------------------------------------------------------------------------------


def find_git_root(project_dir: Path) -> Path | None:
    """The enclosing git work tree (a `.git` dir or file in the project dir or above), or None."""
    for directory in (project_dir, *project_dir.parents):
        if (directory / ".git").exists():
            return directory
    return None


def run_git(project_dir: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run git in `project_dir` and return its result (any exit status); only OSError is translated."""
    # GIT_OPTIONAL_LOCKS=0: status/diff must not take index.lock and race with the user's own git.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0"}
    try:
        result = subprocess.run(
            ["git", *args], cwd=project_dir, env=env, capture_output=True, stdin=subprocess.DEVNULL
        )
    except OSError as exc:
        raise DeployError(f"could not run git in {project_dir}: {exc}") from exc
    return result


def git_output(project_dir: Path, *args: str) -> bytes:
    result = run_git(project_dir, *args)
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip() or f"exit status {result.returncode}"
        raise DeployError(
            f"`git {' '.join(args)}` failed in {project_dir}: {detail}",
            hint="fix the repository (or run the command yourself to see the problem), then deploy again",
        )
    return result.stdout


def uses_git(project_dir: Path) -> bool:
    """Whether the project's files come from git: it is inside a work tree and git is installed."""
    return find_git_root(project_dir) is not None and shutil.which("git") is not None


def split_z(output: bytes) -> list[str]:
    return [os.fsdecode(item) for item in output.split(b"\0") if item]


# --- file list ------------------------------------------------------------------------------------------


def _walk(root: Path, rel_dir: str, matcher: ExcludeMatcher) -> Iterator[str]:
    """Files and symlinks under root/rel_dir (never following directory links), pruned by `matcher`."""
    base = root / rel_dir if rel_dir else root
    try:
        entries = sorted(os.scandir(base), key=lambda e: e.name)
    except OSError as exc:
        raise DeployError(f"cannot read directory {base}: {exc.strerror}") from exc
    for entry in entries:
        rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
        if entry.is_dir(follow_symlinks=False):
            if not matcher.excludes(rel, is_dir=True):
                yield from _walk(root, rel, matcher)
        elif not matcher.excludes(rel):
            yield rel


def list_files(project_dir: Path, exclude: Sequence[str] = ()) -> list[Path]:
    """The project files that ship, relative to `project_dir`, sorted.

    In a git work tree: what git tracks or would track (`git ls-files --cached --others
    --exclude-standard`, so .gitignore applies; tracked files deleted from disk are skipped). Without git:
    the whole tree. Always minus ALWAYS_EXCLUDED_NAMES, `.env*` and the `exclude` patterns.
    Raises ExcludePatternError for a bad pattern, DeployError if git fails.
    """
    return [Path(rel) for rel in list_relative(project_dir, ExcludeMatcher(exclude))]


def list_relative(project_dir: Path, matcher: ExcludeMatcher) -> list[str]:
    """Like list_files, as sorted POSIX strings, with a compiled matcher."""
    if not uses_git(project_dir):
        return sorted(_walk(project_dir, "", matcher))
    listed = split_z(git_output(project_dir, "ls-files", "--cached", "--others", "--exclude-standard", "-z"))
    files: set[str] = set()
    for rel in listed:
        rel = rel.rstrip("/")
        if matcher.excludes(rel):
            continue
        path = project_dir / rel
        if path.is_symlink():
            files.add(rel)
        elif path.is_dir():
            # A submodule or a nested repository: git lists only its root, ship its contents.
            files.update(_walk(project_dir, rel, matcher))
        elif path.exists():
            files.add(rel)
    return sorted(files)


# --- archive --------------------------------------------------------------------------------------------


class _HashingWriter(io.RawIOBase):
    """Passes writes to a file while hashing and counting them."""

    def __init__(self, file: io.BufferedWriter) -> None:
        self._file = file
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._file.write(view)
        self.sha256.update(view)
        self.size += len(view)
        return len(view)


def _check_link(rel: str, target: str) -> None:
    escapes = os.path.isabs(target)
    if not escapes:
        resolved = os.path.normpath(os.path.join(os.path.dirname(rel), target))
        escapes = resolved == ".." or resolved.startswith("../")
    if escapes:
        raise DeployError(
            f"symlink {rel} -> {target} points outside the project, so it would break on the server",
            hint="make it a relative link to a file inside the project, or add it to exclude in tako.toml",
        )


def _check_logs_name(project_dir: Path, files: list[str]) -> None:
    """Refuse a shipped `logs` at the project root: the server would replace it with the logs link."""
    inside = [rel for rel in files if rel.startswith(f"{LOGS_LINK}/")]
    if not inside and LOGS_LINK not in files:
        return
    path = project_dir / LOGS_LINK
    what = "a symlink" if path.is_symlink() else "a directory" if inside else "a file"
    raise DeployError(
        f"the project has {what} named {LOGS_LINK} at its root ({path}); on the server that name is the "
        "link to the app's shared logs directory, so the release would not contain it",
        hint=f'rename it (and what uses it), or add "/{LOGS_LINK}" to exclude in tako.toml '
        "if the app does not need it on the server",
    )


DIR_MODE = 0o750


def shipped_mode(local_mode: int) -> int:
    """A file's mode in the release: its owner bits as in the project, the group gets the owner's
    read/execute bits (on the server the group is the app's own), others nothing. So a 0600 secret stays
    private to its app and an executable stays executable."""
    owner = local_mode & 0o700
    return owner | (owner >> 3) & 0o050


def _base_info(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = ARCHIVE_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def build_archive(
    project_dir: Path,
    version: str,
    app_json: dict[str, Any],
    exclude: Sequence[str] = (),
    *,
    extra_dirs: Mapping[str, Path] | None = None,
) -> ArchiveInfo:
    """Write `.tako/build/<version>.tar.gz` (older archives there are removed) and describe it.

    Deterministic: sorted entries, fixed mtime/owner, modes from `shipped_mode` (directories 0750),
    symlinks kept as links (refused if they leave the tree), other special files skipped. `app.json` at
    the root is the given dict as JSON with sorted keys. `extra_dirs` maps an archive directory (e.g. a
    wheelhouse's `.tako-wheels/<key>`) to a local directory whose regular files are added under it.
    """
    if not _VERSION_RE.fullmatch(version):
        raise DeployError(f"version {version!r} cannot be used as an archive name")
    try:
        app_json_bytes = (json.dumps(app_json, sort_keys=True, indent=2) + "\n").encode()
    except (TypeError, ValueError) as exc:
        raise DeployError(f"app.json cannot be written as JSON: {exc}") from exc
    files = list_relative(project_dir, ExcludeMatcher(exclude))
    if APP_JSON in files:
        raise DeployError(
            f"the project has its own {APP_JSON} at its root, where Tako puts the release description",
            hint=f'rename it, or add "/{APP_JSON}" to exclude in tako.toml if the app does not need it',
        )
    _check_logs_name(project_dir, files)

    def add_all(tar: tarfile.TarFile) -> int:
        count = _add_entries(tar, project_dir, files, app_json_bytes)
        for prefix, source in sorted((extra_dirs or {}).items()):
            count += _add_extra_dir(tar, prefix, source)
        return count

    build_dir = project_dir / ".tako" / "build"
    final = build_dir / f"{version}.tar.gz"
    writer, members, count = _write_archive(build_dir, final, add_all)
    for old in build_dir.glob("*.tar.gz"):
        if old != final:
            old.unlink(missing_ok=True)
    return ArchiveInfo(
        path=final,
        size=writer.size,
        sha256=writer.sha256.hexdigest(),
        file_count=count,
        unpacked_size=sum(_disk_blocks(m.size) for m in members),
        wheel_size=sum(m.size for m in members if m.isfile() and m.name.endswith(".whl")),
    )


def _write_archive(
    build_dir: Path, final: Path, add_all: Callable[[tarfile.TarFile], int]
) -> tuple[_HashingWriter, list[tarfile.TarInfo], int]:
    """Write the gzipped tar that `add_all` fills to a temporary file, fsync it and rename it to `final`
    (so a half-written archive never has the final name); the hashing writer, the members, the count."""
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        prefix = f".{final.name.removesuffix('.tar.gz')}."
        fd, tmp_name = tempfile.mkstemp(dir=build_dir, prefix=prefix, suffix=".tmp")
    except OSError as exc:
        raise DeployError(f"cannot write the archive in {build_dir}: {exc.strerror}") from exc
    tmp = Path(tmp_name)
    done = False
    try:
        with os.fdopen(fd, "wb") as raw:
            writer = _HashingWriter(raw)
            with (
                gzip.GzipFile(filename="", mode="wb", fileobj=writer, mtime=0, compresslevel=6) as gz,
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
            ):
                count = add_all(tar)
                members = tar.getmembers()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, final)
        done = True
    except OSError as exc:
        raise DeployError(f"cannot write the archive {final}: {exc}") from exc
    finally:
        if not done:
            tmp.unlink(missing_ok=True)
    return writer, members, count


def _disk_blocks(size: int, block: int = 4096) -> int:
    """What `size` bytes take on a filesystem of 4 KiB blocks (an empty file or a directory: one block)."""
    return max(1, -(-size // block)) * block


def _add_entries(tar: tarfile.TarFile, project_dir: Path, files: list[str], app_json: bytes) -> int:
    dirs = {str(parent.as_posix()) for rel in files for parent in Path(rel).parents if str(parent) != "."}
    names = sorted({*files, *dirs, APP_JSON})
    count = 0
    for name in names:
        if name == APP_JSON:
            info = _base_info(name)
            info.mode = shipped_mode(0o644)
            info.size = len(app_json)
            tar.addfile(info, io.BytesIO(app_json))
            count += 1
        elif name in dirs:
            info = _base_info(name)
            info.type = tarfile.DIRTYPE
            info.mode = DIR_MODE
            tar.addfile(info)
        else:
            count += _add_file(tar, project_dir, name)
    return count


def _add_extra_dir(tar: tarfile.TarFile, prefix: str, source: Path) -> int:
    """Add `source`'s regular files (one level) under `prefix`, with its parent directories."""
    parts = Path(prefix).parts
    for depth in range(1, len(parts) + 1):
        info = _base_info("/".join(parts[:depth]))
        info.type = tarfile.DIRTYPE
        info.mode = DIR_MODE
        tar.addfile(info)
    count = 0
    for path in sorted(p for p in source.iterdir() if p.is_file() and not p.is_symlink()):
        info = _base_info(f"{prefix}/{path.name}")
        info.mode = shipped_mode(0o644)
        info.size = path.stat().st_size
        with path.open("rb") as handle:
            tar.addfile(info, handle)
        count += 1
    return count


def _add_file(tar: tarfile.TarFile, project_dir: Path, rel: str) -> int:
    path = project_dir / rel
    try:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(path)
            _check_link(rel, target)
            info = _base_info(rel)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            info.mode = 0o777
            tar.addfile(info)
            return 1
        if not stat.S_ISREG(st.st_mode):
            return 0  # sockets, fifos, devices: nothing a release can use
        with path.open("rb") as file:
            st = os.fstat(file.fileno())
            info = _base_info(rel)
            info.mode = shipped_mode(st.st_mode)
            info.size = st.st_size
            tar.addfile(info, file)
        return 1
    except OSError as exc:
        raise DeployError(f"cannot add {rel} to the archive: {exc.strerror or exc}") from exc
