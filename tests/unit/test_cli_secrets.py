"""`tako secrets` commands through click's CliRunner, with TAKO_HOME and the project in tmp_path."""

from __future__ import annotations

import base64
import os
import stat
import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from tests.support.cli import use_tako_home

from tako.cli.context import CliContext
from tako.cli.secrets import secrets
from tako.errors import TakoError
from tako.protocol import MAX_ENV_VALUE_BYTES
from tako.secrets import crypto, key_path, keys, load_env_secrets, secret_names, store_path

VALUE = 'p@ss "w0rd" $X `y` \\z = ok'


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return use_tako_home(tmp_path, monkeypatch)


@pytest.fixture
def project(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "tako.toml").write_text(
        '[tako]\nstart = "python app.py"\n\n'
        '[envs.production]\nroute = "app.example.com"\n\n'
        '[envs.staging]\nroute = "staging.example.com"\n'
    )
    monkeypatch.chdir(project)
    return project


def run(args: list[str], input: str | bytes | None = None, *, terminal: bool = False) -> Result:
    """Invoke `tako secrets ARGS`; `terminal` makes the command believe stdin is a terminal."""
    cli = CliContext.create()
    cli.stdin_isatty = terminal
    return CliRunner().invoke(secrets, args, input=input, obj=cli)


def error_of(result: Result) -> TakoError:
    assert isinstance(result.exception, TakoError), result.output
    return result.exception


def test_set_from_stdin_reads_one_line(project: Path) -> None:
    result = run(["set", "API_KEY"], input=VALUE + "\nsecond line ignored\n")
    assert result.exit_code == 0, result.output
    assert "Set API_KEY for production" in result.output
    assert "Created the key for production" in result.output
    assert VALUE not in result.output
    assert load_env_secrets(project, "production")["API_KEY"].reveal() == VALUE
    result = run(["set", "--env", "staging", "API_KEY"], input="other")  # no trailing newline
    assert result.exit_code == 0, result.output
    assert load_env_secrets(project, "staging")["API_KEY"].reveal() == "other"
    result = run(["set", "API_KEY"], input="new\n")
    assert "Updated API_KEY for production" in result.output


def test_set_keeps_trailing_spaces_and_carriage_return(project: Path) -> None:
    assert run(["set", "A"], input=b"  padded \r\n").exit_code == 0
    assert load_env_secrets(project, "production")["A"].reveal() == "  padded \r"


def test_set_empty_value_refused(project: Path) -> None:
    for given in ("\n", ""):
        result = run(["set", "API_KEY"], input=given)
        err = error_of(result)
        assert "empty" in err.message and err.exit_code == 2
    assert not store_path(project).exists()
    assert not key_path("production").exists()


def test_set_invalid_names(project: Path) -> None:
    assert error_of(run(["set", "api_key"], input="v\n")).exit_code == 2
    assert error_of(run(["set", "--env", "Prod", "API_KEY"], input="v\n")).exit_code == 2
    assert not store_path(project).exists()


@pytest.mark.parametrize("how", ["line", "stdin", "file"])
def test_set_refuses_a_value_over_the_limit(project: Path, tmp_path: Path, how: str) -> None:
    """An app gets its values in its environment, where Linux refuses any one variable over 128 KiB:
    a larger value used to be stored, then fail every deploy with "Argument list too long"."""
    big = "x" * (1024 * 1024)
    source = tmp_path / "big.pem"
    source.write_text(big)
    args = {"line": ["set", "API_KEY"], "stdin": ["set", "--from-file", "-", "API_KEY"]}.get(
        how, ["set", "--from-file", str(source), "API_KEY"]
    )
    err = error_of(run(args, input=big + "\n" if how != "file" else None))
    assert err.exit_code == 2
    assert f"at most {MAX_ENV_VALUE_BYTES // 1024} KiB" in err.message and "API_KEY" in err.message
    assert err.hint is not None and "file" in err.hint
    assert big not in str(err)
    assert not store_path(project).exists()


def test_set_accepts_a_value_at_the_limit(project: Path) -> None:
    value = "é" * (MAX_ENV_VALUE_BYTES // 2)  # two bytes each in UTF-8: the limit counts bytes
    assert run(["set", "--from-file", "-", "BIG"], input=value).exit_code == 0
    assert load_env_secrets(project, "production")["BIG"].reveal() == value
    assert error_of(run(["set", "--from-file", "-", "BIG"], input=value + "x")).exit_code == 2


def test_set_refuses_an_overlong_name_without_echoing_it(project: Path) -> None:
    name = "A" * 5000
    err = error_of(run(["set", name], input="v\n"))
    assert err.exit_code == 2 and "at most 128 characters" in err.message
    assert name not in err.message
    assert not store_path(project).exists()
    assert run(["set", "A" * 128], input="v\n").exit_code == 0
    err = error_of(run(["rm", name, "--yes"]))
    assert err.exit_code == 2 and "at most 128 characters" in err.message and name not in str(err)


def test_set_from_file_verbatim_with_newlines(project: Path, tmp_path: Path) -> None:
    pem = "-----BEGIN KEY-----\nabc\n-----END KEY-----\n"
    source = tmp_path / "value.pem"
    source.write_text(pem)
    assert run(["set", "--from-file", str(source), "TLS_KEY"]).exit_code == 0
    assert run(["set", "--from-file", "-", "MULTI"], input="a\nb\n").exit_code == 0
    got = load_env_secrets(project, "production")
    assert got["TLS_KEY"].reveal() == pem
    assert got["MULTI"].reveal() == "a\nb\n"


def test_set_masked_prompt_on_terminal(project: Path) -> None:
    result = run(["set", "API_KEY"], input="s3cret\ns3cret\n", terminal=True)
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output  # hidden input is not echoed
    assert load_env_secrets(project, "production")["API_KEY"].reveal() == "s3cret"


def test_set_outside_a_project(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    err = error_of(run(["set", "API_KEY"], input="v\n"))
    assert "no tako.toml" in err.message


def test_set_from_a_subdirectory_uses_the_project(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = project / "src" / "pkg"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    assert run(["set", "API_KEY"], input="v\n").exit_code == 0
    assert store_path(project).exists()


def _seed(project: Path) -> None:
    for env, name in [("production", "API_KEY"), ("staging", "API_KEY"), ("production", "DB_URL")]:
        assert run(["set", "--env", env, name], input="v\n").exit_code == 0


def test_rm_without_yes_off_a_terminal_fails_and_removes_nothing(project: Path) -> None:
    _seed(project)
    before = store_path(project).read_bytes()
    result = run(["rm", "API_KEY"])
    err = error_of(result)
    assert err.exit_code == 2
    assert "confirmation" in err.message and "--yes" in str(err)
    assert store_path(project).read_bytes() == before


def test_rm_with_yes_from_every_env_or_one(project: Path) -> None:
    _seed(project)
    result = run(["rm", "--env", "staging", "API_KEY", "--yes"])
    assert result.exit_code == 0, result.output
    assert "until `tako secrets sync --env staging`." in result.output
    assert secret_names(project) == {"production": {"API_KEY", "DB_URL"}}
    result = run(["rm", "API_KEY", "--yes"])
    assert result.exit_code == 0
    assert "until `tako secrets sync --env production`." in result.output  # the env it was removed from
    assert secret_names(project) == {"production": {"DB_URL"}}
    err = error_of(run(["rm", "API_KEY", "--yes"]))
    assert "not set in any env" in err.message


def test_rm_confirms_on_a_terminal(project: Path) -> None:
    _seed(project)
    result = run(["rm", "API_KEY"], input="n\n", terminal=True)
    assert result.exit_code == 1
    assert "Remove secret API_KEY from production, staging?" in result.output
    assert "Secret API_KEY not removed." in result.output and "Aborted" not in result.output
    assert secret_names(project)["staging"] == {"API_KEY"}
    result = run(["rm", "API_KEY"], input="y\n", terminal=True)
    assert result.exit_code == 0, result.output
    assert secret_names(project) == {"production": {"DB_URL"}}


def test_ls_shows_presence_and_warns(project: Path) -> None:
    _seed(project)
    result = run(["ls"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line.strip()}
    assert rows["NAME"] == ["production", "staging"]
    assert rows["API_KEY"] == ["✓", "✓"]
    assert rows["DB_URL"] == ["✓", "—"]
    assert "staging: DB_URL missing" in result.stderr
    assert "tako secrets set --env staging DB_URL" in result.stderr
    assert "v\n" not in result.output


def test_ls_includes_declared_envs_without_secrets(project: Path) -> None:
    assert run(["set", "API_KEY"], input="v\n").exit_code == 0
    result = run(["ls"])
    assert "staging: API_KEY missing" in result.stderr
    header = result.stdout.splitlines()[0].split()
    assert header == ["NAME", "production", "staging"]


def test_ls_empty(project: Path) -> None:
    result = run(["ls"])
    assert result.exit_code == 0
    assert "No secrets yet" in result.output


def test_key_export_stdout_and_import_round_trip(project: Path, home: Path) -> None:
    _seed(project)
    result = run(["key", "export", "--stdout"])
    assert result.exit_code == 0, result.output
    exported = result.stdout.strip()
    assert base64.b64decode(exported) == keys.read_key("production")
    key_path("production").unlink()
    result = run(["key", "import"], input=exported + "\n")
    assert result.exit_code == 0, result.output
    assert "decrypts 2 secret(s)" in result.output
    assert stat.S_IMODE(key_path("production").stat().st_mode) == 0o600
    assert load_env_secrets(project, "production")["API_KEY"].reveal() == "v"


def test_key_export_without_clipboard_requires_stdout(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _seed(project)
    empty = tmp_path / "emptybin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    err = error_of(run(["key", "export"]))
    assert err.exit_code == 2
    assert "no clipboard" in err.message and "--stdout" in str(err)


def test_key_export_to_clipboard(project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Stand-in for xclip (no X server here): a script that records its stdin and argv.
    _seed(project)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    got = tmp_path / "clipboard"
    fake = bindir / "xclip"
    fake.write_text(f'#!/bin/sh\necho "$@" > {got}.args\ncat > {got}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("DISPLAY", ":99")
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    result = run(["key", "export", "--env", "staging"])
    assert result.exit_code == 0, result.output
    assert base64.b64decode(got.read_text().strip()) == keys.read_key("staging")
    assert "Copied the key for staging" in result.output
    key_text = got.read_text().strip()
    assert key_text not in result.output
    assert key_text not in Path(f"{got}.args").read_text()  # on stdin, never in argv


def test_key_export_missing_key(project: Path) -> None:
    err = error_of(run(["key", "export", "--stdout"]))
    assert "no key for env production" in err.message


@pytest.mark.parametrize(
    "given", ["", "nope!\n", base64.b64encode(b"k" * 16).decode() + "\n", "é\n".encode()]
)
def test_key_import_validation(project: Path, given: str | bytes) -> None:
    err = error_of(run(["key", "import"], input=given))
    assert "not a valid key" in err.message and err.exit_code == 2
    assert not key_path("production").exists()


def test_key_import_refuses_key_that_does_not_decrypt(project: Path) -> None:
    _seed(project)
    good = keys.read_key("production")
    other = base64.b64encode(crypto.generate_key()).decode()
    err = error_of(run(["key", "import"], input=other + "\n"))
    assert "does not decrypt the secrets of env production" in err.message
    assert keys.read_key("production") == good
    assert other not in str(err)


def test_key_import_masked_prompt(project: Path) -> None:
    key = base64.b64encode(crypto.generate_key()).decode()
    result = run(["key", "import", "--env", "staging"], input=key + "\n", terminal=True)
    assert result.exit_code == 0, result.output
    assert key not in result.output
    assert keys.encode_key(keys.read_key("staging")) == key


def test_sync_calls_run_sync(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in for the SSH sync core (tested with the deploy code): only the wiring is tested here.
    sync = types.ModuleType("tako.deploy.sync")
    calls: list[tuple[Path, str | None]] = []

    def fake_run_sync(project_dir: Path, env: str | None, console: object) -> int:
        calls.append((project_dir, env))
        return 1

    sync.run_sync = fake_run_sync  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tako.deploy.sync", sync)
    result = run(["sync", "--env", "staging"])
    assert result.exit_code == 1
    assert calls == [(project, "staging")]


def test_values_never_in_output(project: Path) -> None:
    secret = "zz-UNIQUE-SECRET-VALUE-zz"
    outputs = [run(["set", "API_KEY"], input=secret + "\n").output]
    outputs.append(run(["ls"]).output)
    keys.write_key("production", crypto.generate_key())
    result = run(["set", "OTHER"], input=secret + "\n")
    outputs.append(result.output + str(result.exception))
    outputs.append(run(["rm", "API_KEY", "--yes"]).output)
    assert all(secret not in text for text in outputs)


def test_sync_without_the_sync_core_is_a_clear_error(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tako.deploy.sync", None)
    err = error_of(run(["sync"]))
    assert "not available" in err.message


@pytest.mark.parametrize("args", [["set", "API_KEY", "zz-VALUE-zz"], ["set", "API_KEY=zz-VALUE-zz"]])
def test_value_on_the_command_line_is_refused_without_echo(project: Path, args: list[str]) -> None:
    result = run(args, input="x\n")
    err = error_of(result)
    assert err.exit_code == 2 and "never taken from the command line" in err.message
    assert "zz-VALUE-zz" not in result.output + str(err)
    assert not store_path(project).exists()


def run_tako(args: list[str], input: str | None = None) -> Result:
    """Through the real `tako` group, which prints TakoErrors and maps them to exit codes."""
    from tako.cli.main import cli

    return CliRunner().invoke(cli, args, input=input, obj=CliContext.create())


def test_through_main_rm_without_yes_exits_2_and_removes_nothing(project: Path) -> None:
    _seed(project)
    before = store_path(project).read_bytes()
    result = run_tako(["secrets", "rm", "API_KEY"])
    assert result.exit_code == 2
    assert "error: not removing API_KEY from production, staging" in result.stderr
    assert "--yes" in result.stderr
    assert store_path(project).read_bytes() == before


def test_through_main_with_project_option(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = run_tako(["-C", str(project), "secrets", "set", "API_KEY"], input="zz-VAL-zz\n")
    assert result.exit_code == 0, result.output
    assert secret_names(project) == {"production": {"API_KEY"}}
    keys.write_key("production", crypto.generate_key())
    result = run_tako(["-C", str(project), "secrets", "ls"])
    assert result.exit_code == 0
    result = run_tako(["-C", str(project), "secrets", "key", "export", "--env", "nope", "--stdout"])
    assert result.exit_code == 1 and "error: no key for env nope" in result.stderr
    result = run_tako(["-v", "-C", str(project), "secrets", "set", "OTHER"], input="zz-VAL-zz\n")
    assert result.exit_code == 1
    assert "does not decrypt the existing secrets of env production" in result.stderr
    assert "zz-VAL-zz" not in result.output


def test_through_main_sync_exit_code(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sync = types.ModuleType("tako.deploy.sync")
    sync.run_sync = lambda project_dir, env, console: 1  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tako.deploy.sync", sync)
    assert run_tako(["secrets", "sync"]).exit_code == 1
