"""HTTP/2 throughput: h2load against tako's data plane and nginx (`http2` on), same host, same upstream.

    flock /tmp/tako-bench.lock .venv/bin/python bench/http2/bench.py [--duration 8] [--cells 10x10,100x10]
        [--repeat 2] [--workers 1] [--doc docs/benchmarks.md]

Both proxies terminate TLS and speak HTTP/2 to h2load and HTTP/1.1 (keep-alive) to one upstream (nginx,
1 worker, fixed 200 body), as bench/proxy sets them up. A cell is "C x M": C connections with M streams
each in flight. tako and nginx run interleaved, `--repeat` times per cell; the table gives the median
requests/s of each, their ratio and each server's CPU time per request, and is written to
docs/benchmarks.md between its own markers.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "proxy"))  # bench/proxy's helpers

import bench as proxy_bench  # bench/proxy/bench.py

MARKER = "bench/http2"
WARM_UP = 1  # seconds of h2load's warm-up before each measured run


@dataclass
class Row:
    """One cell's runs: index 0 is tako, 1 nginx."""

    cell: str
    rps: tuple[list[float], list[float]] = field(default_factory=lambda: ([], []))
    cpu_us: tuple[list[float], list[float]] = field(default_factory=lambda: ([], []))
    failed: list[int] = field(default_factory=lambda: [0, 0])


_RPS = re.compile(r"finished in [\d.]+\w+, ([\d.]+) req/s")
_DONE = re.compile(
    r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored"
)


def _nginx_h2(work: Path, workers: int, upstream: int, cert: tuple[Path, Path, Path]) -> tuple[Any, int]:
    https = proxy_bench.free_port()
    fullchain, privkey, _ = cert
    conf = proxy_bench.nginx_conf(
        work,
        "nginx-h2",
        workers,
        f"""upstream up {{ server 127.0.0.1:{upstream}; keepalive 1024; }}
  server {{
    listen 127.0.0.1:{https} ssl http2 reuseport;
    ssl_certificate {fullchain}; ssl_certificate_key {privkey}; ssl_protocols TLSv1.2 TLSv1.3;
    http2_max_concurrent_streams 128;
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host $host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }}
  }}""",
    )
    proc = proxy_bench.Process(["nginx", "-c", str(conf), "-g", "daemon off;"], https)
    return proc, https


def _nginx_version() -> str:
    out = subprocess.run(["nginx", "-v"], capture_output=True, text=True, timeout=10).stderr
    return out.strip().rpartition("/")[2]


def h2load(port: int, connections: int, streams: int, duration: int) -> tuple[float, int]:
    """Requests/s and failed requests of one h2load run."""
    argv = [
        "h2load",
        "-D",
        str(duration),
        "--warm-up-time",
        str(WARM_UP),
        "-c",
        str(connections),
        "-m",
        str(streams),
    ]
    argv += ["-t", "1", f"https://127.0.0.1:{port}/"]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    out = run.stdout + run.stderr
    rps, done = _RPS.search(out), _DONE.search(out)
    if rps is None or done is None:
        raise RuntimeError(f"h2load output not understood: {out[-800:]}")
    return float(rps.group(1)), int(done.group(2)) + int(done.group(3))


def measured(proc: Any, port: int, connections: int, streams: int, duration: int) -> tuple[float, int, float]:
    """One h2load run: requests/s, failed requests, and the server's CPU time per request in µs (its
    process tree's user + system time over the run, warm-up included, at the measured rate)."""
    tree = proc.tree()
    before = proxy_bench._cpu_seconds(tree)
    rps, failed = h2load(port, connections, streams, duration)
    cpu = proxy_bench._cpu_seconds(tree) - before
    return rps, failed, cpu / (rps * (duration + WARM_UP)) * 1e6 if rps else 0.0


def markdown(rows: list[Row], command: str, workers: int) -> str:
    lines = [
        f"<!-- {MARKER}:start -->",
        "## HTTP/2 (`bench/http2`)",
        "",
        "`flock /tmp/tako-bench.lock .venv/bin/python bench/http2/bench.py` (options: `--help`). Requests "
        "per second are what h2load got through each server; CPU µs per request is the server's own "
        "process time divided by the requests it served. The framing library was chosen on the second "
        'figure: the pure-Python `h2` package alone cost ~100 µs per stream (docs/proxy.md, "HTTP/2").',
        "",
        f"HTTP/2 through tako's data plane and nginx {_nginx_version()} (`http2`), "
        f"{workers} worker(s) each, TLS, same HTTP/1.1 upstream; h2load, one thread. "
        f"{datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"data plane {proxy_bench.data_plane_mode()}. Command: `{command}`",
        "",
        "| connections x streams | tako req/s | nginx req/s | tako / nginx "
        "| CPU µs per request (tako / nginx) | failed (tako / nginx) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        t, n = statistics.median(row.rps[0]), statistics.median(row.rps[1])
        ratio = f"{t / n:.2f}" if n else "-"
        cpu = " / ".join(f"{statistics.median(c):.0f}" for c in row.cpu_us)
        failed = " / ".join(str(f) for f in row.failed)
        lines.append(f"| {row.cell} | {t:,.0f} | {n:,.0f} | {ratio} | {cpu} | {failed} |")
    lines.append(f"<!-- {MARKER}:end -->")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=8, help="seconds per h2load run")
    parser.add_argument("--cells", default="10x10,100x10", help="connections x streams, comma-separated")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--doc", default=str(proxy_bench.REPO / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    # Where the table is written is not part of how it was measured.
    argv = sys.argv[1:]
    shown = [a for i, a in enumerate(argv) if not a.startswith("--doc") and argv[i - 1 : i] != ["--doc"]]
    command = " ".join(["python bench/http2/bench.py", *shown])
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="tako-bench-h2-") as tmp:
        work = Path(tmp)
        cert = proxy_bench.make_cert(work)
        upstream, up_port = proxy_bench.fixed_upstream(work)
        tako, _, tako_port = proxy_bench.start_proxy("tako", work, args.workers, up_port, cert)
        nginx, nginx_port = _nginx_h2(work, args.workers, up_port, cert)
        try:
            for cell in args.cells.split(","):
                conns, streams = (int(x) for x in cell.split("x"))
                row = Row(f"{conns} x {streams}")
                for _ in range(args.repeat):
                    for i, (proc, port) in enumerate(((tako, tako_port), (nginx, nginx_port))):
                        rps, bad, cpu_us = measured(proc, port, conns, streams, args.duration)
                        row.rps[i].append(rps)
                        row.cpu_us[i].append(cpu_us)
                        row.failed[i] += bad
                        name = "tako" if i == 0 else "nginx"
                        print(
                            f"{cell} {name}: {rps:,.0f} req/s, {cpu_us:.1f} µs CPU/request, {bad} failed",
                            flush=True,
                        )
                rows.append(row)
        finally:
            for proc in (tako, nginx, upstream):
                proc.stop()
    section = markdown(rows, command, args.workers)
    print(section)
    proxy_bench.write_doc(Path(args.doc), section, MARKER)


if __name__ == "__main__":
    main()
