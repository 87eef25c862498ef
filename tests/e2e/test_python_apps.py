"""End to end (issue 8): the FastAPI and Flask examples deploy to a testbed host that has no route to any
package index, each running from its own per-release virtualenv installed offline from the wheelhouse the CLI
ships; unchanged dependencies are cache hits locally and on the server; a package without a wheel for the
server's platform fails the deploy before upload while the previous release keeps serving.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.e2e.conftest import TakoCLI, user_ssh_env
from tests.support.projects import body_and_status, commit_all, curl, git, wait_for
from tests.support.testbed import Host

from tako.deploy.layout import KEEP_RELEASES

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SERVER = "py1"
LOCAL_CACHE_HIT = re.compile(r"wheelhouse for CPython 3\.\d+ on \S+ unchanged \(cache hit\)")
LOCAL_BUILT = re.compile(r"wheelhouse for CPython 3\.\d+ on \S+ built \(\d+ wheels\)")
SERVER_CACHE_HIT = f"[{SERVER}] dependencies unchanged (cache hit)"
SERVER_INSTALLED = re.compile(rf"\[{SERVER}\] dependencies installed \(\d+ packages\)")
KEY = re.compile(r"[0-9a-f]{24}")


@dataclass(frozen=True)
class Example:
    name: str  # directory under examples/
    app: str  # [tako].name in its tako.toml
    route: str
    greeting: str  # in the JSON body of `/`


FASTAPI = Example("fastapi", "fastapi-example", "fastapi.tako.test", "Hello from FastAPI on Tako")
FLASK = Example("flask", "flask-example", "flask.tako.test", "Hello from Flask on Tako")


@dataclass
class Deployed:
    example: Example
    project: Path
    output: str  # stdout + stderr of the first deploy

    @property
    def app_dir(self) -> str:
        return f"/opt/tako/apps/{self.example.app}"


def remote(host: Host, command: str) -> str:
    result = host.exec(command, user="tako")
    assert result.returncode == 0, f"{command}: {result.stderr}"
    return result.stdout.strip()


def head(project: Path) -> str:
    return git(project, "rev-parse", "--short=7", "HEAD")


def copy_example(root: Path, example: Example) -> Path:
    """examples/<name> and sdk/ side by side under `root` (its requirements name `../../sdk`), mapped to the
    testbed server and committed to a fresh git repo."""
    ignore = shutil.ignore_patterns(".tako", "__pycache__", ".venv", "*.egg-info", "build", "dist")
    project = root / "examples" / example.name
    shutil.copytree(REPO / "examples" / example.name, project, ignore=ignore)
    if not (root / "sdk").exists():
        shutil.copytree(REPO / "sdk", root / "sdk", ignore=ignore)
    assert "../../sdk" in (project / "requirements.txt").read_text()
    with (project / "tako.toml").open("a") as toml:
        toml.write(f'\n[servers.{SERVER}]\nenv = "production"\n')
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "initial")
    return project


def deploy(cli: TakoCLI, host: Host, project: Path) -> subprocess.CompletedProcess[str]:
    return cli.run("deploy", "--yes", cwd=project, env=user_ssh_env(host), timeout=300)


def deploy_ok(cli: TakoCLI, host: Host, project: Path) -> str:
    result = deploy(cli, host, project)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"deploy of {project} exited {result.returncode}\n{output}"
    assert "1/1 server(s) succeeded" in result.stdout, output
    return output


def first_deploy(cli: TakoCLI, host: Host, root: Path, example: Example) -> Deployed:
    project = copy_example(root, example)
    return Deployed(example, project, deploy_ok(cli, host, project))


@pytest.fixture(scope="module")
def fastapi_app(cli: TakoCLI, host: Host, tmp_path_factory: pytest.TempPathFactory) -> Deployed:
    return first_deploy(cli, host, tmp_path_factory.mktemp("fastapi"), FASTAPI)


@pytest.fixture(scope="module")
def flask_app(cli: TakoCLI, host: Host, tmp_path_factory: pytest.TempPathFactory) -> Deployed:
    return first_deploy(cli, host, tmp_path_factory.mktemp("flask"), FLASK)


# --- looking at the running instances ---------------------------------------------------------------------

# Runs as root inside the host: the processes of `app` in this host's network namespace (the testbed shares
# the machine's PID namespace, so other hosts' processes are visible and must be filtered out).
_INSTANCES = r"""
import json, os, sys
app, mine = sys.argv[1], os.readlink("/proc/self/ns/net")
found = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        if os.readlink(f"/proc/{pid}/ns/net") != mine:
            continue
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(v.split("=", 1) for v in f.read().decode(errors="replace").split("\0") if "=" in v)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().decode(errors="replace").rstrip("\0").split("\0")
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        continue
    if env.get("TAKO_APP") == app:
        keep = ("PORT", "VIRTUAL_ENV", "PATH", "TAKO_BUILD", "TAKO_INSTANCE", "ENV")
        found.append({"pid": int(pid), "cmdline": cmdline, "cwd": cwd, **{k: env.get(k) for k in keep}})
print(json.dumps(found))
"""


def instances(host: Host, app: str) -> list[dict[str, object]]:
    result = host.exec(["/usr/bin/python3", "-c", _INSTANCES, app])
    assert result.returncode == 0, result.stderr
    found: list[dict[str, object]] = json.loads(result.stdout)
    return found


def python_processes(host: Host, app: str, version: str) -> list[dict[str, object]]:
    """The app's Python processes (not the `sh -c` around them) of `version`."""
    return [
        p
        for p in instances(host, app)
        if p["TAKO_BUILD"] == version and "python" in Path(str(p["cmdline"][0])).name  # type: ignore[index]
    ]


def sdk_status(host: Host, port: str) -> dict[str, object]:
    """GET /_tako/status straight from an instance (the proxy answers that path itself on every host)."""
    result = host.exec(["curl", "-sS", "--max-time", "10", f"http://127.0.0.1:{port}/_tako/status"])
    assert result.returncode == 0, result.stderr
    status: dict[str, object] = json.loads(result.stdout)
    return status


def check_serving(host: Host, deployed: Deployed, version: str) -> str:
    """The app answers over HTTPS with `version`, from its release's virtualenv; returns the venv key."""
    ex = deployed.example
    body, status = body_and_status(curl(host.address, ex.route))
    assert status == 200, body
    answer = json.loads(body)
    assert answer["message"] == ex.greeting and answer["version"] == version and answer["env"] == "production"

    # The release links its own .venv to the shared, key-named venv; the shipped wheels are gone.
    release = f"{deployed.app_dir}/releases/{version}"
    assert remote(host, f"readlink {deployed.app_dir}/current") == f"releases/{version}"
    link = remote(host, f"readlink {release}/.venv")
    match = re.fullmatch(rf"\.\./\.\./shared/venvs/({KEY.pattern})", link)
    assert match, link
    key = match.group(1)
    venv = f"{deployed.app_dir}/shared/venvs/{key}"
    assert remote(host, f"cat {venv}/.tako-complete") == key
    assert remote(host, f"test -e {release}/.tako-wheels || echo gone") == "gone"
    # Installed offline into that venv: the framework is importable there and not from the system Python.
    framework = "fastapi" if ex is FASTAPI else "flask"
    where = remote(
        host, f"{release}/.venv/bin/python -c 'import {framework}, tako_sdk; print({framework}.__file__)'"
    )
    assert where.startswith(f"{release}/.venv/lib/") or where.startswith(f"{venv}/lib/"), where
    assert host.exec(["/usr/bin/python3", "-c", f"import {framework}"], user="tako").returncode != 0

    # The running instance is the venv's: PATH and VIRTUAL_ENV point at the release's .venv, and the
    # interpreter (from the console script's shebang) is the key-named venv's.
    procs: list[dict[str, object]] = []

    def found() -> bool:
        procs[:] = python_processes(host, ex.app, version)
        return bool(procs)

    wait_for(found, timeout=30, what=f"a python process of {ex.app} {version}")
    for proc in procs:
        assert proc["VIRTUAL_ENV"] == f"{release}/.venv", proc
        assert str(proc["PATH"]).startswith(f"{release}/.venv/bin:"), proc
        assert proc["cwd"] == release, proc
        assert str(proc["cmdline"][0]).startswith(f"{venv}/bin/python"), proc  # type: ignore[index]

    # /_tako/status of the instance comes from the SDK middleware in the app.
    port = str(procs[0]["PORT"])
    doc = sdk_status(host, port)
    assert set(doc) == {"status", "app", "version", "instance", "env", "pid", "uptime"}, doc
    assert doc["status"] == "ok" and doc["app"] == ex.app and doc["version"] == version, doc
    assert doc["env"] == "production" and doc["instance"] == procs[0]["TAKO_INSTANCE"], doc
    # (Listed again: a gunicorn worker may have booted after the first look.)
    assert doc["pid"] in {p["pid"] for p in python_processes(host, ex.app, version)}, (doc, procs)
    assert isinstance(doc["uptime"], float | int) and doc["uptime"] >= 0
    return key


# --- the tests --------------------------------------------------------------------------------------------


def test_host_has_no_route_to_a_package_index(host: Host) -> None:
    # No default route, and the kernel has no route to pypi.org's address (asked without sending anything).
    assert host.exec("ip -4 route show default", check=True).stdout.strip() == ""
    lookup = host.exec("ip -4 route get 151.101.0.223")
    assert lookup.returncode != 0 and "unreachable" in lookup.stderr.lower(), lookup


@pytest.mark.parametrize("which", ["fastapi", "flask"])
def test_example_deploys_with_its_own_offline_venv(
    which: str, request: pytest.FixtureRequest, host: Host
) -> None:
    deployed: Deployed = request.getfixturevalue(f"{which}_app")
    output = deployed.output
    assert "Python dependencies from requirements.txt" in output, output
    assert "building local package sdk" in output, output
    assert LOCAL_BUILT.search(output), output
    assert SERVER_INSTALLED.search(output), output
    check_serving(host, deployed, head(deployed.project))


def test_unchanged_dependencies_are_not_rebuilt_nor_reinstalled(
    host: Host, cli: TakoCLI, fastapi_app: Deployed
) -> None:
    first = head(fastapi_app.project)
    key = check_serving(host, fastapi_app, first)
    assert LOCAL_BUILT.search(fastapi_app.output), fastapi_app.output

    # A code-only change: new release, same requirements.
    (fastapi_app.project / "CHANGES.txt").write_text("v2: no dependency changes\n")
    second = commit_all(fastapi_app.project, "v2")
    output = deploy_ok(cli, host, fastapi_app.project)
    assert LOCAL_CACHE_HIT.search(output), output
    assert SERVER_CACHE_HIT in output, output
    assert "downloading wheels" not in output and "building local package" not in output, output
    assert not SERVER_INSTALLED.search(output), output
    # The server already has that venv, so the release does not even carry the wheels.
    assert "not shipped" in output, output
    with tarfile.open(fastapi_app.project / ".tako" / "build" / f"{second}.tar.gz") as tar:
        names = tar.getnames()
    assert "main.py" in names and not [n for n in names if n.startswith(".tako-wheels")], names

    # The new release serves from the venv the first deploy built; both releases link to it.
    assert check_serving(host, fastapi_app, second) == key
    app_dir = fastapi_app.app_dir
    for version in (first, second):
        assert remote(host, f"readlink {app_dir}/releases/{version}/.venv") == f"../../shared/venvs/{key}"
    assert remote(host, f"ls {app_dir}/shared/venvs").split() == [key]


def test_changed_dependencies_get_a_new_venv_and_unused_venvs_are_pruned(
    host: Host, cli: TakoCLI, fastapi_app: Deployed
) -> None:
    app_dir = fastapi_app.app_dir
    old_key = check_serving(host, fastapi_app, head(fastapi_app.project))
    old_releases = remote(host, f"ls {app_dir}/releases").split()

    # Any change to the requirements text makes a new key (a comment is enough, and downloads nothing new).
    reqs = fastapi_app.project / "requirements.txt"
    reqs.write_text(reqs.read_text() + "# touched\n")
    changed = commit_all(fastapi_app.project, "requirements changed")
    output = deploy_ok(cli, host, fastapi_app.project)
    assert LOCAL_BUILT.search(output) and SERVER_INSTALLED.search(output), output
    new_key = check_serving(host, fastapi_app, changed)
    assert new_key != old_key
    # The older releases keep their own venv (a rollback to them needs it).
    for version in old_releases:
        link = remote(host, f"readlink {app_dir}/releases/{version}/.venv")
        assert link == f"../../shared/venvs/{old_key}"
    assert sorted(remote(host, f"ls {app_dir}/shared/venvs").split()) == sorted([old_key, new_key])

    # Code-only deploys push the old releases out (4 are kept besides current); their venv goes with them.
    # With the local wheel cache gone (a new machine, a CI runner) nothing is downloaded or built either:
    # the server has the venv for the key.
    shutil.rmtree(cli.home / "cache" / "wheels")
    version = changed
    for _ in range(KEEP_RELEASES):
        (fastapi_app.project / "counter.txt").write_text(f"{version}\n")
        version = commit_all(fastapi_app.project, "code only")
        output = deploy_ok(cli, host, fastapi_app.project)
        assert SERVER_CACHE_HIT in output and "not shipped" in output, output
        assert "downloading wheels" not in output and "building local package" not in output, output
        releases = remote(host, f"ls {app_dir}/releases").split()
        assert len(releases) <= KEEP_RELEASES + 1, releases
        if not set(old_releases) & set(releases):
            break
    assert not set(old_releases) & set(releases), releases
    assert remote(host, f"ls {app_dir}/shared/venvs").split() == [new_key]
    check_serving(host, fastapi_app, version)


# A package whose only distribution is an sdist with a C extension: built here it gives a
# platform-specific wheel, which the server could not use, and no index has a wheel for it.
CEXT_NAME = "tako-e2e-cext"
CEXT_VERSION = "0.1.0"


def make_cext_sdist(directory: Path) -> Path:
    src = directory / f"tako_e2e_cext-{CEXT_VERSION}"
    src.mkdir(parents=True)
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "{CEXT_NAME}"\nversion = "{CEXT_VERSION}"\n'
    )
    (src / "setup.py").write_text(
        "from setuptools import Extension, setup\n"
        'setup(ext_modules=[Extension("tako_e2e_cext", ["tako_e2e_cext.c"])], py_modules=[])\n'
    )
    (src / "tako_e2e_cext.c").write_text(
        "#include <Python.h>\n"
        'static struct PyModuleDef m = {PyModuleDef_HEAD_INIT, "tako_e2e_cext", NULL, -1, NULL};\n'
        "PyMODINIT_FUNC PyInit_tako_e2e_cext(void) { return PyModule_Create(&m); }\n"
    )
    (src / "PKG-INFO").write_text(f"Metadata-Version: 2.1\nName: {CEXT_NAME}\nVersion: {CEXT_VERSION}\n")
    sdist = directory / f"tako_e2e_cext-{CEXT_VERSION}.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(src, arcname=src.name)
    shutil.rmtree(src)
    return sdist


def test_dependency_without_a_wheel_for_the_server_fails_before_upload(
    host: Host, cli: TakoCLI, flask_app: Deployed, tmp_path: Path
) -> None:
    good = head(flask_app.project)
    check_serving(host, flask_app, good)
    vendor = tmp_path / "vendor"
    vendor.mkdir()
    make_cext_sdist(vendor)
    reqs = flask_app.project / "requirements.txt"
    reqs.write_text(reqs.read_text() + f"--find-links {vendor}\n{CEXT_NAME}=={CEXT_VERSION}\n")
    bad = commit_all(flask_app.project, "needs a C extension")

    result = deploy(cli, host, flask_app.project)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"{CEXT_NAME}=={CEXT_VERSION}" in output, output
    assert re.search(r"no wheel for the server's Python \(CPython 3\.\d+ on manylinux_\S+_x86_64", output), (
        output
    )
    # Why: its source builds a platform-specific wheel here (or cannot be built at all without a compiler).
    assert "platform-specific" in output or "building it from source failed" in output, output
    # Before upload: no server step ran at all.
    assert f"[{SERVER}]" not in output, output
    assert bad not in remote(host, f"ls -a {flask_app.app_dir}/releases")
    assert remote(host, f"ls -a {flask_app.app_dir}").count(".upload-") == 0
    assert remote(host, f"test -e {flask_app.app_dir}/.deploy_lock || echo free") == "free"
    # The previous release keeps serving, from its venv.
    check_serving(host, flask_app, good)


def test_a_failed_dependency_install_is_reported_at_its_own_step(
    host: Host, cli: TakoCLI, fastapi_app: Deployed
) -> None:
    good = head(fastapi_app.project)
    check_serving(host, fastapi_app, good)
    reqs = fastapi_app.project / "requirements.txt"
    reqs.write_text(reqs.read_text() + "# a new venv key, so the server installs one\n")
    commit_all(fastapi_app.project, "requirements changed")
    # The server cannot make the new venv: its directory belongs to root for the length of this deploy.
    venvs = f"{fastapi_app.app_dir}/shared/venvs"
    owner = host.exec(["stat", "-c", "%u:%g", venvs], check=True).stdout.strip()
    host.exec(["chown", "root:root", venvs], check=True)
    try:
        result = deploy(cli, host, fastapi_app.project)
    finally:
        host.exec(["chown", owner, venvs], check=True)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"✗ {SERVER}: failed at python: installing Python dependencies failed" in output, output
    assert "failed at extract" not in output, output
    assert remote(host, f"test -e {fastapi_app.app_dir}/.deploy_lock || echo free") == "free"
    check_serving(host, fastapi_app, good)
