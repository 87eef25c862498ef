"""`[server] workers`: "auto" (the default) is one data-plane process per usable CPU; a whole number is
taken as it is; anything else is refused with the file, the line and the key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tako.config.server import load_server_config
from tako.errors import ConfigError

CPUS = len(os.sched_getaffinity(0))


def _load(tmp_path: Path, server_table: str) -> int:
    path = tmp_path / "server-config.toml"
    path.write_text(f'[server]\nlisten = "0.0.0.0"\n{server_table}\n')
    return load_server_config(path).server.workers


def test_workers_default_to_one_per_usable_cpu(tmp_path: Path) -> None:
    assert _load(tmp_path, "") == CPUS
    assert load_server_config(tmp_path / "missing.toml").server.workers == CPUS


def test_workers_auto_is_one_per_usable_cpu(tmp_path: Path) -> None:
    assert _load(tmp_path, 'workers = "auto"') == CPUS


def test_workers_take_a_whole_number(tmp_path: Path) -> None:
    assert _load(tmp_path, "workers = 1") == 1
    assert _load(tmp_path, "workers = 3") == 3


@pytest.mark.parametrize("value", ["0", "-2", '"four"', "true", "1.5", '"Auto"'])
def test_bad_workers_name_file_line_and_key(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, f"workers = {value}")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'server-config.toml'}:3: server.workers: ")
    assert 'expected "auto" or a whole number of processes (1 or more)' in message
    assert caught.value.hint is not None and 'workers = "auto"' in caught.value.hint
