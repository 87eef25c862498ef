"""tako-server as a user gets it against nginx, both on one testbed host, proxying one upstream process.

    sudo bench/proxy/run --through-testbed [--reps 3] [--duration 10] [--connections 100,1000,5000]

Brings up a testbed host of its own (`TAKO_TESTBED_PREFIX=bp-`, `/var/tmp/tako-bench-proxy`), where
scripts/install-server installed tako-server with its default settings and the compiled data plane. The
real `tako` CLI deploys an app whose instance is nginx (1 worker, fixed 200 body), with `[tako] https = false`
so tako-server's plain-HTTP listener proxies it (the HTTP rows) instead of redirecting; nginx (2 workers, the
configuration a user writes) runs on the same host and proxies to that same instance. wrk runs in the
machine's own namespace against the host's veth address, the proxies alternating run by run. Everything it
starts it stops, on Ctrl-C too; the host is removed unless --keep.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench import BODY, ensure_tools, measure_tree, nginx_conf, run_wrk, stop_everything_on_sigterm, write_doc  # noqa: E402  (bench/proxy)
from testbed_report import Run, markdown  # noqa: E402  (bench/proxy)
from tests.e2e.conftest import user_home_with_key  # noqa: E402
from tests.support.projects import make_project  # noqa: E402
from tests.support.testbed import Host, Testbed  # noqa: E402

TAKO = REPO / ".venv" / "bin" / "tako"
STATE_DIR = Path("/var/tmp/tako-bench-proxy")
PREFIX = "bp-"
HOST_NAME = "bench"
NGINX_HTTP, NGINX_HTTPS = 8080, 8443
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"  # apps run with a PATH without /usr/sbin


def _upstream_project(root: Path, share: Path, route: str) -> Path:
    """The app: nginx with 1 worker on $PORT answering every path with BODY; it writes its port to `share`.
    Served over plain HTTP too (`https = false`); its HTTPS path is the same either way, the route being the
    host's address (an IP gets the self-signed certificate and no ACME order in both cases)."""
    start = "sh upstream.sh"
    extra = f'\n[vars]\nBENCH_SHARE = "{share}"\n'
    project = make_project(
        root,
        name="bench",
        route=route,
        servers={HOST_NAME: "production"},
        start=start,
        extra_toml=extra,
        use_git=False,
    )
    toml = project / "tako.toml"
    toml.write_text(toml.read_text().replace("[tako]\n", "[tako]\nhttps = false\n", 1))
    (project / "upstream.sh").write_text(
        f"""#!/bin/sh
# nginx as the app instance: its own files under $BENCH_SHARE (any uid may write there).
set -eu
dir="$BENCH_SHARE/upstream-$PORT"
mkdir -p "$dir"
cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
pid $dir/nginx.pid;
error_log stderr crit;
worker_rlimit_nofile 20000;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  client_body_temp_path $dir/body; proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fcgi; uwsgi_temp_path $dir/uwsgi; scgi_temp_path $dir/scgi;
  keepalive_requests 1000000;
  server {{ listen 127.0.0.1:$PORT backlog=4096; location / {{ return 200 "{BODY.strip()}\\n"; }} }}
}}
EOF
echo "$PORT" >"$BENCH_SHARE/upstream.port"
exec {NGINX} -e stderr -c "$dir/nginx.conf" -g 'daemon off;'
"""
    )
    from tests.support.projects import git

    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "bench upstream")
    return project


def deploy_upstream(host: Host, root: Path) -> int:
    """Deploy the upstream app with the tako CLI, as a user does; return its instance's port on the host."""
    share = root / "share"
    share.mkdir()
    share.chmod(0o1777)
    env = {
        **os.environ,
        "TAKO_HOME": str(root / "tako-home"),
        "HOME": str(user_home_with_key(host.key, root / "user-home")),
        "NO_COLOR": "1",
    }
    for name in ("SSH_AUTH_SOCK", "TAKO_SSH_KEY"):
        env.pop(name, None)
    # Routed on the host's address: wrk sends it as SNI, and tako-server refuses names it does not route.
    project = _upstream_project(root, share, host.address)
    for argv in (["servers", "add", host.address, "--name", HOST_NAME], ["deploy", "--yes"]):
        proc = subprocess.run(
            [str(TAKO), *argv], cwd=project, env=env, capture_output=True, text=True, timeout=300
        )
        if proc.returncode != 0:
            raise RuntimeError(f"tako {' '.join(argv)} failed:\n{proc.stdout}\n{proc.stderr}")
    return int((share / "upstream.port").read_text())


def _nginx_proxy_conf(host: Host, root: Path, upstream: int, workers: int) -> Path:
    """nginx as a user configures it (default listen backlog, no reuseport, a line per request in its access
    log as tako-server writes one by default), the tako deploy's cert type."""
    sys.path.insert(0, str(REPO / "src"))
    from tako.server.tls import selfsigned  # EC P-256, as tako-server's own certificates

    prefix = root / "nginx-proxy"
    prefix.mkdir()
    cert_pem, key_pem = selfsigned.generate(host.address)
    (prefix / "cert.pem").write_bytes(cert_pem)
    (prefix / "key.pem").write_bytes(key_pem)
    return nginx_conf(
        root,
        "nginx-proxy",
        workers,
        f"""upstream app {{ server 127.0.0.1:{upstream}; keepalive 1024; }}
  server {{
    listen {host.address}:{NGINX_HTTP}; listen {host.address}:{NGINX_HTTPS} ssl;
    ssl_certificate {prefix}/cert.pem; ssl_certificate_key {prefix}/key.pem; ssl_protocols TLSv1.2 TLSv1.3;
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host $host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }}
  }}""",
        access_log=True,
    )


def start_nginx_proxy(host: Host, root: Path, upstream: int, workers: int) -> subprocess.Popen[bytes]:
    conf = _nginx_proxy_conf(host, root, upstream, workers)
    proc = subprocess.Popen(
        [*host.enter_args(), NGINX, "-e", "stderr", "-c", str(conf), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=(root / "nginx-proxy" / "stderr.log").open("wb"),
        start_new_session=True,
    )
    try:
        _wait_listening(host, NGINX_HTTPS, proc, root / "nginx-proxy" / "stderr.log")
    except BaseException:
        stop_process_group(proc)
        raise
    return proc


def _wait_listening(
    host: Host, port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 15
) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = (log.read_text(errors="replace") if log.exists() else "")[-500:]
            raise RuntimeError(f"nginx exited at start: {err}")
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex((host.address, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host.address}:{port} after {timeout} s")


def stop_process_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process started in its own session, and whatever it started (nginx's workers)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)  # the group: workers left by a master that died too
        try:
            proc.wait(10)
            return
        except subprocess.TimeoutExpired:
            pass


def tako_server_processes(host: Host) -> list[psutil.Process]:
    """tako-server's processes in the host (the main process and its data-plane workers, not the app)."""
    pids = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True, text=True).stdout.split()
    found = []
    for pid in pids:
        try:
            p = psutil.Process(int(pid))
            argv = p.cmdline()
            if (argv[1:2] and argv[1].endswith("/tako-server")) or "tako.server.workers.child" in argv[:3]:
                found.append(p)
        except (psutil.NoSuchProcess, ValueError):
            pass
    return found


def nginx_processes(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    try:
        root = psutil.Process(proc.pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def one_run(
    proxy: str, url: str, scheme: str, conns: int, rep: int, args: argparse.Namespace, procs: Any
) -> Run:
    if args.warmup:
        run_wrk(url, min(conns, 100), args.warmup, args.threads, host=args.route)
    stats = measure_tree(procs, url, conns, args.duration, args.threads, host=args.route)
    stats.pop("proxy_rss_mb", None)
    return Run(proxy, scheme, conns, rep, **stats)


def run_cells(host: Host, nginx: subprocess.Popen[bytes], args: argparse.Namespace) -> list[Run]:
    """Every cell, `reps` times, the proxies alternating (and the first of each rep alternating too)."""
    urls = {
        ("tako", "https"): f"https://{host.address}/",
        ("tako", "http"): f"http://{host.address}/",  # the app has [tako] https = false
        ("nginx", "https"): f"https://{host.address}:{NGINX_HTTPS}/",
        ("nginx", "http"): f"http://{host.address}:{NGINX_HTTP}/",
    }
    procs = {"tako": lambda: tako_server_processes(host), "nginx": lambda: nginx_processes(nginx)}
    runs: list[Run] = []
    for scheme in args.schemes.split(","):
        for conns in (int(c) for c in args.connections.split(",")):
            for rep in range(args.reps):
                order = ["tako", "nginx"] if rep % 2 == 0 else ["nginx", "tako"]
                for proxy in order:
                    run = one_run(proxy, urls[(proxy, scheme)], scheme, conns, rep, args, procs[proxy])
                    print(_line(run), flush=True)
                    runs.append(run)
    return runs


def _line(r: Run) -> str:
    kinds = " ".join(f"{k} {v}" for k, v in r.socket_errors_by_kind.items() if v)
    return (
        f"{r.proxy:6} {r.scheme:5} c={r.connections:<5} rep {r.rep}  {r.rps:>9,.0f} req/s  "
        f"p50 {r.p50_ms:.2f} ms  p99 {r.p99_ms:.2f} ms  non2xx {r.non_2xx}  errors {r.socket_errors}"
        f"{' (' + kinds + ')' if kinds else ''}  cpu {r.proxy_cpu_percent:.0f}%"
    )


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/proxy/run --through-testbed", description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (default 10)")
    parser.add_argument(
        "--reps", type=int, default=3, help="runs per proxy and cell, alternating (default 3)"
    )
    parser.add_argument("--connections", default="100,1000,5000")
    parser.add_argument("--schemes", default="https,http")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--nginx-workers", type=int, default=2)
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="seconds of wrk (100 conns) before each run"
    )
    parser.add_argument("--json", default=str(REPO / "bench/proxy/results-testbed.json"))
    parser.add_argument("--doc", default=str(REPO / "docs/benchmarks.md"), help="markdown file ('' = none)")
    parser.add_argument("--keep", action="store_true", help="leave the testbed host up at the end")
    args = parser.parse_args()
    unknown = set(args.schemes.split(",")) - {"https", "http"}
    if unknown:
        parser.error(f"--schemes: unknown {', '.join(sorted(unknown))} (use https, http or both)")
    return args


def main() -> None:
    args = _parse()
    if os.geteuid() != 0:
        raise SystemExit("bench/proxy/run --through-testbed needs root (it creates a testbed host)")
    stop_everything_on_sigterm()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ensure_tools(install=True)
    command = shlex.join(["sudo", "bench/proxy/run", "--through-testbed", *sys.argv[1:]])
    bed = Testbed(STATE_DIR, PREFIX)
    nginx: subprocess.Popen[bytes] | None = None
    try:
        bed.down()  # a host left by --keep runs the tako-server of its day: install the checkout's
        host = bed.up(HOST_NAME)[0]
        args.route = host.address
        with tempfile.TemporaryDirectory(prefix="tako-bench-testbed-") as tmp:
            root = Path(tmp)
            os.chmod(root, 0o755)  # the host's nginx (its workers run as www-data) reads its files here
            upstream = deploy_upstream(host, root)
            nginx = start_nginx_proxy(host, root, upstream, args.nginx_workers)
            info = host_info(host)
            runs = run_cells(host, nginx, args)
            stop_process_group(nginx)
            nginx = None
    finally:
        if nginx is not None:
            stop_process_group(nginx)
        if not args.keep:
            bed.down()
    Path(args.json).write_text(
        json.dumps({"command": command, "host": info, "runs": [asdict(r) for r in runs]}, indent=2)
    )
    if args.doc:
        write_doc(Path(args.doc), markdown(runs, command, info), "bench/proxy --through-testbed")
        print(f"wrote {args.doc} and {args.json}")


def host_info(host: Host) -> dict[str, Any]:
    """What the table's notes say about the host: tako-server's workers, listen backlogs, somaxconn."""
    procs = tako_server_processes(host)
    ss = host.exec("ss -ltn", check=True).stdout
    somaxconn = host.exec("cat /proc/sys/net/core/somaxconn", check=True).stdout.strip()
    return {
        "tako_processes": len(procs),
        "listen": ss,
        "somaxconn": somaxconn,
        "cpus": len(os.sched_getaffinity(0)),
    }


if __name__ == "__main__":
    main()
