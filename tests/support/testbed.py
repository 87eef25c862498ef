"""A small Python client of `scripts/testbed` for tests: bring hosts up, list them, run commands in them.

Every call runs the CLI as a subprocess with this object's state dir and namespace prefix, so several test
sessions on one machine never see each other's hosts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "testbed"


class TestbedError(RuntimeError):
    """The testbed CLI failed; the message carries its stderr."""

    __test__ = False  # not a pytest test class, despite the name


@dataclass(frozen=True)
class Host:
    """One testbed host as `scripts/testbed ls --json` describes it."""

    name: str
    address: str
    ssh_port: int
    key: str
    user: str
    netns: str
    pid: int
    sshd_pid: int = 0
    state: str = "running"
    partitioned: bool = False
    gateway: str = ""
    veth: str = ""
    known_hosts: str = ""
    disk_mb: int | None = None
    dir: str = ""
    testbed: Testbed | None = field(default=None, repr=False, compare=False)

    def exec(
        self,
        cmd: Sequence[str] | str,
        user: str | None = None,
        *,
        input: str | None = None,
        timeout: float = 120,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` inside the host (root by default); a string runs through `sh -c`.

        Same as `scripts/testbed exec` without its start-up cost: nsenter into the anchor's namespaces.
        """
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        return subprocess.run(
            [*self.enter_args(user), *argv],
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
            check=check,
        )

    def enter_args(self, user: str | None = None) -> list[str]:
        """Argument prefix running a command inside this host, as root or `user`."""
        # A stale Host (the host was recreated) must never enter some other process's namespaces.
        try:
            current = os.stat(f"/run/netns/{self.netns}").st_ino == os.stat(f"/proc/{self.pid}/ns/net").st_ino
        except OSError:
            current = False
        if not current:
            raise TestbedError(
                f"testbed host {self.name} is gone or was recreated: get it again (testbed.host())"
            )
        argv = ["nsenter", "-t", str(self.pid), "-m", "-n", "-u", "--wd=/", "--"]
        if user and user != "root":
            home = f"/home/{user}"
            argv += ["setpriv", "--reuid", user, "--regid", user, "--init-groups", "env", f"HOME={home}"]
            argv += [f"USER={user}", f"LOGNAME={user}", "PATH=/usr/local/bin:/usr/bin:/bin"]
        return argv

    def ssh_args(self, *, connect_timeout: float = 5) -> list[str]:
        """System ssh client arguments (append the remote command): user tako, the testbed key."""
        return [
            "ssh",
            "-i",
            self.key,
            "-p",
            str(self.ssh_port),
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={connect_timeout:g}",
            "-o",
            "LogLevel=ERROR",
            f"{self.user}@{self.address}",
        ]

    def ssh(self, command: str, *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.ssh_args(), command], capture_output=True, text=True, timeout=timeout, check=False
        )

    def cut(self) -> None:
        """Partition this host from the network (connections fail fast) until `heal`."""
        assert self.testbed is not None
        self.testbed.cut(self.name)

    def heal(self) -> None:
        assert self.testbed is not None
        self.testbed.heal(self.name)


class Testbed:
    """Hosts under one state dir and namespace prefix. Needs root (the CLI creates namespaces)."""

    __test__ = False

    def __init__(self, state_dir: Path | str, prefix: str, *, script: Path = SCRIPT) -> None:
        self.state_dir = Path(state_dir)
        self.prefix = prefix
        self.script = script

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "TAKO_TESTBED_DIR": str(self.state_dir), "TAKO_TESTBED_PREFIX": self.prefix}

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.script), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            check=False,
        )
        if check and proc.returncode != 0:
            raise TestbedError(
                f"scripts/testbed {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}"
            )
        return proc

    def up(self, *names: str, disk_mb: int | None = None) -> list[Host]:
        """Create (or keep, when healthy) the named hosts; returns them."""
        extra = ["--disk-mb", str(disk_mb)] if disk_mb is not None else []
        self.run("up", *extra, *names)
        by_name = {h.name: h for h in self.hosts()}
        return [by_name[n] for n in names]

    def hosts(self) -> list[Host]:
        data = json.loads(self.run("ls", "--json", timeout=60).stdout)
        return [Host(**item, testbed=self) for item in data]

    def host(self, name: str) -> Host:
        for h in self.hosts():
            if h.name == name:
                return h
        raise TestbedError(f"no testbed host named {name!r}")

    def exec(
        self,
        name: str,
        cmd: Sequence[str] | str,
        user: str | None = None,
        *,
        input: str | None = None,
        timeout: float = 120,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        user_args = ["--user", user] if user else []
        return subprocess.run(
            [str(self.script), "exec", *user_args, name, "--", *argv],
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
            env=self.env,
            check=check,
        )

    def reinstall(self, *names: str) -> None:
        """Re-run scripts/install-server in running hosts with a freshly built wheel (upgrade in place)."""
        self.run("reinstall", *names)

    def cut(self, name: str) -> None:
        self.run("cut", name, timeout=60)

    def heal(self, name: str) -> None:
        self.run("heal", name, timeout=60)

    def down(self, *names: str) -> None:
        """Remove the named hosts, or all of them."""
        self.run("down", *names, timeout=120)

    def destroy(self) -> None:
        """`down` everything and remove the state dir."""
        try:
            self.down()
        finally:
            shutil.rmtree(self.state_dir, ignore_errors=True)
