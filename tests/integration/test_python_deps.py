"""Wheelhouse builds against the real package index, and the offline install script run for real.

The install script runs here (as it would on a server) against a temp app dir, with /usr/bin/python3.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tako.deploy.python.layout import PINNED_REQUIREMENTS, wheelhouse_rel
from tako.deploy.python.remote import CACHE_HIT_MARKER, INSTALLED_MARKER, install_command, prune_commands
from tako.deploy.python.requirements import Requirements, detect_requirements
from tako.deploy.python.target import PROBE_COMMAND, TargetPython, parse_probe
from tako.deploy.python.wheelhouse import Wheelhouse, build_wheelhouse
from tako.errors import DeployError

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pip_env() -> dict[str, str]:
    """The real index only: no local pip config, find-links or mirrors of this machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    if "PIP_CERT" in os.environ:
        env["PIP_CERT"] = os.environ["PIP_CERT"]
    return env


@pytest.fixture(scope="module")
def target() -> TargetPython:
    """This machine's /usr/bin/python3, probed with the same command a server runs."""
    out = subprocess.run(PROBE_COMMAND.argv, capture_output=True, text=True, check=True).stdout
    return parse_probe(out)


def _reqs(tmp: Path, text: str) -> Requirements:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "requirements.txt").write_text(text)
    reqs = detect_requirements(tmp)
    assert reqs is not None
    return reqs


def _install(app_dir: Path, version: str, wh: Wheelhouse) -> tuple[Path, str]:
    """Unpack the wheelhouse into a release the way the archive would, then run the install commands."""
    release = app_dir / "releases" / version
    dest = release / wheelhouse_rel(wh.key)
    dest.mkdir(parents=True)
    for f in wh.path.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    env = {"PATH": "/usr/bin:/bin", "HOME": str(app_dir)}
    command = install_command(str(release), wh.key)
    res = subprocess.run(command.argv, capture_output=True, text=True, env=env, check=False)
    assert res.returncode == 0, res.stderr
    return release, res.stdout


def test_build_install_offline_and_cache(
    tmp_path: Path, target: TargetPython, pip_env: dict[str, str]
) -> None:
    # six: pure wheel; markupsafe: binary wheel for the target; docopt 0.6.2: sdist only, built here.
    reqs = _reqs(tmp_path / "proj", "six\nmarkupsafe\ndocopt==0.6.2\n")
    cache = tmp_path / "cache"
    lines: list[str] = []
    wh = build_wheelhouse(reqs, target, cache, output=lines.append, pip_env=pip_env)
    assert not wh.cache_hit
    assert wh.path == cache / wh.key
    names = sorted(p.name.split("-")[0].lower() for p in wh.path.glob("*.whl"))
    assert names == ["docopt", "markupsafe", "six"]
    assert any("building docopt==0.6.2 from source" in line for line in lines)
    pins = (wh.path / PINNED_REQUIREMENTS).read_text().split()
    assert {p.split("==")[0] for p in pins} == {"docopt", "markupsafe", "six"}

    again: list[str] = []
    wh2 = build_wheelhouse(reqs, target, cache, output=again.append, pip_env=pip_env)
    assert wh2.cache_hit and wh2.key == wh.key and wh2.path == wh.path
    assert again == [f"wheelhouse for {target.describe()} unchanged (cache hit)"]

    app = tmp_path / "opt" / "apps" / "demo"
    release, out = _install(app, "v1", wh)
    assert INSTALLED_MARKER in out and CACHE_HIT_MARKER not in out
    venv = release / ".venv"
    assert venv.is_symlink() and os.readlink(venv) == f"../../shared/venvs/{wh.key}"
    assert not (release / ".tako-wheels").exists()
    code = "import six, markupsafe, docopt, sys; print(markupsafe.escape('<'), sys.prefix)"
    res = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True
    )
    assert res.stdout.split()[0] == "&lt;"
    # The venv is the shared one, built from /usr/bin/python3.
    assert Path(res.stdout.split()[1]).resolve() == (app / "shared" / "venvs" / wh.key).resolve()
    cfg = (app / "shared" / "venvs" / wh.key / "pyvenv.cfg").read_text()
    assert "home = /usr/bin" in cfg

    # Second release, same dependencies: no reinstall, the same venv.
    release2, out2 = _install(app, "v2", wh)
    assert out2.strip() == CACHE_HIT_MARKER
    assert os.readlink(release2 / ".venv") == os.readlink(venv)

    # Pruning keeps venvs that a release links to and drops the rest.
    (app / "shared" / "venvs" / "orphan").mkdir()
    for command in prune_commands(str(app)):
        subprocess.run(command.argv, check=True)
    assert sorted(p.name for p in (app / "shared" / "venvs").iterdir()) == [wh.key]


def test_no_wheel_for_platform_names_package(tmp_path: Path, pip_env: dict[str, str]) -> None:
    # PyPI accepts no plain linux_* wheels, so markupsafe (a binary package) has none for this target.
    target = TargetPython(version="3.11", implementation="cp", abi="cp311", platforms=("linux_armv7l",))
    reqs = _reqs(tmp_path / "proj", "six\nmarkupsafe==3.0.2\n")
    with pytest.raises(DeployError) as info:
        build_wheelhouse(reqs, target, tmp_path / "cache", output=lambda _l: None, pip_env=pip_env)
    msg = str(info.value)
    assert "markupsafe==3.0.2" in msg and "linux_armv7l" in msg
    assert "six" not in msg.split(":", 1)[1]
    # Nothing half-built is left in the cache.
    assert [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith("_")] == []


def test_local_path_requirement_is_built_and_shipped(
    tmp_path: Path, target: TargetPython, pip_env: dict[str, str]
) -> None:
    # The examples depend on the repo's SDK by path; the server gets it as a wheel.
    sdk = REPO / "sdk"
    reqs = _reqs(tmp_path / "proj", f"six\n{os.path.relpath(sdk, tmp_path / 'proj')}\n")
    wh = build_wheelhouse(reqs, target, tmp_path / "cache", output=lambda _l: None, pip_env=pip_env)
    names = sorted(p.name.split("-")[0] for p in wh.path.glob("*.whl"))
    assert names == ["six", "tako_app_sdk"]
    release, _out = _install(tmp_path / "apps" / "x", "v1", wh)
    code = "import tako_sdk; print(tako_sdk.env().env)"
    res = subprocess.run(
        [str(release / ".venv" / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "ENV": "production"},
    )
    assert res.stdout.strip() == "production"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("example", ["fastapi", "flask"])
def test_example_deploys_offline_and_shuts_down_gracefully(
    tmp_path: Path, target: TargetPython, pip_env: dict[str, str], example: str
) -> None:
    """The example's deps go through the wheelhouse into a /usr/bin/python3 venv; its start command runs
    from that venv like tako-server runs it; SIGTERM to the group lets an in-flight request finish."""
    src = REPO / "examples" / example
    reqs = detect_requirements(src)
    assert reqs is not None
    wh = build_wheelhouse(reqs, target, tmp_path / "cache", output=lambda _l: None, pip_env=pip_env)
    app_dir = tmp_path / "apps" / example
    release, out = _install(app_dir, "v1", wh)
    assert INSTALLED_MARKER in out
    shutil.copytree(src, release, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".venv", "__pycache__"))
    start = tomllib.loads((src / "tako.toml").read_text())["tako"]["start"]

    port = _free_port()
    env = {
        "PATH": f"{release}/.venv/bin:/usr/bin:/bin",
        "VIRTUAL_ENV": f"{release}/.venv",
        "HOME": str(tmp_path),
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "ENV": "production",
        "TAKO_APP": f"{example}-example",
        "TAKO_BUILD": "v1",
        "TAKO_INSTANCE": "1",
    }
    log = (tmp_path / "out.log").open("w+")
    proc = subprocess.Popen(
        ["/bin/sh", "-c", start],
        cwd=release,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "out.log").read_text()
            try:
                return httpx.get(f"{base}/_tako/status", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        _wait_for(up, f"{example} to answer")
        status = httpx.get(f"{base}/_tako/status").json()
        assert (status["app"], status["version"], status["instance"]) == (f"{example}-example", "v1", "1")
        assert httpx.get(f"{base}/").json()["env"] == "production"

        result: dict[str, httpx.Response] = {}
        slow = threading.Thread(
            target=lambda: result.update(r=httpx.get(f"{base}/slow?seconds=2", timeout=30))
        )
        slow.start()
        _wait_for(lambda: "slow request started" in (tmp_path / "out.log").read_text(), "the slow request")
        os.killpg(proc.pid, signal.SIGTERM)
        slow.join(timeout=30)
        assert result["r"].status_code == 200 and result["r"].json()["slept"] == 2
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_hashed_requirements_are_checked(
    tmp_path: Path, target: TargetPython, pip_env: dict[str, str]
) -> None:
    """--hash lines are honoured on both paths: wheels downloaded for the target and sdists built here."""
    six = "six==1.17.0 --hash=sha256:4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274"
    docopt = (
        "docopt==0.6.2 \\\n    --hash=sha256:49b3a825280bd66b3aa83585ef59c4a8c82f2c8a522dbe754a8bc8d08c85c491"
    )
    reqs = _reqs(tmp_path / "ok", f"{six}\n{docopt}\n")
    assert reqs.hashed
    wh = build_wheelhouse(reqs, target, tmp_path / "cache", output=lambda _l: None, pip_env=pip_env)
    assert sorted(p.name.split("-")[0] for p in wh.path.glob("*.whl")) == ["docopt", "six"]

    bad = six.replace("4721f3", "000000")
    with pytest.raises(DeployError):
        build_wheelhouse(
            _reqs(tmp_path / "bad", f"{bad}\n"),
            target,
            tmp_path / "cache",
            output=lambda _l: None,
            pip_env=pip_env,
        )
