"""`tako-server run-as-app` against a real tako-server: a command runs in the app's live release (or a
staged release dir) with the release's environment, on the caller's stdin/stdout/stderr, and its exit
status, signals and a vanished caller are handled as a shell would."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.processes import stop_process
from tests.support.server_process import REPO, TakoServer, make_release, wait_for

from tako.server.apps.oneoff_protocol import RunRequest, socket_path

pytestmark = pytest.mark.integration

SECRET = "s3cret-value-for-oneoff"
ENV_PROBE = (
    "import json, os; print(json.dumps({'cwd': os.getcwd(), 'env': dict(os.environ), 'pgid': os.getpgid(0)}))"
)


@pytest.fixture(scope="module")
def server() -> Iterator[TakoServer]:
    srv = TakoServer()
    try:
        srv.start()
        srv.deploy("demo", "v1", env={"API_TOKEN": SECRET, "GREETING": "hello"})
        yield srv
    finally:
        srv.cleanup()


def run_as_app(srv: TakoServer, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "tako.server.main", "--socket", str(srv.socket), "run-as-app", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, **kw)  # type: ignore[call-overload, no-any-return]


def popen_run_as_app(srv: TakoServer, *args: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "tako.server.main", "--socket", str(srv.socket), "run-as-app", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_runs_in_the_live_release_with_its_environment_and_without_a_port(server: TakoServer) -> None:
    result = run_as_app(server, "demo", "--", "python3", "-c", ENV_PROBE)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    release = server.data_dir / "apps" / "demo" / "releases" / "v1"
    assert Path(seen["cwd"]).resolve() == release.resolve()
    env = seen["env"]
    assert env["API_TOKEN"] == SECRET and env["GREETING"] == "hello"
    assert env["TAKO_APP"] == "demo"
    assert env["TAKO_DATA_DIR"] == str(server.data_dir / "apps" / "demo" / "shared" / "data")
    assert "PORT" not in env and "TAKO_INSTANCE" not in env
    assert (server.data_dir / "apps" / "demo" / "shared" / "data").is_dir()


def test_stdin_reaches_the_command_and_its_exit_status_comes_back(server: TakoServer) -> None:
    result = run_as_app(server, "demo", "--", "cat", input="line one\nline two\n")
    assert (result.returncode, result.stdout) == (0, "line one\nline two\n")
    result = run_as_app(server, "demo", "--", "sh", "-c", "echo to-stderr >&2; exit 7")
    assert (result.returncode, result.stderr) == (7, "to-stderr\n")


def test_a_staged_release_dir_runs_with_its_own_environment(server: TakoServer) -> None:
    staged = make_release(server.data_dir, "demo", ".partial-v2-ab12", {"GREETING": "from v2"})
    result = run_as_app(server, "demo", "--release", str(staged), "--", "python3", "-c", ENV_PROBE)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert Path(seen["cwd"]).resolve() == staged.resolve()
    assert seen["env"]["GREETING"] == "from v2" and seen["env"]["TAKO_BUILD"] == ".partial-v2-ab12"


def test_a_staged_release_of_an_app_never_deployed_runs(server: TakoServer) -> None:
    staged = make_release(server.data_dir, "newapp", ".partial-v1-cd34", {"GREETING": "first"})
    result = run_as_app(server, "newapp", "--release", str(staged), "--", "sh", "-c", 'echo "$GREETING"')
    assert (result.returncode, result.stdout) == (0, "first\n"), result.stderr


def test_mistakes_get_clear_errors(server: TakoServer, tmp_path: Path) -> None:
    result = run_as_app(server, "nosuch", "--", "true")
    assert result.returncode == 125
    assert "nosuch has no live release on this server (deployed apps: demo" in result.stderr
    make_release(tmp_path, "demo", "v9")
    outside = tmp_path / "apps" / "demo" / "releases" / "v9"
    result = run_as_app(server, "demo", "--release", str(outside), "--", "true")
    assert result.returncode == 125 and "is not in" in result.stderr
    result = run_as_app(server, "demo", "--", "no-such-command-here")
    assert result.returncode == 127 and "no-such-command-here" in result.stderr
    result = run_as_app(server, "../demo", "--release", str(outside), "--", "true")
    assert result.returncode == 125 and "invalid app name '../demo'" in result.stderr
    result = run_as_app(server, "demo")
    assert result.returncode != 0 and "needs a command" in result.stderr


def test_no_server_is_a_clear_error(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "tako.server.main", "--socket", str(tmp_path / "tako.sock")]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    result = subprocess.run(
        [*argv, "run-as-app", "demo", "--", "true"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 125
    assert "cannot reach tako-server's one-off socket" in result.stderr


def test_a_signal_to_the_caller_reaches_the_command(server: TakoServer, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    script = f"trap 'echo got-term; exit 3' TERM; touch {ready}; while :; do sleep 0.1; done"
    proc = popen_run_as_app(server, "demo", "--", "sh", "-c", script)
    try:
        wait_for(ready.exists, timeout=30, what="the command to start")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        stop_process(proc)
    assert (proc.returncode, out) == (3, "got-term\n"), err


def test_a_caller_that_vanishes_leaves_the_command_hung_up(server: TakoServer, tmp_path: Path) -> None:
    ready, hung_up = tmp_path / "ready", tmp_path / "hung-up"
    script = f"trap 'touch {hung_up}; exit 0' HUP; touch {ready}; while :; do sleep 0.1; done"
    proc = popen_run_as_app(server, "demo", "--", "sh", "-c", script)
    try:
        wait_for(ready.exists, timeout=30, what="the command to start")
        proc.kill()
        wait_for(hung_up.exists, timeout=30, what="the command to get SIGHUP")
    finally:
        stop_process(proc)


def test_a_session_that_ends_hangs_the_command_up(server: TakoServer, tmp_path: Path) -> None:
    """The SSH channel closed without a terminal: the caller's stdout loses its reader. The command (which
    writes nothing, so no SIGPIPE ends it) gets SIGHUP, and the caller leaves with 129."""
    ready, hung_up = tmp_path / "ready", tmp_path / "hung-up"
    script = f"trap 'touch {hung_up}; exit 0' HUP; touch {ready}; while :; do sleep 0.1; done"
    proc = popen_run_as_app(server, "demo", "--", "sh", "-c", script)
    try:
        wait_for(ready.exists, timeout=30, what="the command to start")
        assert proc.stdout is not None
        proc.stdout.close()
        wait_for(hung_up.exists, timeout=30, what="the command to get SIGHUP")
        assert proc.wait(timeout=30) == 129
    finally:
        stop_process(proc)


def test_a_signal_sent_right_behind_the_request_reaches_the_command(server: TakoServer) -> None:
    """A Ctrl-C that comes before tako-server said "started" (the command may already have printed) is not
    lost: sent in the same write as the request, it still stops the command."""
    request = (
        RunRequest("demo", ("sleep", "30")).encode() + json.dumps({"signal": signal.SIGINT}).encode() + b"\n"
    )
    with socket.socket(socket.AF_UNIX) as conn, open(os.devnull, "r+b") as devnull:
        conn.settimeout(30)
        conn.connect(str(socket_path(server.socket)))
        socket.send_fds(conn, [request], [devnull.fileno()] * 3)
        replies = conn.makefile("rb")
        assert "started" in json.loads(replies.readline())
        assert json.loads(replies.readline()) == {"exit": 128 + signal.SIGINT}
