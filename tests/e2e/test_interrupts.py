"""End to end: a deploy interrupted at any moment leaves the server consistent.

Ctrl-C (SIGINT to the CLI) before tako-server was asked to switch undoes the deploy: no lock, no staged
release, the previous release serving. Ctrl-C while tako-server switches lets that server finish. A CLI
killed outright mid-rollout leaves tako-server to finish it and point `current` at the release it runs, so a
later `secrets sync` rewrites the `.env` of the release that actually serves.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from tests.e2e.conftest import TakoCLI, user_ssh_env
from tests.support.projects import body_and_status, commit_all, curl, git, make_project, wait_for
from tests.support.testbed import Host

pytestmark = pytest.mark.e2e

SERVER = "int1"
APP = "intr"
ROUTE = "intr.tako.test"
APP_DIR = f"/opt/tako/apps/{APP}"


@pytest.fixture(scope="module")
def project(cli: TakoCLI, host: Host, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    servers = {SERVER: "production"}
    root = make_project(tmp_path_factory.mktemp("intr"), name=APP, route=ROUTE, servers=servers)
    cli.ok("deploy", "--yes", cwd=root, env=user_ssh_env(host), timeout=120)
    yield root
    cli.run("delete", "--yes", cwd=root, env=user_ssh_env(host))


def remote(host: Host, command: str) -> str:
    result = host.exec(command, user="tako")
    assert result.returncode == 0, f"{command}: {result.stderr}"
    return result.stdout.strip()


def serving(host: Host) -> str:
    body, status = body_and_status(curl(host.address, ROUTE))
    assert status == 200, body
    return body


def live_link(host: Host) -> str:
    return remote(host, f"readlink {APP_DIR}/current")


def assert_consistent(host: Host, version: str) -> None:
    """No lock, nothing staged or half-uploaded, `current` and tako-server both on `version`."""
    assert remote(host, f"test -e {APP_DIR}/.deploy_lock || echo free") == "free"
    leftovers = remote(host, f"ls -A {APP_DIR} {APP_DIR}/releases")
    assert ".upload-" not in leftovers and ".partial-" not in leftovers, leftovers
    assert live_link(host) == f"releases/{version}"
    assert f"build {version}" in serving(host)


class Deploying:
    """`tako deploy` as a subprocess whose output lines (progress on stdout, notices on stderr) are read as
    they come."""

    def __init__(self, cli: TakoCLI, host: Host, project: Path) -> None:
        self.proc = subprocess.Popen(
            [cli.executable, "deploy", "--yes"],
            cwd=project,
            env=cli.env(user_ssh_env(host)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._seen = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(stream,), daemon=True)
            for stream in (self.proc.stdout, self.proc.stderr)
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            with self._seen:
                self.lines.append(line)
                self._seen.notify_all()

    def wait_for_line(self, text: str, timeout: float = 60) -> None:
        with self._seen:
            found = self._seen.wait_for(
                lambda: any(text in line for line in self.lines) or self.proc.poll() is not None, timeout
            )
        assert found and any(text in line for line in self.lines), "".join(self.lines)

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        for reader in self._readers:
            reader.join(timeout=10)
        return self.proc.returncode, "".join(self.lines)


def slow_boot_change(project: Path, note: str) -> str:
    """Commit a change whose instances take two seconds to boot (a window to act in while tako-server
    switches); returns the new version."""
    toml = project / "tako.toml"
    text = toml.read_text()
    if "sleep 2;" not in text:
        toml.write_text(text.replace('start = "python3 app.py"', 'start = "sleep 2; python3 app.py"'))
    (project / "CHANGES.txt").write_text(f"{note}\n")
    return commit_all(project, note)


def deploy_until_tako_server_switches(cli: TakoCLI, host: Host, project: Path, version: str) -> Deploying:
    """A deploy of `version`, returned once tako-server has the request (it logs the rollout's start)."""
    run = Deploying(cli, host, project)
    run.wait_for_line(f"[{SERVER}] starting instances")
    wait_for(
        lambda: f"rolling update to {version}:" in remote(host, f"cat {APP_DIR}/shared/logs/app.log"),
        timeout=30,
        what="tako-server to start the rollout",
    )
    return run


# The steps before tako-server is asked to switch, in order, and the progress line each one starts with.
PRE_SWITCH_STEPS = {
    "connect": "connecting to",
    "lock": "taking the deploy lock",
    "disk": "checking free disk space",
    "server": "checking tako-server",
    "routes": "checking route conflicts",
    "dirs": "creating release directories",
    "upload": "uploading",
    "extract": "unpacking the release",
}


def big_change(project: Path) -> str:
    """An incompressible 24 MB file, committed once: upload and extract last long enough to be hit."""
    blob = project / "blob.bin"
    if not blob.exists():
        blob.write_bytes(os.urandom(24 * 1024 * 1024))
        commit_all(project, "a big file")
    return git(project, "rev-parse", "--short=7", "HEAD")


@pytest.mark.parametrize("step", list(PRE_SWITCH_STEPS))
def test_ctrl_c_before_the_switch_undoes_the_deploy(
    step: str, cli: TakoCLI, host: Host, project: Path
) -> None:
    before = live_link(host).removeprefix("releases/")
    new = big_change(project)
    run = Deploying(cli, host, project)
    run.wait_for_line(f"[{SERVER}] {PRE_SWITCH_STEPS[step]}")
    run.proc.send_signal(signal.SIGINT)
    code, out = run.finish()
    assert code == 130, out
    assert "Interrupted:" in out, out
    # Stopped in that step, or (a short one) in one of the next before the switch.
    failed = re.search(
        rf"✗ {SERVER}: failed at (\w+): interrupted before tako-server was asked to switch", out
    )
    steps = list(PRE_SWITCH_STEPS)
    assert failed and failed.group(1) in steps[steps.index(step) :], out
    assert_consistent(host, before)
    assert new not in remote(host, f"ls -A {APP_DIR}/releases")
    (server,) = json.loads(cli.ok("status", "--json", env=user_ssh_env(host)).stdout)
    assert [a["version"] for a in server["apps"] if a["app"] == APP] == [before]


def test_the_next_deploy_after_an_interrupt_goes_through(cli: TakoCLI, host: Host, project: Path) -> None:
    new = big_change(project)
    cli.ok("deploy", "--yes", cwd=project, env=user_ssh_env(host), timeout=180)
    assert_consistent(host, new)


def test_an_interrupted_redeploy_of_the_live_version_keeps_it(
    cli: TakoCLI, host: Host, project: Path
) -> None:
    live = live_link(host).removeprefix("releases/")
    assert big_change(project) == live  # nothing changed: the same version once more
    run = Deploying(cli, host, project)
    run.wait_for_line(f"[{SERVER}] uploading")
    run.proc.send_signal(signal.SIGINT)
    code, out = run.finish()
    assert code == 130, out
    assert remote(host, f"test -f {APP_DIR}/releases/{live}/app.json && echo kept") == "kept"
    assert_consistent(host, live)


def test_ctrl_c_while_tako_server_switches_lets_it_finish(cli: TakoCLI, host: Host, project: Path) -> None:
    new = slow_boot_change(project, "boots in two seconds")
    run = deploy_until_tako_server_switches(cli, host, project, new)
    run.proc.send_signal(signal.SIGINT)
    code, out = run.finish()
    assert code == 0, out
    assert "Interrupted:" in out and f"✓ {SERVER}: deployed {APP} {new}" in out, out
    assert_consistent(host, new)


def test_a_killed_cli_leaves_tako_server_to_finish_and_sync_writes_the_live_release(
    cli: TakoCLI, host: Host, project: Path
) -> None:
    new = slow_boot_change(project, "deployed by a CLI that gets killed")
    run = deploy_until_tako_server_switches(cli, host, project, new)
    run.proc.kill()  # no chance to finish
    run.finish()
    # tako-server finishes the rollout and, as its last step, points `current` at the new release.
    wait_for(lambda: live_link(host) == f"releases/{new}", timeout=60, what=f"current -> {new}")
    assert f"build {new}" in serving(host)

    # The killed CLI's lock stays until removed (by hand here; the next deploy would find it stale).
    remote(host, f"rm -rf {APP_DIR}/.deploy_lock")
    cli.ok("secrets", "set", "--env", "production", "GREETING", cwd=project, input="Hello after a kill\n")
    sync = cli.ok("secrets", "sync", "--env", "production", cwd=project, env=user_ssh_env(host))
    assert f"{APP} reloaded" in sync.stdout, sync.stdout
    wait_for(lambda: "Hello after a kill!" in serving(host), timeout=60, what="the synced secret served")
    assert f"build {new}" in serving(host)


def test_a_reader_that_goes_away_does_not_split_the_server(cli: TakoCLI, host: Host, project: Path) -> None:
    # `tako deploy | head -3`: the deploy's output has nowhere to go after three lines.
    (project / "CHANGES.txt").write_text("deployed into a closed pipe\n")
    new = commit_all(project, "output into a closed pipe")
    proc = subprocess.Popen(
        [cli.executable, "deploy", "--yes"],
        cwd=project,
        env=cli.env(user_ssh_env(host)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for _ in range(3):
            proc.stdout.readline()
        proc.stdout.close()
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read() if proc.stderr else ""
    assert "Traceback" not in stderr, stderr
    assert code == 0, stderr  # the deploy's own outcome: it went on to the end, lock released
    assert_consistent(host, new)


def test_a_network_cut_mid_rollout_says_what_is_known_and_the_next_deploy_recovers(
    cli: TakoCLI, host: Host, project: Path
) -> None:
    new = slow_boot_change(project, "deployed across a network cut")
    run = deploy_until_tako_server_switches(cli, host, project, new)
    host.cut()
    try:
        code, out = run.finish(timeout=90)
    finally:
        host.heal()
    assert code == 1, out
    assert f"✗ {SERVER}: failed at deploy:" in out, out
    # Reconnecting fails while the cut lasts: the report says so rather than guessing.
    assert "cannot be reached to ask whether it finished the rollout" in out, out
    # The server finished on its own meanwhile; the cut CLI's lock is stale and the next deploy clears it.
    wait_for(lambda: live_link(host) == f"releases/{new}", timeout=60, what=f"current -> {new}")
    (project / "CHANGES.txt").write_text("after the cut\n")
    after = commit_all(project, "after the cut")
    redeploy = cli.ok("deploy", "--yes", cwd=project, env=user_ssh_env(host), timeout=180)
    assert "removing a stale lock of an interrupted deploy" in redeploy.stdout, redeploy.stdout
    assert_consistent(host, after)


def test_sigterm_is_an_interrupt_too(cli: TakoCLI, host: Host, project: Path) -> None:
    before = live_link(host).removeprefix("releases/")
    (project / "blob.bin").write_bytes(os.urandom(24 * 1024 * 1024))
    new = commit_all(project, "another big file")
    run = Deploying(cli, host, project)
    run.wait_for_line(f"[{SERVER}] uploading")
    run.proc.send_signal(signal.SIGTERM)
    code, out = run.finish()
    assert code == 130, out
    assert "interrupted before tako-server was asked to switch" in out, out
    assert_consistent(host, before)
    assert new not in remote(host, f"ls -A {APP_DIR}/releases")


def test_a_second_ctrl_c_quits_at_once(cli: TakoCLI, host: Host, project: Path) -> None:
    new = slow_boot_change(project, "interrupted twice")
    run = deploy_until_tako_server_switches(cli, host, project, new)
    run.proc.send_signal(signal.SIGINT)  # this server is switching: the first one lets it finish
    run.wait_for_line("Interrupted:")
    run.proc.send_signal(signal.SIGINT)
    code, out = run.finish(timeout=10)  # no waiting for the instances to boot
    assert code == 130, out
    assert f"✓ {SERVER}" not in out, out
    # tako-server finishes on its own; the quit CLI's lock is stale for the next deploy.
    wait_for(lambda: live_link(host) == f"releases/{new}", timeout=60, what=f"current -> {new}")
    after = slow_boot_change(project, "after quitting")
    redeploy = cli.ok("deploy", "--yes", cwd=project, env=user_ssh_env(host), timeout=180)
    assert "removing a stale lock of an interrupted deploy" in redeploy.stdout, redeploy.stdout
    assert_consistent(host, after)
