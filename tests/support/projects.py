"""Deployable test projects and real-client checks against testbed hosts (for e2e tests)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from tests.support.git import git as run_git

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def git(project: Path, *args: str) -> str:
    """`git ARGS` in `project` as a fixed author."""
    return run_git(project, "-c", "user.name=Tako Test", "-c", "user.email=test@tako.test", *args)


def make_project(
    root: Path,
    *,
    name: str = "hello",
    route: str = "hello.tako.test",
    servers: Mapping[str, str] | None = None,
    instances: int = 1,
    start: str = "python3 app.py",
    extra_toml: str = "",
    use_git: bool = True,
) -> Path:
    """A copy of examples/hello with its own tako.toml, committed to a fresh git repo."""
    project = root / name
    shutil.copytree(EXAMPLES / "hello", project, ignore=shutil.ignore_patterns(".tako", "__pycache__"))
    lines = [
        "[tako]",
        f'name = "{name}"',
        f'start = "{start}"',
        "",
        "[envs.production]",
        f'route = "{route}"',
        "",
        "[servers]",
        f"instances = {instances}",
    ]
    for server, env in (servers or {}).items():
        lines += ["", f"[servers.{server}]", f'env = "{env}"']
    (project / "tako.toml").write_text("\n".join(lines) + "\n" + extra_toml)
    if use_git:
        git(project, "init", "-q")
        git(project, "add", "-A")
        git(project, "commit", "-qm", "initial")
    return project


def commit_all(project: Path, message: str = "change") -> str:
    git(project, "add", "-A")
    git(project, "commit", "-qm", message)
    return git(project, "rev-parse", "--short=7", "HEAD")


def curl(
    address: str,
    host: str,
    path: str = "/",
    *,
    https: bool = True,
    cacert: str | None = None,
    extra: tuple[str, ...] = (),
    timeout: float = 10,
) -> subprocess.CompletedProcess[str]:
    """A real curl request to `host` resolved to `address` (SNI and Host are the route's host).

    Without `cacert`, HTTPS certificate checks are off (`-k`): the host may still be on its fallback
    certificate. Output: the body, then a last line `HTTP <status>`.
    """
    scheme, port = ("https", 443) if https else ("http", 80)
    argv = ["curl", "-sS", "--max-time", str(timeout), "--resolve", f"{host}:{port}:{address}"]
    argv += ["--cacert", cacert] if cacert else ["-k"] if https else []
    argv += [*extra, "-w", "\nHTTP %{http_code}", f"{scheme}://{host}{path}"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 5, check=False)


def body_and_status(result: subprocess.CompletedProcess[str]) -> tuple[str, int]:
    body, _, status = result.stdout.rpartition("\nHTTP ")
    return body, int(status or 0)


def wait_for(check: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll `check` until it is true, failing with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
