"""End to end on a testbed host: `tako run` runs a one-off command in the live release, as the app's own uid,
with the release's vars and secrets; stdin, stdout and the exit status pass through; with a terminal it is
interactive; a secret never appears in any process's argv; mistakes get clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.e2e.conftest import TakoCLI, cli_with_server, user_ssh_env
from tests.e2e.test_secrets_e2e import ProcWatch
from tests.support.processes import stop_process
from tests.support.projects import make_project, wait_for
from tests.support.terminal import read_until, set_window_size, terminal_session
from tests.support.testbed import Host, Testbed

pytestmark = pytest.mark.e2e

HOST = "run1"
APP = "runapp"
SECRET = "run-secret-7c1f9a3e5b"
GREETING = "hello from vars"


@dataclass
class Deployed:
    project: Path
    host: Host
    cli: TakoCLI

    def run(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.cli.run("run", *args, cwd=self.project, input=input, env=user_ssh_env(self.host))

    def remote(self, command: str) -> str:
        result = self.host.exec(command)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()


@pytest.fixture(scope="module")
def deployed(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Deployed:
    host = testbed.up(HOST)[0]
    cli = cli_with_server(host, tmp_path_factory, HOST)
    extra = f'\n[vars]\nGREETING = "{GREETING}"\n'
    project = make_project(
        tmp_path_factory.mktemp("run"),
        name=APP,
        route="run.tako.test",
        servers={HOST: "production"},
        extra_toml=extra,
    )
    cli.ok("secrets", "set", "API_TOKEN", cwd=project, input=SECRET + "\n")
    cli.ok("deploy", "--yes", cwd=project, env=user_ssh_env(host), timeout=300)
    return Deployed(project, host, cli)


def test_a_var_is_printed_and_the_command_runs_in_the_live_release_as_the_app(deployed: Deployed) -> None:
    result = deployed.run("--", "sh", "-c", 'echo "$GREETING"; id -u; pwd -P; echo "$TAKO_DATA_DIR"')
    assert result.returncode == 0, result.stderr
    greeting, uid, cwd, data_dir = result.stdout.splitlines()
    assert greeting == GREETING
    app_dir = f"/opt/tako/apps/{APP}"
    assert cwd == deployed.remote(f"readlink -f {app_dir}/current")
    assert data_dir == f"{app_dir}/shared/data"
    # The app's uid (its gid owns the app dir), not the SSH user's nor root's.
    assert int(uid) >= 200_000
    assert uid == deployed.remote(f"stat -c %g {app_dir}")


def test_stdin_passes_through_and_the_exit_status_comes_back(deployed: Deployed) -> None:
    result = deployed.run("--", "cat", input="first line\nsecond line\n")
    assert (result.returncode, result.stdout) == (0, "first line\nsecond line\n"), result.stderr
    result = deployed.run("--", "sh", "-c", "echo on-stderr >&2; exit 7")
    assert (result.returncode, result.stderr.strip()) == (7, "on-stderr")


def test_arguments_arrive_as_given(deployed: Deployed) -> None:
    tricky = ["a b", "$HOME", "'quoted'", "semi;colon", "-l"]
    result = deployed.run("--", "python3", "-c", "import sys; print(repr(sys.argv[1:]))", *tricky)
    assert (result.returncode, result.stdout.strip()) == (0, repr(tricky)), result.stderr


def test_a_secret_reaches_the_command_through_its_environment_never_argv(deployed: Deployed) -> None:
    watch = ProcWatch([SECRET.encode()], APP)
    argv = [deployed.cli.executable, "run", "--", "sh", "-c", 'echo "$API_TOKEN"; read done']
    env = deployed.cli.env(user_ssh_env(deployed.host))
    with watch.running():
        proc = subprocess.Popen(
            argv, cwd=deployed.project, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None and proc.stdin is not None
            assert proc.stdout.readline().strip() == SECRET
            scans = (
                watch.scans
            )  # the command now waits on stdin: let the scan see every process at least twice
            wait_for(lambda: watch.scans > scans + 2, timeout=30, what="/proc scans while the command runs")
            proc.stdin.write("\n")
            proc.stdin.close()
            assert proc.wait(timeout=60) == 0
        finally:
            stop_process(proc)
    assert watch.leaks == []
    assert SECRET.encode() in watch.delivered  # seen in the environ of the command, run as the app


def test_with_a_terminal_the_command_is_interactive_and_follows_the_window_size(deployed: Deployed) -> None:
    script = 'tty; stty size; printf "name? "; read name; echo "hi $name"; '
    script += 'while [ "$(stty size)" = "33 101" ]; do sleep 0.1; done; echo "now $(stty size)"'
    argv = [deployed.cli.executable, "run", "--", "sh", "-c", script]
    env = deployed.cli.env(user_ssh_env(deployed.host))
    with terminal_session(argv, env=env, cwd=deployed.project, rows=33, columns=101) as (proc, master):
        output = read_until(master, b"name? ")
        assert b"/dev/pts/" in output and b"33 101" in output
        os.write(master, b"tako\r")
        read_until(master, b"hi tako")
        # The window grows: a terminal emulator sets the size and the kernel signals the foreground group
        # (here by hand: `tako run` runs in a session of its own, so the kernel would not).
        set_window_size(master, rows=50, columns=132)
        proc.send_signal(signal.SIGWINCH)
        read_until(master, b"now 50 132")
        assert proc.wait(timeout=60) == 0


def test_ctrl_c_without_a_terminal_reaches_the_command(deployed: Deployed) -> None:
    script = 'trap "echo got-int; exit 5" INT; echo ready; while :; do sleep 0.1; done'
    argv = [deployed.cli.executable, "run", "--", "sh", "-c", script]
    env = deployed.cli.env(user_ssh_env(deployed.host))
    proc = subprocess.Popen(argv, cwd=deployed.project, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        stop_process(proc)
    assert (proc.returncode, out) == (5, "got-int\n")


# Survives SIGINT (noting it in a file), leaves on SIGHUP; writes nothing after "ready". (A shell would not
# do: it reports a child killed by SIGHUP on stderr, and that write to the closed session ends it first.)
SURVIVES_SIGINT = """
import os, signal, time
data = os.environ["TAKO_DATA_DIR"]
def note(name):
    open(os.path.join(data, name), "w").close()
def hung_up(*_):
    note("hung-up")
    os._exit(0)
signal.signal(signal.SIGINT, lambda *_: note("got-int"))
signal.signal(signal.SIGHUP, hung_up)
print("ready", flush=True)
while True:
    time.sleep(0.1)
"""


def test_a_second_ctrl_c_disconnects_and_the_command_is_hung_up(deployed: Deployed) -> None:
    """The second Ctrl-C leaves at once (130), quietly; the closed session makes tako-server send the
    command SIGHUP."""
    data = f"/opt/tako/apps/{APP}/shared/data"
    argv = [deployed.cli.executable, "run", "--", "python3", "-c", SURVIVES_SIGINT]
    env = deployed.cli.env(user_ssh_env(deployed.host))
    deployed.host.exec(f"rm -f {data}/got-int {data}/hung-up")
    proc = subprocess.Popen(
        argv, cwd=deployed.project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGINT)
        # The second only once the first arrived: two signals sent at once may arrive as one.
        arrived = f"test -e {data}/got-int"
        wait_for(lambda: deployed.host.exec(arrived).returncode == 0, timeout=30, what="the first SIGINT")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        stop_process(proc)
    assert (proc.returncode, err) == (130, "")
    hung_up = f"test -e {data}/hung-up"
    wait_for(lambda: deployed.host.exec(hung_up).returncode == 0, timeout=30, what="SIGHUP to the command")


def test_mistakes_get_clear_errors(deployed: Deployed, tmp_path: Path) -> None:
    result = deployed.run("--server", "nope", "--", "true")
    assert result.returncode == 2
    assert "server 'nope' is not a server of environment 'production'" in result.stderr
    assert HOST in result.stderr
    other = make_project(
        tmp_path, name="neverdeployed", route="never.tako.test", servers={HOST: "production"}
    )
    result = deployed.cli.run("run", "--", "true", cwd=other, env=user_ssh_env(deployed.host))
    assert result.returncode == 125
    assert "neverdeployed has no live release on this server" in result.stderr
    result = deployed.run("--", "no-such-program")
    assert result.returncode == 127 and "no-such-program" in result.stderr
