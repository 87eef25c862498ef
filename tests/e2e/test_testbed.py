"""The testbed itself: isolated hosts with real sshd and a tako-server installed by scripts/install-server,
partitions, idempotent bring-up, in-place reinstall, size-limited disks, and teardown that leaves nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import urllib.request
from collections.abc import Iterator

import pytest
from tests.support.testbed import Host, Testbed, TestbedError

pytestmark = pytest.mark.e2e

HELLO = """
import json, socket
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect("/var/run/tako/tako.sock")
s.sendall(b'{"command":"hello"}\\n')
print(s.makefile("rb").readline().decode().strip())
"""


@pytest.fixture(scope="module")
def pair(testbed: Testbed) -> Iterator[tuple[Host, Host]]:
    a, b = testbed.up("tb-a", "tb-b")
    try:
        yield a, b
    finally:
        testbed.down("tb-a", "tb-b")


def server_pid(host: Host) -> int:
    proc = host.exec("cat /var/run/tako/tako-server.pid", check=True)
    return int(proc.stdout.strip())


def hello(host: Host) -> dict[str, object]:
    proc = host.exec(["/opt/tako-server/venv/bin/python", "-c", HELLO], check=True)
    reply: dict[str, object] = json.loads(proc.stdout)
    return reply


def live_pid(pid: int) -> bool:
    """Running (zombies awaiting their reaper don't count: they hold no namespace, socket or mount)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_hosts_are_listed_with_their_access(pair: tuple[Host, Host]) -> None:
    a, b = pair
    for host in (a, b):
        assert host.state == "running"
        assert host.user == "tako"
        assert host.ssh_port == 22
        assert re.fullmatch(r"10\.213\.\d+\.\d+", host.address)
        assert os.path.exists(host.key)
        assert not host.partitioned
    assert a.address != b.address
    assert a.netns != b.netns


def test_each_host_has_its_own_opt_run_and_home(pair: tuple[Host, Host]) -> None:
    a, b = pair
    a.exec(
        "echo from-a > /opt/tako/marker && echo a > /var/run/tako/marker && touch /home/tako/marker",
        check=True,
    )
    assert a.exec("cat /opt/tako/marker", check=True).stdout == "from-a\n"
    assert b.exec("test -e /opt/tako/marker").returncode == 1
    assert b.exec("test -e /var/run/tako/marker").returncode == 1
    assert b.exec("test -e /home/tako/marker").returncode == 1
    # Nor does it leak into the machine running the tests.
    assert not os.path.exists("/opt/tako/marker")
    assert a.exec("hostname", check=True).stdout.strip() == a.name


def test_cli_exec_runs_inside_the_host_and_propagates_status(
    testbed: Testbed, pair: tuple[Host, Host]
) -> None:
    a, _ = pair
    assert testbed.exec(a.name, "exit 7").returncode == 7
    assert testbed.exec(a.name, ["id", "-un"]).stdout.strip() == "root"
    assert testbed.exec(a.name, ["id", "-un"], user="tako").stdout.strip() == "tako"
    assert testbed.exec(a.name, ["cat"], input="through stdin").stdout == "through stdin"
    assert testbed.exec(a.name, ["hostname"]).stdout.strip() == a.name


def test_ssh_as_tako_with_the_testbed_key(pair: tuple[Host, Host]) -> None:
    for host in pair:
        proc = host.ssh("id -un; hostname; test -w /opt/tako/apps && echo writable")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["tako", host.name, "writable"]


def test_tako_server_answers_hello(pair: tuple[Host, Host]) -> None:
    for host in pair:
        reply = hello(host)
        assert reply["status"] == "ok"
        assert isinstance(reply["data"], dict)
        assert reply["data"]["protocol"] == 1


def test_installed_server_runs_the_compiled_proxy(pair: tuple[Host, Host]) -> None:
    """The testbed's wheel is built like a release wheel: the proxy's per-request modules compiled."""
    a, _ = pair
    log = a.exec(["cat", "/opt/tako/logs/tako-server.log"], check=True).stdout
    ready = [line for line in log.splitlines() if "tako-server ready" in line]
    assert ready, log[-2000:]
    assert "data_plane=compiled" in ready[-1].split(), ready[-1]
    # Installed by install-server, it holds the capabilities to run each app as its own uid.
    assert "isolation=on" in ready[-1].split(), ready[-1]


def test_tako_server_serves_port_80_as_tako(pair: tuple[Host, Host]) -> None:
    """Port 80 is bound by the unprivileged tako user and reachable from the machine running the tests."""
    a, _ = pair
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an environment proxy
    with direct.open(f"http://{a.address}/_tako/status", timeout=10) as resp:
        assert resp.status == 200
        assert "apps" in json.loads(resp.read())
    listeners = a.exec(["ss", "-Hltnp", "sport = :80"], check=True).stdout
    assert "tako-server" in listeners


def test_socket_is_reachable_over_ssh_with_nc(pair: tuple[Host, Host]) -> None:
    """The CLI's fallback path: `nc -U` on the socket, as user tako, over SSH."""
    a, _ = pair
    proc = a.ssh("""printf '{"command":"hello"}\\n' | nc -N -U /var/run/tako/tako.sock""")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[0])["status"] == "ok"


def test_server_runs_as_tako_and_restarts_through_the_service_script(pair: tuple[Host, Host]) -> None:
    _, b = pair
    before = server_pid(b)
    assert b.exec(["stat", "-c", "%U", f"/proc/{before}"], check=True).stdout.strip() == "tako"
    proc = b.ssh("tako-server-service restart && tako-server-service status")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("active")
    after = server_pid(b)
    assert after != before
    assert not live_pid(before)
    wait_for_hello(b)


def wait_for_hello(host: Host) -> None:
    # A restarted server needs a moment to open its socket: poll, bounded (10 s).
    proc = host.exec(
        "for i in $(seq 100); do [ -S /var/run/tako/tako.sock ] && "
        'printf \'{"command":"hello"}\\n\' | nc -N -U /var/run/tako/tako.sock | grep -q \'"ok"\' && exit 0; '
        "sleep 0.1; done; exit 1"
    )
    assert proc.returncode == 0, "tako-server did not answer hello within 10 s after a restart"


def test_cut_makes_ssh_fail_fast_and_heal_restores(pair: tuple[Host, Host]) -> None:
    a, b = pair
    a.cut()
    try:
        assert a.testbed is not None and a.testbed.host(a.name).partitioned
        proc = a.ssh("true")
        assert proc.returncode == 255
        assert "unreachable" in proc.stderr.lower() or "no route" in proc.stderr.lower(), proc.stderr
        # The other host is unaffected.
        assert b.ssh("true").returncode == 0
    finally:
        a.heal()
    assert a.ssh("true").returncode == 0


def test_up_is_idempotent(testbed: Testbed, pair: tuple[Host, Host]) -> None:
    a, b = pair
    pids = {h.name: (h.pid, server_pid(h)) for h in pair}
    again = testbed.up(a.name, b.name)
    for host in again:
        assert host.address == {a.name: a.address, b.name: b.address}[host.name]
        assert (host.pid, server_pid(host)) == pids[host.name]


def test_up_restarts_a_dead_tako_server(testbed: Testbed, pair: tuple[Host, Host]) -> None:
    a, _ = pair
    a.exec("tako-server-service stop", check=True)
    assert a.exec("tako-server-service status").stdout.strip() == "inactive"
    testbed.up(a.name)
    assert a.exec("tako-server-service status").stdout.strip() == "active"
    wait_for_hello(a)


def test_up_leaves_a_cut_host_cut_and_restarts_a_dead_sshd(testbed: Testbed, pair: tuple[Host, Host]) -> None:
    a, _ = pair
    a.cut()
    try:
        (same,) = testbed.up(a.name)
        assert same.partitioned
        assert same.sshd_pid == a.sshd_pid
    finally:
        a.heal()
    os.kill(a.sshd_pid, signal.SIGKILL)
    (fixed,) = testbed.up(a.name)
    assert fixed.sshd_pid != a.sshd_pid
    assert fixed.pid == a.pid
    assert fixed.ssh("true").returncode == 0


def test_prefixes_do_not_clash(
    testbed: Testbed, pair: tuple[Host, Host], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two state dirs / prefixes on one machine (parallel test runs): same host name, separate hosts."""
    a, _ = pair
    other = Testbed(tmp_path_factory.mktemp("other-testbed"), testbed.prefix + "x-")
    try:
        (twin,) = other.up(a.name)
        assert twin.address != a.address
        assert twin.netns != a.netns
        assert twin.ssh("hostname").stdout.strip() == a.name
        twin.exec("touch /opt/tako/twin", check=True)
        assert a.exec("test -e /opt/tako/twin").returncode == 1
    finally:
        other.destroy()
    assert a.ssh("true").returncode == 0


def test_reinstall_upgrades_in_place(testbed: Testbed, pair: tuple[Host, Host]) -> None:
    a, _ = pair
    config_before = a.exec("cat /opt/tako/server-config.toml", check=True).stdout
    a.exec("echo keep > /opt/tako/apps/keep", check=True)
    before = server_pid(a)
    testbed.reinstall(a.name)
    assert server_pid(a) != before
    assert hello(a)["status"] == "ok"
    assert a.exec("cat /opt/tako/server-config.toml", check=True).stdout == config_before
    assert a.exec("cat /opt/tako/apps/keep", check=True).stdout == "keep\n"
    keys = a.exec("cat /home/tako/.ssh/authorized_keys", check=True).stdout.splitlines()
    assert len(keys) == 1  # the key is not appended twice
    assert a.ssh("true").returncode == 0


def test_disk_limited_host(testbed: Testbed) -> None:
    (host,) = testbed.up("tb-disk", disk_mb=48)
    try:
        size_kib = int(host.exec("df -k --output=size /opt/tako | tail -n 1", check=True).stdout)
        assert size_kib == 48 * 1024
        assert hello(host)["status"] == "ok"
        # Filling it fails like a full disk would.
        proc = host.exec("dd if=/dev/zero of=/opt/tako/fill bs=1M count=64", user="tako")
        assert proc.returncode != 0
        assert "No space left" in proc.stderr
    finally:
        testbed.down(host.name)


def namespace_processes(mnt_inode: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/mnt").st_ino == mnt_inode and live_pid(int(entry)):
                found.append(int(entry))
        except OSError:
            continue
    return found


def test_down_leaves_nothing_behind(testbed: Testbed) -> None:
    (host,) = testbed.up("tb-gone")
    host.exec("sleep 600 </dev/null >/dev/null 2>&1 &", user="tako", check=True)  # a stray process to kill
    mnt_inode = os.stat(f"/proc/{host.pid}/ns/mnt").st_ino
    pids = set(namespace_processes(mnt_inode))
    pids |= {
        int(p)
        for p in subprocess.run(
            ["ip", "netns", "pids", host.netns], capture_output=True, text=True, check=True
        ).stdout.split()
    }
    assert {host.pid, server_pid(host)} <= pids
    assert len(pids) >= 4  # anchor, sshd, tako-server, the stray sleep

    testbed.down(host.name)

    assert (
        host.netns
        not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    )
    assert subprocess.run(["ip", "link", "show", host.veth], capture_output=True).returncode != 0
    assert [p for p in pids if live_pid(p)] == []
    assert namespace_processes(mnt_inode) == []
    with open("/proc/self/mountinfo") as fh:
        assert host.dir not in fh.read()
    assert not os.path.exists(host.dir)
    assert host.name not in [h.name for h in testbed.hosts()]
    with pytest.raises(TestbedError, match="gone"):
        host.exec("true")  # a stale Host never enters another process's namespaces
