"""Checks on the servers of a multi-server e2e test (what each serves, what a deploy left behind), and a
`tako deploy` whose output is read while it runs."""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from pathlib import Path

from tests.support.projects import body_and_status, curl
from tests.support.testbed import Host


def remote(host: Host, command: str) -> str:
    """`command` as tako on `host`; its stdout, stripped (it must succeed)."""
    result = host.exec(command, user="tako")
    assert result.returncode == 0, f"{host.name}: {command}: {result.stderr}"
    return result.stdout.strip()


def serves(host: Host, route: str, version: str) -> bool:
    body, status = body_and_status(curl(host.address, route))
    return status == 200 and f"build {version}" in body


def leftovers(host: Host, app: str) -> list[str]:
    """Locks, staged or replaced releases and uploads left in an app's dir (empty when clean)."""
    app_dir = f"/opt/tako/apps/{app}"
    found = host.exec(
        f"ls -d {app_dir}/.deploy_lock {app_dir}/.upload-* {app_dir}/.current-* "
        f"{app_dir}/releases/.partial-* {app_dir}/releases/.replaced-* 2>/dev/null",
        user="tako",
    ).stdout
    return found.split()


def releases(host: Host, app: str) -> list[str]:
    return remote(host, f"ls -A /opt/tako/apps/{app}/releases").split()


def live_link(host: Host, app: str) -> str:
    return remote(host, f"readlink /opt/tako/apps/{app}/current").removeprefix("releases/")


def everywhere(hosts: list[Host]) -> dict[str, str]:
    return {h.name: "production" for h in hosts}


def set_tako_key(project: Path, line: str) -> None:
    """Add (or replace) a `[tako]` key of the project's tako.toml, e.g. `release = '...'`."""
    toml = project / "tako.toml"
    key = line.split("=", 1)[0].strip()
    lines = [entry for entry in toml.read_text().splitlines() if not entry.startswith(f"{key} =")]
    lines.insert(lines.index("[tako]") + 1, line)
    toml.write_text("\n".join(lines) + "\n")


class DeployProcess:
    """`tako deploy --yes` as a child process whose plain output is read line by line while it runs."""

    def __init__(self, executable: str, project: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [executable, "deploy", "--yes"],
            cwd=project,
            env={**env, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for_line(self, needle: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line with {needle!r} in {timeout}s:\n{''.join(self.seen)}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"deploy ended without {needle!r}:\n{''.join(self.seen)}")
            self.seen.append(line)
            if needle in line:
                return line

    def finish(self, timeout: float) -> tuple[int, str]:
        code = self.proc.wait(timeout=timeout)
        while (line := self.lines.get(timeout=5)) is not None:
            self.seen.append(line)
        return code, "".join(self.seen)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
