"""Benchmark tako's proxy against nginx, HAProxy and Caddy with one fixed upstream, using wrk.

Run through `bench/proxy/run` (see --help). Every proxy gets the same number of workers, the same upstream
(nginx, 1 worker, fixed 200 body) and the same wrk load; results go to JSON and to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[2]
BODY = "hello from the upstream, a small fixed response body for proxy benchmarks\n"
TOOLS = {"wrk": "wrk", "nginx": "nginx-light", "haproxy": "haproxy", "caddy": "caddy"}
MARK_START = "<!-- bench/proxy:start -->"
MARK_END = "<!-- bench/proxy:end -->"
PIN_UPSTREAM = ""  # --pin-upstream, also applied to the tako-server entry's app instance (its upstream)


@dataclass
class Result:
    proxy: str
    scheme: str
    connections: int
    duration: float
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    requests: int
    proxy_cpu_percent: float
    proxy_rss_mb: float
    error: str = ""
    # wrk's breakdown of socket_errors. Its "timeout" also counts, at each 2 s check, every connection
    # that has not sent its first request yet (still connecting or in its TLS handshake).
    socket_errors_by_kind: dict[str, int] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def stop_everything_on_sigterm() -> None:
    """SIGTERM (`timeout`, a service manager) unwinds through the finally blocks that stop what a bench
    started, as Ctrl-C does: the servers run in sessions of their own and would outlive it otherwise."""

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


def ensure_tools(install: bool) -> None:
    missing = [pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if not missing:
        return
    if not install:
        raise SystemExit(f"missing tools: {', '.join(missing)} (run without --no-install to apt-get them)")
    subprocess.run(["apt-get", "install", "-y", *missing], check=True)


def _checkout_on_path() -> None:
    """Import tako from this checkout (the one the tako proxies under test run), whatever is installed."""
    src = str(REPO / "src")
    if sys.path[0] != src:
        sys.path.insert(0, src)


def make_cert(work: Path) -> tuple[Path, Path, Path]:
    _checkout_on_path()
    from tako.server.tls import selfsigned

    cert_pem, key_pem = selfsigned.generate("127.0.0.1")
    certs = work / "certs" / "127.0.0.1"
    certs.mkdir(parents=True)
    (certs / "fullchain.pem").write_bytes(cert_pem)
    (certs / "privkey.pem").write_bytes(key_pem)
    combined = work / "combined.pem"
    combined.write_bytes(cert_pem + key_pem)
    return certs / "fullchain.pem", certs / "privkey.pem", combined


def nginx_conf(work: Path, name: str, workers: int, body: str, *, access_log: bool = False) -> Path:
    """An nginx.conf under work/name. `access_log`: a line per request in work/name/access.log, as nginx
    writes by default (the `combined` format, unbuffered); off otherwise."""
    prefix = work / name
    prefix.mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    log = f"access_log {prefix}/access.log" if access_log else "access_log off"
    conf.write_text(
        f"""worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log crit;
worker_rlimit_nofile 20000;
events {{ worker_connections 20000; }}
http {{
  {log};
  client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fcgi; uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;
  keepalive_requests 1000000;
  {body}
}}
"""
    )
    return conf


def fixed_upstream(work: Path, cpus: str = "") -> tuple[Process, int]:
    """The upstream all proxies of a bench forward to (nginx, 1 worker, a fixed 200 of BODY) and its port."""
    port = free_port()
    conf = nginx_conf(
        work,
        "upstream",
        1,
        f"server {{ listen 127.0.0.1:{port} backlog=4096; "
        f'location / {{ return 200 "{BODY.strip()}\\n"; }} }}',
    )
    return Process(["nginx", "-c", str(conf), "-g", "daemon off;"], port, cpus=cpus), port


class Process:
    """A server under test: started, measured (CPU, RSS of its process tree), stopped."""

    def __init__(self, argv: list[str], port: int, env: dict[str, str] | None = None, cpus: str = "") -> None:
        if cpus:
            argv = ["taskset", "-c", cpus, *argv]
        self.proc = subprocess.Popen(
            argv,
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # Its own session, as a service has: with kernel.sched_autogroup_enabled the scheduler shares
            # CPU between sessions first, so every server (and the upstream) must be placed alike.
            start_new_session=True,
        )
        try:
            wait_port(port)
        except RuntimeError:
            self.stop()
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            raise RuntimeError(f"{argv[0]} did not start: {err[-500:]}") from None

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def start_proxy(
    name: str, work: Path, workers: int, upstream: int, cert: tuple[Path, Path, Path]
) -> tuple[Process, int, int]:
    http, https = free_port(), free_port()
    fullchain, privkey, combined = cert
    if name == "tako":
        argv = [
            sys.executable,
            str(REPO / "bench/proxy/tako_runner.py"),
            "--http-port",
            str(http),
            "--https-port",
            str(https),
            "--upstream",
            str(upstream),
            "--certs",
            str(fullchain.parent.parent),
            "--workers",
            str(workers),
        ]
        proc = Process(argv, http, env={"PYTHONPATH": str(REPO / "src")})
    elif name == "nginx":
        conf = nginx_conf(
            work,
            "nginx-proxy",
            workers,
            f"""upstream up {{ server 127.0.0.1:{upstream}; keepalive 1024; }}
  server {{
    listen 127.0.0.1:{http} reuseport; listen 127.0.0.1:{https} ssl reuseport;
    ssl_certificate {fullchain}; ssl_certificate_key {privkey}; ssl_protocols TLSv1.2 TLSv1.3;
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host $host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }}
  }}""",
        )
        proc = Process(["nginx", "-c", str(conf), "-g", "daemon off;"], http)
    elif name == "haproxy":
        cfg = work / "haproxy.cfg"
        cfg.write_text(
            f"""global
  maxconn 9000
  nbthread {workers}
  log stderr local0 emerg
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
  option forwardfor
frontend fe
  bind 127.0.0.1:{http}
  bind 127.0.0.1:{https} ssl crt {combined} alpn http/1.1
  default_backend be
backend be
  server up 127.0.0.1:{upstream}
"""
        )
        proc = Process(["haproxy", "-f", str(cfg), "-db"], http)
    elif name == "caddy":
        caddyfile = work / "Caddyfile"
        caddyfile.write_text(
            f"""{{
  admin off
  auto_https off
  default_sni 127.0.0.1
}}
http://127.0.0.1:{http} {{
  reverse_proxy 127.0.0.1:{upstream}
}}
https://127.0.0.1:{https} {{
  tls {fullchain} {privkey}
  reverse_proxy 127.0.0.1:{upstream}
}}
"""
        )
        proc = Process(
            ["caddy", "run", "--config", str(caddyfile), "--adapter", "caddyfile"],
            http,
            env={"GOMAXPROCS": str(workers), "HOME": str(work), "XDG_DATA_HOME": str(work / "caddy-data")},
        )
    elif name in ("tako-server", "tako-server-no-access-log"):
        # The real daemon with [server] workers = N; its app instance is the upstream (tako_server.py).
        # Access logs are on by default, as in tako-server; the second entry turns them off.
        import tako_server

        access_log = name == "tako-server"
        return tako_server.start(work, workers, fullchain.parent, BODY, PIN_UPSTREAM, Process, access_log)
    else:
        raise SystemExit(f"unknown proxy {name!r}")
    wait_port(https)
    return proc, http, https


_LAT = re.compile(r"^\s+(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


_ERROR_KINDS = ("connect", "read", "write", "timeout")  # wrk's "Socket errors:" line, in order


def run_wrk(
    url: str, connections: int, duration: float, threads: int, host: str = "127.0.0.1"
) -> dict[str, Any]:
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "--timeout",
        "5s",
        "-H",
        f"Host: {host}",
        url,
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    lat = {m.group(1): _ms(m.group(2), m.group(3)) for m in _LAT.finditer(out)}
    if rps is None:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    return {
        "rps": float(rps.group(1)),
        "requests": int(total.group(1)) if total else 0,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
        "socket_errors_by_kind": dict(
            zip(_ERROR_KINDS, (int(x) for x in errors.groups()) if errors else (0, 0, 0, 0), strict=True)
        ),
        "p50_ms": lat.get("50", 0.0),
        "p99_ms": lat.get("99", 0.0),
    }


def _cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _rss(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


def measure_tree(
    tree: Callable[[], list[psutil.Process]],
    url: str,
    connections: int,
    duration: float,
    threads: int,
    host: str = "127.0.0.1",
) -> dict[str, Any]:
    """One wrk run, with the CPU and peak RSS of the processes `tree` lists (the proxy under test)."""
    procs = tree()
    peak = [_rss(procs)]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.25):
            peak[0] = max(peak[0], _rss(tree()))

    sampler = threading.Thread(target=sample, daemon=True)
    cpu0, t0 = _cpu_seconds(procs), time.monotonic()
    sampler.start()
    try:
        stats = run_wrk(url, connections, duration, threads, host)
    finally:
        done.set()
        sampler.join()
    elapsed = time.monotonic() - t0
    stats["proxy_cpu_percent"] = 100.0 * (_cpu_seconds(procs) - cpu0) / elapsed
    stats["proxy_rss_mb"] = peak[0] / 1e6
    return stats


def measure(proc: Process, url: str, connections: int, duration: float, threads: int) -> dict[str, Any]:
    return measure_tree(proc.tree, url, connections, duration, threads)


def _line(r: Result) -> str:
    return (
        f"{r.proxy:8} {r.scheme:5} c={r.connections:<5} {r.rps:>9,.0f} req/s  p50 {r.p50_ms:.2f} ms"
        f"  p99 {r.p99_ms:.2f} ms  non2xx {r.non_2xx}  errors {r.socket_errors}"
        f"  cpu {r.proxy_cpu_percent:.0f}%  rss {r.proxy_rss_mb:.0f} MB"
    )


def data_plane_mode() -> str:
    """Whether the tako proxies of this run use the compiled modules (both run from this checkout)."""
    _checkout_on_path()
    from tako.server.proxy import compiled

    return str(compiled.mode())


def markdown(results: list[Result], command: str, workers: int) -> str:
    nginx = {(r.scheme, r.connections): r.rps for r in results if r.proxy == "nginx" and not r.error}
    lines = [
        MARK_START,
        "## Proxy throughput (`bench/proxy`)",
        "",
        f"- Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.node()}, "
        f"{os.cpu_count()} CPUs, {platform.platform()}",
        f"- Command: `{command}`",
        f"- Every proxy runs {workers} worker(s) (nginx worker_processes, HAProxy nbthread, Caddy "
        "GOMAXPROCS, tako ProxyServer processes with SO_REUSEPORT, tako-server `[server] workers`); "
        "the upstream is nginx with 1 worker (for tako-server: the deployed app's instance, same config) "
        "returning a fixed 200; load is wrk on the same machine, so all share the CPUs.",
        "- Each server and the upstream run in a session of their own, as services do (the scheduler "
        "shares CPU between sessions first: kernel.sched_autogroup_enabled).",
        f"- tako's per-request proxy modules: {data_plane_mode()} (src/tako/server/proxy/compiled.py).",
        "- All proxies run for the whole benchmark; each cell (scheme, connections) measures them back to "
        "back, starting with a different proxy each cell, so drift in the machine's load falls on all alike.",
        "- CPU is the proxy's process tree during the cell (100% = one core); RSS is its peak in the cell "
        "(what earlier cells left allocated included).",
        "",
        "| proxy | scheme | conns | req/s | vs nginx | p50 ms | p99 ms | non-2xx | socket errors "
        "| CPU % | RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.error:
            lines.append(f"| {r.proxy} | {r.scheme} | {r.connections} | failed: {r.error} | | | | | | | |")
            continue
        base = nginx.get((r.scheme, r.connections))
        ratio = f"{r.rps / base:.2f}" if base else "-"
        lines.append(
            f"| {r.proxy} | {r.scheme} | {r.connections} | {r.rps:,.0f} | {ratio} | {r.p50_ms:.2f} | "
            f"{r.p99_ms:.2f} | {r.non_2xx} | {r.socket_errors} | {r.proxy_cpu_percent:.0f} "
            f"| {r.proxy_rss_mb:.0f} |"
        )
    lines.append(MARK_END)
    return "\n".join(lines) + "\n"


def write_doc(path: Path, section: str, marker: str = "bench/proxy") -> None:
    """Replace the section between `<!-- MARKER:start -->` and `<!-- MARKER:end -->` (append it if none)."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + section.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench/proxy/run", description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (default 10)")
    parser.add_argument(
        "--connections", default="100,1000,5000", help="comma-separated (default 100,1000,5000)"
    )
    parser.add_argument(
        "--proxies",
        default="tako,tako-server,nginx,haproxy,caddy",
        help="tako = ProxyServer with a static route in N processes (bench/proxy/tako_runner.py); "
        "tako-server = the real daemon with [server] workers = N (HTTPS only: its HTTP redirects), "
        "tako-server-no-access-log = the same with [access_log] enabled = false",
    )
    parser.add_argument("--schemes", default="http,https")
    parser.add_argument("--workers", type=int, default=2, help="workers per proxy (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--pin-upstream", default="", help="CPU list for taskset on the upstream, e.g. 1")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of wrk before each measured run")
    parser.add_argument("--json", default=str(REPO / "bench/proxy/results.json"))
    parser.add_argument("--doc", default=str(REPO / "docs/benchmarks.md"), help="markdown file ('' = none)")
    parser.add_argument("--no-install", action="store_true", help="do not apt-get missing tools")
    args = parser.parse_args()
    global PIN_UPSTREAM
    PIN_UPSTREAM = args.pin_upstream
    command = "bench/proxy/run " + shlex.join(sys.argv[1:])

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ensure_tools(install=not args.no_install)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="tako-bench-") as tmp:
        work = Path(tmp)
        cert = make_cert(work)
        upstream, up_port = fixed_upstream(work, cpus=args.pin_upstream)
        names = args.proxies.split(",")
        connections = [int(c) for c in args.connections.split(",")]
        cells = [(scheme, conns) for scheme in args.schemes.split(",") for conns in connections]
        started: list[tuple[Process, int, int] | str] = []  # per entry of --proxies: running, or why not
        measured: dict[tuple[int, str, int], Result] = {}
        try:
            for index, name in enumerate(names):
                entry_dir = work / f"{index}-{name}"
                entry_dir.mkdir()
                try:
                    started.append(start_proxy(name, entry_dir, args.workers, up_port, cert))
                except RuntimeError as exc:
                    print(f"{name}: {exc}", file=sys.stderr)
                    started.append(str(exc)[:60])
            for n, (scheme, conns) in enumerate(cells):
                # All proxies run throughout, measured back to back for each cell, starting with a different
                # one each time: the machine's drift over a long run (other work on it) falls on all alike.
                first = n % len(names)
                for index in [*range(first, len(names)), *range(first)]:
                    name, entry = names[index], started[index]
                    if isinstance(entry, str):
                        result = Result(name, scheme, conns, args.duration, 0, 0, 0, 0, 0, 0, 0, 0, entry)
                    elif name.startswith("tako-server") and scheme == "http":
                        why = "n/a: HTTP redirects to HTTPS"
                        result = Result(name, scheme, conns, args.duration, 0, 0, 0, 0, 0, 0, 0, 0, why)
                    else:
                        proc, http, https = entry
                        url = f"{scheme}://127.0.0.1:{http if scheme == 'http' else https}/"
                        if args.warmup:
                            run_wrk(url, min(conns, 100), args.warmup, args.threads)
                        stats = measure(proc, url, conns, args.duration, args.threads)
                        result = Result(name, scheme, conns, args.duration, **stats)
                        print(_line(result), flush=True)
                    measured[index, scheme, conns] = result
        finally:
            for entry in started:
                if not isinstance(entry, str):
                    entry[0].stop()
            upstream.stop()
    results = [measured[index, scheme, conns] for index in range(len(names)) for scheme, conns in cells]
    Path(args.json).write_text(
        json.dumps({"command": command, "results": [asdict(r) for r in results]}, indent=2)
    )
    if args.doc:
        write_doc(Path(args.doc), markdown(results, command, args.workers))
        print(f"wrote {args.doc} and {args.json}")


if __name__ == "__main__":
    main()
