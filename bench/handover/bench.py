"""Hand-over benchmark: the longest a request waits while tako-server hands over to a new process.

A real tako-server on loopback serves one always-on app (the test app, one instance); clients loop over
HTTPS, `--keepalive` on reused connections and `--fresh` on a new connection per request, each request
timed. Every `--interval` seconds `tako-server handover` runs; for each hand-over the slowest request
that overlapped it is recorded next to the slowest request of a calm window of the same length before it.
Failed requests are counted (a reused connection closed before its response is retried once, as every
client does). Results go to results.json beside this file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from tests.support.server_process import ConnectionLost, HttpsConnection, TakoServer  # noqa: E402

HOST = "web.tako.test"


@dataclass
class Timings:
    spans: list[tuple[float, float]] = field(default_factory=list)  # (start, end) of each request
    failures: list[str] = field(default_factory=list)

    def slowest(self, start: float, end: float) -> float:
        """The longest request that overlapped [start, end]."""
        return max((e - s for s, e in self.spans if s <= end and e >= start), default=0.0)


async def client(port: int, fresh: bool, stop: asyncio.Event, out: Timings) -> None:
    conn = HttpsConnection(port, HOST)
    while not stop.is_set():
        began = time.monotonic()
        try:
            try:
                response = await conn.get("/", close=fresh)
            except ConnectionLost:
                if fresh or not conn.used:
                    raise
                await conn.close()
                response = await conn.get("/", close=fresh)
            if response.status != 200:
                out.failures.append(str(response.status))
        except Exception as exc:
            out.failures.append(repr(exc))
            await conn.close()
        out.spans.append((began, time.monotonic()))
    await conn.close()


def handover(srv: TakoServer) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "tako.server.main", "handover", "--socket", str(srv.socket)]
    start = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    if done.returncode != 0:
        raise SystemExit(f"hand-over failed: {done.stderr}")
    return start, time.monotonic()


async def measure(args: argparse.Namespace, srv: TakoServer) -> tuple[Timings, list[dict[str, float]]]:
    assert srv.https_port is not None
    stop = asyncio.Event()
    timings = Timings()
    clients = [client(srv.https_port, False, stop, timings) for _ in range(args.keepalive)]
    clients += [client(srv.https_port, True, stop, timings) for _ in range(args.fresh)]
    running = asyncio.gather(*clients)
    rows = []
    for _ in range(args.handovers):
        await asyncio.sleep(args.interval)  # the calm window before this hand-over
        start, end = await asyncio.to_thread(handover, srv)
        calm = timings.slowest(start - (end - start) - 0.5, start - 0.5)
        rows.append(
            {
                "handover_s": end - start,
                "slowest_during_s": timings.slowest(start, end),
                "slowest_calm_s": calm,
            }
        )
    await asyncio.sleep(1.0)
    stop.set()
    await running
    return timings, rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--handovers", type=int, default=10)
    p.add_argument("--interval", type=float, default=2.0)
    p.add_argument("--keepalive", type=int, default=4)
    p.add_argument("--fresh", type=int, default=2)
    args = p.parse_args()
    srv = TakoServer(app_settings={"drain_timeout": 10.0})
    pids = []
    try:
        srv.start()
        srv.deploy("web", "v1", instances=1)
        timings, rows = asyncio.run(measure(args, srv))
        pids.append(int(srv.call("hello")["pid"]))
    finally:
        for pid in pids:  # the last successor: not a child of this process
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).terminate()
                psutil.Process(pid).wait(60)
        srv.cleanup()
    summary = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average": os.getloadavg(),
        "args": vars(args),
        "requests": len(timings.spans),
        "failed": len(timings.failures),
        "handover_median_s": statistics.median(r["handover_s"] for r in rows),
        "slowest_during_max_s": max(r["slowest_during_s"] for r in rows),
        "slowest_during_median_s": statistics.median(r["slowest_during_s"] for r in rows),
        "slowest_calm_median_s": statistics.median(r["slowest_calm_s"] for r in rows),
        "rows": rows,
        "failures": timings.failures[:20],
    }
    (Path(__file__).parent / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("rows", "failures")}, indent=2))


if __name__ == "__main__":
    main()
