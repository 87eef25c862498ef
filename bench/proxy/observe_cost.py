"""What metrics and access logs cost the data plane: tako-server in three configurations side by side.

    .venv/bin/python bench/proxy/observe_cost.py [--rounds 3] [--duration 8] [--connections 100,1000]

The real daemon (`[server] workers = N`, bench/proxy/tako_server.py) three times at once, each with the
deployed nginx app as its upstream:

- `off`: metrics and access logs off (`[metrics] listen = ""`, `count_requests = false`,
  `[access_log] enabled = false`);
- `metrics`: requests counted and `/metrics` served, access logs off;
- `metrics+access`: both on (tako-server's defaults).

`--entries` picks which of them run (`off` always: the costs are against it) and may add `off-twin`, a
second server configured as `off` (what two identical servers differ by), and, for reference, `bare`, the
bare data plane (`ProxyServer` in N processes with a static route, no daemon around it:
bench/proxy/tako_runner.py), and `nginx` with N workers, both proxying an nginx upstream of their own.
`--schemes https,http` measures plain HTTP too (the app is deployed with `[tako] https = false`, so
tako-server's plain-HTTP listener proxies it instead of redirecting).

For each cell (scheme, connections) and round, the entries are measured back to back with wrk, starting
with a different one each round, so the machine's drift falls on all alike. The table (rps, p99 and
tako-server's CPU time per request per round, the cost against `off`, the median over the rounds) goes to
stdout and to its own section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import resource
import shlex
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import bench  # bench/proxy/bench.py, next to this script
import tako_server

REPO = Path(__file__).resolve().parents[2]
MARKER = "bench/proxy/observe_cost"  # its section of docs/benchmarks.md: <!-- MARKER:start/end -->
# name -> (metrics on, access logs on)
CONFIGS: dict[str, tuple[bool, bool]] = {
    "off": (False, False),
    "metrics": (True, False),
    "metrics+access": (True, True),
}
# What --entries may add: a second `off` server (the spread between two identical servers), and the
# reference entries measured like the others (bench.start_proxy).
TWIN = "off-twin"
COMPARE = (TWIN, "bare", "nginx")

Cell = tuple[str, int]  # scheme, connections
Figures = dict[str, float]  # rps, p99_ms, proxy_cpu_percent


def _start(args: argparse.Namespace, work: Path, names: list[str]) -> tuple[dict[str, Any], list[Any]]:
    """Every entry of `names` running: {name: (process, http port, https port)}, and what else to stop."""
    cert = bench.make_cert(work)
    plain = "http" in args.schemes.split(",")
    started: dict[str, Any] = {}
    others: list[Any] = []
    try:
        for name in names:
            entry = work / name
            entry.mkdir()
            if name in CONFIGS or name == TWIN:
                metrics, access = CONFIGS.get(name, CONFIGS["off"])
                started[name] = tako_server.start(
                    entry,
                    args.workers,
                    cert[0].parent,
                    bench.BODY,
                    "",
                    bench.Process,
                    access,
                    metrics,
                    not plain,
                )
                continue
            if not others:  # the reference entries' own upstream, as bench/proxy/bench.py starts it
                others.append(_upstream(work))
            started[name] = bench.start_proxy(
                "tako" if name == "bare" else name, entry, args.workers, others[0][1], cert
            )
    except BaseException:
        _stop([*started.values()], others)
        raise
    return started, others


def _upstream(work: Path) -> tuple[Any, int]:
    """nginx (1 worker, fixed 200 body) on a free port, as bench/proxy/bench.py starts its upstream."""
    port = bench.free_port()
    body = bench.BODY.strip()
    server = f'server {{ listen 127.0.0.1:{port} backlog=4096; location / {{ return 200 "{body}\\n"; }} }}'
    conf = bench.nginx_conf(work, "upstream", 1, server)
    return bench.Process(["nginx", "-c", str(conf), "-g", "daemon off;"], port), port


def _stop(started: list[Any], others: list[Any]) -> None:
    for proc, _, _ in started:
        proc.stop()
    for proc, _ in others:
        proc.stop()


def _run(args: argparse.Namespace, work: Path) -> dict[Cell, dict[str, list[Figures]]]:
    names = ["off", *(n for n in args.entries.split(",") if n and n != "off")]
    cells = [(scheme, int(c)) for scheme in args.schemes.split(",") for c in args.connections.split(",")]
    results: dict[Cell, dict[str, list[Figures]]] = {cell: {n: [] for n in names} for cell in cells}
    started, others = _start(args, work, names)
    try:
        for round_ in range(args.rounds):
            for cell in cells:
                first = round_ % len(names)
                for name in names[first:] + names[:first]:
                    proc, http, https = started[name]
                    url = f"{cell[0]}://127.0.0.1:{https if cell[0] == 'https' else http}/"
                    if args.warmup:
                        bench.run_wrk(url, min(cell[1], 100), args.warmup, args.threads)
                    stats = bench.measure(proc, url, cell[1], args.duration, args.threads)
                    results[cell][name].append(stats)
                    print(
                        f"round {round_ + 1} {cell[0]} c={cell[1]} {name}: {stats['rps']:.0f} req/s, "
                        f"p99 {stats['p99_ms']:.1f} ms, CPU {_cpu_us(stats):.1f} µs/request, "
                        f"non-2xx {stats['non_2xx']}, "
                        f"errors {stats['socket_errors']}",
                        flush=True,
                    )
    finally:
        _stop([*started.values()], others)
    return results


def _cost(value: float, base: float) -> str:
    return f"{(value - base) / base * 100:+.1f}%" if base else "-"


def _cpu_us(stats: Figures) -> float:
    """tako-server's CPU time per request (all its processes) in µs: steadier than req/s when busy."""
    if "cpu_us" in stats:  # a median row: the median of the rounds' figures
        return stats["cpu_us"]
    return stats["proxy_cpu_percent"] / 100 / stats["rps"] * 1e6 if stats["rps"] else 0.0


def _fig(stats: Figures, base: Figures | None) -> str:
    text = f"{stats['rps'] / 1000:.1f}k, {stats['p99_ms']:.1f} ms, {_cpu_us(stats):.1f} µs"
    if base is None:
        return text
    return f"{text} ({_cost(stats['rps'], base['rps'])}; CPU {_cost(_cpu_us(stats), _cpu_us(base))})"


def markdown(results: dict[Cell, dict[str, list[Figures]]], command: str, workers: int) -> str:
    """This benchmark's section: one table per cell, a row per round and the median."""
    lines = [
        f"<!-- {MARKER}:start -->",
        f"`{command}` ({datetime.date.today().isoformat()}, `[server] workers = {workers}`; req/s, p99 "
        "latency, each entry's CPU time per request (all its processes), and against `off`: the "
        "throughput and CPU time per request):",
        "",
    ]
    for (scheme, conns), by_name in results.items():
        lines += [
            f"{scheme.upper()}, {conns} connections:",
            "",
            "| round | " + " | ".join(by_name) + " |",
            "|---" * (len(by_name) + 1) + "|",
        ]
        rounds = len(by_name["off"])
        for i in range(rounds):
            base = by_name["off"][i]
            row = [_fig(by_name[n][i], None if n == "off" else base) for n in by_name]
            lines.append(f"| {i + 1} | " + " | ".join(row) + " |")
        medians = {
            n: {
                "rps": statistics.median(r["rps"] for r in runs),
                "p99_ms": statistics.median(r["p99_ms"] for r in runs),
                "cpu_us": statistics.median(_cpu_us(r) for r in runs),
            }
            for n, runs in by_name.items()
        }
        row = [_fig(medians[n], None if n == "off" else medians["off"]) for n in by_name]
        lines += ["| median | " + " | ".join(row) + " |", ""]
    lines.append(f"<!-- {MARKER}:end -->")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per cell (default 3)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run (default 8)")
    parser.add_argument("--connections", default="100,1000", help="comma-separated (default 100,1000)")
    parser.add_argument("--schemes", default="https", help="https, http or both, comma-separated")
    parser.add_argument(
        "--entries",
        default=",".join(CONFIGS),
        help=f"comma-separated, of {', '.join([*CONFIGS, *COMPARE])} (default: {', '.join(CONFIGS)})",
    )
    parser.add_argument("--workers", type=int, default=2, help="tako-server [server] workers (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of wrk before each measured run")
    parser.add_argument("--doc", default=str(REPO / "docs/benchmarks.md"), help="markdown file ('' = none)")
    args = parser.parse_args()
    if set(args.schemes.split(",")) - {"https", "http"}:
        parser.error("--schemes: https, http or both")
    if set(filter(None, args.entries.split(","))) - {*CONFIGS, *COMPARE}:
        parser.error(f"--entries: of {', '.join([*CONFIGS, *COMPARE])}")
    command = "bench/proxy/observe_cost.py " + shlex.join(sys.argv[1:])
    bench.stop_everything_on_sigterm()
    bench.ensure_tools(install=False)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # 1000 connections: wrk and tako-server inherit it
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory(prefix="tako-observe-cost-") as tmp:
        results = _run(args, Path(tmp))
    section = markdown(results, command, args.workers)
    print(section)
    if args.doc:
        bench.write_doc(Path(args.doc), section, MARKER)
        print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
