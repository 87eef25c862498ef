"""File selection and the deterministic release archive, with real git repositories and real tar."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from tests.support.git import git, keep_git_config_out

from tako.deploy import commands
from tako.deploy.archive import (
    ARCHIVE_MTIME,
    ExcludePatternError,
    build_archive,
    check_exclude_patterns,
    list_files,
)
from tako.errors import DeployError


@pytest.fixture(autouse=True)
def hermetic_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    keep_git_config_out(monkeypatch, tmp_path)


def write(root: Path, files: dict[str, str]) -> None:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)


def make_repo(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Tako Test")
    git(path, "config", "user.email", "test@tako.invalid")
    write(path, files)
    git(path, "add", "-A")
    git(path, "-c", "commit.gpgsign=false", "commit", "-q", "--allow-empty", "-m", "initial")
    return path


NEVER_SHIPPED = {
    ".env": "A=1",
    ".env.production": "A=2",
    ".envrc": "export A=3",
    "sub/.env": "A=4",
    ".venv/bin/python": "",
    "node_modules/left-pad/index.js": "",
    "pkg/__pycache__/mod.cpython-311.pyc": "",
    ".tako/secrets": "",
    "sub/node_modules/x.js": "",
}


def names(paths: list[Path]) -> list[str]:
    return [p.as_posix() for p in paths]


# --- list_files -----------------------------------------------------------------------------------------


def test_git_project_ships_tracked_and_untracked_files_but_not_ignored_ones(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path / "p",
        {"app.py": "", "pkg/mod.py": "", "gone.py": "", ".gitignore": "*.log\ndist/\n", "debug.log": ""},
    )
    write(repo, {"new.py": "", "dist/bundle.js": "", "pkg/trace.log": "", **NEVER_SHIPPED})
    (repo / "gone.py").unlink()
    assert names(list_files(repo, [])) == [".gitignore", "app.py", "new.py", "pkg/mod.py"]


def test_tracked_never_shipped_files_are_still_left_out(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "p", {"app.py": "", **NEVER_SHIPPED})
    assert names(list_files(repo, [])) == ["app.py"]


def test_project_without_git_ships_the_whole_tree(tmp_path: Path) -> None:
    write(
        tmp_path, {"app.py": "", ".gitignore": "*.log\n", "debug.log": "", "a/b/c.txt": "", **NEVER_SHIPPED}
    )
    (tmp_path / "fifo").mkdir()
    os.mkfifo(tmp_path / "fifo" / "pipe")
    (tmp_path / "dirlink").symlink_to("a")
    assert names(list_files(tmp_path, [])) == [
        ".gitignore",
        "a/b/c.txt",
        "app.py",
        "debug.log",
        "dirlink",
        "fifo/pipe",
    ]


def test_project_in_a_repository_subdirectory(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "mono", {"web/app.py": "", "web/.gitignore": "*.tmp\n", "api/x.py": ""})
    write(repo, {"web/new.py": "", "web/scratch.tmp": "", "api/y.py": ""})
    assert names(list_files(repo / "web", [])) == [".gitignore", "app.py", "new.py"]


def test_nested_repository_contents_are_shipped(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "p", {"app.py": ""})
    make_repo(repo / "vendor" / "lib", {"lib.py": "", ".env": "x"})
    assert names(list_files(repo, [])) == ["app.py", "vendor/lib/lib.py"]


@pytest.mark.parametrize(
    ("patterns", "excluded"),
    [
        (["*.md"], ["README.md", "sub/README.md"]),
        (["docs/"], ["docs/guide.txt"]),
        (["build/"], ["sub/build/x.py"]),
        (["build"], ["build", "sub/build/x.py"]),
        (["/sub/build"], ["sub/build/x.py"]),
        (["/README.md"], ["README.md"]),
        (["sub/*.csv"], ["sub/data.csv"]),
        (["**/cache"], ["tmp/cache/c"]),
        (["sub/**"], ["sub/README.md", "sub/build/x.py", "sub/data.csv"]),
        (["[as]*"], ["app.py", "sub/README.md", "sub/build/x.py", "sub/data.csv"]),
        (["[!a-z]*"], ["README.md", "sub/README.md"]),
        (["?pp.py", "tmp"], ["app.py", "tmp/cache/c"]),
        ([" *.csv "], ["sub/data.csv"]),
    ],
)
def test_exclude_patterns(tmp_path: Path, patterns: list[str], excluded: list[str]) -> None:
    files = {
        "app.py": "",
        "README.md": "",
        "build": "a file named build",
        "docs/guide.txt": "",
        "sub/README.md": "",
        "sub/build/x.py": "",
        "sub/data.csv": "",
        "tmp/cache/c": "",
    }
    expected = sorted(set(files) - set(excluded))
    plain = tmp_path / "plain"
    write(plain, files)
    assert names(list_files(plain, patterns)) == expected
    repo = make_repo(tmp_path / "git", files)
    assert names(list_files(repo, patterns)) == expected


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("!keep.py", "negation"),
        ("/", "whole project"),
        ("//", "whole project"),
    ],
)
def test_bad_exclude_patterns(tmp_path: Path, pattern: str, problem: str) -> None:
    with pytest.raises(ExcludePatternError, match=problem):
        list_files(tmp_path, [pattern])
    with pytest.raises(ExcludePatternError, match=problem):
        check_exclude_patterns(["ok", pattern])


def test_broken_repository_is_a_clear_error(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "p", {"app.py": ""})
    (repo / ".git" / "index").write_bytes(b"this is not an index")
    with pytest.raises(DeployError, match="git ls-files"):
        list_files(repo, [])


# --- build_archive --------------------------------------------------------------------------------------

APP_JSON = {"name": "web", "version": "abc1234", "start": "python3 app.py", "health_check": "/_tako/status"}


def members(archive: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(archive) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_archive_contents_modes_and_metadata(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path / "p",
        {
            "app.py": "print('hi')\n",
            "bin/run": "#!/bin/sh\n",
            "static/css/site.css": "body{}",
            ".gitignore": "",
        },
    )
    (repo / "bin" / "run").chmod(0o750)
    (repo / "current.css").symlink_to("static/css/site.css")
    (repo / "static" / "up").symlink_to("..")
    write(repo, NEVER_SHIPPED)
    info = build_archive(repo, "abc1234", APP_JSON, ["*.log"])

    assert info.path == repo / ".tako" / "build" / "abc1234.tar.gz"
    data = info.path.read_bytes()
    assert info.size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.file_count == 7  # 4 project files + 2 links + app.json

    found = members(info.path)
    assert list(found) == sorted(found)
    assert list(found) == [
        ".gitignore",
        "app.json",
        "app.py",
        "bin",
        "bin/run",
        "current.css",
        "static",
        "static/css",
        "static/css/site.css",
        "static/up",
    ]
    # Owner bits kept; the group gets the owner's read/execute bits; others nothing.
    assert found["bin/run"].mode == 0o750
    assert found["app.py"].mode == 0o640
    assert found["app.json"].mode == 0o640
    assert found["bin"].isdir() and found["bin"].mode == 0o750
    assert found["current.css"].issym() and found["current.css"].linkname == "static/css/site.css"
    assert found["static/up"].linkname == ".."
    for member in found.values():
        assert (member.mtime, member.uid, member.gid, member.uname, member.gname) == (
            ARCHIVE_MTIME,
            0,
            0,
            "",
            "",
        )
    with tarfile.open(info.path) as tar:
        app_json = tar.extractfile("app.json")
        assert app_json is not None
        text = app_json.read().decode()
    assert json.loads(text) == APP_JSON
    assert list(json.loads(text)) == sorted(APP_JSON)


def test_real_tar_extracts_it_cleanly(tmp_path: Path) -> None:
    project = tmp_path / "p"
    write(project, {"app.py": "print('hi')\n", "deep/er/file.txt": "x" * 100_000, "ünïcödé.txt": "u"})
    (project / "run.sh").write_text("#!/bin/sh\necho ok\n")
    (project / "run.sh").chmod(0o755)
    info = build_archive(project, "nogit_12345678", APP_JSON)
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run(
        ["tar", "-xzf", str(info.path), "-C", str(out), "--no-same-owner"], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stderr == ""
    assert (out / "deep/er/file.txt").read_text() == "x" * 100_000
    assert (out / "ünïcödé.txt").read_text() == "u"
    assert subprocess.run([str(out / "run.sh")], capture_output=True, text=True).stdout == "ok\n"
    assert json.loads((out / "app.json").read_text())["name"] == "web"


@pytest.mark.parametrize(
    ("local", "shipped"),
    [
        (0o600, 0o640),  # a secret file: readable by its app's group only, never by others
        (0o644, 0o640),
        (0o755, 0o750),  # executables stay executable
        (0o700, 0o750),
        (0o400, 0o440),
        (0o640, 0o640),
        (0o666, 0o640),  # group/other write bits are not the owner's: dropped
        (0o4755, 0o750),  # no setuid/setgid/sticky
    ],
)
def test_file_modes_keep_the_owner_bits(tmp_path: Path, local: int, shipped: int) -> None:
    project = tmp_path / "p"
    write(project, {"f": "x"})
    (project / "f").chmod(local)
    found = members(build_archive(project, "v1", APP_JSON).path)
    assert found["f"].mode == shipped


def test_server_extraction_applies_the_archive_modes(tmp_path: Path) -> None:
    """The deploy's own extract command (real tar, a umask that would otherwise widen nothing and
    narrow everything) leaves each file with its archive mode."""
    project = tmp_path / "p"
    write(project, {"secret.key": "k", "run.sh": "#!/bin/sh\n", "lib/mod.py": ""})
    (project / "secret.key").chmod(0o600)
    (project / "run.sh").chmod(0o755)
    info = build_archive(project, "v1", APP_JSON)
    upload = tmp_path / "upload.tar.gz"
    upload.write_bytes(info.path.read_bytes())
    staging = tmp_path / "staging"
    staging.mkdir()
    command = commands.extract(str(upload), str(staging))
    result = subprocess.run(
        ["sh", "-c", 'umask 077; exec "$@"', "umask", *command.argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    modes = {
        rel: (staging / rel).stat().st_mode & 0o7777 for rel in ("secret.key", "run.sh", "lib", "lib/mod.py")
    }
    assert modes == {"secret.key": 0o640, "run.sh": 0o750, "lib": 0o750, "lib/mod.py": 0o640}


def test_archive_is_deterministic(tmp_path: Path) -> None:
    project = tmp_path / "p"
    write(project, {"b.py": "b", "a/z.py": "z", "a/y.py": "y"})
    first = build_archive(project, "v1", APP_JSON)
    first_bytes = first.path.read_bytes()
    for path in project.rglob("*.py"):
        os.utime(path, (123456789, 123456789))
    second = build_archive(project, "v1", APP_JSON)
    assert second.sha256 == first.sha256
    assert second.path.read_bytes() == first_bytes
    third = build_archive(project, "v1", {**APP_JSON, "env": "staging"})
    assert third.sha256 != first.sha256


def test_older_archives_are_removed(tmp_path: Path) -> None:
    project = tmp_path / "p"
    write(project, {"app.py": ""})
    build_dir = project / ".tako" / "build"
    build_archive(project, "v1", APP_JSON)
    (build_dir / "notes.txt").write_text("not an archive")
    build_archive(project, "v2", APP_JSON)
    assert sorted(p.name for p in build_dir.iterdir()) == ["notes.txt", "v2.tar.gz"]


@pytest.mark.parametrize("target", ["../outside.txt", "sub/../../outside.txt", "/etc/passwd", ".."])
def test_escaping_symlinks_are_refused(tmp_path: Path, target: str) -> None:
    project = tmp_path / "p"
    write(project, {"app.py": "", "sub/x": ""})
    (tmp_path / "outside.txt").write_text("secret")
    (project / "link").symlink_to(target)
    with pytest.raises(DeployError, match="points outside the project") as info:
        build_archive(project, "v1", APP_JSON)
    assert info.value.hint is not None and "exclude" in info.value.hint
    assert [p.name for p in (project / ".tako" / "build").iterdir()] == []  # no temp file left behind


def test_excluded_escaping_symlink_is_fine(tmp_path: Path) -> None:
    project = tmp_path / "p"
    write(project, {"app.py": ""})
    (project / "host-data").symlink_to("/var/lib")
    assert build_archive(project, "v1", APP_JSON, ["host-data"]).file_count == 2


def test_project_app_json_is_refused_unless_excluded(tmp_path: Path) -> None:
    project = tmp_path / "p"
    write(project, {"app.json": '{"heroku": true}', "sub/app.json": "{}"})
    with pytest.raises(DeployError, match=r"its own app\.json") as info:
        build_archive(project, "v1", APP_JSON)
    assert info.value.hint is not None and "/app.json" in info.value.hint
    archive = build_archive(project, "v1", APP_JSON, ["/app.json"])
    assert set(members(archive.path)) == {"app.json", "sub", "sub/app.json"}
    with tarfile.open(archive.path) as tar:
        app_json = tar.extractfile("app.json")
        assert app_json is not None and json.loads(app_json.read()) == APP_JSON


@pytest.mark.parametrize(
    ("files", "what"),
    [
        ({"logs": "my notes"}, "a file"),
        ({"logs/app.log": "old lines", "logs/.keep": ""}, "a directory"),
    ],
)
@pytest.mark.parametrize("with_git", [True, False])
def test_a_logs_entry_at_the_root_is_refused_unless_excluded(
    tmp_path: Path, files: dict[str, str], what: str, with_git: bool
) -> None:
    """On the server the release's `logs` is the link to the app's shared logs: a project's own `logs`
    would be silently replaced, so the deploy stops before the archive exists (nothing is uploaded)."""
    project = tmp_path / "p"
    all_files = {"app.py": "", "sub/logs": "fine below the root", **files}
    if with_git:
        make_repo(project, all_files)
    else:
        project.mkdir()
        write(project, all_files)
    with pytest.raises(DeployError, match=f"{what} named logs at its root") as info:
        build_archive(project, "v1", APP_JSON)
    assert str(project / "logs") in info.value.message
    assert info.value.hint is not None and "rename it" in info.value.hint and '"/logs"' in info.value.hint
    assert list((project / ".tako" / "build").glob("*")) == []
    archive = build_archive(project, "v1", APP_JSON, ["/logs"])
    assert set(members(archive.path)) == {"app.json", "app.py", "sub", "sub/logs"}


def test_a_logs_symlink_at_the_root_is_refused(tmp_path: Path) -> None:
    project = tmp_path / "p"
    write(project, {"app.py": "", "var/log/x": ""})
    (project / "logs").symlink_to("var/log")
    with pytest.raises(DeployError, match="a symlink named logs at its root"):
        build_archive(project, "v1", APP_JSON)


@pytest.mark.parametrize("version", ["", "../x", "a/b", ".hidden", "v 1", "x" * 200])
def test_bad_version_is_refused(tmp_path: Path, version: str) -> None:
    with pytest.raises(DeployError, match="cannot be used as an archive name"):
        build_archive(tmp_path, version, APP_JSON)


def test_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    project = tmp_path / "p"
    write(project, {"app.py": ""})
    (project / "dangling").symlink_to("missing-but-inside")
    assert build_archive(project, "v1", APP_JSON).file_count == 3  # dangling link inside the tree is fine
    os.mkfifo(project / "pipe")
    assert build_archive(project, "v1", APP_JSON).file_count == 3  # special files are skipped


def test_the_unpacked_size_is_counted_not_only_the_compressed_one(tmp_path: Path) -> None:
    # The disk preflight needs what the release takes once extracted: zeros pack to almost nothing.
    project = tmp_path / "p"
    write(project, {"app.py": "print('hi')\n"})
    with (project / "zeros.bin").open("wb") as handle:
        handle.truncate(8 * 1024 * 1024)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "dep-1.0-py3-none-any.whl").write_bytes(b"w" * 10_000)
    info = build_archive(project, "nogit_12345678", APP_JSON, extra_dirs={".tako-wheels/k": wheels})
    assert info.size < 1024 * 1024
    # Each entry in whole 4 KiB blocks: zeros.bin 8 MiB, app.py, app.json, the wheel (3 blocks), 2 dirs.
    assert info.unpacked_size == 8 * 1024 * 1024 + 4096 * (1 + 1 + 3 + 2)
    assert info.wheel_size == 10_000
