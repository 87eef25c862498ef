"""The environment a deploy or `tako secrets sync` delivers (the release `.env`): merged from tako.toml and
the secrets, and held to what an app's process can be given."""

from __future__ import annotations

from pathlib import Path

import pytest

from tako.config.project import load_project
from tako.deploy.prepare import env_values
from tako.errors import DeployError, SecretsError
from tako.protocol import MAX_ENV_BYTES, MAX_ENV_VALUE_BYTES
from tako.secrets import Secret, SecretStore, keys, set_secret


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TAKO_HOME", str(tmp_path / "takohome"))
    project = tmp_path / "proj"
    project.mkdir()
    (project / "tako.toml").write_text(
        '[tako]\nname = "app"\n\n[vars]\nPLAIN = "p"\n\n[envs.production]\nroute = "app.example.com"\n'
    )
    return project


def test_secrets_and_vars_are_merged(project: Path) -> None:
    set_secret(project, "production", "API_KEY", Secret("k"))
    values = env_values(load_project(project), "production", "v1")
    assert values == {"PLAIN": "p", "API_KEY": "k", "ENV": "production", "TAKO_BUILD": "v1"}


def test_an_environment_over_the_total_limit_names_the_largest_values(project: Path) -> None:
    """Each value within its own limit, but together more than an app's process can be given."""
    value = "x" * MAX_ENV_VALUE_BYTES
    count = MAX_ENV_BYTES // MAX_ENV_VALUE_BYTES + 1
    for i in range(count):
        set_secret(project, "production", f"CERT_{i:02d}", Secret(value))
    with pytest.raises(DeployError) as info:
        env_values(load_project(project), "production", "v1")
    message = str(info.value)
    assert "production" in message and f"at most {MAX_ENV_BYTES // 1024 // 1024} MiB" in message
    assert "CERT_00" in message and "x" * 100 not in message
    assert info.value.hint is not None and "file" in info.value.hint


def test_an_oversized_stored_secret_stops_the_deploy_naming_it(project: Path) -> None:
    set_secret(project, "production", "API_KEY", Secret("k"))
    store = SecretStore.load(project)
    store.put("production", "BUNDLE", Secret("y" * (1024 * 1024)), keys.read_key("production"))
    store.save()
    with pytest.raises(SecretsError) as info:
        env_values(load_project(project), "production", "v1")
    assert "BUNDLE" in str(info.value) and "production" in str(info.value)
    assert "Argument list too long" not in str(info.value)
