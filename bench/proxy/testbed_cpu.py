"""CPU per request of tako-server installed on a testbed host, one server setting at a time.

    sudo .venv/bin/python bench/proxy/testbed_cpu.py up
    sudo .venv/bin/python bench/proxy/testbed_cpu.py set '[access_log]\\nenabled = false'
    sudo .venv/bin/python bench/proxy/testbed_cpu.py measure [--connections 100] [--duration 5] [--inside]
    sudo .venv/bin/python bench/proxy/testbed_cpu.py down

`up` brings up a host of its own (`TAKO_TESTBED_PREFIX=bq-`, /var/tmp/tako-bench-cpu: it may run beside
`bench/proxy/run --through-testbed`), installs tako-server there with its defaults and deploys the
benchmark's app with the `tako` CLI (through_testbed.py). `set` writes the server's config file
(`[server]` and the text given, `\\n` for new lines), restarts tako-server and waits until the app answers.
`measure` runs wrk (HTTPS, the host's address as SNI and Host) from this machine over the veth pair, or
from inside the host over loopback (`--inside`), and prints the CPU time each tako-server process used
(user and system, from /proc) divided by the requests wrk completed. Hold the bench lock around it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support.testbed import Host, Testbed  # noqa: E402
from through_testbed import HOST_NAME, deploy_upstream, tako_server_processes  # noqa: E402  (bench/proxy)

STATE_DIR = Path("/var/tmp/tako-bench-cpu")
PREFIX = "bq-"
CONFIG = "/opt/tako/server-config.toml"
APP_DIR_PREFIX = "tako-bench-cpu-"  # the deployed app's files, under the temporary directory until `down`


def _bed() -> Testbed:
    return Testbed(STATE_DIR, PREFIX)


def up() -> None:
    bed = _bed()
    bed.down()
    host = bed.up(HOST_NAME)[0]
    # The app's files (its instance runs as a uid of its own, which must reach them), kept while it runs.
    root = Path(tempfile.mkdtemp(prefix=APP_DIR_PREFIX))
    os.chmod(root, 0o755)
    port = deploy_upstream(host, root)
    print(json.dumps({"address": host.address, "netns": host.netns, "instance_port": port}))


def set_config(host: Host, text: str) -> None:
    host.exec(f"cat > {CONFIG}", input="[server]\n" + text.replace("\\n", "\n") + "\n", check=True)
    host.exec("tako-server-service restart", check=True)
    context = ssl._create_unverified_context()  # the host's self-signed certificate
    request = urllib.request.Request(f"https://{host.address}/", headers={"Host": host.address})
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(request, context=context, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def _cpu(pid: int) -> tuple[float, float]:
    """User and system seconds of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def measure(host: Host, connections: int, duration: int, inside: bool) -> None:
    pids = [p.pid for p in tako_server_processes(host)]
    wrk = [
        "wrk",
        "-t2",
        f"-c{connections}",
        f"-d{duration}s",
        "--timeout",
        "5s",
        "-H",
        f"Host: {host.address}",
    ]
    argv = [*(host.enter_args() if inside else []), *wrk, f"https://{host.address}/"]
    before = {pid: _cpu(pid) for pid in pids}
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30).stdout
    after = {pid: _cpu(pid) for pid in pids}
    found = re.search(r"(\d+) requests in", out)
    requests = int(found.group(1)) if found else 0
    if not requests:
        raise SystemExit(f"wrk completed no requests:\n{out}")
    parts = []
    total = 0.0
    for pid in pids:
        user, system = (after[pid][i] - before[pid][i] for i in (0, 1))
        total += user + system
        parts.append(f"{pid}: user {user / requests * 1e6:.1f} + system {system / requests * 1e6:.1f}")
    path = "loopback" if inside else "veth"
    per_request = total / requests * 1e6
    print(f"{requests / duration:,.0f} req/s over {path}, {per_request:.1f} µs/request ({'; '.join(parts)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up")
    sub.add_parser("down")
    setting = sub.add_parser("set")
    setting.add_argument("toml", help="the config after [server] (\\n for new lines)")
    run = sub.add_parser("measure")
    run.add_argument("--connections", type=int, default=100)
    run.add_argument("--duration", type=int, default=5)
    run.add_argument("--inside", action="store_true", help="wrk inside the host, over loopback")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (a testbed host)")
    if args.command == "up":
        up()
    elif args.command == "down":
        _bed().down()
        for left in Path(tempfile.gettempdir()).glob(f"{APP_DIR_PREFIX}*"):  # the app's files, from `up`
            shutil.rmtree(left, ignore_errors=True)
    elif args.command == "set":
        set_config(_bed().host(HOST_NAME), args.toml)
    else:
        measure(_bed().host(HOST_NAME), args.connections, args.duration, args.inside)


if __name__ == "__main__":
    sys.exit(main())
