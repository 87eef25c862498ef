"""Deploy benchmark (issue 6 §11): wall time of `tako deploy` to 1, 3 and 10 testbed hosts (one instance
each) and to 3 hosts x 3 instances, with a per-step breakdown read from the deploy's plain output.

    sudo bench/deploy/run [--reps N] [--out bench/deploy/results.json]

Brings up its own testbed hosts (TAKO_TESTBED_PREFIX=bd-, TAKO_TESTBED_DIR=/var/tmp/tako-bench-deploy) and
tears them down at the end. Each scenario deploys once to warm up (first deploy: starts the app), then
times N redeploys of a new commit (rolling updates). Numbers are medians; the machine is shared.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.e2e.conftest import user_home_with_key  # noqa: E402
from tests.support.projects import commit_all, make_project  # noqa: E402
from tests.support.testbed import Host, Testbed  # noqa: E402

TAKO = REPO / ".venv" / "bin" / "tako"
STATE_DIR = Path("/var/tmp/tako-bench-deploy")
PREFIX = "bd-"

# (label, number of hosts, instances per host)
SCENARIOS = [("1 host x 1", 1, 1), ("3 hosts x 1", 3, 1), ("10 hosts x 1", 10, 1), ("3 hosts x 3", 3, 3)]

# Plain progress texts (tako.deploy.pipeline) -> step names, in pipeline order.
STEPS = [
    ("connecting to", "connect"),
    ("taking the deploy lock", "lock"),
    ("checking free disk space", "disk"),
    ("checking tako-server", "server"),
    ("checking route conflicts", "routes"),
    ("creating release directories", "dirs"),
    ("uploading", "upload"),
    ("uploaded", "upload"),
    ("unpacking the release", "extract"),
    ("linking shared directories", "link"),
    ("writing .env", "env"),
    ("starting instances", "deploy (rolling update)"),
    ("switching current", "current"),
    ("removing old releases", "prune"),
    ("releasing the lock", "unlock"),
    ("ok:", "end"),
    ("FAILED", "end"),
]


@dataclass
class Run:
    wall: float
    local: float  # process start -> "Deploying ..." (imports, build, version, archive)
    after: float  # last server finished -> process exit (summary, interpreter exit)
    steps: dict[str, float] = field(default_factory=dict)  # slowest server's time per step
    cli_cpu: float = 0.0  # CPU seconds of the tako process (user + system)
    busy_cores: float = 0.0  # the whole machine's average busy cores during the deploy
    hosts_cpu: float = 0.0  # CPU seconds spent inside the target hosts (sshd, tako-server, apps, commands)
    overlap: float = 0.0  # sum of the servers' pipeline spans / the span of all of them (n = fully parallel)
    start_spread: float = 0.0  # first to last server starting to connect
    ok: bool = True
    output: str = ""


def cpu_times() -> tuple[int, int]:
    """Busy and total jiffies of the whole machine (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def step_of(text: str) -> str | None:
    for prefix, step in STEPS:
        if text.startswith(prefix):
            return step
    return None


def hosts_cpu(netns: set[int]) -> float:
    """CPU seconds used so far by the processes of the given network namespaces (reaped children
    included, so finished remote commands count through sshd and tako-server)."""
    total = 0.0
    for proc in psutil.process_iter():
        try:
            if os.stat(f"/proc/{proc.pid}/ns/net").st_ino not in netns:
                continue
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except (psutil.Error, OSError):
            continue
    return total


def timed_deploy(project: Path, env: dict[str, str], netns: set[int]) -> Run:
    """Run `tako deploy --yes`, stamping each output line as it arrives."""
    cpu_before = hosts_cpu(netns)
    start = time.monotonic()
    proc = subprocess.Popen(
        [str(TAKO), "deploy", "--yes"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    stamped: list[tuple[float, str]] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            stamped.append((time.monotonic() - start, line.rstrip("\n")))

    reader = threading.Thread(target=pump)
    reader.start()
    busy_before, total_before = cpu_times()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    busy_after, total_after = cpu_times()
    code = proc.returncode = os.waitstatus_to_exitcode(status)
    cpu_after = hosts_cpu(netns)
    reader.join(timeout=10)

    local = next((t for t, line in stamped if line.startswith("Deploying ")), 0.0)
    per_server: dict[str, list[tuple[float, str]]] = {}
    for t, line in stamped:
        if line.startswith("[") and "] " in line:
            server, text = line[1:].split("] ", 1)
            step = step_of(text)
            if step is not None:
                per_server.setdefault(server, []).append((t, step))
    # One step on one server lasts until that server's next line ("uploading" and "uploaded" add up);
    # per step, keep the slowest server's time.
    steps: dict[str, float] = {}
    last_end = local
    spans = [(events[0][0], events[-1][0]) for events in per_server.values() if events]
    overall = max(e for _, e in spans) - min(b for b, _ in spans) if spans else 0.0
    for events in per_server.values():
        spent: dict[str, float] = {}
        for (t, step), (t_next, _) in itertools.pairwise(events):
            spent[step] = spent.get(step, 0.0) + t_next - t
        for step, value in spent.items():
            steps[step] = max(steps.get(step, 0.0), value)
        last_end = max(last_end, events[-1][0])
    return Run(
        wall=wall,
        local=local,
        after=wall - last_end,
        steps=steps,
        ok=code == 0,
        cli_cpu=usage.ru_utime + usage.ru_stime,
        hosts_cpu=cpu_after - cpu_before,
        overlap=sum(e - b for b, e in spans) / overall if overall else 0.0,
        start_spread=max(b for b, _ in spans) - min(b for b, _ in spans) if spans else 0.0,
        busy_cores=(busy_after - busy_before) / (total_after - total_before) * (os.cpu_count() or 1),
        output="\n".join(line for _, line in stamped),
    )


def bump(project: Path, n: int) -> str:
    app = project / "app.py"
    text = app.read_text()
    marker = "# bench revision"
    text = text.split(marker)[0].rstrip("\n") + f"\n{marker} {n}\n"
    app.write_text(text)
    return commit_all(project, f"rev {n}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=3, help="timed redeploys per scenario (default 3)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "deploy" / "results.json")
    parser.add_argument("--keep", action="store_true", help="leave the testbed hosts up at the end")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/deploy needs root (it creates testbed hosts)", file=sys.stderr)
        return 2

    bed = Testbed(STATE_DIR, PREFIX)
    names = [f"h{i}" for i in range(1, 11)]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tako-bench-deploy-") as tmp:
        try:
            t0 = time.monotonic()
            hosts: list[Host] = bed.up(*names)
            print(f"testbed: {len(hosts)} hosts up in {time.monotonic() - t0:.1f} s", file=sys.stderr)
            home = Path(tmp) / "home"
            home.mkdir(mode=0o700)
            env = {
                **os.environ,
                "TAKO_HOME": str(home),
                # Logs in as a user does, with ~/.ssh/id_ed25519; pip keeps the real HOME's config and cache.
                "HOME": str(user_home_with_key(hosts[0].key, Path(tmp) / "user")),
                "XDG_CONFIG_HOME": os.environ.get("XDG_CONFIG_HOME", str(Path.home() / ".config")),
                "XDG_CACHE_HOME": os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")),
                "NO_COLOR": "1",
                "TERM": "dumb",
                "COLUMNS": "200",
                "PYTHONUNBUFFERED": "1",
            }
            for host in hosts:
                subprocess.run(
                    [str(TAKO), "servers", "add", host.address, "--name", host.name],
                    env=env,
                    check=True,
                    capture_output=True,
                )
            for label, count, instances in SCENARIOS:
                app = f"bench{count}x{instances}"
                project = make_project(
                    Path(tmp),
                    name=app,
                    route=f"{app}.bench.test",
                    servers={h.name: "production" for h in hosts[:count]},
                    instances=instances,
                )
                netns = {os.stat(f"/run/netns/{h.netns}").st_ino for h in hosts[:count]}
                warm = timed_deploy(project, env, netns)
                if not warm.ok:
                    print(warm.output, file=sys.stderr)
                    raise SystemExit(f"{label}: first deploy failed")
                runs = []
                for rep in range(args.reps):
                    bump(project, rep)
                    run = timed_deploy(project, env, netns)
                    if not run.ok:
                        print(run.output, file=sys.stderr)
                        raise SystemExit(f"{label}: deploy failed")
                    runs.append(run)
                    print(f"{label}: {run.wall:.2f} s", file=sys.stderr)
                step_names = sorted({s for r in runs for s in r.steps})
                results[label] = {
                    "hosts": count,
                    "instances": instances,
                    "first_deploy_s": round(warm.wall, 3),
                    "walls_s": [round(r.wall, 3) for r in runs],
                    "median_s": round(statistics.median(r.wall for r in runs), 3),
                    "local_median_s": round(statistics.median(r.local for r in runs), 3),
                    "after_median_s": round(statistics.median(r.after for r in runs), 3),
                    "cli_cpu_median_s": round(statistics.median(r.cli_cpu for r in runs), 3),
                    "overlap_median": round(statistics.median(r.overlap for r in runs), 2),
                    "start_spread_median_s": round(statistics.median(r.start_spread for r in runs), 3),
                    "hosts_cpu_median_s": round(statistics.median(r.hosts_cpu for r in runs), 3),
                    "machine_busy_cores_median": round(statistics.median(r.busy_cores for r in runs), 2),
                    "steps_median_s": {
                        s: round(statistics.median(r.steps.get(s, 0.0) for r in runs), 3) for s in step_names
                    },
                }
        finally:
            if not args.keep:
                bed.destroy()
    doc = {
        "command": f"sudo bench/deploy/run --reps {args.reps}",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "results": results,
    }
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(markdown(results))
    return 0


def markdown(results: dict[str, Any]) -> str:
    one = results.get("1 host x 1", {}).get("median_s")
    lines = [
        "| scenario | first deploy | redeploy (median) | local prep | rolling update (slowest server) "
        "| vs 1 host | CPU: tako / in the hosts | machine busy cores |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r in results.items():
        ratio = f"{r['median_s'] / one:.2f}x" if one else ""
        lines.append(
            f"| {label} | {r['first_deploy_s']:.2f} s | **{r['median_s']:.2f} s** "
            f"| {r['local_median_s']:.2f} s "
            f"| {r['steps_median_s'].get('deploy (rolling update)', 0):.2f} s | {ratio} "
            f"| {r['cli_cpu_median_s']:.2f} s / {r['hosts_cpu_median_s']:.2f} s "
            f"| {r['machine_busy_cores_median']:.1f} of {os.cpu_count()} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
