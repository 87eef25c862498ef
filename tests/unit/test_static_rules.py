"""Static files: `[tako] static` in tako.toml (errors naming file, key and line) and the pure rules of
serving (request path to file name, ranges, fingerprinted names, content types)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tako.config.project import load_project
from tako.deploy.prepare import check_static_dirs
from tako.errors import ConfigError, UsageError
from tako.server.proxy.static_files import (
    UNSATISFIABLE,
    byte_range,
    content_type,
    is_fingerprinted,
    relative_path,
)

MINIMAL = '[tako]\nname = "app"\n\n[envs.production]\nroute = "app.example.com"\n'


def project_with(tmp_path: Path, static: str) -> Path:
    (tmp_path / "tako.toml").write_text(MINIMAL.replace("[tako]\n", f"[tako]\nstatic = {static}\n"))
    return tmp_path


def test_static_mounts_are_read(tmp_path: Path) -> None:
    project = load_project(project_with(tmp_path, '{ "/static" = "public", "/media/" = "build/media" }'))
    assert dict(project.static) == {"/static": "public", "/media": "build/media"}
    assert dict(load_project(project_with(tmp_path, "{}")).static) == {}


@pytest.mark.parametrize(
    ("static", "says"),
    [
        ('{ "/" = "public" }', "must name a path below '/'"),
        ('{ "static" = "public" }', "must start with '/'"),
        ('{ "/a b" = "public" }', "no '//', spaces"),
        ('{ "/s/../t" = "public" }', "must not contain '.' or '..'"),
        ('{ "/static" = "/srv/public" }', "must be relative to the project"),
        ('{ "/static" = "../public" }', "must stay inside the project"),
        ('{ "/static" = "" }', "must not be empty"),
        ('{ "/static" = 3 }', "expected a string"),
        ('{ "/s" = "a", "/s/" = "b" }', "given twice"),
        ('"public"', "expected a table"),
    ],
)
def test_bad_static_mounts_name_file_key_and_line(tmp_path: Path, static: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_project(project_with(tmp_path, static))
    error = info.value
    assert says in str(error), str(error)
    assert "tako.toml" in str(error) and "tako.static" in str(error)


def test_a_static_directory_linked_out_of_the_project_is_refused(tmp_path: Path) -> None:
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "public").symlink_to(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_project(project_with(tmp_path / "project", '{ "/static" = "public" }'))
    assert "leads out of the project" in str(info.value)


@pytest.mark.parametrize(
    ("rest", "expected"),
    [
        (b"/app.css", "app.css"),
        (b"/css/app%20x.css", "css/app x.css"),
        (b"/%C3%A9t%C3%A9.txt", "\u00e9t\u00e9.txt"),
        (b"", None),
        (b"/", None),
        (b"/css/", None),
        (b"//app.css", None),
        (b"/../app.css", None),
        (b"/%2e%2e/app.css", None),
        (b"/a/./b", None),
        (b"/.env", None),
        (b"/a%2fb", None),
        (b"/a%5cb", None),
        (b"/a\\b", None),
        (b"/a%00b", None),
        (b"/%c0%ae%c0%ae/x", None),  # overlong "..": not UTF-8
        (b"/%ff", None),
        (b"/a%0ab", None),
    ],
)
def test_relative_path(rest: bytes, expected: str | None) -> None:
    assert relative_path(rest) == expected


@given(st.binary(max_size=40))
def test_relative_path_never_leaves_the_directory(rest: bytes) -> None:
    found = relative_path(b"/" + rest)
    if found is not None:
        parts = found.split("/")
        assert all(part and part[0] != "." and "\\" not in part and "\x00" not in part for part in parts)
        assert not found.startswith("/")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"bytes=0-9", (0, 9)),
        (b"bytes=5-", (5, 99)),
        (b"bytes=-10", (90, 99)),
        (b"bytes=-500", (0, 99)),
        (b"bytes=90-200", (90, 99)),
        (b"Bytes = 1-1", (1, 1)),
        (b"bytes=100-", UNSATISFIABLE),
        (b"bytes=-0", UNSATISFIABLE),
        (b"bytes=0-1,3-4", None),
        (b"bytes=9-3", None),
        (b"items=0-1", None),
        (b"bytes=a-b", None),
        (b"bytes=-", None),
        (b"bytes=+1-2", None),
    ],
)
def test_byte_range(value: bytes, expected: object) -> None:
    assert byte_range(value, 100) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("app.3f2a9c1b.css", True),
        ("main-9f86d081884c.js", True),
        ("logo.0123456789abcdef0123456789abcdef.svg", True),
        ("app.css", False),
        ("3f2a9c1b.css", False),  # the first part is a name, not a hash
        ("app.deadbeef.css", False),  # no digit: a word
        ("app.3f2a9c1.css", False),  # 7 digits: too short
        ("app.css.3f2a9c1b", False),  # the extension
        ("index-BHzCr7Z8.js", True),  # Vite / Rollup: 8 base64url characters
        ("vendor-D-x_3kQa.js.map", True),  # `-` and `_` belong to the hash
        ("app-5KJPYLLZ.js", True),  # esbuild: 8 base32 characters
        ("logo-Wordmark.svg", False),  # a word with a capital
        ("logo-v2-small.png", False),
        ("font-FULLNAME.woff2", False),
        ("a-BHzCr7Z8x.js", False),  # 9 characters
        ("BHzCr7Z8.js", False),  # no name before the hash
    ],
)
def test_fingerprinted_names(name: str, expected: bool) -> None:
    assert is_fingerprinted(name) is expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.css", b"text/css; charset=utf-8"),
        ("a.JS", b"text/javascript; charset=utf-8"),
        ("a.html", b"text/html; charset=utf-8"),
        ("a.json", b"application/json; charset=utf-8"),
        ("a.svg", b"image/svg+xml; charset=utf-8"),
        ("a.png", b"image/png"),
        ("a.woff2", b"font/woff2"),
        ("a.wasm", b"application/wasm"),
        ("LICENSE", b"application/octet-stream"),
    ],
)
def test_content_types(name: str, expected: bytes) -> None:
    assert content_type(name) == expected


def _git_project(tmp_path: Path, static: str, gitignore: str = "") -> Path:
    tmp_path.mkdir(exist_ok=True)
    project = project_with(tmp_path, static)
    (project / "public" / "css").mkdir(parents=True)
    (project / "public" / "css" / "site.css").write_text("body {}\n")
    (project / ".gitignore").write_text(gitignore)
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    return project


def test_a_static_directory_with_files_passes_the_deploy_check(tmp_path: Path) -> None:
    check_static_dirs(load_project(_git_project(tmp_path, '{ "/static" = "./public/" }')))


def test_a_missing_or_ignored_static_directory_stops_the_deploy(tmp_path: Path) -> None:
    project = _git_project(tmp_path, '{ "/static" = "public", "/media" = "media" }')
    with pytest.raises(UsageError, match=r"\[tako\].static '/media': 'media' is not a directory"):
        check_static_dirs(load_project(project))
    ignored = _git_project(tmp_path / "other", '{ "/static" = "public" }', gitignore="public/\n")
    with pytest.raises(UsageError, match="has no file that goes into the release") as info:
        check_static_dirs(load_project(ignored))
    assert ".gitignore" in str(info.value.hint)
