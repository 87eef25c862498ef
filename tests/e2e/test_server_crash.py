"""A SIGKILL of tako-server on a testbed host (no systemd: tako-server-service's supervisor) under a request
loop over HTTPS, with `[server] workers` 1 and 2: the supervisor starts tako-server again, which adopts the
running instance (same pid); only the requests the killed process held fail (connections arriving while
no tako-server runs wait in the backlog of the listening sockets the supervisor keeps; with workers = 2 the
orphaned data-plane worker serves meanwhile, and exits once the next tako-server serves); and the app's
output reaches app.log during the outage and after it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests.e2e.test_server_service import control, servers_on, the_server, wait_serving
from tests.support.projects import wait_for
from tests.support.testbed import Host, Testbed
from tests.support.threads import looping

pytestmark = pytest.mark.e2e

APP = "crashy"
ROUTE = "crashy.tako.test"
APP_DIR = f"/opt/tako/apps/{APP}"
RELEASE = f"{APP_DIR}/releases/v1"
TESTAPP = Path(__file__).resolve().parents[1] / "support" / "apps" / "testapp.py"
# The app prints a timestamped line every 50 ms by itself, so its output has a witness for every moment.
START = "sh -c 'while :; do echo tick $(date +%s%N); sleep 0.05; done & exec python3 testapp.py'"
MAX_REQUESTS = 20000  # the loop's bound besides its stop event

_TLS = ssl.create_default_context()
_TLS.check_hostname = False
_TLS.verify_mode = ssl.CERT_NONE  # the host may still be on its fallback certificate


@dataclass
class Outcomes:
    """What each request of the loop saw: (monotonic start, monotonic end, what) per request."""

    seen: list[tuple[float, float, str]] = field(default_factory=list)

    def failures(self) -> list[tuple[float, float, str]]:
        return [s for s in self.seen if s[2] != "ok"]


def one_request(address: str) -> str:
    try:
        raw = socket.create_connection((address, 443), timeout=10)
    except ConnectionRefusedError:
        return "refused"  # no tako-server listening at that moment
    except OSError as exc:
        return f"connect: {exc}"
    try:
        with _TLS.wrap_socket(raw, server_hostname=ROUTE) as tls:
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {ROUTE}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    except OSError as exc:
        return f"held: {exc}"  # accepted by the process that was killed
    if not data:
        # Closed with no byte of an answer: the killed process accepted it (the kernel closes its sockets
        # with a FIN when the request had not yet arrived, with a reset when it had).
        return "held: closed without an answer"
    status = data.split(b" ", 2)[1] if data.startswith(b"HTTP/") else b"?"
    return "ok" if status == b"200" else f"status {status.decode(errors='replace')}"


def instance_pids(host: Host) -> list[int]:
    reply = control(host, "status", app=APP)
    return [i["pid"] for i in reply["data"]["instances"]]  # type: ignore[index]


def ticks(host: Host) -> list[int]:
    """The nanosecond timestamps of the app's tick lines in app.log (and its rotated predecessor)."""
    out = host.exec(f"cat {APP_DIR}/shared/logs/app.log.1 {APP_DIR}/shared/logs/app.log 2>/dev/null").stdout
    return [
        int(line.split()[-1]) for line in out.splitlines() if " tick " in line and line.split()[-1].isdigit()
    ]


def restart_with_workers(host: Host, workers: int) -> None:
    """`[server] workers` set explicitly in server-config.toml; tako-server-service restart, returning once
    the control socket answers."""
    config = "/opt/tako/server-config.toml"
    host.exec(
        f"sed -i '/^workers *=/d; s/^\\[server\\]$/[server]\\nworkers = {workers}/' {config}", check=True
    )
    host.exec("tako-server-service restart", check=True, timeout=120)
    wait_serving(host)


def deploy_app(host: Host) -> None:
    """The app (one always-on instance) as a deploy leaves it, deployed through the control socket."""
    host.exec(f"mkdir -p {RELEASE} {APP_DIR}/shared/logs", user="tako", check=True)
    host.exec(f"cat > {RELEASE}/testapp.py", user="tako", input=TESTAPP.read_text(), check=True)
    meta = {"name": APP, "version": "v1", "start": START, "env": "production"}
    host.exec(f"cat > {RELEASE}/app.json", user="tako", input=json.dumps(meta), check=True)
    host.exec(f"umask 077 && printf 'TAKO_BUILD=\"v1\"\\n' > {RELEASE}/.env", user="tako", check=True)
    control(host, "deploy", app=APP, version="v1", path=RELEASE, routes=[ROUTE], instances=1)


@pytest.fixture(scope="module", params=[1, 2], ids=["workers=1", "workers=2"])
def host(testbed: Testbed, request: pytest.FixtureRequest) -> Iterator[Host]:
    name = f"crash{request.param}"
    (host,) = testbed.up(name)
    try:
        restart_with_workers(host, request.param)
        deploy_app(host)
        yield host
    finally:
        testbed.down(name)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def adopted_wall_ns(host: Host, pid: int) -> int:
    """When tako-server `pid` had adopted the running instances, on the wall clock: from its start-up line
    (`start-up: pid=P started=EPOCH python=S imports=S ... adopt=S ...`, stages in order)."""
    log = host.exec(f"grep -h 'start-up: pid={pid} ' /opt/tako/logs/tako-server.log*").stdout.splitlines()
    assert log, f"no start-up line of tako-server {pid}"
    fields = dict(part.split("=", 1) for part in log[-1].split("start-up: ", 1)[1].split())
    at = float(fields.pop("started"))
    for stage in ("python", "imports", "lock", "restore", "adopt"):
        at += float(fields[stage])
    return int(at * 1e9)


def what_it_does(host: Host, pid: int) -> str:
    """A process that should have exited: its state, threads, descriptors, Python stack and log lines."""
    proc = Path(f"/proc/{pid}")
    parts = [f"pid {pid}:"]
    with contextlib.suppress(OSError):
        status = (proc / "status").read_text().splitlines()
        parts += [line for line in status if line.split(":")[0] in ("State", "PPid", "Threads")]
    for name in ("wchan", "stack"):
        with contextlib.suppress(OSError):
            parts.append(f"-- {name}:\n{(proc / name).read_text()}")
    with contextlib.suppress(OSError):
        for task in sorted((proc / "task").iterdir()):
            comm, wchan = (task / "comm").read_text().strip(), (task / "wchan").read_text()
            parts.append(f"-- thread {task.name} {comm} in {wchan}")
    commands = [["ls", "-l", str(proc / "fd")]]
    if spy := os.environ.get("PY_SPY") or shutil.which("py-spy"):  # its Python stack, where installed
        commands.append([spy, "dump", "--pid", str(pid)])
    for argv in commands:
        run = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
        parts.append(f"-- {' '.join(argv)}:\n{run.stdout}{run.stderr}")
    logged = host.exec(f"grep -h '\\[{pid}\\]' /opt/tako/logs/tako-server.log* | tail -n 30").stdout
    parts.append(f"-- its log lines:\n{logged}")
    return "\n".join(parts)


def worker_pids(host: Host) -> list[int]:
    data: dict[str, list[dict[str, int]]] = control(host, "hello")["data"]  # type: ignore[assignment]
    return [int(w["pid"]) for w in data.get("workers", [])]


def test_kill_9_of_tako_server_under_load_keeps_the_instance_and_its_output(host: Host) -> None:
    before = instance_pids(host)
    old_server = the_server(host)
    orphans = worker_pids(host)
    outcomes = Outcomes()
    stop = threading.Event()

    def loop() -> None:
        for _ in range(MAX_REQUESTS):
            if stop.is_set():
                return
            begin = time.monotonic()
            what = one_request(host.address)
            outcomes.seen.append((begin, time.monotonic(), what))
            if what == "refused":
                stop.wait(0.005)  # a refused connect returns at once: don't spin while no server listens

    with looping(loop, stop, "requests"):
        wait_for(
            lambda: sum(1 for s in outcomes.seen if s[2] == "ok") >= 20, timeout=60, what="the loop serving"
        )
        killed_wall = time.time_ns()
        killed = time.monotonic()
        os.kill(old_server, signal.SIGKILL)
        wait_for(
            lambda: any(s[0] > killed and s[2] == "ok" for s in outcomes.seen),
            timeout=60,
            what="serving again",
        )
        resumed = min(s[1] for s in outcomes.seen if s[0] > killed and s[2] == "ok")
        wait_for(
            lambda: sum(1 for s in outcomes.seen if s[0] > resumed) >= 20, timeout=60, what="more requests"
        )

    wait_serving(host)  # with workers = 2 the orphan serves before the next tako-server does
    new_server = the_server(host)
    assert new_server != old_server and servers_on(host) == [new_server]
    assert instance_pids(host) == before  # adopted: the very same process
    # The orphaned workers (workers = 2) stop once the next tako-server serves; its own workers serve on.
    try:
        wait_for(lambda: not any(map(alive, orphans)), timeout=60, what="the orphaned workers to exit")
    except AssertionError:
        print("\n\n".join(what_it_does(host, pid) for pid in orphans if alive(pid)))
        raise
    failures = outcomes.failures()
    # Only the requests the killed process held fail: none was refused (the supervisor kept the listening
    # sockets), none failed once serving resumed.
    assert all(f[2].startswith("held") for f in failures), failures
    assert all(f[0] < resumed for f in failures), failures
    print(
        f"kill -9 under load, {len(orphans) + 1} data-plane process(es): a request sent after the kill "
        f"was answered {resumed - killed:.3f} s after it; {len(outcomes.seen)} requests, {len(failures)} "
        "failed, all held by the killed process"
    )
    # The app's output reached app.log while no tako-server held the instance (from the kill until the next
    # one adopted it; with workers = 2 the orphan answers requests within milliseconds meanwhile), and after.
    restarted_wall = adopted_wall_ns(host, new_server)
    wait_for(lambda: any(t > restarted_wall for t in ticks(host)), timeout=30, what="output after it")
    stamps = ticks(host)
    assert any(killed_wall <= t <= restarted_wall for t in stamps), "no output logged before adoption"
