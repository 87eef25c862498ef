"""End to end: examples/django deploys as is to a testbed host with no route to a package index. Its release
command (`python manage.py migrate`) creates the SQLite database in TAKO_DATA_DIR before the switch, so the
first request already counts; the count survives a redeploy; `tako run` reaches Django's manage.py."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.e2e.conftest import TakoCLI, cli_with_server, user_ssh_env
from tests.support.projects import body_and_status, commit_all, curl, git
from tests.support.terminal import read_until, terminal_session
from tests.support.testbed import Host, Testbed

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SERVER = "dj1"
APP = "django-example"
ROUTE = "django.tako.test"
DATA_DIR = f"/opt/tako/apps/{APP}/shared/data"


@dataclass
class Deployed:
    host: Host
    cli: TakoCLI
    project: Path
    output: str  # of the first deploy

    def deploy(self) -> str:
        result = self.cli.run("deploy", "--yes", cwd=self.project, env=user_ssh_env(self.host), timeout=300)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"deploy exited {result.returncode}\n{output}"
        return output

    def visit(self) -> dict[str, object]:
        body, status = body_and_status(curl(self.host.address, ROUTE))
        assert status == 200, body
        data: dict[str, object] = json.loads(body)
        return data


def copy_example(root: Path) -> Path:
    """examples/django and sdk/ side by side (its requirements name `../../sdk`), mapped to the server."""
    ignore = shutil.ignore_patterns("__pycache__", ".venv", "*.egg-info", "build", "dist", "db.sqlite3")
    project = root / "examples" / "django"
    shutil.copytree(REPO / "examples" / "django", project, ignore=ignore)
    shutil.copytree(REPO / "sdk", root / "sdk", ignore=ignore)
    with (project / "tako.toml").open("a") as toml:
        toml.write(f'\n[servers.{SERVER}]\nenv = "production"\n')
    git(project, "init", "-q")
    commit_all(project, "initial")
    return project


@pytest.fixture(scope="module")
def deployed(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Deployed:
    host = testbed.up(SERVER)[0]
    cli = cli_with_server(host, tmp_path_factory, SERVER)
    d = Deployed(host, cli, copy_example(tmp_path_factory.mktemp("django")), "")
    d.output = d.deploy()
    return d


def test_the_release_command_migrated_before_the_first_request(deployed: Deployed) -> None:
    assert "Applying visits.0001_initial... OK" in deployed.output, deployed.output
    first = deployed.visit()
    assert first["message"] == "Hello from Django on Tako"
    assert deployed.visit()["visits"] == int(str(first["visits"])) + 1
    files = deployed.host.exec(f"ls {DATA_DIR}")
    assert "db.sqlite3" in files.stdout, files.stderr


def test_the_count_survives_a_redeploy(deployed: Deployed) -> None:
    page = deployed.visit()
    before = int(str(page["visits"]))
    (deployed.project / "VERSION").write_text("second\n")
    commit_all(deployed.project, "second release")
    output = deployed.deploy()
    assert "No migrations to apply." in output, output
    after = deployed.visit()
    assert after["visits"] == before + 1
    assert after["version"] != page["version"]  # served by the new release


def test_tako_run_reaches_manage_py(deployed: Deployed) -> None:
    result = deployed.cli.run(
        "run",
        "--",
        "python",
        "manage.py",
        "showmigrations",
        "visits",
        cwd=deployed.project,
        env=user_ssh_env(deployed.host),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["visits", "[X]", "0001_initial"]


def test_manage_py_shell_is_interactive_from_a_terminal(deployed: Deployed) -> None:
    argv = [deployed.cli.executable, "run", "--", "python", "manage.py", "shell", "--no-startup"]
    env = deployed.cli.env(user_ssh_env(deployed.host))
    with terminal_session(argv, env=env, cwd=deployed.project, rows=40, columns=120) as (proc, master):
        read_until(master, b">>> ")
        os.write(master, b"from visits.models import Counter; print('hits', Counter.objects.count())\r")
        read_until(master, b"hits 1")
        os.write(master, b"exit()\r")
        assert proc.wait(timeout=60) == 0
