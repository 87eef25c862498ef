"""What a deploy sends: the plan built locally (the same for every server) and each server's target."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from tako.config.project import FleetSettings
from tako.deploy.layout import KEEP_RELEASES, TAKO_ROOT
from tako.remote.connection import ServerAddress
from tako.remote.executor import Command, Executor

# Reports the step a server's deploy is at: (step name, what it is doing). The name is what a failure names.
StepReporter = Callable[[str, str], None]
# Installs a release's dependencies: given the executor, the staged release dir and the step reporter.
DependencyInstaller = Callable[[Executor, str, StepReporter], Awaitable[None]]

DISK_HEADROOM = 64 * 1024 * 1024
VENV_PER_WHEEL_BYTE = 6


@dataclass(frozen=True)
class DeployTarget:
    address: ServerAddress
    instances: int
    idle_timeout: int


@dataclass(frozen=True)
class DeployPlan:
    """Everything built locally, the same for every server of the env."""

    app: str
    version: str
    env: str
    routes: tuple[str, ...]
    archive: Path
    archive_size: int
    env_file: bytes = field(repr=False)  # holds secret values: never printed
    unpacked_size: int = 0  # the release once extracted (ArchiveInfo.unpacked_size)
    wheel_size: int = 0  # Python wheels in it, which the server installs into a venv
    known_hosts: Path = Path()
    root: str = TAKO_ROOT
    # Run by the "python" step, in order, on the staged release.
    installers: tuple[DependencyInstaller, ...] = ()
    # Extra cleanup after old releases are pruned (e.g. venvs no release uses any more).
    after_prune: tuple[Command, ...] = ()
    release_command: str = ""  # [tako] release: run once per deploy before any server switches
    release_timeout: int = 600
    keep_releases: int = KEEP_RELEASES  # [servers] keep_releases: releases kept, the live one included
    fleet: FleetSettings = field(default_factory=FleetSettings)
    # [tako] maintenance_allow, sent with the deploy; None (a rollback) keeps the list the server has
    maintenance_allow: tuple[str, ...] | None = None

    @property
    def required_disk(self) -> int:
        """The upload, the extracted release, a venv for its wheels, and headroom.

        From the unpacked size, not the archive's: an archive can be tiny for a large release (130 MB of
        zeros packs to 125 KiB). Wheels install to about five and a half times their size (measured: the
        wheels of fastapi, uvicorn, flask and gunicorn, 4.4 MB, installed into a venv with bytecode, 23.9 MB).
        """
        return self.archive_size + self.unpacked_size + VENV_PER_WHEEL_BYTE * self.wheel_size + DISK_HEADROOM

    def describe_required_disk(self) -> str:
        parts = [f"the {size_text(self.archive_size)} upload", f"{size_text(self.unpacked_size)} unpacked"]
        if self.wheel_size:
            parts.append(f"{size_text(VENV_PER_WHEEL_BYTE * self.wheel_size)} for its Python dependencies")
        return ", ".join(parts) + f" and {size_text(DISK_HEADROOM)} to spare"


def size_text(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
