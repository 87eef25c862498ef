"""Runtime benchmarks of tako-server (issue 4 §7): cold-start overhead, dead-instance detection, 3-instance
rolling update time, tako-server RSS idle and with 10 apps. Writes results.json and prints markdown.

    .venv/bin/python bench/runtime/run.py [--trials N] [--out bench/runtime/results.json]

Uses a real tako-server (loopback, temp data dir) with the default [apps] settings and the stdlib test app.
Numbers are medians; the machine is shared, so expect noise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support.server_process import (  # noqa: E402
    APPS_DIR,
    HttpsConnection,
    TakoServer,
    wait_for,
)

DEFAULTS = {
    "health_interval": 1.0,
    "healthy_timeout": 30.0,
    "drain_timeout": 30.0,
    "stop_grace": 10.0,
    "cold_start_timeout": 30.0,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def own_boot_time() -> float:
    """Spawn the app exactly as tako does (sh -c, minimal env) and poll its port every 1 ms."""
    port = free_port()
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "PORT": str(port), "HOME": "/root", "LANG": "C.UTF-8"}
    start = time.perf_counter()
    proc = subprocess.Popen(
        ["/bin/sh", "-c", "python3 testapp.py"],
        cwd=APPS_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"GET /_tako/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if s.recv(12).startswith(b"HTTP/1."):
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.001)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def first_request_latency(server: TakoServer, app: str) -> float:
    host = f"{app}.tako.test"
    await asyncio.to_thread(server.deploy, app, "v1", instances=0, idle_timeout=600, routes=(host,))
    assert server.https_port
    conn = HttpsConnection(server.https_port, host)
    await conn.open()  # TLS handshake not counted: only the request that wakes the app
    start = time.perf_counter()
    resp = await conn.get("/")
    elapsed = time.perf_counter() - start
    await conn.close()
    assert resp.status == 200, resp
    return elapsed


def detection(server: TakoServer, app: str, sig: signal.Signals) -> dict[str, float]:
    data = server.deploy(app, "v1", instances=1, routes=(f"{app}.tako.test",))
    victim = data["instances"][0]
    start = time.perf_counter()
    os.kill(victim["pid"] if sig is signal.SIGKILL else _app_pid(victim["pid"]), sig)

    def gone() -> bool:
        insts = server.call("status", app=app)["instances"]
        return all(not (i["id"] == victim["id"] and i["healthy"]) for i in insts)

    wait_for(gone, timeout=60, interval=0.005)
    detected = time.perf_counter() - start

    def replaced() -> bool:
        insts = server.call("status", app=app)["instances"]
        return any(i["id"] != victim["id"] and i["healthy"] for i in insts)

    wait_for(replaced, timeout=60, interval=0.005)
    result = {"detected_s": detected, "serving_again_s": time.perf_counter() - start}
    # A hung instance declared dead was killed by tako-server with its whole process group.
    server.call("delete", app=app)
    return result


def _app_pid(shell_pid: int) -> int:
    children = psutil.Process(shell_pid).children(recursive=True)
    return children[0].pid if children else shell_pid


def rolling_update(server: TakoServer, trials: int) -> list[float]:
    server.deploy("roll", "v0", instances=3)
    times = []
    for n in range(1, trials + 1):
        start = time.perf_counter()
        server.deploy("roll", f"v{n}", instances=3)
        times.append(time.perf_counter() - start)
    server.call("delete", app="roll")
    return times


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 1e6


def uss_mb(pid: int) -> float:
    """Memory private to the process (RSS minus shared library pages such as uvloop's and OpenSSL's)."""
    return psutil.Process(pid).memory_full_info().uss / 1e6


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--out", default=str(REPO / "bench" / "runtime" / "results.json"))
    args = parser.parse_args()
    server = TakoServer(base=Path(tempfile.mkdtemp(prefix="tako-bench-", dir="/tmp")), app_settings=DEFAULTS)
    await asyncio.to_thread(server.start)
    try:
        assert server.proc is not None
        pid = server.proc.pid
        await asyncio.sleep(1)
        rss_idle, uss_idle = rss_mb(pid), uss_mb(pid)
        boots = [own_boot_time() for _ in range(args.trials)]
        firsts = [await first_request_latency(server, f"cold{n}") for n in range(args.trials)]
        for n in range(args.trials):
            await asyncio.to_thread(server.call, "delete", app=f"cold{n}")
        kills = [await asyncio.to_thread(detection, server, f"kill{n}", signal.SIGKILL) for n in range(3)]
        hang = await asyncio.to_thread(detection, server, "hang", signal.SIGSTOP)
        rolls = await asyncio.to_thread(rolling_update, server, args.trials)
        for n in range(10):
            routes = (f"app{n}.tako.test",)
            await asyncio.to_thread(server.deploy, f"app{n}", "v1", instances=1, routes=routes)
        await asyncio.sleep(2)
        rss_10, uss_10 = rss_mb(pid), uss_mb(pid)
    finally:
        await asyncio.to_thread(server.cleanup)
    boot, first = statistics.median(boots), statistics.median(firsts)
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
        },
        "trials": args.trials,
        "app_boot_s": {"median": boot, "all": boots},
        "cold_first_request_s": {"median": first, "all": firsts},
        "cold_start_overhead_ms": (first - boot) * 1000,
        "crash_detection_s": {"median": statistics.median(k["detected_s"] for k in kills), "all": kills},
        "crash_serving_again_s": statistics.median(k["serving_again_s"] for k in kills),
        "hang_out_of_rotation_s": hang["detected_s"],
        "hang_replaced_s": hang["serving_again_s"],
        "rolling_update_3_instances_s": {"median": statistics.median(rolls), "all": rolls},
        "rss_idle_mb": rss_idle,
        "rss_10_apps_mb": rss_10,
        "uss_idle_mb": uss_idle,
        "uss_10_apps_mb": uss_10,
    }
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"""| metric | result | target |
|---|---|---|
| app's own boot (median of {args.trials}) | {boot * 1000:.0f} ms | |
| first request to an idle on-demand app, through HTTPS proxy | {first * 1000:.0f} ms | |
| cold-start overhead (first request - own boot) | {(first - boot) * 1000:.0f} ms | ≤ 100 ms |
| crash (kill -9) detected | {results["crash_detection_s"]["median"] * 1000:.0f} ms | ≤ 2 s |
| crash → replacement healthy | {results["crash_serving_again_s"] * 1000:.0f} ms | |
| hung instance (SIGSTOP) out of rotation | {hang["detected_s"]:.1f} s | |
| hung instance replaced | {hang["serving_again_s"]:.1f} s | |
| rolling update, 3 instances (median of {args.trials}) | {statistics.median(rolls):.2f} s | ≤ 5 s |
| tako-server RSS, idle | {rss_idle:.1f} MB | ≤ 40 MB |
| tako-server RSS, 10 apps x 1 instance | {rss_10:.1f} MB | |
| tako-server private memory (USS), idle / 10 apps | {uss_idle:.1f} / {uss_10:.1f} MB | |"""
    )


if __name__ == "__main__":
    asyncio.run(main())
