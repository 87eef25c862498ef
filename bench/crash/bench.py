"""Crash benchmark: what `kill -9` of tako-server costs the requests arriving meanwhile, and where the time
until the next tako-server serves goes.

    sudo bench/crash/run [--kills 10] [--workers 1]

Brings up its own testbed host (prefix bc-, state in /var/tmp/tako-bench-crash; tako-server-service's
supervisor, as installed by install-server) with one always-on app, and tears it down at the end. Two
client threads loop over HTTPS, a new connection per request. Each round kills tako-server with SIGKILL
and records: the time from the kill until a request sent after it was answered, the longest request, the
requests refused (no listener) and held (accepted by the killed process), and the new tako-server's
start-up stages from its `start-up:` log line (the supervisor's delay is the kill to the new process's
start). Two modes, same build: `kept` (the supervisor's descriptor store keeps the listening sockets) and
`lost` (the store is killed too, so the sockets die with tako-server: how it was before the store).
Writes results.json beside this file and its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.e2e.test_server_crash import deploy_app, one_request, restart_with_workers  # noqa: E402
from tests.e2e.test_server_service import servers_on, the_server  # noqa: E402
from tests.support.projects import wait_for  # noqa: E402
from tests.support.testbed import Host, Testbed  # noqa: E402

LOG = "/opt/tako/logs/tako-server.log"
STAGES = ("python", "imports", "lock", "restore", "adopt", "proxy", "listen", "workers", "control")
MIN_SPACING = 2.5  # s between kills: the supervisor gives up after 5 starts within 10 s
MARKERS = ("<!-- bench/crash:start -->", "<!-- bench/crash:end -->")


def processes(host: Host, needle: bytes) -> list[int]:
    """Pids of the host's processes whose command line holds `needle`."""
    mnt = os.stat(f"/proc/{host.pid}/ns/mnt").st_ino
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{entry}/ns/mnt").st_ino != mnt:
                continue
            if needle in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.append(int(entry))
        except OSError:
            continue
    return found


def startup_line(host: Host, pid: int) -> dict[str, float]:
    """The stages of the tako-server `pid` from its `start-up:` log line (empty when not found)."""
    out = host.exec(f"grep -a 'start-up: ' {LOG} | tail -n 20").stdout
    for line in reversed(out.splitlines()):
        if f"start-up: pid={pid} " in line:
            pairs = re.findall(r"(\w+)=([0-9.]+)", line.split("start-up: ", 1)[1])
            return {k: float(v) for k, v in pairs}
    return {}


def one_kill(host: Host, mode: str) -> dict[str, Any]:
    """Kill tako-server (and in `lost` mode the descriptor store) under the loop; what the clients saw."""
    seen: list[tuple[float, float, str]] = []
    stop = threading.Event()

    def loop() -> None:
        for _ in range(20000):
            if stop.is_set():
                return
            begin = time.time()
            what = one_request(host.address)
            seen.append((begin, time.time(), what))
            if what == "refused":
                stop.wait(0.005)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: sum(1 for s in seen if s[2] == "ok") >= 10, timeout=60, what="the loop serving")
        old = the_server(host)
        victims = [old, *(processes(host, b"tako.server.fd_holder") if mode == "lost" else [])]
        killed = time.time()
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: any(s[0] > killed and s[2] == "ok" for s in seen), timeout=60, what="serving again")
        resumed = min(s[1] for s in seen if s[0] > killed and s[2] == "ok")
        wait_for(lambda: sum(1 for s in seen if s[0] > resumed) >= 10, timeout=60, what="more requests")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    new = the_server(host)
    stages = startup_line(host, new)
    around = [s for s in seen if s[1] > killed - 0.001]
    return {
        "resumed_s": resumed - killed,
        "longest_request_s": max(e - b for b, e, _ in around),
        "refused": sum(1 for s in seen if s[2] == "refused"),
        "held": sum(1 for s in seen if s[2].startswith("held")),
        "other_failures": sorted(
            {s[2] for s in seen if s[2] != "ok" and s[2] != "refused" and "held" not in s[2]}
        ),
        "requests": len(seen),
        "supervisor_s": stages.get("started", killed) - killed,
        **{name: stages.get(name, 0.0) for name in STAGES},
    }


def spread(values: list[float]) -> str:
    """`median (p90, max)` of seconds."""
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return f"{statistics.median(ordered):.3f} ({p90:.3f}, {ordered[-1]:.3f})"


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown: one column per mode, medians (p90, max) over the kills."""
    modes = list(results)
    head = "| per kill -9, median (p90, max) | " + " | ".join(f"sockets {m}" for m in modes) + " |"
    lines = [head, "|---|" + "---|" * len(modes)]
    rows = [("served again after the kill (s)", "resumed_s"), ("longest request (s)", "longest_request_s")]
    rows += [("supervisor: kill to new process (s)", "supervisor_s")]
    rows += [(f"start-up: {name} (s)", name) for name in STAGES]
    for label, key in rows:
        lines.append(f"| {label} | " + " | ".join(spread([r[key] for r in results[m]]) for m in modes) + " |")
    for label, key in (("refused connections (total)", "refused"), ("held by the killed process", "held")):
        lines.append(f"| {label} | " + " | ".join(str(sum(r[key] for r in results[m])) for m in modes) + " |")
    total = " | ".join(str(sum(r["requests"] for r in results[m])) for m in modes)
    lines.append(f"| requests (total) | {total} |")
    return "\n".join(lines)


def write_section(text: str) -> None:
    """Replace this benchmark's section of docs/benchmarks.md (between its markers)."""
    doc = REPO / "docs" / "benchmarks.md"
    current = doc.read_text()
    start, end = MARKERS
    if start in current and end in current:
        before, rest = current.split(start, 1)
        after = rest.split(end, 1)[1]
        doc.write_text(f"{before}{start}\n{text}\n{end}{after}")
    else:
        doc.write_text(f"{current.rstrip()}\n\n{start}\n{text}\n{end}\n")


def run(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    bed = Testbed(Path("/var/tmp/tako-bench-crash"), "bc-")
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        (host,) = bed.up("h1")
        restart_with_workers(host, args.workers)
        deploy_app(host)
        for mode in args.modes:
            rows = results[mode] = []
            # The supervisor starts again at once a tako-server that ran 2 s or more, 0.2 s later a younger
            # one: the first kill, too, of a server that has run as long as the others.
            time.sleep(MIN_SPACING)
            for i in range(args.kills):
                began = time.monotonic()
                rows.append(one_kill(host, mode))
                print(f"{mode} {i + 1}/{args.kills}: {json.dumps(rows[-1])}", flush=True)
                time.sleep(max(0.0, MIN_SPACING - (time.monotonic() - began)))
            if mode == "lost":
                restart_with_workers(host, args.workers)  # a descriptor store again
            wait_for(lambda: len(servers_on(host)) == 1, timeout=30, what="one tako-server")
    finally:
        bed.destroy()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=10, help="kills per mode")
    parser.add_argument("--workers", type=int, default=1, help="[server] workers on the host")
    parser.add_argument("--modes", nargs="+", default=["kept", "lost"], choices=["kept", "lost"])
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/crash needs root (it creates testbed hosts)", file=sys.stderr)
        return 2
    results = run(args)
    command = f"sudo bench/crash/run --kills {args.kills} --workers {args.workers}"
    doc = {"command": command, "load_average": os.getloadavg(), "when": time.ctime(), "results": results}
    (Path(__file__).parent / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    text = table(results)
    note = f"`{command}`, {time.strftime('%Y-%m-%d')}, load average {os.getloadavg()[0]:.1f}:"
    write_section(f"{note}\n\n{text}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
