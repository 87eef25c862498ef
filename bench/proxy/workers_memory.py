"""Idle memory of tako-server with `[server] workers = 1` and with the default ("auto"): RSS and PSS of
each of its processes (/proc/PID/smaps_rollup), once it serves and has settled.

    .venv/bin/python bench/proxy/workers_memory.py [--settle 3]

PSS splits pages shared between processes (the interpreter, libraries, memory a worker shares with the
parent it was started from) among them: the sum over the processes is what the server costs the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]


def _smaps(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    return fields["Rss"], fields["Pss"]


def _hello(sock: Path, deadline: float) -> dict[str, object]:
    while True:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(str(sock))
                s.sendall(b'{"command": "hello", "protocol": 1}\n')
                data = b""
                while not data.endswith(b"\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                return dict(json.loads(data)["data"])
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise RuntimeError("tako-server did not answer hello") from None
            time.sleep(0.05)


def measure(workers: str, settle: float) -> dict[str, object]:
    """Start tako-server on loopback with `workers` ('' = not set), wait until every process serves and
    `settle` seconds more, return its processes' memory."""
    base = Path(tempfile.mkdtemp(prefix="tako-mem-", dir="/tmp"))
    config = base / "server-config.toml"
    server = f"[server]\nworkers = {workers}\n\n" if workers else ""
    config.write_text(f'{server}[acme]\nenabled = false\n\n[metrics]\nlisten = "127.0.0.1:0"\n')
    sock = base / "tako.sock"
    argv = [
        sys.executable,
        "-m",
        "tako.server.main",
        "--config",
        str(config),
        "--data-dir",
        str(base / "data"),
    ]
    argv += ["--socket", str(sock), "--listen", "127.0.0.1", "--http-port", "0", "--https-port", "0"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        hello = _hello(sock, deadline)
        expected = len(hello.get("workers", []))  # type: ignore[arg-type]
        time.sleep(settle)  # idle: what a server that has started and serves nothing holds
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        sizes = [_smaps(p.pid) for p in tree]
        return {
            "workers": workers or '(default, "auto")',
            "processes": len(tree),
            "expected_workers": expected,
            "rss_mib": [round(r / 1024, 1) for r, _ in sizes],
            "pss_mib": [round(p / 1024, 1) for _, p in sizes],
            "pss_total_mib": round(sum(p for _, p in sizes) / 1024, 1),
            "rss_total_mib": round(sum(r for r, _ in sizes) / 1024, 1),
        }
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds idle before measuring")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"CPUs usable: {len(os.sched_getaffinity(0))}")
    print("| workers | processes | RSS MiB per process | PSS MiB per process | RSS total | PSS total |")
    print("|---|---:|---|---|---:|---:|")
    for _ in range(args.rounds):
        for workers in ("1", ""):
            m = measure(workers, args.settle)
            print(
                f"| {m['workers']} | {m['processes']} | {m['rss_mib']} | {m['pss_mib']} "
                f"| {m['rss_total_mib']} | {m['pss_total_mib']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
