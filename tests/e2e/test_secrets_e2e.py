"""End to end on a testbed host: secrets reach the app byte for byte at deploy, change with `secrets sync`
without a failed request, never leak into argv, environ, output or logs, and are checked before upload.

The app (tests/support/apps/secrets_app) reports sha256 digests of its variables, never the values.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests.e2e.conftest import TakoCLI, user_ssh_env
from tests.support.projects import body_and_status, commit_all, curl, git, make_project, wait_for
from tests.support.testbed import Host
from tests.support.threads import looping

pytestmark = pytest.mark.e2e

SERVER = "sec1"
APP = "secretapp"
ROUTE = "secrets.tako.test"
APP_DIR = f"/opt/tako/apps/{APP}"
APP_SOURCE = Path(__file__).resolve().parents[1] / "support" / "apps" / "secrets_app" / "app.py"
REPO = Path(__file__).resolve().parents[2]


def token() -> str:
    """A random marker embedded in every secret value: hex is never escaped, so any leak contains it."""
    return "tok" + secrets.token_hex(16)


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# --- fixtures ------------------------------------------------------------------------------------


def ssh_env(host: Host) -> dict[str, str]:
    return user_ssh_env(host)


def secrets_project(
    root: Path, *, name: str = APP, env: str = "production", extra_toml: str = "", route: str = ROUTE
) -> Path:
    project = make_project(
        root, name=name, route=route, servers={SERVER: env}, instances=1, extra_toml=extra_toml, use_git=False
    )
    shutil.copyfile(APP_SOURCE, project / "app.py")
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "initial")
    return project


@dataclass
class Deployed:
    project: Path
    values: dict[str, str]
    deploy_output: str


# One line with every character a shell or a .env parser could mangle (leading and trailing spaces too).
def one_line_value() -> str:
    return f" sk \"dq\" 'sq' $HOME ${{X}} `id` \\n back\\\\slash a=b==c  #hash é€ \t{token()} "


# Multi-line, through `--from-file -`: newlines, a CR, a trailing newline, an escaped-looking `\n`.
def multi_line_value() -> str:
    return f'-----BEGIN-----\nline "2" $Y=1\\n\r\n\tindented {token()}\n=\n-----END-----\n'


def set_secret(cli: TakoCLI, project: Path, name: str, value: str, *, env: str = "production") -> str:
    """`tako secrets set` with the value on stdin (one line, or --from-file - when it has newlines)."""
    if "\n" in value or "\r" in value:
        proc = cli.ok("secrets", "set", "--env", env, "--from-file", "-", name, cwd=project, input=value)
    else:
        proc = cli.ok("secrets", "set", "--env", env, name, cwd=project, input=value + "\n")
    return proc.stdout + proc.stderr


def app_digests(host: Host, names: tuple[str, ...] = ()) -> dict[str, str | None]:
    query = f"/?names={','.join(names)}" if names else "/"
    body, status = body_and_status(curl(host.address, ROUTE, query))
    assert status == 200, body
    digests: dict[str, str | None] = json.loads(body)["digests"]
    return digests


def remote(host: Host, command: str) -> str:
    result = host.exec(command)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture(scope="module")
def deployed(cli: TakoCLI, host: Host, tmp_path_factory: pytest.TempPathFactory) -> Deployed:
    """The secrets app deployed to production with API_KEY (one line) and CERT (multi-line) set."""
    # A plain variable of the same name: the secret wins (the merge order of docs/tako-toml.md).
    vars_toml = '\n[vars]\nAPI_KEY = "from-vars"\nPLAIN = "plain value"\n'
    project = secrets_project(tmp_path_factory.mktemp("secrets-project"), extra_toml=vars_toml)
    values = {"API_KEY": one_line_value(), "CERT": multi_line_value()}
    for name, value in values.items():
        set_secret(cli, project, name, value)
    proc = cli.ok("deploy", "--yes", cwd=project, env=ssh_env(host))
    return Deployed(project, values, proc.stdout + proc.stderr)


# --- delivery ------------------------------------------------------------------------------------


def test_deploy_delivers_values_byte_for_byte(deployed: Deployed, host: Host) -> None:
    assert "1/1 server(s) succeeded" in deployed.deploy_output, deployed.deploy_output
    digests = app_digests(host, ("CERT", "PLAIN", "NOT_SET"))
    assert digests == {
        "API_KEY": sha(deployed.values["API_KEY"]),
        "CERT": sha(deployed.values["CERT"]),
        "PLAIN": sha("plain value"),
        "NOT_SET": None,
    }
    current = remote(host, f"readlink {APP_DIR}/current")
    assert remote(host, f"stat -c '%a %U' {APP_DIR}/{current}/.env") == "600 tako"


def test_sync_delivers_a_new_value_without_a_failed_request(
    deployed: Deployed, cli: TakoCLI, host: Host
) -> None:
    old, new = deployed.values["API_KEY"], one_line_value()
    assert app_digests(host)["API_KEY"] == sha(old)
    poller = Poller(host)
    with poller.running():
        wait_for(lambda: poller.count() >= 3, timeout=30, what="the poller's first responses")
        set_secret(cli, deployed.project, "API_KEY", new)
        sync_started = time.monotonic()
        proc = cli.run("secrets", "sync", "--env", "production", cwd=deployed.project, env=ssh_env(host))
        sync_done = time.monotonic()
        wait_for(lambda: poller.count_started_after(sync_done) >= 3, timeout=30, what="responses after sync")
    deployed.values["API_KEY"] = new
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"production / {SERVER}" in proc.stdout and "reloaded" in proc.stdout, proc.stdout

    failures = [r for r in poller.results if r.status != 200 or r.digest not in (sha(old), sha(new))]
    assert not failures, f"{len(failures)} of {len(poller.results)} requests failed: {failures[:5]}"
    during = [r for r in poller.results if r.started < sync_done and r.ended > sync_started]
    assert during, "no request overlapped the sync"
    after = [r for r in poller.results if r.started > sync_done]
    assert all(r.digest == sha(new) for r in after), "requests made after sync still saw the old value"
    # Sequential requests: once the new value is served, the old one never comes back.
    digests = [r.digest for r in poller.results]
    first_new = digests.index(sha(new))
    assert all(d == sha(new) for d in digests[first_new:])
    assert app_digests(host, ("CERT",))["CERT"] == sha(deployed.values["CERT"])


def test_failed_sync_keeps_the_running_app_and_its_env(deployed: Deployed, cli: TakoCLI, host: Host) -> None:
    """A value the app cannot boot with: the reload fails, the old instance keeps serving, and the
    release's `.env` is put back so a later restart does not pick up the value that failed."""
    project = deployed.project
    current = remote(host, f"readlink {APP_DIR}/current")
    env_before = remote(host, f"sha256sum < {APP_DIR}/{current}/.env")
    poller = Poller(host)
    with poller.running():
        wait_for(lambda: poller.count() >= 2, timeout=30, what="the poller's first responses")
        set_secret(cli, project, "CRASH_AT_BOOT", one_line_value())
        try:
            result = cli.run("secrets", "sync", "--env", "production", cwd=project, env=ssh_env(host))
        finally:
            cli.ok("secrets", "rm", "CRASH_AT_BOOT", "--yes", cwd=project, input="")
        done = time.monotonic()
        wait_for(lambda: poller.count_started_after(done) >= 2, timeout=30, what="responses after sync")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"✗ production / {SERVER}" in output and "CRASH_AT_BOOT is set, exiting" in output, output
    failures = [r for r in poller.results if r.status != 200 or r.digest != sha(deployed.values["API_KEY"])]
    assert not failures, f"{len(failures)} of {len(poller.results)} requests failed: {failures[:5]}"
    assert remote(host, f"sha256sum < {APP_DIR}/{current}/.env") == env_before
    assert remote(host, f"ls -a {APP_DIR}/{current} | grep -c '^.env' || true") == "1"


def test_sync_refuses_while_a_deploy_holds_the_lock(deployed: Deployed, cli: TakoCLI, host: Host) -> None:
    """A deploy in progress would switch `current` to a release whose .env was rendered before the new
    value was set: sync must not write under its feet."""
    project = deployed.project
    current = remote(host, f"readlink {APP_DIR}/current")
    env_before = remote(host, f"sha256sum < {APP_DIR}/{current}/.env")
    lock = f"{APP_DIR}/.deploy_lock"
    remote(host, f"mkdir {lock} && echo 'bob@laptop pid 1 deploying abc since noon' > {lock}/holder")
    try:
        set_secret(cli, project, "OTHER", one_line_value())
        result = cli.run("secrets", "sync", "--env", "production", cwd=project, env=ssh_env(host))
        output = result.stdout + result.stderr
        assert result.returncode == 1, output
        assert lock in output and "bob@laptop pid 1 deploying abc since noon" in output, output
        assert remote(host, f"cat {lock}/holder") == "bob@laptop pid 1 deploying abc since noon"
        assert remote(host, f"sha256sum < {APP_DIR}/{current}/.env") == env_before
    finally:
        remote(host, f"rm -rf {lock}")
    cli.ok("secrets", "rm", "OTHER", "--yes", cwd=project, input="")
    assert remote(host, f"test -e {lock} || echo free") == "free"


@dataclass
class Response:
    started: float
    ended: float
    status: int
    digest: str | None
    error: str = ""


@dataclass
class Poller:
    """Sequential HTTPS requests with curl (a new TLS connection each) until stopped."""

    host: Host
    results: list[Response] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self) -> int:
        with self._lock:
            return len(self.results)

    def count_started_after(self, moment: float) -> int:
        with self._lock:
            return sum(1 for r in self.results if r.started > moment)

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            result = curl(self.host.address, ROUTE, timeout=10)
            ended = time.monotonic()
            body, status = body_and_status(result)
            digest: str | None = None
            error = result.stderr.strip()
            if status == 200:
                try:
                    digest = json.loads(body)["digests"]["API_KEY"]
                except (ValueError, KeyError) as exc:
                    error = f"bad body: {exc}"
            elif not error:
                error = body[:200]
            with self._lock:
                self.results.append(Response(started, ended, status, digest, error))

    @contextlib.contextmanager
    def running(self) -> Iterator[Poller]:
        with looping(self._loop, self._stop, "secrets-poller"):
            yield self


# --- never leaked --------------------------------------------------------------------------------


@dataclass
class ProcWatch:
    """Scans every process's cmdline and environ (the testbed shares our PID namespace) until stopped.

    A needle in a cmdline is a leak; in an environ it is one unless the process is an instance of the
    app (TAKO_APP=<app> in its environment), which is where the values are meant to go.
    """

    needles: list[bytes]
    app: str
    leaks: list[str] = field(default_factory=list)
    delivered: set[bytes] = field(default_factory=set)  # needles seen in the app's environ
    cmdlines: set[bytes] = field(default_factory=set)
    scans: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def _read(self, path: str) -> bytes:
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except OSError:
            return b""

    def scan(self) -> None:
        own = str(os.getpid())
        app_marker = b"\0TAKO_APP=" + self.app.encode() + b"\0"
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or pid == own:
                continue
            cmdline = self._read(f"/proc/{pid}/cmdline")
            environ = self._read(f"/proc/{pid}/environ")
            if cmdline:
                self.cmdlines.add(cmdline[:300])
            is_app = app_marker in b"\0" + environ
            for needle in self.needles:
                if needle in cmdline:
                    self.leaks.append(f"pid {pid} argv {cmdline[:80]!r}...")
                if needle in environ:
                    if is_app:
                        self.delivered.add(needle)
                    else:
                        self.leaks.append(f"pid {pid} environ (argv {cmdline[:80]!r})")
        self.scans += 1

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.scan()
            self._stop.wait(0.002)

    @contextlib.contextmanager
    def running(self) -> Iterator[ProcWatch]:
        with looping(self._loop, self._stop, "proc-watch"):
            yield self

    def saw(self, *parts: bytes) -> bool:
        return any(all(p in c for p in parts) for c in self.cmdlines)


@contextlib.contextmanager
def strace_execs(pids: list[int], out: Path) -> Iterator[Path]:
    """Record the argv of every program exec'd by `pids` and their descendants (on a host: sshd runs
    every remote command, tako-server every instance), so short-lived processes the /proc scan may miss
    are covered too."""
    argv = ["strace", "-f", "-qq", "-e", "trace=execve", "-s", "1000000", "-o", str(out)]
    proc = subprocess.Popen(
        [*argv, *(a for pid in pids for a in ("-p", str(pid)))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def traced(pid: int) -> bool:
            assert proc.poll() is None, f"strace exited: {proc.stderr.read() if proc.stderr else ''!r}"
            status = Path(f"/proc/{pid}/status").read_text()
            return any(
                line.split()[1:] != ["0"] for line in status.splitlines() if line.startswith("TracerPid")
            )

        wait_for(
            lambda: all(map(traced, pids)), timeout=10, what=f"strace to attach to {pids}", interval=0.01
        )
        yield out
    finally:
        proc.send_signal(signal.SIGINT)  # detaches from every traced process
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def traced_tako(
    cli: TakoCLI, trace: Path, *args: str, cwd: Path, input: str | None = None, host: Host
) -> subprocess.CompletedProcess[str]:
    """The CLI under `strace -f` (every local exec's argv) with the host's SSH key."""
    argv = ["strace", "-f", "-qq", "-e", "trace=execve", "-s", "1000000", "-o", str(trace)]
    proc = subprocess.run(
        [*argv, cli.executable, *args],
        cwd=cwd,
        input=input if input is not None else "",
        capture_output=True,
        text=True,
        timeout=180,
        env=cli.env(ssh_env(host)),
        check=False,
    )
    assert proc.returncode == 0, (
        f"tako {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    )
    return proc


def test_deploy_and_sync_leak_no_value(deployed: Deployed, cli: TakoCLI, host: Host, tmp_path: Path) -> None:
    first = {"API_KEY": one_line_value(), "CERT": multi_line_value()}
    second = one_line_value()
    needles = [t.encode() for v in (*first.values(), second) for t in v.split() if t.startswith("tok")]
    assert len(needles) == 3
    project = deployed.project
    (project / "VERSION").write_text("leak-check\n")
    commit_all(project, "leak check")

    server_pid = int(remote(host, "cat /var/run/tako/tako-server.pid"))
    outputs: list[str] = []
    watch = ProcWatch(needles, APP)
    local_trace = tmp_path / "local.strace"
    with watch.running(), strace_execs([host.sshd_pid, server_pid], tmp_path / "host.strace") as remote_trace:
        for name, value in first.items():
            flags = ("--from-file", "-") if "\n" in value else ()
            data = value if flags else value + "\n"
            proc = traced_tako(
                cli,
                tmp_path / f"set-{name}.strace",
                "secrets",
                "set",
                *flags,
                name,
                cwd=project,
                input=data,
                host=host,
            )
            outputs.append(proc.stdout + proc.stderr)
        proc = traced_tako(cli, local_trace, "deploy", "--yes", cwd=project, host=host)
        outputs.append(proc.stdout + proc.stderr)
        assert app_digests(host, ("CERT",)) == {k: sha(v) for k, v in first.items()}

        proc = traced_tako(
            cli,
            tmp_path / "set2.strace",
            "secrets",
            "set",
            "API_KEY",
            cwd=project,
            input=second + "\n",
            host=host,
        )
        outputs.append(proc.stdout + proc.stderr)
        proc = traced_tako(cli, tmp_path / "sync.strace", "secrets", "sync", cwd=project, host=host)
        outputs.append(proc.stdout + proc.stderr)
        assert app_digests(host)["API_KEY"] == sha(second)
        # The new instance holds the value in its environment: the scan must have seen it there.
        wait_for(lambda: needles[2] in watch.delivered, timeout=10, what="the scan to see the app's environ")
    deployed.values.update(first, API_KEY=second)

    # The capture saw what it had to see: the CLI, the remote .env writer, the app's instances.
    assert watch.saw(b"deploy", b"--yes") and watch.saw(b"secrets", b"sync")
    assert needles[0] in watch.delivered and needles[2] in watch.delivered
    host_execs = remote_trace.read_bytes()
    assert b".env.tmp" in host_execs, "the host trace missed the command writing .env"
    assert b'"python3 app.py"' in host_execs, "the host trace missed tako-server starting an instance"
    assert b"git" in local_trace.read_bytes()

    problems = list(watch.leaks)
    for trace in [remote_trace, *tmp_path.glob("*.strace")]:
        traced = trace.read_bytes()
        problems += [f"{trace.name}: {n.decode()}" for n in needles if n in traced]
    for i, text in enumerate(outputs):
        problems += [f"CLI output #{i}: {n.decode()}" for n in needles if n.decode() in text]
    # Every file on the host holding a value must be a release .env; the logs above all.
    pattern = " ".join(f"-e {n.decode()}" for n in needles)
    found = host.exec(f"grep -rlaF {pattern} /opt/tako /var/run/tako /home/tako 2>/dev/null")
    files = found.stdout.split()
    assert f"{APP_DIR}/releases" in found.stdout  # the grep does find the delivered values
    problems += [
        f"host file {f}" for f in files if not (f.startswith(f"{APP_DIR}/releases/") and f.endswith("/.env"))
    ]
    # The logs are among the files searched: the server's, the app's (its output), sshd's.
    assert remote(host, "test -s /opt/tako/logs/tako-server.log && echo yes") == "yes"
    assert remote(host, f"ls {APP_DIR}/shared/logs/"), "the app has no log file to check"
    sshd_log = Path(host.dir) / "sshd.log"
    assert sshd_log.stat().st_size > 0
    problems += [f"sshd.log: {n.decode()}" for n in needles if n in sshd_log.read_bytes()]
    # Locally: the project (archives, encrypted store) and TAKO_HOME hold no value in clear.
    local = subprocess.run(
        ["grep", "-rlaF", *[a for n in needles for a in ("-e", n.decode())], str(project), str(cli.home)],
        capture_output=True,
        text=True,
        check=False,
    )
    problems += [f"local file {f}" for f in local.stdout.split()]
    assert not problems, "secret values leaked:\n" + "\n".join(problems)
    assert watch.scans > 10


def test_python_dependency_step_leaks_no_value(cli: TakoCLI, host: Host, tmp_path: Path) -> None:
    """The deploy steps the test above does not reach, with a secret set: the Python probe, the local
    wheelhouse build, and the offline venv install on the server. No value in any program's argv, nor
    in any environment but the app's."""
    name, route = "secretapp-py", "py.secrets.tako.test"
    work = tmp_path / "work"
    work.mkdir()
    ignore = shutil.ignore_patterns(".tako", "__pycache__", ".venv", "*.egg-info", "build", "dist")
    shutil.copytree(REPO / "sdk", work / "sdk", ignore=ignore)
    project = secrets_project(work, name=name, route=route)
    (project / "requirements.txt").write_text("../sdk\n")
    commit_all(project, "dependencies")
    value = one_line_value()
    needle = token_of(value).encode()
    set_secret(cli, project, "API_KEY", value)

    server_pid = int(remote(host, "cat /var/run/tako/tako-server.pid"))
    watch = ProcWatch([needle], name)
    local_trace = tmp_path / "deploy.strace"
    with watch.running(), strace_execs([host.sshd_pid, server_pid], tmp_path / "host.strace") as remote_trace:
        proc = traced_tako(cli, local_trace, "deploy", "--yes", cwd=project, host=host)
        body, status = body_and_status(curl(host.address, route))
        assert status == 200 and json.loads(body)["digests"]["API_KEY"] == sha(value), body
        wait_for(lambda: needle in watch.delivered, timeout=10, what="the scan to see the app's environ")
    output = proc.stdout + proc.stderr
    try:
        assert "Python dependencies from requirements.txt" in output, output
        host_execs = remote_trace.read_bytes()
        assert b"--no-index" in host_execs, "the host trace missed the offline dependency install"
        assert b".env.tmp" in host_execs, "the host trace missed the command writing .env"
        assert b"wheel" in local_trace.read_bytes(), "the local trace missed the wheelhouse build"
        problems = list(watch.leaks)
        problems += [f"{t.name}" for t in (remote_trace, local_trace) if needle in t.read_bytes()]
        problems += ["CLI output"] if needle.decode() in output else []
        assert not problems, "secret value leaked:\n" + "\n".join(problems)
    finally:
        cli.ok("delete", "--env", "production", "--yes", cwd=project, env=ssh_env(host))


# --- refused before anything changes --------------------------------------------------------------


def test_deploy_to_env_missing_a_secret_or_key_fails_before_upload(
    cli: TakoCLI, host: Host, tmp_path: Path
) -> None:
    name = "secretapp-stg"
    app_dir = f"/opt/tako/apps/{name}"
    project = secrets_project(
        tmp_path, name=name, env="staging", extra_toml='\n[envs.staging]\nroute = "stg.secrets.tako.test"\n'
    )
    set_secret(cli, project, "API_KEY", one_line_value(), env="production")
    set_secret(cli, project, "DB_URL", one_line_value(), env="production")
    set_secret(cli, project, "DB_URL", one_line_value(), env="staging")

    def deploy_fails(*expected: str) -> str:
        result = cli.run("deploy", "--yes", "--env", "staging", cwd=project, env=ssh_env(host))
        output = result.stdout + result.stderr
        assert result.returncode == 1, output
        for text in expected:
            assert text in output, output
        return output

    output = deploy_fails("API_KEY", "tako secrets set --env staging API_KEY")
    assert "DB_URL" not in output
    assert remote(host, f"test -e {app_dir} && echo present || echo absent") == "absent"

    # Complete, it deploys; then a new version with the key missing or wrong changes nothing there.
    api_key = one_line_value()
    set_secret(cli, project, "API_KEY", api_key, env="staging")
    cli.ok("deploy", "--yes", "--env", "staging", cwd=project, env=ssh_env(host))
    before = remote(host, f"cd {app_dir} && ls -a . releases && readlink current && sha256sum current/.env")
    (project / "VERSION").write_text("2\n")
    commit_all(project, "v2")
    key_file = cli.home / "keys" / "staging"
    key_text = key_file.read_bytes()
    try:
        key_file.unlink()
        deploy_fails("no key for env staging", "tako secrets key import --env staging")
        assert (
            remote(host, f"cd {app_dir} && ls -a . releases && readlink current && sha256sum current/.env")
            == before
        )

        key_file.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
        key_file.chmod(0o600)
        deploy_fails("does not match", "tako secrets key import --env staging")
        # sync refuses the same way, and leaves the running release's .env alone.
        result = cli.run("secrets", "sync", "--env", "staging", cwd=project, env=ssh_env(host))
        output = result.stdout + result.stderr
        assert result.returncode == 1, output
        assert "does not match" in output and "tako secrets key import --env staging" in output, output
        assert (
            remote(host, f"cd {app_dir} && ls -a . releases && readlink current && sha256sum current/.env")
            == before
        )
    finally:
        key_file.write_bytes(key_text)
        key_file.chmod(0o600)
    body, status = body_and_status(curl(host.address, "stg.secrets.tako.test"))
    assert status == 200 and json.loads(body)["digests"]["API_KEY"] == sha(api_key)


def test_oversized_values_are_refused_at_set_and_before_upload(
    cli: TakoCLI, host: Host, tmp_path: Path
) -> None:
    """A value an app's process could not be started with: `set` refuses it; one already in the store
    (written before the limit) stops the deploy before upload, naming the secret and env instead of
    failing on the server with "Argument list too long"."""
    from tako.protocol import MAX_ENV_VALUE_BYTES
    from tako.secrets import Secret, SecretStore, keys

    name, route = "secretapp-big", "big.secrets.tako.test"
    project = secrets_project(tmp_path, name=name, route=route)
    big = token() + "x" * (1024 * 1024)
    result = cli.run("secrets", "set", "--from-file", "-", "BIG_CERT", cwd=project, input=big)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "BIG_CERT" in output and "at most 64 KiB" in output and big[:35] not in output

    set_secret(cli, project, "API_KEY", one_line_value())
    store = SecretStore.load(project)
    store.put("production", "BIG_CERT", Secret(big), keys.read_key("production", cli.home))
    store.save()
    result = cli.run("deploy", "--yes", cwd=project, env=ssh_env(host))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "secret BIG_CERT of env production" in output and "64 KiB" in output, output
    assert "Argument list too long" not in output and big[:35] not in output
    assert remote(host, f"test -e /opt/tako/apps/{name} && echo present || echo absent") == "absent"

    # At the limit it deploys, and the app gets the value whole.
    at_limit = token() + "y" * (MAX_ENV_VALUE_BYTES - 35)
    set_secret(cli, project, "BIG_CERT", at_limit)
    cli.ok("deploy", "--yes", cwd=project, env=ssh_env(host))
    body, status = body_and_status(curl(host.address, route, "/?names=BIG_CERT"))
    assert status == 200 and json.loads(body)["digests"]["BIG_CERT"] == sha(at_limit), body
    cli.ok("delete", "--env", "production", "--yes", cwd=project, env=ssh_env(host))


def test_rm_without_yes_off_a_terminal_removes_nothing(cli: TakoCLI, tmp_path: Path) -> None:
    project = secrets_project(tmp_path, name="secretapp-rm")
    set_secret(cli, project, "API_KEY", one_line_value())
    store = project / ".tako" / "secrets"
    before = store.read_bytes()
    for args in (("API_KEY",), ("--env", "production", "API_KEY")):
        result = cli.run("secrets", "rm", *args, cwd=project, input="y\n")
        output = result.stdout + result.stderr
        assert result.returncode == 2, output
        assert "--yes" in output and "not removing API_KEY" in output, output
        assert store.read_bytes() == before
    listed = cli.ok("secrets", "ls", "--json", cwd=project).stdout
    assert json.loads(listed)["secrets"] == {"API_KEY": ["production"]}
    cli.ok("secrets", "rm", "API_KEY", "--yes", cwd=project, input="")
    assert json.loads(cli.ok("secrets", "ls", "--json", cwd=project).stdout)["secrets"] == {}


@dataclass
class Terminal:
    """The CLI on a pseudo-terminal (its controlling tty), so it prompts as it does for a person."""

    proc: subprocess.Popen[bytes]
    master: int
    output: bytes = b""

    @classmethod
    def start(cls, cli: TakoCLI, *args: str, cwd: Path) -> Terminal:
        master, slave = os.openpty()

        def make_controlling_tty() -> None:
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        proc = subprocess.Popen(
            [cli.executable, *args],
            cwd=cwd,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=cli.env(),
            preexec_fn=make_controlling_tty,
        )
        os.close(slave)
        return cls(proc, master)

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        self.output += chunk
        return bool(chunk)

    def expect(self, text: bytes, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert time.monotonic() < deadline, f"no {text!r} on the terminal: {self.output!r}"
            assert self._read(0.1), f"the terminal closed before {text!r}: {self.output!r}"

    def type_hidden(self, text: str) -> None:
        """Type once the terminal's echo is off (click writes the prompt before getpass turns it off)."""
        wait_for(lambda: not termios.tcgetattr(self.master)[3] & termios.ECHO, timeout=30, what="echo off")
        os.write(self.master, text.encode() + b"\n")

    def close(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._read(0.1):
            pass
        code = self.proc.wait(timeout=max(deadline - time.monotonic(), 1))
        os.close(self.master)
        return code


def test_on_a_terminal_the_value_is_masked_and_rm_asks(cli: TakoCLI, tmp_path: Path) -> None:
    from tako.secrets import load_env_secrets

    project = secrets_project(tmp_path, name="secretapp-tty")
    value = one_line_value().strip()  # typed: the terminal keeps what a person types, minus the newline
    term = Terminal.start(cli, "secrets", "set", "API_KEY", cwd=project)
    try:
        term.expect(b"Value of API_KEY for production:")
        term.type_hidden(value)
        term.expect(b"Repeat for confirmation:")
        term.type_hidden(value)
    finally:
        code = term.close()
    assert code == 0, term.output
    assert token_of(value).encode() not in term.output, "the typed value was echoed"
    stored = load_env_secrets(project, "production", home=cli.home)["API_KEY"]
    assert stored.reveal() == value

    store = project / ".tako" / "secrets"
    before = store.read_bytes()
    for answer, removes in (("n", False), ("y", True)):
        term = Terminal.start(cli, "secrets", "rm", "API_KEY", cwd=project)
        try:
            term.expect(b"Remove secret API_KEY from production?")
            os.write(term.master, answer.encode() + b"\n")
        finally:
            code = term.close()
        assert (code == 0) == removes, term.output
        if not removes:
            assert store.read_bytes() == before
    assert json.loads(cli.ok("secrets", "ls", "--json", cwd=project).stdout)["secrets"] == {}


def token_of(value: str) -> str:
    return next(word for word in value.split() if word.startswith("tok"))
