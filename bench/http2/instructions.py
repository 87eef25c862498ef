"""Machine instructions per HTTP/2 request of tako's data plane, under callgrind: a deterministic figure for
changes too small for a wall-clock or /proc benchmark on a shared machine.

    flock /tmp/tako-bench.lock .venv/bin/python bench/http2/instructions.py [--connections 10]
        [--streams 10] [--requests 6000] [--tree DIR]

One `ProxyServer` process (bench/proxy/tako_runner.py, the same as bench/http2/bench.py runs) under
valgrind's callgrind, with instrumentation off until h2load's warm-up (500 requests) is done; then h2load
sends `--requests` requests, instrumentation goes off again and the total is divided by the requests.
The upstream is nginx with a fixed 200, as in bench.py. `--tree` measures another checkout (built in
place), for a before/after on the same machine; the callgrind output stays in --out for
callgrind_annotate. Takes about 20 s per 6,000 requests at 10 x 10 (100 x 10 adds 100 handshakes: use
20,000 requests there).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "proxy"))  # bench/proxy's helpers

import bench as proxy_bench  # bench/proxy/bench.py

WARM_UP = 500  # requests before instrumentation starts


def h2load(port: int, connections: int, streams: int, requests: int) -> int:
    """Requests h2load completed."""
    argv = ["h2load", "-n", str(requests), "-c", str(connections), "-m", str(streams), "-t", "1"]
    out = subprocess.run([*argv, f"https://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=600)
    for line in out.stdout.splitlines():
        if line.startswith("requests:"):
            return int(line.split(",")[3].split()[0])  # "... N succeeded"
    raise RuntimeError(f"h2load output not understood: {out.stdout[-800:]}{out.stderr[-800:]}")


def total_instructions(out: Path) -> int:
    annotated = subprocess.run(["callgrind_annotate", str(out)], capture_output=True, text=True, check=True)
    for line in annotated.stdout.splitlines():
        if "PROGRAM TOTALS" in line:
            return int(line.split()[0].replace(",", ""))
    raise RuntimeError(f"no total in {out}")


def measure(args: argparse.Namespace, work: Path) -> int:
    """Instructions per completed request of one run."""
    cert = proxy_bench.make_cert(work)
    http, https = proxy_bench.free_port(), proxy_bench.free_port()
    upstream, up_port = proxy_bench.fixed_upstream(work)
    tree = Path(args.tree).resolve()
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={args.out}"]
    argv += [sys.executable, str(tree / "bench/proxy/tako_runner.py"), "--http-port", str(http)]
    argv += ["--https-port", str(https), "--upstream", str(up_port), "--certs", str(cert[0].parent.parent)]
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    tako = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proxy_bench.wait_port(https, 120)  # python under valgrind starts slowly
        h2load(https, args.connections, args.streams, WARM_UP)
        subprocess.run(["callgrind_control", "-i", "on", str(tako.pid)], capture_output=True, check=True)
        done = h2load(https, args.connections, args.streams, args.requests)
        subprocess.run(["callgrind_control", "-i", "off", str(tako.pid)], capture_output=True, check=True)
    finally:
        tako.send_signal(signal.SIGINT)
        tako.wait(120)
        upstream.stop()
    return total_instructions(Path(args.out)) // max(done, 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--streams", type=int, default=10, help="streams in flight per connection")
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--tree", default=str(proxy_bench.REPO), help="checkout to measure (built in place)")
    parser.add_argument("--out", default="/tmp/tako-h2-callgrind.out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tako-h2-instr-") as tmp:
        per_request = measure(args, Path(tmp))
    cell = f"{args.connections} x {args.streams}"
    print(f"{cell}: {per_request:,} instructions per request ({args.requests} requests, {args.tree})")


if __name__ == "__main__":
    main()
