"""The systemd unit install-server writes (`install-server --print-unit`), checked by systemd's own
`systemd-analyze verify` (systemd does not run here, as PID 1, to start it) and for what crash recovery
needs of it: restart always and soon, never kill the instances, let the successor of a hand-over become
the main process, and keep every listening socket tako-server may store."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tako.server.fd_store import MAX_SOCKETS
from tako.server.handover import MAX_WORKER_PAIRS

REPO = Path(__file__).resolve().parents[2]
INSTALL_SERVER = REPO / "scripts" / "install-server"
EXEC = "/opt/tako-server/venv/bin/tako-server"


def unit_text() -> str:
    done = subprocess.run([str(INSTALL_SERVER), "--print-unit"], capture_output=True, text=True, check=True)
    return done.stdout


def service_settings(text: str) -> dict[str, str]:
    """The [Service] section's key=value lines (comments and other sections left out)."""
    settings: dict[str, str] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings[key] = value
    return settings


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_unit_without_a_warning(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: a stand-in for the installed tako-server.
    program = tmp_path / "tako-server"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    unit = tmp_path / "tako-server.service"
    unit.write_text(unit_text().replace(f"ExecStart={EXEC} ", f"ExecStart={program} "))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_the_unit_restarts_soon_keeps_the_instances_and_the_listening_sockets() -> None:
    settings = service_settings(unit_text())
    assert settings["ExecStart"] == f"{EXEC} --config /opt/tako/server-config.toml"
    assert settings["Restart"] == "always"
    assert settings["RestartSec"] == "100ms"
    assert settings["KillMode"] == "process"  # the instances outlive tako-server
    assert settings["NotifyAccess"] == "main"  # a hand-over's successor names itself; FDSTORE from it
    # Every socket tako-server stores: HTTP and HTTPS of the main process and of each worker.
    assert int(settings["FileDescriptorStoreMax"]) >= 2 + 2 * MAX_WORKER_PAIRS
    assert MAX_SOCKETS >= 2 + 2 * MAX_WORKER_PAIRS
