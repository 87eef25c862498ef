"""Static file throughput: tako-server's data plane serving files from a static mount against nginx serving
the same files (`alias`, `sendfile on`), with wrk; a ~1 KiB and a ~100 KiB file, plain HTTP and HTTPS,
tako and nginx measured back to back in every cell.

Run through `bench/static/run` (see --help); results go to JSON and to docs/benchmarks.md between
`<!-- bench/static:start -->` and `<!-- bench/static:end -->`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench/proxy"))
from bench import (  # noqa: E402  # bench/proxy's wrk, nginx and process helpers
    Process,
    data_plane_mode,
    ensure_tools,
    free_port,
    make_cert,
    measure,
    nginx_conf,
    run_wrk,
    wait_port,
    write_doc,
)

FILES = {"small.css": 1024, "medium.js": 100 * 1024}
MARKER = "bench/static"


@dataclass
class Cell:
    server: str
    file: str
    scheme: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    cpu_percent: float
    rss_mb: float


def make_files(root: Path) -> None:
    root.mkdir(parents=True)
    for name, size in FILES.items():
        line = b"/* static file benchmark: the same bytes for tako and nginx */\n"
        (root / name).write_bytes((line * (size // len(line) + 1))[:size])


def start_tako(work: Path, root: Path, workers: int, certs: Path) -> tuple[Process, int, int]:
    http, https = free_port(), free_port()
    argv = [sys.executable, str(REPO / "bench/static/static_runner.py"), "--http-port", str(http)]
    argv += [
        "--https-port",
        str(https),
        "--root",
        str(root),
        "--certs",
        str(certs),
        "--workers",
        str(workers),
    ]
    proc = Process(argv, http, env={"PYTHONPATH": str(REPO / "src")})
    wait_port(https)
    return proc, http, https


def start_nginx(
    work: Path, root: Path, workers: int, cert: tuple[Path, Path, Path]
) -> tuple[Process, int, int]:
    http, https = free_port(), free_port()
    fullchain, privkey, _ = cert
    conf = nginx_conf(
        work,
        "nginx-static",
        workers,
        f"""sendfile on; tcp_nopush on;
  types {{ text/css css; text/javascript js; }}
  server {{
    listen 127.0.0.1:{http} reuseport backlog=4096; listen 127.0.0.1:{https} ssl reuseport backlog=4096;
    ssl_certificate {fullchain}; ssl_certificate_key {privkey}; ssl_protocols TLSv1.2 TLSv1.3;
    location /static/ {{ alias {root}/; }}
  }}""",
    )
    proc = Process(["nginx", "-c", str(conf), "-g", "daemon off;"], http)
    wait_port(https)
    return proc, http, https


def shown_command(args: list[str]) -> str:
    """The command as the table shows it: not where results went, nor whether tools were installed."""
    shown, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("--json", "--doc"):
            skip = True
        elif arg != "--no-install" and not arg.startswith(("--json=", "--doc=")):
            shown.append(arg)
    return " ".join(["flock /tmp/tako-bench.lock bench/static/run", shlex.join(shown)]).rstrip()


def markdown(cells: list[Cell], command: str, workers: int) -> str:
    lines = [
        f"<!-- {MARKER}:start -->",
        "## Static files: tako-server vs nginx",
        "",
        f"Command: `{command}` ({data_plane_mode()}; {workers} worker processes each; nginx with "
        "`sendfile on`; wrk keep-alive connections; tako's data plane with one `[tako] static` mount). "
        "The same file bytes for both; `ratio` is tako ÷ nginx requests per second. On a machine shared with "
        "other work (see CPU %) the figures are indicative only; the command rewrites this section. "
        "Instructions per request of a small file's answer: `bench/static/answer_cost.py` under callgrind "
        '(docs/proxy.md, "Static files").',
        "",
        "| file | scheme | conns | tako rps | nginx rps | ratio | tako p99 ms | nginx p99 ms "
        "| tako CPU % | nginx CPU % | errors (tako/nginx) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    by_key = {(c.server, c.file, c.scheme, c.connections): c for c in cells}
    for (server, name, scheme, conns), tako in by_key.items():
        if server != "tako":
            continue
        nginx = by_key[("nginx", name, scheme, conns)]
        ratio = tako.rps / nginx.rps if nginx.rps else 0.0
        errors = f"{tako.socket_errors + tako.non_2xx}/{nginx.socket_errors + nginx.non_2xx}"
        lines.append(
            f"| {name} ({FILES[name] // 1024} KiB) | {scheme} | {conns} | {tako.rps:,.0f} | {nginx.rps:,.0f} "
            f"| {ratio:.2f} | {tako.p99_ms:.2f} | {nginx.p99_ms:.2f} | {tako.cpu_percent:.0f} "
            f"| {nginx.cpu_percent:.0f} | {errors} |"
        )
    lines.append(f"<!-- {MARKER}:end -->")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> list[Cell]:
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="tako-bench-static-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx's workers run as an unprivileged user and must reach the files
        cert = make_cert(work)
        root = work / "public"
        make_files(root)
        servers = {
            "tako": start_tako(work, root, args.workers, cert[0].parent.parent),
            "nginx": start_nginx(work, root, args.workers, cert),
        }
        try:
            order = list(servers)
            for n, (name, scheme, conns) in enumerate(
                (f, s, c) for f in FILES for s in args.schemes.split(",") for c in args.connections
            ):
                for server in order[n % 2 :] + order[: n % 2]:  # alternate who goes first
                    proc, http, https = servers[server]
                    url = f"{scheme}://127.0.0.1:{http if scheme == 'http' else https}/static/{name}"
                    if args.warmup:
                        run_wrk(url, min(conns, 100), args.warmup, args.threads)
                    stats = measure(proc, url, conns, args.duration, args.threads)
                    cell = Cell(
                        server,
                        name,
                        scheme,
                        conns,
                        stats["rps"],
                        stats["p50_ms"],
                        stats["p99_ms"],
                        stats["non_2xx"],
                        stats["socket_errors"],
                        stats["proxy_cpu_percent"],
                        stats["proxy_rss_mb"],
                    )
                    print(f"{server:6} {name:10} {scheme:5} c={conns:<5} {cell.rps:>10,.0f} rps", flush=True)
                    cells.append(cell)
        finally:
            for proc, _, _ in servers.values():
                proc.stop()
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench/static/run", description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (default 10)")
    parser.add_argument("--connections", default="100", help="comma-separated (default 100)")
    parser.add_argument("--schemes", default="http,https")
    parser.add_argument("--workers", type=int, default=2, help="worker processes per server (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of wrk before each measured run")
    parser.add_argument("--json", default=str(REPO / "bench/static/results.json"))
    parser.add_argument("--doc", default=str(REPO / "docs/benchmarks.md"), help="markdown file ('' = none)")
    parser.add_argument("--no-install", action="store_true", help="do not apt-get missing tools")
    args = parser.parse_args()
    args.connections = [int(c) for c in args.connections.split(",")]
    command = shown_command(sys.argv[1:])
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ensure_tools(install=not args.no_install)
    os.environ.setdefault("PYTHONPATH", str(REPO / "src"))
    cells = run(args)
    Path(args.json).write_text(
        json.dumps({"command": command, "results": [asdict(c) for c in cells]}, indent=2)
    )
    if args.doc:
        write_doc(Path(args.doc), markdown(cells, command, args.workers), marker=MARKER)
        print(f"wrote {args.doc} and {args.json}")


if __name__ == "__main__":
    main()
