"""How an instance process is made: its environment, its port, the session it runs in, its log relay, and
how its exit is awaited (also when it is not tako-server's child: an adopted instance)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from tako.errors import IsolationError
from tako.server.apps import isolation
from tako.server.apps.release import Release, data_dir_of

BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
RESERVED = ("PORT", "HOST", "TAKO_APP", "TAKO_INSTANCE", "TAKO_DATA_DIR")


def _home() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return "/"


def instance_env(release: Release, port: int, instance_id: str) -> dict[str, str]:
    """A minimal base + the release `.env` + the variables Tako sets; never the server's own environment."""
    env: dict[str, str] = {"PATH": BASE_PATH, "HOME": _home(), "LANG": "C.UTF-8"}
    if release.uid is not None:
        env.update(isolation.app_env(release.path.parent.parent, release.app))
    venv = release.path / ".venv"
    if (venv / "bin").is_dir():
        # Python apps get a per-release virtualenv; make it the default interpreter.
        env["PATH"] = f"{venv / 'bin'}:{BASE_PATH}"
        env["VIRTUAL_ENV"] = str(venv)
    env.update(release.env)
    env.update(
        {"PORT": str(port), "HOST": "127.0.0.1", "TAKO_APP": release.app, "TAKO_INSTANCE": instance_id}
    )
    data = data_dir_of(release)
    if data is not None:
        env["TAKO_DATA_DIR"] = str(data)
    return env


def allocate_port(in_use: set[int], host: str = "127.0.0.1") -> int:
    """A free loopback port not handed to another instance (the kernel picks, we check and record)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port: int = s.getsockname()[1]
        if port not in in_use:
            in_use.add(port)
            return port
    raise OSError("no free loopback port found")


@functools.cache
def _setpriv() -> str:
    path = shutil.which("setpriv", path=isolation.SETPRIV_PATH)
    if path is None:
        raise IsolationError("setpriv is not installed (Debian package util-linux)")
    return path


def command(release: Release) -> list[str]:
    """The argv of an instance: the start command through `/bin/sh -c`, as the app's uid if it has one
    (refused unless that uid is in the app range)."""
    argv = ["/bin/sh", "-c", release.start]
    if release.uid is None:
        return argv
    return isolation.run_as(_setpriv(), release.uid, argv)


@dataclass(frozen=True)
class Spawned:
    """A started instance: its process (the leader of its own session) and the relay of its output."""

    proc: subprocess.Popen[bytes]
    relay: subprocess.Popen[bytes]


def spawn(
    release: Release, env: Mapping[str, str], log_dir: Path, instance_id: str, log_limits: tuple[int, int]
) -> Spawned:
    """Run the start command in the release dir, in a new session, its output through a log relay.

    subprocess.Popen, not asyncio's: an asyncio subprocess transport kills its process when it is closed
    (at tako-server's exit), and the instance must outlive tako-server. Exits are awaited with a pidfd
    (`wait_exit`); the Popen objects are kept by the instance, so nothing else reaps them.
    """
    read_end, write_end = os.pipe()
    try:
        relay = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tako.server.apps.relay",
                str(log_dir),
                instance_id,
                *map(str, log_limits),
            ],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
            env=_relay_env(),
            start_new_session=True,
        )
        try:
            proc = subprocess.Popen(
                command(release),
                cwd=str(release.path),
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=write_end,
                stderr=write_end,
                start_new_session=True,
            )
        except BaseException:
            os.close(write_end)
            write_end = -1
            relay.wait()  # end of file on its pipe: it exits at once
            raise
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    return Spawned(proc, relay)


def _relay_env() -> dict[str, str]:
    """The relay runs tako's own code with tako-server's interpreter; it needs no other environment."""
    env = {"PATH": BASE_PATH, "LANG": "C.UTF-8"}
    if "PYTHONPATH" in os.environ:  # a source checkout (tests) rather than an installed package
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


async def wait_exit(pid: int) -> bool:
    """Return once process `pid` has exited (False at once if it is gone already).

    A pidfd, not polling /proc: the loop wakes the moment the process exits, costs nothing meanwhile, and a
    pidfd names one process, so a recycled pid cannot be mistaken for it. Kernels before 5.3 have no
    pidfd: there the process's start time is polled instead (what identifies it in /proc).
    """
    try:
        fd = os.pidfd_open(pid)
    except OSError as exc:
        if exc.errno == errno.ENOSYS:
            return await _poll_exit(pid)
        return False
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return True


async def _poll_exit(pid: int, interval: float = 0.1) -> bool:
    st = proc_stat(pid)
    if st is None or st.state == "Z":
        return False
    while (now := proc_stat(pid)) is not None and now.state != "Z" and now.start_ticks == st.start_ticks:
        await asyncio.sleep(interval)
    return True


def exit_status(proc: subprocess.Popen[bytes] | None) -> int | None:
    """The exit status of our own child once it has exited (None for a process tako-server did not start:
    only its parent may learn it)."""
    if proc is None:
        return None
    with contextlib.suppress(ChildProcessError):
        return proc.poll()
    return None


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send `sig` to the process group; False if the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def kill_group(pgid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pgid, signal.SIGKILL)


class ProcStat(NamedTuple):
    state: str
    pgid: int
    start_ticks: int  # start time in clock ticks since boot: with the pid, identifies one process


def proc_stat(pid: int) -> ProcStat | None:
    """The fields of /proc/<pid>/stat the supervisor needs (read directly: psutil costs ~4 MB of RSS)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its closing ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return ProcStat(fields[0].decode(), int(fields[2]), int(fields[19]))
    except (IndexError, ValueError):
        return None


def group_members(pgid: int) -> list[int]:
    """Every process of the group except its leader (the app under its start shell, grandchildren)."""
    members = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != pgid:
            st = proc_stat(int(name))
            if st is not None and st.pgid == pgid:
                members.append(int(name))
    return members


def any_alive(pids: list[int]) -> bool:
    """True while one of `pids` runs (zombies waiting for their reaper do not count)."""
    for pid in pids:
        st = proc_stat(pid)
        if st is not None and st.state != "Z":
            return True
    return False


def is_leader(pid: int, start_ticks: int) -> bool:
    """True while `pid` is the very process recorded (same start time) and still leads its group."""
    st = proc_stat(pid)
    return st is not None and st.state != "Z" and st.start_ticks == start_ticks and st.pgid == pid
