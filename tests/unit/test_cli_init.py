"""`tako` entry point (help, version, error printing) and `tako init`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from tests.support.cli import cli_context

from tako.cli import main as main_module
from tako.cli.context import CliContext
from tako.cli.init import render_template
from tako.cli.main import cli, main
from tako.cli.render import make_table, render_text
from tako.config.project import load_project


@pytest.fixture(autouse=True)
def _restore_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`tako -C DIR` changes directory like `git -C`; start each test in tmp_path and restore cwd after."""
    monkeypatch.chdir(tmp_path)


def run(tmp_path: Path, *args: str, obj: CliContext | None = None, input: str | None = None):  # type: ignore[no-untyped-def]
    runner = CliRunner()
    return runner.invoke(
        cli,
        list(args),
        obj=obj,
        input=input,
        env={"TAKO_HOME": str(tmp_path / "home")},
        catch_exceptions=False,
    )


def test_help_lists_every_command(tmp_path: Path) -> None:
    result = run(tmp_path, "--help")
    assert result.exit_code == 0
    commands = result.stdout.split("Commands:")[1].split()
    for name in ("init", "deploy", "status", "logs", "run", "servers", "secrets", "delete"):
        assert name in commands


def test_version(tmp_path: Path) -> None:
    from tako import __version__

    result = run(tmp_path, "--version")
    assert result.exit_code == 0
    assert result.stdout == f"tako {__version__}\n"


def test_main_prints_tako_errors_plainly_off_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TAKO_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["servers", "rm", "ghost"])
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "error: unknown server 'ghost'\n"
        "hint: no servers are configured; add one with `tako servers add HOST --name ghost`\n"
    )


def test_main_exit_codes(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("tako ")
    with pytest.raises(SystemExit) as info:
        main(["no-such-command"])
    assert info.value.code == 2
    assert "No such command" in capsys.readouterr().err

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(main_module.cli, "main", interrupted)
    with pytest.raises(SystemExit) as info:
        main(["status"])
    assert info.value.code == 130
    assert capsys.readouterr() == ("", "")


def test_error_shows_markup_like_text_verbatim(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('servers = [{ name = "web1", host = "h" }]\n')
    result = run(tmp_path, "servers", "add", "i", "--name", "web2", "--no-test")
    assert result.exit_code == 2
    assert "hint: rewrite each server as a [[servers]] table, then retry" in result.stderr


def test_verbose_shows_the_cause(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text("[[servers]\n")
    result = run(tmp_path, "-v", "servers", "ls")
    assert result.exit_code == 2
    assert "invalid TOML" in result.stderr
    assert "cause: TOMLDecodeError" in result.stderr


def test_render_helpers() -> None:
    table = make_table(["NAME", "HOST"], [("web1", "[x]"), ("web22", None)])
    assert render_text(table, width=40).splitlines() == ["NAME   HOST", "web1   [x]", "web22"]


# -- tako init ------------------------------------------------------------------------------------------


def test_template_loads_cleanly(tmp_path: Path) -> None:
    for start, comment in [
        (None, None),
        ('gunicorn "app:create()" -b 127.0.0.1:$PORT', "Detected Flask\nin app.py"),
    ]:
        text = render_template("shop", start, comment)
        (tmp_path / "tako.toml").write_text(text)
        project = load_project(tmp_path)
        assert project.name == "shop"
        assert project.envs["production"].routes == ("shop.example.com",)
        assert project.start is not None and "$PORT" in project.start
        if start:
            assert project.start == start
            assert "# Detected Flask\n# in app.py\n" in text
        for key in (
            "build",
            "health_check",
            "exclude",
            "routes",
            "instances",
            "idle_timeout",
            "[vars.production]",
        ):
            assert key in text


def test_template_uncommented_still_loads(tmp_path: Path) -> None:
    """Every commented example is valid when uncommented (except the alternatives that exclude each other)."""
    text = render_template("shop", None, None)
    lines = []
    for line in text.splitlines():
        stripped = line.removeprefix("# ")
        example = line.startswith("# ") and ("=" in stripped or stripped.startswith("["))
        skip = ("start =", "  start", "App name", "Tako sets")
        alternative = "routes =" in line or stripped.startswith(skip)
        if example and not alternative:
            line = stripped
        lines.append(line)
    (tmp_path / "tako.toml").write_text("\n".join(lines))
    project = load_project(tmp_path)
    assert project.build == "npm run build"
    assert project.envs["staging"].routes == ("staging.shop.example.com",)
    assert project.servers["web1"].instances == 2
    assert project.merged_vars("production")["LOG_LEVEL"] == "warning"


def test_init_writes_a_loadable_template(tmp_path: Path) -> None:
    app = tmp_path / "My_Shop"
    app.mkdir()
    result = run(tmp_path, "init", str(app))
    assert result.exit_code == 0, result.output
    assert "app 'my-shop'" in result.stdout
    project = load_project(app)
    assert project.name == "my-shop"
    assert project.envs["production"].routes == ("my-shop.example.com",)


def test_init_in_a_django_project_writes_the_release_line(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "django"
    project_dir = tmp_path / "site"
    shutil.copytree(example, project_dir, ignore=shutil.ignore_patterns("tako.toml", "__pycache__"))
    result = run(tmp_path, "init", str(project_dir))
    assert result.exit_code == 0, result.output
    project = load_project(project_dir)
    assert project.release == "python manage.py migrate"
    assert (
        project.start
        == "gunicorn mysite.wsgi:application --bind 127.0.0.1:$PORT --workers 2 --graceful-timeout 20"
    )


def test_template_without_a_release_command_shows_it_commented(tmp_path: Path) -> None:
    text = render_template("shop", None, None)
    assert '\n# release = "python manage.py migrate"\n' in text
    (tmp_path / "tako.toml").write_text(text)
    assert load_project(tmp_path).release == ""


def test_init_uses_metadata_name_and_option(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "billing_api"\n')
    assert run(tmp_path, "-C", str(tmp_path), "init").exit_code == 0
    assert load_project(tmp_path).name == "billing-api"
    result = run(tmp_path, "init", "--force", "--name", "billing", str(tmp_path))
    assert result.exit_code == 0
    assert load_project(tmp_path).name == "billing"
    result = run(tmp_path, "init", "--force", "--name", "Bad_Name", str(tmp_path))
    assert result.exit_code == 2
    assert "invalid app name 'Bad_Name'" in result.stderr


def test_init_creates_missing_directory(tmp_path: Path) -> None:
    result = run(tmp_path, "init", str(tmp_path / "new" / "app"))
    assert result.exit_code == 0
    assert load_project(tmp_path / "new" / "app").name == "app"


def test_init_refuses_to_overwrite_off_a_terminal(tmp_path: Path) -> None:
    (tmp_path / "tako.toml").write_text("# mine\n")
    result = run(tmp_path, "init", str(tmp_path))
    assert result.exit_code == 2
    assert "already exists" in result.stderr
    assert "--force" in result.stderr
    assert (tmp_path / "tako.toml").read_text() == "# mine\n"
    result = run(tmp_path, "init", "--force", str(tmp_path))
    assert result.exit_code == 0
    assert "[envs.production]" in (tmp_path / "tako.toml").read_text()


def test_init_asks_on_a_terminal(tmp_path: Path) -> None:
    (tmp_path / "tako.toml").write_text("# mine\n")
    result = run(tmp_path, "init", obj=cli_context(tmp_path), input="n\n")
    assert result.exit_code == 1
    assert "Overwrite it?" in result.stderr
    assert "not overwritten" in result.stderr
    assert (tmp_path / "tako.toml").read_text() == "# mine\n"
    result = run(tmp_path, "init", obj=cli_context(tmp_path), input="y\n")
    assert result.exit_code == 0
    assert "[envs.production]" in (tmp_path / "tako.toml").read_text()


def test_servers_ls_json_is_plain(tmp_path: Path) -> None:
    result = run(tmp_path, "servers", "ls", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == []


def test_unknown_command_suggests(tmp_path: Path) -> None:
    result = run(tmp_path, "servrs")
    assert result.exit_code == 2
    assert "Did you mean 'servers'?" in result.stderr


def test_dash_c_changes_directory(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    assert run(tmp_path, "-C", str(app), "init").exit_code == 0
    assert (app / "tako.toml").is_file()
    assert Path.cwd() == app.resolve()
