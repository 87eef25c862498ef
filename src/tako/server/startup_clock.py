"""Where a tako-server's start-up time goes: one log line of stages, from the process's own start.

After a crash the gap until the new process serves is what users wait through; this line (and
`bench/crash`, which reads it) tells the supervisor's restart delay, the interpreter and imports, and each
start-up step apart.
"""

from __future__ import annotations

import os
import time

_TICKS = os.sysconf("SC_CLK_TCK")


def process_started() -> float:
    """This process's start as wall-clock time (the kernel counts it in clock ticks, 10 ms, since boot)."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    since_boot = int(fields[19]) / _TICKS  # field 22 of stat, counted after "(comm)"
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - since_boot
    return time.time() - age


class StartupClock:
    """Stages of this process's start, each ended by `mark`; `line()` lists them in seconds."""

    def __init__(self) -> None:
        self.started = process_started()
        self._last = self.started
        self.stages: list[tuple[str, float]] = []

    def mark(self, stage: str) -> None:
        now = time.time()
        self.stages.append((stage, max(0.0, now - self._last)))
        self._last = now

    def line(self) -> str:
        """`pid=<pid> started=<epoch> python=0.081 imports=0.120 ...`: parsed by bench/crash."""
        stages = " ".join(f"{name}={seconds:.3f}" for name, seconds in self.stages)
        return f"pid={os.getpid()} started={self.started:.3f} {stages} total={self._last - self.started:.3f}"
