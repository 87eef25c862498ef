"""Machine instructions per keep-alive HTTPS/1.1 request of tako's data plane, under callgrind: a
deterministic figure for changes too small for a wall-clock or /proc benchmark on a shared machine.

    flock /tmp/tako-bench.lock .venv/bin/python bench/proxy/tls_instructions.py [--connections 1]
        [--requests 1000] [--tree DIR] [--pure-python] [--out FILE] [--scheme http] [--proxy nginx]

One `ProxyServer` process (bench/proxy/tako_runner.py) under valgrind's callgrind, behind it nginx with a
fixed 200 (bench.py's `fixed_upstream`). After a warm-up, h2load (`--h1`, one request in flight per
connection) runs twice with instrumentation on, each run dumped on its own: `--requests` requests, then
twice as many, each over `--connections` new connections. Both runs make the same handshakes and connection
set-ups, so the difference of the two counts divided by the difference of the requests is what one more
keep-alive request costs (the TLS transport, the proxy's protocols, OpenSSL's record layer, httptools,
uvloop), without the handshakes that would otherwise dominate. `--tree` measures another checkout (built
in place) for a before/after on the same machine; `--pure-python` sets TAKO_PURE_PYTHON=1; `--out` keeps the
long run's callgrind output for callgrind_annotate; `--scheme http` measures the plain-HTTP listener (which
proxies in this runner) instead; `--proxy nginx` measures nginx the same way (one process, the same
listeners and upstream). About a minute.

Python's cyclic garbage collector runs when allocations outnumber deallocations by its threshold, so one
run may hold a full collection the other does not: a change that only moves how many objects exist at
start-up can move the figure by about 1,000 (seen with 2,000 and 4,000 requests). Repeat a surprising
figure with other `--requests`.

One connection is the default because it repeats to within ~100 instructions per request: with 20, how
many connections' events one loop iteration finds varies from run to run, and the figures with it (about
+-700 per request).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import bench as proxy_bench  # bench/proxy/bench.py, next to this script

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "http2"))
from instructions import total_instructions  # bench/http2/instructions.py

WARM_UP = 500  # requests before instrumentation starts


def h2load(port: int, connections: int, requests: int, scheme: str = "https") -> int:
    """Requests h2load completed (HTTP/1.1, over TLS for https, one in flight per connection)."""
    argv = ["h2load", "--h1", "-n", str(requests), "-c", str(connections), "-m", "1", "-t", "1"]
    out = subprocess.run(
        [*argv, f"{scheme}://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=600
    )
    for line in out.stdout.splitlines():
        if line.startswith("requests:"):
            done = int(line.split(",")[3].split()[0])  # "... N succeeded"
            if done != requests:
                raise RuntimeError(f"h2load completed {done} of {requests} requests: {out.stdout[-800:]}")
            return done
    raise RuntimeError(f"h2load output not understood: {out.stdout[-800:]}{out.stderr[-800:]}")


def instrumented(pid: int, port: int, connections: int, requests: int, scheme: str) -> None:
    """One h2load run with instrumentation on, then a dump of what it counted (which zeroes the counters)."""
    control = ["callgrind_control"]
    subprocess.run([*control, "-z", str(pid)], capture_output=True, check=True)
    subprocess.run([*control, "-i", "on", str(pid)], capture_output=True, check=True)
    h2load(port, connections, requests, scheme)
    subprocess.run([*control, "-i", "off", str(pid)], capture_output=True, check=True)
    subprocess.run([*control, "-d", str(pid)], capture_output=True, check=True)


def _nginx_argv(work: Path, cert: tuple[Path, Path, Path], http: int, https: int, upstream: int) -> list[str]:
    """nginx as bench.py's comparison proxy (the same listeners, upstream keep-alive and forwarded headers,
    no access log, as tako_runner.py writes none), in one process: `master_process off` makes the process
    valgrind starts the one that serves."""
    fullchain, privkey, _ = cert
    conf = proxy_bench.nginx_conf(
        work,
        "nginx-proxy",
        1,
        f"""upstream up {{ server 127.0.0.1:{upstream}; keepalive 1024; }}
  server {{
    listen 127.0.0.1:{http}; listen 127.0.0.1:{https} ssl;
    ssl_certificate {fullchain}; ssl_certificate_key {privkey}; ssl_protocols TLSv1.2 TLSv1.3;
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host $host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }}
  }}""",
    )
    return ["nginx", "-c", str(conf), "-g", "daemon off; master_process off;"]


def measure(args: argparse.Namespace, work: Path) -> tuple[int, int, int]:
    """Instructions of the short run, of the long run, and per request of the difference."""
    cert = proxy_bench.make_cert(work)
    http, https = proxy_bench.free_port(), proxy_bench.free_port()
    upstream, up_port = proxy_bench.fixed_upstream(work)
    tree = Path(args.tree).resolve()
    out = work / "callgrind.out"
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    env.pop("TAKO_PURE_PYTHON", None)
    if args.proxy == "nginx":
        argv += _nginx_argv(work, cert, http, https, up_port)
    else:
        argv += [sys.executable, str(tree / "bench/proxy/tako_runner.py"), "--http-port", str(http)]
        certs = str(cert[0].parent.parent)
        argv += ["--https-port", str(https), "--upstream", str(up_port), "--certs", certs]
        if args.pure_python:
            env["TAKO_PURE_PYTHON"] = "1"
    tako = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port = https if args.scheme == "https" else http  # the plain listener proxies too (forward)
        proxy_bench.wait_port(port, 120)  # python under valgrind starts slowly
        h2load(port, args.connections, WARM_UP, args.scheme)
        instrumented(tako.pid, port, args.connections, args.requests, args.scheme)
        instrumented(tako.pid, port, args.connections, 2 * args.requests, args.scheme)
    finally:
        tako.send_signal(signal.SIGINT)
        tako.wait(120)
        upstream.stop()
    dumps = sorted(work.glob("callgrind.out.*"), key=lambda p: int(p.suffix[1:]))
    if len(dumps) < 2:
        raise RuntimeError(f"expected two callgrind dumps in {work}, found {[p.name for p in dumps]}")
    short, long = total_instructions(dumps[0]), total_instructions(dumps[1])
    if args.out:
        shutil.copyfile(dumps[1], args.out)  # the long run, for callgrind_annotate
    return short, long, (long - short) // args.requests


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument(
        "--requests", type=int, default=1000, help="the short run (the long one sends twice as many)"
    )
    parser.add_argument("--tree", default=str(proxy_bench.REPO), help="checkout to measure (built in place)")
    parser.add_argument("--pure-python", action="store_true", help="run with TAKO_PURE_PYTHON=1")
    parser.add_argument(
        "--proxy", choices=("tako", "nginx"), default="tako", help="nginx: the same figure for nginx"
    )
    parser.add_argument(
        "--scheme", choices=("https", "http"), default="https", help="http: the plain-HTTP listener instead"
    )
    parser.add_argument("--out", help="keep the long run's callgrind output here (for callgrind_annotate)")
    args = parser.parse_args()
    proxy_bench.stop_everything_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="tako-tls-instr-") as tmp:
        short, long, per_request = measure(args, Path(tmp))
    mode = "nginx" if args.proxy == "nginx" else "python" if args.pure_python else "as built"
    where = "" if args.proxy == "nginx" else f"; {args.tree}"
    print(
        f"{per_request:,} instructions per keep-alive {args.scheme.upper()} request ({mode}, "
        f"{args.connections} connections;"
        f" {short:,} for {args.requests} requests, {long:,} for {2 * args.requests}{where})"
    )


if __name__ == "__main__":
    main()
