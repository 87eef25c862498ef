"""The release version: the short commit for a clean git tree, `<commit>_<content-8>` for a dirty one,
`nogit_<content-8>` without git. The content hash covers exactly the files that ship."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from tako.deploy.archive import ExcludeMatcher, git_output, list_relative, run_git, split_z, uses_git
from tako.errors import DeployError

SHORT_HASH_LEN = 7
CONTENT_HASH_LEN = 8
_CHUNK = 1 << 20


def compute_version(project_dir: Path, exclude: Sequence[str] = ()) -> str:
    """The version of the project as it is on disk now (see the module docstring).

    "Dirty" means a shipped file differs from HEAD (staged or not), or an untracked, not ignored file
    would ship; changes to files that never ship (`.env*`, `.tako/`, `exclude` patterns) do not count.
    A repository without commits counts as no git.
    """
    matcher = ExcludeMatcher(exclude)
    commit = _head_commit(project_dir) if uses_git(project_dir) else None
    if commit is None:
        return f"nogit_{content_hash(project_dir, list_relative(project_dir, matcher))}"
    if not _is_dirty(project_dir, matcher):
        return commit[:SHORT_HASH_LEN]
    return f"{commit[:SHORT_HASH_LEN]}_{content_hash(project_dir, list_relative(project_dir, matcher))}"


def _head_commit(project_dir: Path) -> str | None:
    result = run_git(project_dir, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    if result.returncode != 0:
        # No commit yet (unborn HEAD): there is no hash to name the version after.
        return None
    return result.stdout.decode().strip()


def _is_dirty(project_dir: Path, matcher: ExcludeMatcher) -> bool:
    changed = split_z(
        git_output(
            project_dir, "diff", "--name-only", "--no-renames", "--no-ext-diff", "--relative", "-z", "HEAD"
        )
    )
    untracked = split_z(git_output(project_dir, "ls-files", "--others", "--exclude-standard", "-z"))
    return any(not matcher.excludes(rel.rstrip("/")) for rel in (*changed, *untracked))


def content_hash(project_dir: Path, files: Sequence[str]) -> str:
    """First 8 hex digits of a SHA-256 over the files' paths, kinds (file, executable, link) and contents.

    Each field is length-prefixed or NUL-terminated so that different trees cannot give the same stream.
    """
    digest = hashlib.sha256()
    for rel in sorted(files):
        path = project_dir / rel
        digest.update(os.fsencode(rel) + b"\0")
        try:
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                target = os.fsencode(os.readlink(path))
                digest.update(b"l%d\0" % len(target) + target)
                continue
            if not stat.S_ISREG(st.st_mode):
                digest.update(b"o\0")
                continue
            with path.open("rb") as file:
                st = os.fstat(file.fileno())
                kind = b"x" if st.st_mode & 0o111 else b"f"
                digest.update(kind + b"%d\0" % st.st_size)
                remaining = st.st_size
                while remaining > 0:
                    chunk = file.read(min(_CHUNK, remaining))
                    if not chunk:
                        raise DeployError(f"{rel} shrank while Tako was reading it; try again")
                    digest.update(chunk)
                    remaining -= len(chunk)
        except OSError as exc:
            raise DeployError(f"cannot read {rel} to compute the version: {exc.strerror or exc}") from exc
    return digest.hexdigest()[:CONTENT_HASH_LEN]
