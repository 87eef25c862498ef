"""The local build step: real /bin/sh processes, streamed output, clear failures."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tako.deploy.build import run_build
from tako.errors import DeployError


def test_no_command_does_nothing(tmp_path: Path) -> None:
    lines: list[str] = []
    run_build(None, tmp_path, output=lines.append)
    run_build("  ", tmp_path, output=lines.append)
    assert lines == []


def test_streams_stdout_and_stderr_in_order_from_the_project_dir(tmp_path: Path) -> None:
    (tmp_path / "input.txt").write_text("from the project\n")
    lines: list[str] = []
    run_build(
        'echo one && echo two >&2 && cat input.txt && printf "no newline" && test "$PWD" = "$(pwd -P)"',
        tmp_path,
        output=lines.append,
    )
    assert lines == ["one", "two", "from the project", "no newline"]


def test_shell_expands_variables_and_extra_env(tmp_path: Path) -> None:
    lines: list[str] = []
    run_build('echo "$TAKO_TEST_VAR-$HOME"', tmp_path, output=lines.append, env={"TAKO_TEST_VAR": "x y"})
    assert lines == [f"x y-{os.environ['HOME']}"]


def test_undecodable_output_is_replaced_not_fatal(tmp_path: Path) -> None:
    lines: list[str] = []
    run_build(r"printf 'a\377b\r\n'", tmp_path, output=lines.append)
    assert lines == ["a\ufffdb"]


def test_failure_reports_status_and_last_20_lines(tmp_path: Path) -> None:
    lines: list[str] = []
    with pytest.raises(DeployError) as info:
        run_build("for i in $(seq 1 30); do echo line$i; done; exit 3", tmp_path, output=lines.append)
    assert len(lines) == 30
    message = str(info.value)
    assert "exit status 3" in message
    assert "last 20 lines" in message
    assert "  line11\n" in message
    assert info.value.message.endswith("\n  line30")
    assert "line10\n" not in message
    assert info.value.hint is not None and "build command" in info.value.hint


def test_failure_without_output(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match=r"exit status 1.*printed nothing"):
        run_build("false", tmp_path, output=lambda line: None)


def test_killed_by_a_signal(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="killed by SIGKILL"):
        run_build("echo bye; kill -9 $$", tmp_path, output=lambda line: None)


def test_missing_project_dir(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="could not start the build command"):
        run_build("true", tmp_path / "missing", output=lambda line: None)


def test_output_callback_error_stops_the_whole_build(tmp_path: Path) -> None:
    """If showing output fails, the build and everything it started are stopped, not left running."""
    pid_file = tmp_path / "child.pid"

    def explode(line: str) -> None:
        raise RuntimeError("console gone")

    with pytest.raises(RuntimeError, match="console gone"):
        run_build(f"sleep 300 & echo $! > {pid_file}; echo started; wait", tmp_path, output=explode)
    child = int(pid_file.read_text())
    # The background child got SIGKILL with its group: wait (bounded) until it is dead, i.e. gone or a
    # zombie waiting for whoever adopted it.
    deadline = time.monotonic() + 10
    while _process_state(child) not in ("gone", "Z", "X"):
        assert time.monotonic() < deadline, "the build's child process is still running"
        time.sleep(0.01)


def _process_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except FileNotFoundError:
        return "gone"
