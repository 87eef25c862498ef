"""The local build step: run `[tako].build` through /bin/sh in the project dir, streaming its output."""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

from tako.errors import DeployError

TAIL_LINES = 20


def run_build(
    command: str | None,
    project_dir: Path,
    *,
    output: Callable[[str], None],
    env: Mapping[str, str] | None = None,
) -> None:
    """Run the build command (nothing if None or blank) with stdout and stderr merged, one line at a
    time to `output`. Raises DeployError with the exit status and the last 20 lines if it fails.

    `env` adds variables to the inherited environment.
    """
    if command is None or not command.strip():
        return
    full_env = {**os.environ, **env} if env else None
    try:
        process = subprocess.Popen(
            ["/bin/sh", "-c", command],
            cwd=project_dir,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Own process group, so that stopping the build early stops everything it started.
            process_group=0,
        )
    except OSError as exc:
        raise DeployError(
            f"could not start the build command in {project_dir}: {exc.strerror or exc}",
            hint="check that the project directory exists and /bin/sh is available",
        ) from exc
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    try:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            tail.append(line)
            output(line)
        status = process.wait()
    finally:
        # Reached with the process still running only if `output` raised or we were interrupted (Ctrl-C
        # reaches only us, as the build has its own process group).
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
    if status != 0:
        raise DeployError(_failure_message(command, status, list(tail)), hint=_HINT)


_HINT = "run the build command in the project directory to debug it; the deploy did not start"


def _failure_message(command: str, status: int, tail: list[str]) -> str:
    if status < 0:
        try:
            how = f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            how = f"was killed by signal {-status}"
    else:
        how = f"failed with exit status {status}"
    message = f"build command {command!r} {how}"
    if tail:
        message += f"; last {len(tail)} lines of output:\n" + "\n".join(f"  {line}" for line in tail)
    else:
        message += " (it printed nothing)"
    return message
