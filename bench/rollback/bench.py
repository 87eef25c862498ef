"""Rollback benchmark: wall time of `tako rollback` against `tako deploy` of a new commit (the redeploy it
replaces), on 1 and 3 testbed hosts with one instance each.

    sudo bench/rollback/run [--reps N] [--out bench/rollback/results.json]

Brings up its own testbed hosts (prefix br-, state in /var/tmp/tako-bench-rollback) and tears them down at
the end. Per scenario: a first deploy (starts the app), then N rounds of: deploy a new commit (timed), roll
back to the release before it (timed). Both are whole `tako` processes, from exec to exit. Medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.e2e.conftest import user_home_with_key  # noqa: E402
from tests.support.projects import commit_all, make_project  # noqa: E402
from tests.support.testbed import Testbed  # noqa: E402

TAKO = REPO / ".venv" / "bin" / "tako"
# (label, hosts, MiB of incompressible data shipped with the app: what a redeploy uploads and unpacks)
SCENARIOS = [("1 host", 1, 0), ("3 hosts", 3, 0), ("1 host, 20 MiB app", 1, 20)]


@dataclass
class Timing:
    wall: float  # exec to exit
    switch: float  # the slowest server: tako-server asked to switch -> the process saw the outcome
    # The slowest server: "taking the deploy lock" -> tako-server asked to switch (the lock, the listing and
    # tako-server's answer on what is live: the round trips before the switch)
    to_switch: float = 0.0


def timed(argv: list[str], project: Path, env: dict[str, str], switch_text: str) -> Timing:
    """Run `tako ARGV`, stamping each plain output line as it arrives."""
    start = time.monotonic()
    proc = subprocess.Popen(
        [str(TAKO), *argv], cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    stamped = [(time.monotonic(), line) for line in proc.stdout]
    code = proc.wait()
    wall = time.monotonic() - start
    if code != 0:
        raise SystemExit(f"tako {' '.join(argv)} failed:\n{''.join(line for _, line in stamped)}")
    switching = [t for t, line in stamped if switch_text in line]
    return Timing(
        wall, stamped[-1][0] - min(switching) if switching else 0.0, _lock_to_switch(stamped, switch_text)
    )


def _lock_to_switch(stamped: list[tuple[float, str]], switch_text: str) -> float:
    """Per server (lines `[name] ...`), from its lock line to its switch line; the slowest."""
    spans = []
    for server in {line.split("]", 1)[0] for _, line in stamped if line.startswith("[")}:
        mine = [(t, line) for t, line in stamped if line.startswith(f"{server}]")]
        locked = [t for t, line in mine if "taking the deploy lock" in line]
        switched = [t for t, line in mine if switch_text in line]
        if locked and switched:
            spans.append(min(switched) - min(locked))
    return max(spans, default=0.0)


def bump(project: Path, n: int) -> None:
    (project / "REVISION").write_text(f"{n}\n")
    commit_all(project, f"rev {n}")


def scenario(
    label: str, count: int, mib: int, hosts: list[Any], tmp: Path, env: dict[str, str], reps: int
) -> dict[str, Any]:
    name = f"rb{count}-{mib}"
    project = make_project(
        tmp / name,
        name=name,
        route=f"{name}.bench.test",
        servers={h.name: "production" for h in hosts[:count]},
        instances=1,
    )
    if mib:
        (project / "blob.bin").write_bytes(os.urandom(mib * 1024 * 1024))
        commit_all(project, "data")
    timed(["deploy", "--yes"], project, env, "starting instances")
    deploys, rollbacks = [], []
    for rep in range(reps):
        bump(project, rep)
        deploys.append(timed(["deploy", "--yes"], project, env, "starting instances"))
        rollbacks.append(timed(["rollback", "--yes"], project, env, "(rolling update)"))
        d, r = deploys[-1], rollbacks[-1]
        line = (
            f"{label}: deploy {d.wall:.2f} s, rollback {r.wall:.2f} s (lock to switch {r.to_switch:.3f} s, "
            f"switch {r.switch:.2f} s)"
        )
        print(line, file=sys.stderr)
    return {
        "hosts": count,
        "app_mib": mib,
        "deploy_s": [round(t.wall, 3) for t in deploys],
        "rollback_s": [round(t.wall, 3) for t in rollbacks],
        "deploy_median_s": round(statistics.median(t.wall for t in deploys), 3),
        "rollback_median_s": round(statistics.median(t.wall for t in rollbacks), 3),
        "rollback_switch_median_s": round(statistics.median(t.switch for t in rollbacks), 3),
        "rollback_lock_to_switch_s": [round(t.to_switch, 3) for t in rollbacks],
        "rollback_lock_to_switch_median_s": round(statistics.median(t.to_switch for t in rollbacks), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=5, help="deploy + rollback rounds per scenario")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/rollback needs root (it creates testbed hosts)", file=sys.stderr)
        return 2
    bed = Testbed(Path("/var/tmp/tako-bench-rollback"), "br-")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tako-bench-rollback-") as name:
        tmp = Path(name)
        try:
            hosts = bed.up("h1", "h2", "h3")
            env = {
                **os.environ,
                "TAKO_HOME": str(tmp / "home"),
                "HOME": str(user_home_with_key(hosts[0].key, tmp / "user")),
                "NO_COLOR": "1",
                "TERM": "dumb",
                "PYTHONUNBUFFERED": "1",  # lines stamped as they are printed
            }
            (tmp / "home").mkdir(mode=0o700)
            for host in hosts:
                argv = [str(TAKO), "servers", "add", host.address, "--name", host.name]
                subprocess.run(argv, env=env, check=True, capture_output=True)
            for label, count, mib in SCENARIOS:
                results[label] = scenario(label, count, mib, hosts, tmp, env, args.reps)
        finally:
            bed.destroy()
    load = os.getloadavg()[0]
    doc = {"command": f"sudo bench/rollback/run --reps {args.reps}", "load_average": load, "results": results}
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    for label, r in results.items():
        ratio = r["rollback_median_s"] / r["deploy_median_s"]
        print(
            f"| {label} | {r['deploy_median_s']:.2f} s | {r['rollback_median_s']:.2f} s | {ratio:.2f}x "
            f"| {r['rollback_lock_to_switch_median_s']:.3f} s | {r['rollback_switch_median_s']:.2f} s |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
