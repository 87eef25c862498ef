"""Deploy progress on screen: live lines per server on a terminal, plain lines elsewhere."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from rich.console import Console, Group
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

from tako.deploy.report import Outcome, failed_step, outcome_text


def _rate(sent: int, elapsed: float) -> str:
    if elapsed <= 0:
        return ""
    return f"{sent / elapsed / 1024 / 1024:.1f} MiB/s"


class PlainProgress:
    """One line per server and step; no control characters (logs, CI, pipes)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._upload_started: dict[str, float] = {}

    def step(self, server: str, step: str, text: str) -> None:
        self.console.print(f"[{server}] {text}", markup=False, highlight=False)
        if step == "upload":
            self._upload_started[server] = time.monotonic()

    def transfer(self, server: str, sent: int, total: int) -> None:
        if sent == total:
            elapsed = time.monotonic() - self._upload_started.get(server, time.monotonic())
            self.console.print(
                f"[{server}] uploaded {sent} bytes {_rate(sent, elapsed)}".rstrip(),
                markup=False,
                highlight=False,
            )

    def output(self, server: str, line: str) -> None:
        self.console.print(f"[{server}] {line}", markup=False, highlight=False)

    def finished(self, outcome: Outcome) -> None:
        word = "ok" if outcome.ok else f"FAILED at {failed_step(outcome)}"
        text = f"[{outcome.server.name}] {word}: {outcome_text(outcome)}"
        self.console.print(text, markup=False, highlight=False)


class LiveProgress:
    """A spinner line per server showing its current step and upload bytes/rate."""

    def __init__(self, console: Console, servers: list[str]) -> None:
        self.console = console
        self.servers = servers
        self.state: dict[str, str] = {s: "waiting" for s in servers}
        self.done: dict[str, Outcome] = {}
        self._upload_started: dict[str, float] = {}
        self.live = Live(self._render(), console=console, refresh_per_second=10, transient=False)

    def __enter__(self) -> LiveProgress:
        from tako.remote.client_keys import set_terminal_pause  # the SSH library loads only when used

        self.live.__enter__()
        set_terminal_pause(self._paused)  # a passphrase prompt must not be painted over
        return self

    def __exit__(self, *exc: object) -> None:
        from tako.remote.client_keys import set_terminal_pause

        set_terminal_pause(None)
        self.live.update(self._render())
        self.live.__exit__(None, None, None)

    @contextlib.contextmanager
    def _paused(self) -> Iterator[None]:
        self.live.stop()
        try:
            yield
        finally:
            self.live.start()

    def _render(self) -> Group:
        rows: list[Spinner | Text] = []
        for server in self.servers:
            outcome = self.done.get(server)
            if outcome is None:
                rows.append(Spinner("dots", Text(f" {server}: {self.state[server]}")))
            elif outcome.ok:
                rows.append(Text.assemble(("✓ ", "green"), f"{server}: {outcome_text(outcome)}"))
            else:
                failure = f"{server}: {failed_step(outcome)}: {outcome_text(outcome)}"
                rows.append(Text.assemble(("✗ ", "red"), failure))
        return Group(*rows)

    def step(self, server: str, step: str, text: str) -> None:
        self.state[server] = text
        if step == "upload":
            self._upload_started[server] = time.monotonic()
        self.live.update(self._render())

    def transfer(self, server: str, sent: int, total: int) -> None:
        elapsed = time.monotonic() - self._upload_started.get(server, time.monotonic())
        self.state[server] = (
            f"uploading {sent / 1048576:.1f}/{total / 1048576:.1f} MiB {_rate(sent, elapsed)}"
        )
        self.live.update(self._render())

    def output(self, server: str, line: str) -> None:
        """A line of the release command's output, printed above the live lines."""
        self.live.console.print(Text(f"[{server}] {line}"))

    def finished(self, outcome: Outcome) -> None:
        self.done[outcome.server.name] = outcome
        self.live.update(self._render())
