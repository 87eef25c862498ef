"""The round trips of a rollback before it switches, in isolation: the old order (take the lock; then list
the releases while asking tako-server what is live) against the one `tako rollback` uses (lock and listing
in one remote command, tako-server asked at the same time). Alternating, on one testbed host of its own.

    sudo .venv/bin/python bench/rollback/round_trips.py [--reps N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.e2e.conftest import user_home_with_key  # noqa: E402
from tests.support.testbed import Host, Testbed  # noqa: E402

from tako.config.paths import known_hosts_path  # noqa: E402
from tako.deploy import commands  # noqa: E402
from tako.deploy.layout import AppLayout  # noqa: E402
from tako.deploy.releases import list_releases, lock_and_list  # noqa: E402
from tako.protocol import Status  # noqa: E402
from tako.remote.connection import ServerAddress, connect  # noqa: E402
from tako.remote.executor import Executor  # noqa: E402

APP = "rtapp"
HOLDER = "bench@round-trips pid 1 rolling back to x since now"


async def measure(host: Host, reps: int) -> dict[str, list[float]]:
    address = ServerAddress("h1", host.address)
    ex = Executor(await connect(address, known_hosts_path()), address)
    layout = AppLayout(APP)
    times: dict[str, list[float]] = {"separate": [], "combined": []}
    try:
        for i in range(2 * reps):
            start = time.monotonic()
            if i % 2 == 0:
                await ex.run(commands.acquire_lock(layout, HOLDER), what="lock")
                await asyncio.gather(ex.run(list_releases(layout)), ex.control(Status(app=APP)))
                times["separate"].append(time.monotonic() - start)
            else:
                await asyncio.gather(ex.run(lock_and_list(layout, HOLDER)), ex.control(Status(app=APP)))
                times["combined"].append(time.monotonic() - start)
            await ex.run(commands.release_lock(layout, HOLDER), what="unlock")
    finally:
        await ex.close()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    bed = Testbed(Path("/var/tmp/tako-bench-round-trips"), "rt-")
    with tempfile.TemporaryDirectory(prefix="tako-bench-round-trips-") as name:
        tmp = Path(name)
        try:
            (host,) = bed.up("h1")
            (tmp / "home").mkdir(mode=0o700)
            os.environ["TAKO_HOME"] = str(tmp / "home")
            os.environ["HOME"] = str(user_home_with_key(host.key, tmp / "user"))
            add = [str(REPO / ".venv" / "bin" / "tako"), "servers", "add", host.address, "--name", "h1"]
            subprocess.run(add, check=True, capture_output=True)
            times = asyncio.run(measure(host, args.reps))
        finally:
            bed.destroy()
    for label, values in times.items():
        quartiles = [round(q * 1000, 1) for q in statistics.quantiles(values, n=4)]
        print(f"{label}: median {statistics.median(values) * 1000:.1f} ms, quartiles {quartiles} ms")
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
