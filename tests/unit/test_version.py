"""compute_version against real git repositories in tmp_path."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from tests.support.git import git, keep_git_config_out

from tako.deploy.archive import build_archive
from tako.deploy.version import compute_version


@pytest.fixture(autouse=True)
def hermetic_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    keep_git_config_out(monkeypatch, tmp_path)


def make_repo(path: Path, files: dict[str, str] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Tako Test")
    git(path, "config", "user.email", "test@tako.invalid")
    git(path, "config", "commit.gpgsign", "false")
    for name, content in (files or {"app.py": "print('hi')\n", ".gitignore": "*.log\nbuild/\n"}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(content)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


def head(repo: Path) -> str:
    return git(repo, "rev-parse", "HEAD")[:7]


DIRTY = re.compile(r"[0-9a-f]{7}_[0-9a-f]{8}")


def test_clean_tree_is_the_short_commit(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "p")
    version = compute_version(repo)
    assert version == head(repo)
    assert re.fullmatch(r"[0-9a-f]{7}", version)


def test_modified_file_makes_a_dirty_version_that_tracks_content(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "p")
    (repo / "app.py").write_text("print('changed')\n")
    dirty = compute_version(repo)
    assert DIRTY.fullmatch(dirty)
    assert dirty.startswith(head(repo) + "_")
    assert compute_version(repo) == dirty  # deterministic
    os.utime(repo / "app.py", (0, 0))
    assert compute_version(repo) == dirty  # mtime does not matter
    (repo / "app.py").write_text("print('changed again')\n")
    assert compute_version(repo) not in (dirty, head(repo))
    (repo / "app.py").write_text("print('changed')\n")
    assert compute_version(repo) == dirty
    (repo / "app.py").write_text("print('hi')\n")
    assert compute_version(repo) == head(repo)


def test_staged_change_is_dirty(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "p")
    (repo / "app.py").write_text("staged\n")
    git(repo, "add", "app.py")
    assert DIRTY.fullmatch(compute_version(repo))


def test_untracked_file_is_dirty_unless_ignored(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "p")
    (repo / "debug.log").write_text("ignored by .gitignore\n")
    (repo / "build").mkdir()
    (repo / "build" / "out.js").write_text("ignored dir\n")
    assert compute_version(repo) == head(repo)
    (repo / "new.py").write_text("x = 1\n")
    assert DIRTY.fullmatch(compute_version(repo))


def test_files_that_never_ship_do_not_make_the_tree_dirty(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "p")
    (repo / ".env").write_text("SECRET=1\n")
    (repo / ".env.local").write_text("SECRET=2\n")
    (repo / "__pycache__").mkdir()
    (repo / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0")
    (repo / "node_modules" / "x").mkdir(parents=True)
    (repo / "node_modules" / "x" / "index.js").write_text("")
    build_archive(repo, compute_version(repo), {"name": "p"})  # writes .tako/build/...
    assert (repo / ".tako" / "build").is_dir()
    assert compute_version(repo) == head(repo)


def test_exclude_patterns_apply_to_dirtiness(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "p")
    (repo / "notes.md").write_text("local notes\n")
    assert DIRTY.fullmatch(compute_version(repo))
    assert compute_version(repo, ["*.md"]) == head(repo)


def test_deleted_tracked_file_is_dirty(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "p", {"a.py": "a\n", "b.py": "b\n"})
    (repo / "b.py").unlink()
    assert DIRTY.fullmatch(compute_version(repo))


def test_executable_bit_counts(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "p", {"run.sh": "echo hi\n"})
    (repo / "run.sh").chmod(0o755)
    executable = compute_version(repo)
    assert DIRTY.fullmatch(executable)
    (repo / "run.sh").chmod(0o644)
    assert compute_version(repo) == head(repo)


def test_project_in_a_subdirectory_ignores_changes_elsewhere(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "mono", {"web/app.py": "web\n", "worker/job.py": "job\n"})
    web = repo / "web"
    assert compute_version(web) == head(repo)
    (repo / "worker" / "job.py").write_text("changed\n")
    (repo / "worker" / "new.py").write_text("new\n")
    assert compute_version(web) == head(repo)
    (web / "app.py").write_text("changed\n")
    assert DIRTY.fullmatch(compute_version(web))


def test_no_git_uses_a_content_hash(tmp_path: Path) -> None:
    project = tmp_path / "plain"
    project.mkdir()
    (project / "app.py").write_text("print('hi')\n")
    (project / ".env").write_text("SECRET=1\n")
    version = compute_version(project)
    assert re.fullmatch(r"nogit_[0-9a-f]{8}", version)
    (project / ".env").write_text("SECRET=2\n")
    assert compute_version(project) == version
    (project / "app.py").write_text("print('bye')\n")
    assert compute_version(project) != version


def test_same_files_give_the_same_hash_in_different_places(tmp_path: Path) -> None:
    for name in ("one", "two"):
        (tmp_path / name / "pkg").mkdir(parents=True)
        (tmp_path / name / "pkg" / "mod.py").write_text("x = 1\n")
        (tmp_path / name / "link").symlink_to("pkg/mod.py")
    assert compute_version(tmp_path / "one") == compute_version(tmp_path / "two")
    (tmp_path / "two" / "link").unlink()
    (tmp_path / "two" / "link").symlink_to("pkg")
    assert compute_version(tmp_path / "one") != compute_version(tmp_path / "two")


def test_repository_without_commits_counts_as_no_git(tmp_path: Path) -> None:
    repo = tmp_path / "fresh"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "app.py").write_text("x\n")
    assert re.fullmatch(r"nogit_[0-9a-f]{8}", compute_version(repo))


def test_git_not_installed_counts_as_no_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(tmp_path / "p")
    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    assert re.fullmatch(r"nogit_[0-9a-f]{8}", compute_version(repo))
