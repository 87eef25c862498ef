"""tako.toml loading: each section of docs/tako-toml.md, defaults, merging, errors naming file, key, line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tako.config.inventory import Inventory, ServerEntry
from tako.config.project import (
    DEVELOPMENT,
    RESERVED_VARS,
    EnvConfig,
    ServerMapping,
    check_servers_known,
    detect_app_name,
    find_project_dir,
    is_valid_name,
    load_project,
    name_problem,
    sanitize_name,
)
from tako.errors import ConfigError, UsageError
from tako.protocol import MAX_ENV_VALUE_BYTES, MAX_IDLE_TIMEOUT, MAX_INSTANCES

FULL = """\
[tako]
name = "shop"
build = "npm run build"
start = "gunicorn -b 127.0.0.1:$PORT app:app"
health_check = "/healthz"
exclude = ["tests/*", "*.sqlite3"]
request_buffering = false
compression = false
https = false

[vars]
LOG_LEVEL = "info"
FEATURE = "on"

[vars.production]
LOG_LEVEL = "warning"

[vars.staging]
FEATURE = "off"

[envs.production]
routes = ["shop.example.com", "*.shop.example.com/api/*"]
LOG_LEVEL = "error"

[envs.staging]
route = "staging.shop.example.com"

[envs.development]

[servers]
instances = 1
idle_timeout = 120

[servers.web2]
env = "production"
instances = 3

[servers.web1]
env = "production"

[servers.stage]
env = "staging"
idle_timeout = 30
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "tako.toml").write_text(text)
    return tmp_path


def load_error(tmp_path: Path, text: str) -> ConfigError:
    write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_project(tmp_path)
    return info.value


MINIMAL = '[tako]\nname = "app"\n\n[envs.production]\nroute = "app.example.com"\n'


def test_full_config(tmp_path: Path) -> None:
    project = load_project(write(tmp_path, FULL))
    assert project.file == tmp_path / "tako.toml"
    assert project.root == tmp_path
    assert project.name == "shop"
    assert project.build == "npm run build"
    assert project.start == "gunicorn -b 127.0.0.1:$PORT app:app"
    assert project.health_check == "/healthz"
    assert project.exclude == ("tests/*", "*.sqlite3")
    assert project.request_buffering is False
    assert project.compression is False
    assert project.https is False
    assert dict(project.vars) == {"LOG_LEVEL": "info", "FEATURE": "on"}
    assert dict(project.env_vars["staging"]) == {"FEATURE": "off"}
    assert project.envs["production"] == EnvConfig(
        "production", ("shop.example.com", "*.shop.example.com/api/*"), {"LOG_LEVEL": "error"}
    )
    assert project.envs["staging"].routes == ("staging.shop.example.com",)
    assert project.envs["development"].routes == ()
    assert (project.instances, project.idle_timeout) == (1, 120)
    assert project.servers["web2"] == ServerMapping("web2", "production", 3, 120)
    assert project.servers["web1"] == ServerMapping("web1", "production", 1, 120)
    assert project.servers["stage"] == ServerMapping("stage", "staging", 1, 30)
    assert [s.name for s in project.servers_for_env("production")] == ["web1", "web2"]
    assert project.servers_for_env("nowhere") == []


def test_merged_vars_order(tmp_path: Path) -> None:
    project = load_project(write(tmp_path, FULL))
    assert project.merged_vars("production") == {"LOG_LEVEL": "error", "FEATURE": "on"}
    assert project.merged_vars("staging") == {"LOG_LEVEL": "info", "FEATURE": "off"}
    assert project.merged_vars("development") == {"LOG_LEVEL": "info", "FEATURE": "on"}


def test_defaults(tmp_path: Path) -> None:
    project = load_project(write(tmp_path, MINIMAL))
    assert project.build is None and project.start is None
    assert project.health_check == "/_tako/status"
    assert project.exclude == ()
    assert project.request_buffering is True
    assert project.compression is True
    assert project.https is True
    assert (project.instances, project.idle_timeout) == (0, 300)
    assert project.servers == {}
    assert project.merged_vars("production") == {}


def test_models_are_read_only(tmp_path: Path) -> None:
    project = load_project(write(tmp_path, FULL))
    with pytest.raises(TypeError):
        project.vars["X"] = "1"  # type: ignore[index]
    with pytest.raises(TypeError):
        project.envs["production"].vars["X"] = "1"  # type: ignore[index]
    with pytest.raises(AttributeError):
        project.name = "other"  # type: ignore[misc]


def test_env_lookup(tmp_path: Path) -> None:
    project = load_project(write(tmp_path, MINIMAL))
    assert project.env("production").routes == ("app.example.com",)
    # development exists implicitly, without routes.
    assert project.env(DEVELOPMENT) == EnvConfig(DEVELOPMENT, (), {})
    with pytest.raises(UsageError) as info:
        project.env("prodution")
    assert "unknown environment 'prodution'" in info.value.message
    assert info.value.hint == "did you mean --env production?"
    with pytest.raises(UsageError) as info:
        project.env("qa")
    assert info.value.hint is not None and "production" in info.value.hint


def test_missing_file_says_run_init(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_project(tmp_path)
    assert str(tmp_path / "tako.toml") in info.value.message
    assert info.value.hint is not None and "tako init" in info.value.hint


def test_toml_syntax_error_has_line(tmp_path: Path) -> None:
    error = load_error(tmp_path, '[tako]\nname = "app"\nstart = "unterminated\n')
    assert error.line == 3
    assert f"{tmp_path / 'tako.toml'}:3:" in error.message
    assert "invalid TOML" in error.message


@pytest.mark.parametrize(
    ("text", "key", "line", "fragment", "hint"),
    [
        ('[tako]\nnmae = "x"\n', "tako.nmae", 2, "unknown key", "did you mean 'name'?"),
        ('[env.production]\nroute = "a.com"\n', "env", 1, "unknown table", "did you mean 'envs'?"),
        ('[tako]\nname = "My App"\n', "tako.name", 2, "invalid app name", 'name = "my-app"'),
        ('[tako]\nname = "app-"\n', "tako.name", 2, "must not end with '-'", None),
        ('[tako]\nname = "1app"\n', "tako.name", 2, "must start with a lowercase letter", None),
        (f'[tako]\nname = "{"a" * 64}"\n', "tako.name", 2, "at most 63", None),
        ("[tako]\nbuild = 3\n", "tako.build", 2, "expected a string", None),
        ('[tako]\nhealth_check = "healthz"\n', "tako.health_check", 2, "starting with '/'", None),
        ('[tako]\nexclude = "tests"\n', "tako.exclude", 2, "expected a list of strings", None),
        ('[tako]\nrequest_buffering = "no"\n', "tako.request_buffering", 2, "true or false", "streams"),
        ('[tako]\ncompression = "gzip"\n', "tako.compression", 2, "true or false", "never compresses"),
        ('[tako]\nhttps = "off"\n', "tako.https", 2, "true or false", "plain HTTP"),
        ('[tako]\nexclude = ["ok", 1]\n', "tako.exclude[1]", 2, "expected a string", None),
        ("[envs.production]\n", "envs.production", 1, "has no route", "at least one route"),
        ("[envs.production]\nroutes = []\n", "envs.production.routes", 2, "has no route", None),
        ('[envs.production]\nroute = ""\n', "envs.production.route", 2, "must not be empty", None),
        (
            '[envs.production]\nroutes = ["a.com", " "]\n',
            "envs.production.routes[1]",
            2,
            "must not be empty",
            None,
        ),
        (
            '[envs.production]\nroute = "a.com"\nroutes = ["b.com"]\n',
            "envs.production.routes",
            3,
            "either route or routes",
            None,
        ),
        ('[envs.production]\nroute = ["a.com"]\n', "envs.production.route", 2, "expected a string", "routes"),
        ('[envs.production]\nroutes = "a.com"\n', "envs.production.routes", 2, "list of strings", "route ="),
        (
            '[envs.production]\nroute = "https://a.com"\n',
            "envs.production.route",
            2,
            "invalid route 'https://a.com'",
            "accepted forms",
        ),
        ('[envs.production]\nroute = "/api/*"\n', "envs.production.route", 2, "path-only", None),
        ('[envs.production]\nroute = "a.com:8080"\n', "envs.production.route", 2, "port", None),
        (
            '[envs.production]\nroutes = ["a.com", "A.com/*"]\n',
            "envs.production.routes[1]",
            2,
            "listed twice (both mean a.com/*)",
            None,
        ),
        ('[envs.production]\nrout = "a.com"\n', "envs.production.rout", 2, "unknown key", "'route'"),
        (
            '[envs.production]\nroute = "a.com"\nDEBUG = 1\n',
            "envs.production.DEBUG",
            3,
            "must be strings",
            'DEBUG = "1"',
        ),
        (
            '[envs.production]\nroute = "a.com"\n[envs.production.db]\nX = "1"\n',
            "envs.production.db",
            3,
            "unknown table",
            "[vars.production]",
        ),
        ('[envs.Prod]\nroute = "a.com"\n', "envs.Prod", 1, "invalid environment name", None),
        ("[vars]\nDEBUG = true\n", "vars.DEBUG", 2, "must be strings", 'DEBUG = "true"'),
        ('[vars]\n"MY-VAR" = "x"\n', "vars.MY-VAR", 2, "invalid variable name", None),
        ('[vars]\nENV = "x"\n', "vars.ENV", 2, "ENV is reserved", "TAKO_BUILD"),
        (
            MINIMAL + '[vars.production]\nTAKO_BUILD = "x"\n',
            "vars.production.TAKO_BUILD",
            7,
            "reserved",
            None,
        ),
        (MINIMAL + 'PORT = "1"\n', "envs.production.PORT", 6, "reserved", None),
        (
            MINIMAL + '[vars.prodution]\nA = "1"\n',
            "vars.prodution",
            6,
            "unknown environment",
            "[vars.production]",
        ),
        (MINIMAL + "[servers]\ninstances = -1\n", "servers.instances", 7, "non-negative integer", None),
        (MINIMAL + "[servers]\ninstances = 1.5\n", "servers.instances", 7, "non-negative integer", None),
        (MINIMAL + "[servers]\ninstances = true\n", "servers.instances", 7, "non-negative integer", None),
        (MINIMAL + "[servers]\nidle_timeout = -1\n", "servers.idle_timeout", 7, "non-negative number", None),
        (
            MINIMAL + "[servers]\ninstances = 1000000\n",
            "servers.instances",
            7,
            f"at most {MAX_INSTANCES}, got 1000000",
            "per app per server",
        ),
        (
            MINIMAL + '[servers.web1]\nenv = "production"\ninstances = 1000000\n',
            "servers.web1.instances",
            8,
            f"at most {MAX_INSTANCES}, got 1000000",
            None,
        ),
        (
            MINIMAL + "[servers]\nidle_timeout = 9223372036854775807\n",
            "servers.idle_timeout",
            7,
            f"at most {MAX_IDLE_TIMEOUT}",
            "instances",
        ),
        (MINIMAL + "[servers]\ninstance = 2\n", "servers.instance", 7, "unknown key", "'instances'"),
        (MINIMAL + "[servers.web1]\ninstances = 2\n", "servers.web1", 6, "missing required key env", None),
        (
            MINIMAL + '[servers.web1]\nenv = "production"\ninstances = "2"\n',
            "servers.web1.instances",
            8,
            "non-negative integer",
            None,
        ),
        (
            MINIMAL + '[servers.web1]\nenv = "production"\nidle = 5\n',
            "servers.web1.idle",
            8,
            "unknown key",
            "'idle_timeout'",
        ),
        (
            MINIMAL + '[servers.web1]\nenv = "prodution"\n',
            "servers.web1.env",
            7,
            "unknown environment 'prodution'",
            'env = "production"',
        ),
        (MINIMAL + '[servers.web1]\nenv = "development"\n', "servers.web1.env", 7, "development", None),
        (MINIMAL + '[servers.Web1]\nenv = "production"\n', "servers.Web1", 6, "invalid server name", None),
    ],
)
def test_errors_name_file_key_and_line(
    tmp_path: Path, text: str, key: str, line: int, fragment: str, hint: str | None
) -> None:
    error = load_error(tmp_path, text)
    assert error.file == str(tmp_path / "tako.toml")
    assert error.key == key
    assert error.line == line
    assert fragment in error.detail
    assert error.message.startswith(f"{tmp_path / 'tako.toml'}:{line}: {key}: ")
    if hint is not None:
        assert error.hint is not None and hint in error.hint
    assert error.exit_code == 2


@pytest.mark.parametrize(
    "table", ["[vars]", "[vars.production]", '[envs.production]\nroute = "a.example.com"']
)
def test_a_variable_over_the_value_limit_is_refused(tmp_path: Path, table: str) -> None:
    head = '[tako]\nname = "app"\n\n' + ("" if table.startswith("[envs") else MINIMAL.split("\n\n", 1)[1])
    text = f'{head}{table}\nBIG = "{"x" * (MAX_ENV_VALUE_BYTES + 1)}"\n'
    error = load_error(tmp_path, text)
    assert error.key is not None and error.key.endswith(".BIG")
    assert "at most 64 KiB" in error.detail and "x" * 100 not in error.message
    load_project(write(tmp_path, text.replace("x" * (MAX_ENV_VALUE_BYTES + 1), "x" * MAX_ENV_VALUE_BYTES)))


def test_idle_timeout_zero_means_never_stop_idle_instances(tmp_path: Path) -> None:
    # tako-server reads 0 as "idle stop off" (docs/server.md): the config must accept what the server means.
    project = load_project(write(tmp_path, MINIMAL + "[servers]\ninstances = 0\nidle_timeout = 0\n"))
    assert (project.instances, project.idle_timeout) == (0, 0)


def test_the_limits_themselves_are_accepted(tmp_path: Path) -> None:
    text = MINIMAL + f"[servers]\ninstances = {MAX_INSTANCES}\nidle_timeout = {MAX_IDLE_TIMEOUT}\n"
    project = load_project(write(tmp_path, text))
    assert (project.instances, project.idle_timeout) == (MAX_INSTANCES, MAX_IDLE_TIMEOUT)


def test_inline_tables_and_dotted_keys_are_accepted(tmp_path: Path) -> None:
    text = 'tako.name = "app"\nenvs = { production = { route = "a.com", X = "1" } }\n'
    project = load_project(write(tmp_path, text))
    assert project.envs["production"].vars == {"X": "1"}


def test_uppercase_route_like_variable_is_a_variable(tmp_path: Path) -> None:
    project = load_project(write(tmp_path, MINIMAL + 'ROUTE = "x"\n'))
    assert project.envs["production"].vars == {"ROUTE": "x"}


def test_reserved_names() -> None:
    assert {
        "ENV",
        "TAKO_BUILD",
        "PORT",
        "HOST",
        "TAKO_APP",
        "TAKO_INSTANCE",
        "TAKO_DATA_DIR",
    } == RESERVED_VARS


# -- names ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "app", "my-app", "a1", "a--b", "a" * 63])
def test_valid_names(name: str) -> None:
    assert is_valid_name(name)


@pytest.mark.parametrize("name", ["", "1a", "-a", "a-", "A", "my_app", "my.app", "a" * 64, "é"])
def test_invalid_names(name: str) -> None:
    assert name_problem(name) is not None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("My App", "my-app"),
        ("my_app.v2", "my-app-v2"),
        ("@org/Web-App", "web-app"),
        ("123", "app-123"),
        ("--x--", "x"),
        ("___", None),
        ("a" * 70 + "-b", "a" * 63),
    ],
)
def test_sanitize_name(text: str, expected: str | None) -> None:
    result = sanitize_name(text)
    assert result == expected
    if result is not None:
        assert is_valid_name(result)


def test_name_from_pyproject(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "Cool_Service"\n')
    (tmp_path / "package.json").write_text(json.dumps({"name": "other"}))
    assert detect_app_name(tmp_path) == "cool-service"
    project = load_project(write(tmp_path, '[envs.production]\nroute = "a.com"\n'))
    assert project.name == "cool-service"


def test_name_from_package_json_and_directory(tmp_path: Path) -> None:
    app = tmp_path / "My.Site"
    app.mkdir()
    assert detect_app_name(app) == "my-site"
    (app / "pyproject.toml").write_text("this is [ not toml")
    (app / "package.json").write_text(json.dumps({"name": "@acme/front-end"}))
    assert detect_app_name(app) == "front-end"


def test_underivable_name_is_an_error(tmp_path: Path) -> None:
    app = tmp_path / "___"
    app.mkdir()
    error = load_error(app, '[envs.production]\nroute = "a.com"\n')
    assert error.key == "tako"
    assert error.hint is not None and "name =" in error.hint


# -- project lookup and inventory check -----------------------------------------------------------------


def test_find_project_dir(tmp_path: Path) -> None:
    write(tmp_path, MINIMAL)
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert find_project_dir(deep) == tmp_path.resolve()
    assert find_project_dir(tmp_path) == tmp_path.resolve()
    other = tmp_path.parent / f"{tmp_path.name}-other"
    other.mkdir()
    assert find_project_dir(other) is None or find_project_dir(other) != tmp_path.resolve()


def test_check_servers_known(tmp_path: Path) -> None:
    project = load_project(write(tmp_path, MINIMAL + '\n[servers.web1]\nenv = "production"\n'))
    check_servers_known(project, Inventory((ServerEntry("web1", "10.0.0.1"),)))
    with pytest.raises(ConfigError) as info:
        check_servers_known(project, Inventory((ServerEntry("web2", "10.0.0.2"),)))
    error = info.value
    assert error.key == "servers.web1"
    assert error.line == 7
    assert error.hint is not None and "tako servers add HOST --name web1" in error.hint
    with pytest.raises(ConfigError):
        check_servers_known(project, Inventory())


def test_quoted_keys_are_named_and_located(tmp_path: Path) -> None:
    error = load_error(tmp_path, MINIMAL + '\n[vars]\nOK = "1"\n"my var" = "x"\n')
    assert error.key == 'vars."my var"'
    assert error.line == 9


def test_error_in_inline_table_points_at_its_line(tmp_path: Path) -> None:
    error = load_error(tmp_path, 'tako.name = "app"\n\nenvs.production = { route = "a.com:80" }\n')
    assert error.key == "envs.production.route"
    assert error.line == 3


def test_keep_releases_defaults_to_five_and_is_read_from_servers(tmp_path: Path) -> None:
    assert load_project(write(tmp_path, MINIMAL)).keep_releases == 5
    project = load_project(write(tmp_path, MINIMAL + "[servers]\nkeep_releases = 2\ninstances = 1\n"))
    assert (project.keep_releases, project.instances) == (2, 1)


@pytest.mark.parametrize("value", ["1", "0", '"3"', "true"])
def test_keep_releases_below_two_is_refused_with_the_reason(tmp_path: Path, value: str) -> None:
    error = load_error(tmp_path, MINIMAL + f"[servers]\nkeep_releases = {value}\n")
    assert "servers.keep_releases" in error.message and "at least 2" in error.message, error.message
    assert error.hint and "rollback" in error.hint


def test_release_command_and_fleet_settings_default_to_today(tmp_path: Path) -> None:
    project = load_project(write(tmp_path, MINIMAL))
    assert (project.release, project.release_timeout) == ("", 600)
    assert (project.fleet.strategy, project.fleet.batch, project.fleet.atomic) == ("parallel", 1, False)


def test_release_command_and_fleet_settings_are_read(tmp_path: Path) -> None:
    text = MINIMAL.replace("[tako]\n", '[tako]\nrelease = "python manage.py migrate"\nrelease_timeout = 30\n')
    text += '[deploy]\nstrategy = "rolling"\nbatch = 2\natomic = true\n'
    project = load_project(write(tmp_path, text))
    assert (project.release, project.release_timeout) == ("python manage.py migrate", 30)
    assert (project.fleet.strategy, project.fleet.batch, project.fleet.atomic) == ("rolling", 2, True)


@pytest.mark.parametrize(
    ("extra", "key", "says"),
    [
        ('[deploy]\nstrategy = "blue-green"\n', "deploy.strategy", "expected one of 'parallel', 'rolling'"),
        ("[deploy]\nbatch = 2\n", "deploy.batch", "batch only applies to rolling deploys"),
        ('[deploy]\nstrategy = "rolling"\nbatch = 0\n', "deploy.batch", "expected a positive integer"),
        ('[deploy]\natomic = "yes"\n', "deploy.atomic", "expected true or false"),
        ("[deploy]\nbatches = 2\n", "deploy.batches", "unknown key"),
    ],
)
def test_bad_fleet_settings_name_the_key(tmp_path: Path, extra: str, key: str, says: str) -> None:
    error = load_error(tmp_path, MINIMAL + extra)
    assert error.key == key and says in error.message, error


def test_release_timeout_must_be_positive(tmp_path: Path) -> None:
    error = load_error(tmp_path, MINIMAL.replace("[tako]\n", "[tako]\nrelease_timeout = 0\n"))
    assert error.key == "tako.release_timeout" and "positive number of seconds" in error.message
