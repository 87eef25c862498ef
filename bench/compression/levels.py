"""Compression ratio and single-core speed of each coding at the levels a proxy could use.

    .venv/bin/python bench/compression/levels.py

Compresses the benchmark's HTML page and JSON document (body.py, about 80 KiB each) whole, for 0.4 s of
CPU per level; prints the ratio (input / output) and MB of input per CPU second. These figures chose the
levels in src/tako/server/proxy/compression.py.
"""

from __future__ import annotations

import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import brotli
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent))
from body import html_page, json_document  # bench/compression, next to this script


def _gzip(level: int) -> Callable[[bytes], bytes]:
    def run(data: bytes) -> bytes:
        z = zlib.compressobj(level, zlib.DEFLATED, 31)
        return z.compress(data) + z.flush()

    return run


def _brotli(quality: int) -> Callable[[bytes], bytes]:
    return lambda data: brotli.compress(data, quality=quality, lgwin=18)  # type: ignore[no-any-return]


def _zstd(level: int) -> Callable[[bytes], bytes]:
    return lambda data: zstandard.ZstdCompressor(level=level).compress(data)


CANDIDATES: list[tuple[str, Callable[[bytes], bytes]]] = [
    *((f"gzip {n}", _gzip(n)) for n in (1, 3, 4, 5, 6)),
    *((f"br {n}", _brotli(n)) for n in (3, 4, 5, 6)),
    *((f"zstd {n}", _zstd(n)) for n in (1, 3, 5, 6)),
]


def measure(compress: Callable[[bytes], bytes], data: bytes, seconds: float = 0.4) -> tuple[float, float]:
    """(ratio, MB of input per CPU second)."""
    runs, start, size = 0, time.process_time(), 0
    while time.process_time() - start < seconds:
        size = len(compress(data))
        runs += 1
    per_run = (time.process_time() - start) / runs
    return len(data) / size, len(data) / per_run / 1e6


def main() -> None:
    bodies = {"HTML": html_page(), "JSON": json_document()}
    print("| coding | " + " | ".join(f"{k} ratio | {k} MB/s" for k in bodies) + " |")
    print("|---|" + "---:|" * (2 * len(bodies)))
    for label, compress in CANDIDATES:
        cells = []
        for data in bodies.values():
            ratio, speed = measure(compress, data)
            cells += [f"{ratio:.2f}", f"{speed:.0f}"]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
