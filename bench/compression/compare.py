"""Response compression: tako's proxy (zstd, br, gzip) against nginx's gzip at the same level, side by side.

    bench/compression/run [--duration S] [--connections N] [--doc docs/benchmarks.md]

One upstream (nginx, 1 worker, gzip off) serves the same two bodies to every proxy: an HTML page and a JSON
document of about 80 KiB each (body.py). Each proxy runs 1 worker over plain HTTP (TLS would add the same
cost to all and hide the one measured), and wrk asks for each body with one Accept-Encoding at a time:
`identity` (nothing compressed: the baseline), then `zstd`, `br`, `gzip` for tako and `gzip` for nginx
(`gzip_comp_level` = tako's gzip level). For each cell: responses per second, what the proxy's CPU spent per
MB of body it compressed (the proxy's process tree, all its work included, so the identity row is the cost
of proxying alone), the compressed size and p99 latency. Each body is checked once per coding first: the
proxy's answer must carry that Content-Encoding and decode to the body. Writes its section of
docs/benchmarks.md between `<!-- bench/compression:start -->` and `<!-- bench/compression:end -->`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import brotli
import psutil
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "proxy"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import _LAT, Process, _ms, free_port, nginx_conf, write_doc  # bench/proxy/bench.py
from body import html_page, json_document  # bench/compression, next to this script

from tako.server.proxy import compiled
from tako.server.proxy.compression import BROTLI_QUALITY, GZIP_LEVEL, ZSTD_LEVEL

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MARKER = "bench/compression"
BODIES = {"/page.html": ("text/html", html_page()), "/data.json": ("application/json", json_document())}
CODINGS = {"tako": ("identity", "zstd", "br", "gzip"), "nginx": ("identity", "gzip")}
LEVELS = {"zstd": ZSTD_LEVEL, "br": BROTLI_QUALITY, "gzip": GZIP_LEVEL}


@dataclass
class Cell:
    proxy: str
    body: str
    coding: str
    rps: float
    p99_ms: float
    cpu_ms_per_mb: float
    encoded_bytes: int


def start_upstream(work: Path) -> tuple[Process, int]:
    root = work / "bodies"
    root.mkdir()
    work.chmod(0o755)  # nginx's workers run as an unprivileged user: they read the bodies from here
    for path, (_, data) in BODIES.items():
        (root / path.lstrip("/")).write_bytes(data)
    port = free_port()
    conf = nginx_conf(
        work,
        "upstream",
        1,
        f"types {{ text/html html; application/json json; }} gzip off; etag on;\n"
        f"  server {{ listen 127.0.0.1:{port} backlog=4096; root {root}; }}",
    )
    return Process(["nginx", "-c", str(conf), "-g", "daemon off;"], port), port


def start_proxy(name: str, work: Path, upstream: int) -> tuple[Process, int]:
    port = free_port()
    if name == "tako":
        argv = [sys.executable, str(REPO / "bench/proxy/tako_runner.py"), "--http-port", str(port)]
        argv += ["--https-port", str(free_port()), "--upstream", str(upstream), "--certs", str(work)]
        return Process(argv, port, env={"PYTHONPATH": str(REPO / "src")}), port
    types = " ".join(sorted({t for t, _ in BODIES.values()} - {"text/html"}))
    conf = nginx_conf(
        work,
        "nginx-proxy",
        1,
        f"""upstream up {{ server 127.0.0.1:{upstream}; keepalive 1024; }}
  gzip on; gzip_comp_level {GZIP_LEVEL}; gzip_proxied any; gzip_min_length 1024; gzip_vary on;
  gzip_types {types};
  server {{
    listen 127.0.0.1:{port} reuseport;
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host $host; }}
  }}""",
    )
    return Process(["nginx", "-c", str(conf), "-g", "daemon off;"], port), port


def _decode(coding: str, data: bytes) -> bytes:
    if coding == "gzip":
        return zlib.decompress(data, 31)
    if coding == "br":
        return brotli.decompress(data)  # type: ignore[no-any-return]
    if coding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def encoded_size(port: int, path: str, coding: str) -> int:
    """Fetch `path` once with `coding`; check the answer is that coding of the body; its size on the wire."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Accept-Encoding": coding})
    with urllib.request.urlopen(req, timeout=10) as resp:
        data = resp.read()
        got = resp.headers.get("Content-Encoding") or "identity"
    if got != coding or _decode(coding, data) != BODIES[path][1]:
        raise SystemExit(f"{path} with Accept-Encoding: {coding}: got {got}, not the body in that coding")
    return len(data)


def measure(proc: Process, url: str, coding: str, connections: int, seconds: float) -> dict[str, float]:
    """One wrk run asking for `coding`, with the CPU seconds the proxy's process tree used meanwhile."""
    procs = proc.tree()
    cpu0 = _cpu(procs)
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "5s"]
    argv += ["-H", f"Accept-Encoding: {coding}", url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if rps is None or total is None:
        raise SystemExit(f"cannot read wrk's output:\n{out}")
    return {
        "rps": float(rps.group(1)),
        "requests": int(total.group(1)),
        "p99_ms": next((_ms(m[2], m[3]) for m in _LAT.finditer(out) if m[1] == "99"), 0.0),
        "cpu_seconds": _cpu(procs) - cpu0,
    }


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        times = p.cpu_times()
        total += times.user + times.system
    return total


def run_cell(name: str, proc: Process, port: int, path: str, coding: str, args: argparse.Namespace) -> Cell:
    data = BODIES[path][1]
    size = encoded_size(port, path, coding)
    url = f"http://127.0.0.1:{port}{path}"
    measure(proc, url, coding, args.connections, args.warmup)
    stats = measure(proc, url, coding, args.connections, args.duration)
    mb = stats["requests"] * len(data) / 1e6
    cpu_ms = stats["cpu_seconds"] * 1000
    cell = Cell(name, path, coding, stats["rps"], stats["p99_ms"], cpu_ms / mb if mb else 0.0, size)
    print(
        f"{name:6} {path:11} {coding:8} {cell.rps:8,.0f} resp/s  {cell.cpu_ms_per_mb:6.1f} ms "
        f"CPU/MB  {size:6} B  p99 {cell.p99_ms:.1f} ms",
        flush=True,
    )
    return cell


def run_all(proxies: dict[str, tuple[Process, int]], args: argparse.Namespace) -> list[Cell]:
    """Every cell, proxies taking turns within each (body, coding) so that drift in the machine's load
    falls on all of them alike; listed proxy by proxy."""
    cells = []
    for path in BODIES:
        for coding in CODINGS["tako"]:
            for name, (proc, port) in proxies.items():
                if coding in CODINGS[name]:
                    cells.append(run_cell(name, proc, port, path, coding, args))
    order = list(proxies)
    return sorted(cells, key=lambda c: order.index(c.proxy))  # stable: per proxy, in the order run


def markdown(cells: list[Cell], command: str, args: argparse.Namespace) -> str:
    nginx = {c.body: c for c in cells if c.proxy == "nginx" and c.coding == "gzip"}
    lines = [
        f"<!-- {MARKER}:start -->",
        "## Response compression (`bench/compression`)",
        "",
        f"- Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.node()}, "
        f"{os.cpu_count()} CPUs, {platform.platform()}; tako's proxy modules: {compiled.mode()}",
        f"- Command: `{command}`",
        "- One worker per proxy, plain HTTP, the same nginx upstream (gzip off) and bodies for both "
        f"(HTML {len(BODIES['/page.html'][1]):,} B, JSON {len(BODIES['/data.json'][1]):,} B, body.py); wrk "
        f"with 1 thread and {args.connections} connections, {args.duration:g} s per cell, one "
        "Accept-Encoding per cell. nginx's `gzip_comp_level` is tako's gzip level. CPU per MB is the "
        "proxy's CPU time over the MB of body it delivered (before compression); identity rows are the "
        "cost of proxying alone.",
        "",
        "| proxy | body | coding (level) | responses/s | CPU ms per MB | size B | ratio | p99 ms "
        "| resp/s vs nginx gzip |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        data = BODIES[c.body][1]
        level = f" ({LEVELS[c.coding]})" if c.coding in LEVELS else ""
        base = nginx.get(c.body)
        vs = f"{c.rps / base.rps:.2f}" if base and base.rps else "-"
        lines.append(
            f"| {c.proxy} | {c.body} | {c.coding}{level} | {c.rps:,.0f} | {c.cpu_ms_per_mb:.1f} | "
            f"{c.encoded_bytes:,} | {len(data) / c.encoded_bytes:.2f} | {c.p99_ms:.1f} | {vs} |"
        )
    lines.append(f"<!-- {MARKER}:end -->")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench/compression/run", description=__doc__)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per cell (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each cell")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    parser.add_argument("--proxies", default="tako,nginx")
    parser.add_argument("--doc", default=str(REPO / "docs/benchmarks.md"), help="markdown file ('' = none)")
    args = parser.parse_args()
    # Where the table is written is not part of how it was measured.
    argv = sys.argv[1:]
    shown = [a for i, a in enumerate(argv) if not a.startswith("--doc") and argv[i - 1 : i] != ["--doc"]]
    command = " ".join(["bench/compression/run", *map(shlex.quote, shown)])
    with tempfile.TemporaryDirectory(prefix="tako-bench-compression-") as tmp:
        work = Path(tmp)
        upstream, up_port = start_upstream(work)
        proxies: dict[str, tuple[Process, int]] = {}
        try:
            for name in args.proxies.split(","):
                proxies[name] = start_proxy(name, work, up_port)
            cells = run_all(proxies, args)
        finally:
            for proc, _ in proxies.values():
                proc.stop()
            upstream.stop()
    section = markdown(cells, command, args)
    print(section)
    if args.doc:
        write_doc(Path(args.doc), section, MARKER)


if __name__ == "__main__":
    main()
