"""Pure parts of tako.deploy.python: probe parsing, requirements (incl. uv.lock), keys, commands."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tako.deploy.python.remote import (
    install_command,
    installed_keys_command,
    parse_installed_keys,
    prune_commands,
)
from tako.deploy.python.requirements import detect_requirements, requirements_key
from tako.deploy.python.target import PROBE_COMMAND, TargetPython, parse_probe
from tako.errors import ConfigError, DeployError

TARGET = TargetPython(
    "3.11", "cp", "cp311", ("manylinux_2_36_x86_64", "manylinux2014_x86_64", "linux_x86_64")
)


def test_probe_runs_on_system_python_and_parses() -> None:
    out = subprocess.run(PROBE_COMMAND.argv, capture_output=True, text=True, check=True).stdout
    target = parse_probe(out)
    assert PROBE_COMMAND.argv[0] == "/usr/bin/python3"
    assert target.implementation == "cp" and target.abi == f"cp{target.version.replace('.', '')}"
    assert target.platforms[-1].startswith("linux_")
    # glibc-derived tags include the legacy alias pip's own tag list has.
    assert any(p.startswith("manylinux2014_") for p in target.platforms)


def test_parse_probe_takes_last_line_and_rejects_garbage() -> None:
    doc = {"version": "3.12", "implementation": "cp", "abi": "cp312", "platforms": ["manylinux_2_28_aarch64"]}
    t = parse_probe("motd noise\n" + json.dumps(doc) + "\n")
    assert t == TargetPython("3.12", "cp", "cp312", ("manylinux_2_28_aarch64",))
    assert t.describe() == "CPython 3.12 on manylinux_2_28_aarch64"
    for bad in ("", "bash: /usr/bin/python3: No such file or directory", '{"version": "3"}'):
        with pytest.raises(DeployError):
            parse_probe(bad)


def test_pip_args_select_the_target() -> None:
    args = TARGET.pip_args()
    assert args[:4] == ["--python-version", "3.11", "--implementation", "cp"]
    assert [args[i + 1] for i, a in enumerate(args) if a == "--abi"] == ["cp311", "abi3", "none"]
    assert [args[i + 1] for i, a in enumerate(args) if a == "--platform"] == list(TARGET.platforms)


def test_detect_requirements_sources(tmp_path: Path) -> None:
    assert detect_requirements(tmp_path) is None
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = []\n')
    assert detect_requirements(tmp_path) is None
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\ndependencies = ["flask>=3", "gunicorn"]\n'
    )
    reqs = detect_requirements(tmp_path)
    assert reqs is not None and reqs.source.name == "pyproject.toml" and reqs.text == "flask>=3\ngunicorn\n"
    # requirements.txt wins; comments-only counts as none.
    (tmp_path / "requirements.txt").write_text("# nothing yet\n\n")
    assert detect_requirements(tmp_path) is None
    (tmp_path / "requirements.txt").write_text("six  # comment\n")
    reqs = detect_requirements(tmp_path)
    assert reqs is not None and reqs.source.name == "requirements.txt" and not reqs.hashed
    (tmp_path / "requirements.txt").write_text("six==1.17.0 \\\n    --hash=sha256:abc\n")
    assert detect_requirements(tmp_path).hashed


def test_bad_pyproject_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project\n")
    with pytest.raises(ConfigError, match=r"pyproject\.toml"):
        detect_requirements(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[project]\ndependencies = 3\n")
    with pytest.raises(ConfigError, match=r"project\.dependencies"):
        detect_requirements(tmp_path)


UV_LOCK = """
version = 1
requires-python = ">=3.11"

[[package]]
name = "app"
version = "0.1.0"
source = { virtual = "." }
dependencies = [
    { name = "uvicorn", extra = ["standard"] },
    { name = "colorama", marker = "sys_platform == 'win32'" },
]

[package.dev-dependencies]
dev = [{ name = "pytest" }]

[[package]]
name = "uvicorn"
version = "0.30.0"
source = { registry = "https://pypi.org/simple" }
dependencies = [{ name = "h11" }]
sdist = { url = "https://x/uvicorn-0.30.0.tar.gz", hash = "sha256:aaa", size = 1 }
wheels = [{ url = "https://x/uvicorn-0.30.0-py3-none-any.whl", hash = "sha256:bbb", size = 1 }]

[package.optional-dependencies]
standard = [{ name = "httptools" }]

"""


def registry_package(name: str, version: str, digest: str) -> str:
    """A uv.lock [[package]] from the index with one wheel."""
    return (
        f'\n[[package]]\nname = "{name}"\nversion = "{version}"\n'
        'source = { registry = "https://pypi.org/simple" }\n'
        f'wheels = [{{ url = "https://x/{name}.whl", hash = "sha256:{digest}", size = 1 }}]\n'
    )


UV_LOCK += "".join(
    registry_package(*package)
    for package in (
        ("h11", "0.14.0", "ccc"),
        ("httptools", "0.6.1", "ddd"),
        ("colorama", "0.4.6", "eee"),
        ("pytest", "8.0.0", "fff"),
    )
)


def test_uv_lock_exports_runtime_dependencies_with_hashes(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "app"\ndependencies = ["uvicorn[standard]"]\n'
    )
    (tmp_path / "uv.lock").write_text(UV_LOCK)
    reqs = detect_requirements(tmp_path)
    assert reqs is not None and reqs.source.name == "uv.lock" and reqs.hashed
    assert reqs.text.splitlines() == [
        "colorama==0.4.6 ; (sys_platform == 'win32') --hash=sha256:eee",
        "h11==0.14.0 --hash=sha256:ccc",
        "httptools==0.6.1 --hash=sha256:ddd",
        "uvicorn==0.30.0 --hash=sha256:aaa --hash=sha256:bbb",
    ]


def test_uv_lock_without_project_entry(tmp_path: Path) -> None:
    (tmp_path / "uv.lock").write_text(
        'version = 1\n[[package]]\nname = "a"\nversion = "1"\nsource = { registry = "x" }\n'
    )
    with pytest.raises(ConfigError, match="uv lock"):
        detect_requirements(tmp_path)


def test_key_depends_on_requirements_target_and_local_packages(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    lib = tmp_path / "lib"
    (lib / "pkg").mkdir(parents=True)
    (lib / "pkg" / "__init__.py").write_text("A = 1\n")
    proj.mkdir()
    (proj / "requirements.txt").write_text("six\n../lib\n")
    reqs = detect_requirements(proj)
    assert reqs is not None
    key = requirements_key(reqs, TARGET)
    assert key == requirements_key(detect_requirements(proj), TARGET)
    other = TargetPython("3.12", "cp", "cp312", TARGET.platforms)
    assert requirements_key(reqs, other) != key
    (lib / "pkg" / "__pycache__").mkdir()
    (lib / "pkg" / "__pycache__" / "x.pyc").write_bytes(b"junk")
    assert requirements_key(reqs, TARGET) == key  # caches and build dirs do not count
    (lib / "pkg" / "__init__.py").write_text("A = 2\n")
    assert requirements_key(reqs, TARGET) != key
    (proj / "requirements.txt").write_text("six\n../lib\nidna\n")
    assert requirements_key(detect_requirements(proj), TARGET) != key


def test_included_requirement_files_change_the_key(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("-r base.txt\n")
    (tmp_path / "base.txt").write_text("six\n")
    reqs = detect_requirements(tmp_path)
    assert reqs is not None
    key = requirements_key(reqs, TARGET)
    (tmp_path / "base.txt").write_text("six\nidna\n")
    assert requirements_key(reqs, TARGET) != key


def test_remote_install_command_is_a_value() -> None:
    argv = install_command("/opt/tako/apps/a/releases/v1", "k1").argv
    assert argv[:2] == ("sh", "-c")
    # Data only as positional parameters, never in the script.
    assert argv[4:] == ("/opt/tako/apps/a/releases/v1", ".tako-wheels/k1", "k1")
    script = argv[2]
    assert "/usr/bin/python3 -m venv" in script and "--no-index" in script
    assert "dependencies unchanged (cache hit)" in script


def test_venv_list_and_prune_take_the_app_dir_as_a_parameter() -> None:
    [prune] = prune_commands("/opt/tako/apps/a b")
    for command in (installed_keys_command("/opt/tako/apps/a b"), prune):
        assert command.argv[:2] == ("sh", "-c") and command.argv[4:] == ("/opt/tako/apps/a b",)
        assert "apps/a b" not in command.argv[2]
    keys = parse_installed_keys("0123456789abcdef01234567\nnot-a-key\n")
    assert keys == frozenset({"0123456789abcdef01234567"})


def test_uv_lock_names_are_matched_and_written_pep503_normalised(tmp_path: Path) -> None:
    """Runs of `-`, `_` and `.` are one separator: `typing__extensions` is `typing-extensions`."""
    (tmp_path / "uv.lock").write_text(
        'version = 1\n[[package]]\nname = "app"\nversion = "0.1.0"\nsource = { virtual = "." }\n'
        'dependencies = [{ name = "typing__extensions" }, { name = "Zope._Interface" }]\n'
        + registry_package("typing-extensions", "4.12.2", "aaa")
        + registry_package("zope-interface", "7.0", "bbb")
    )
    reqs = detect_requirements(tmp_path)
    assert reqs is not None
    assert reqs.text.splitlines() == [
        "typing-extensions==4.12.2 --hash=sha256:aaa",
        "zope-interface==7.0 --hash=sha256:bbb",
    ]
