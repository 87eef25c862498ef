"""The side-by-side table of `bench/proxy/run --through-testbed`: runs of a cell summed up per proxy."""

from __future__ import annotations

import datetime
import platform
import statistics
from dataclasses import dataclass
from typing import Any

MARKER = "bench/proxy --through-testbed"
KINDS = ("connect", "read", "write", "timeout")


@dataclass
class Run:
    """One wrk run of one proxy in one cell."""

    proxy: str
    scheme: str
    connections: int
    rep: int
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    socket_errors_by_kind: dict[str, int]
    requests: int
    proxy_cpu_percent: float
    error: str = ""


def _cells(runs: list[Any]) -> list[tuple[str, int]]:
    seen: list[tuple[str, int]] = []
    for r in runs:
        if (r.scheme, r.connections) not in seen:
            seen.append((r.scheme, r.connections))
    return seen


def _errors(runs: list[Run]) -> str:
    total = {k: sum(r.socket_errors_by_kind.get(k, 0) for r in runs) for k in KINDS}
    parts = [f"{k} {v:,}" for k, v in total.items() if v]
    return ", ".join(parts) if parts else "0"


def _ratios(mine: list[Run], base: list[Run]) -> str:
    """tako/nginx rps of each rep (runs of one rep ran back to back), and their median."""
    by_rep = {r.rep: r.rps for r in base if r.rps}
    pairs = [r.rps / by_rep[r.rep] for r in mine if r.rep in by_rep and r.rps]
    if not pairs:
        return "-"
    return f"**{statistics.median(pairs):.2f}** ({', '.join(f'{p:.2f}' for p in pairs)})"


def rows(runs: list[Any]) -> list[str]:
    lines = []
    for scheme, conns in _cells(runs):
        cell = [r for r in runs if r.scheme == scheme and r.connections == conns]
        nginx = [r for r in cell if r.proxy == "nginx" and not r.error]
        for proxy in dict.fromkeys(r.proxy for r in cell):
            mine = [r for r in cell if r.proxy == proxy]
            if all(r.error for r in mine):
                lines.append(f"| {proxy} | {scheme} | {conns} | {mine[0].error} | | | | | | |")
                continue
            mine = [r for r in mine if not r.error]
            p99 = statistics.median(r.p99_ms for r in mine)
            base_p99 = statistics.median(r.p99_ms for r in nginx) if nginx else 0
            lines.append(
                f"| {proxy} | {scheme} | {conns} | {statistics.median(r.rps for r in mine):,.0f} "
                f"| {'-' if proxy == 'nginx' else _ratios(mine, nginx)} "
                f"| {statistics.median(r.p50_ms for r in mine):.2f} | {p99:.2f} "
                f"| {'-' if proxy == 'nginx' or not base_p99 else f'{p99 / base_p99:.2f}'} "
                f"| {_errors(mine)} | {statistics.median(r.proxy_cpu_percent for r in mine):.0f} |"
            )
    return lines


def markdown(runs: list[Any], command: str, info: dict[str, Any]) -> str:
    reps = max((r.rep for r in runs), default=0) + 1
    lines = [
        f"<!-- {MARKER}:start -->",
        "### Through a testbed host, as a user gets it (`bench/proxy/run --through-testbed`)",
        "",
        f"- Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.node()}, "
        f"{info.get('cpus')} CPUs, {platform.platform()}",
        f"- Command: `{command}`",
        "- One testbed host (network namespace, veth); tako-server installed in it by scripts/install-server "
        f'with its default settings ({info.get("tako_processes")} data-plane processes: `workers = "auto"` '
        "on this machine), the compiled data plane; an app deployed with the `tako` CLI whose instance is "
        "nginx (1 worker, fixed 200 body). nginx with 2 workers on the same host proxies to that instance "
        f"(default listen backlog, 511; the host's somaxconn is {info.get('somaxconn')}). Both proxies log "
        "each request, as each does by default: tako-server its JSON access lines, nginx its `combined` "
        "access log.",
        "- wrk (2 threads, `--timeout 5s`) in the machine's own namespace against the host's veth address, "
        f"the app routed on that address (wrk sends it as SNI and Host); {reps} runs per proxy and cell, "
        "tako and nginx alternating (the first of each pair alternating too), each after 1 s of warm-up at "
        "100 connections.",
        "- req/s, p50, p99, CPU: medians of the runs; vs nginx: median of the per-pair ratios (each pair's "
        "ratios in brackets); socket errors: wrk's, summed over the runs, by kind.",
        "",
        "| proxy | scheme | conns | req/s | vs nginx | p50 ms | p99 ms | p99 vs nginx | socket errors "
        "| CPU % |",
        "|---|---|---:|---:|---|---:|---:|---:|---|---:|",
        *rows(runs),
        f"<!-- {MARKER}:end -->",
    ]
    return "\n".join(lines) + "\n"
