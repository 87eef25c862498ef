"""Deploy outcomes as data: one `ServerOutcome` per server; the report decides the exit code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ServerOutcome:
    server: str
    ok: bool
    step: str
    message: str = ""
    hint: str | None = None


@dataclass(frozen=True)
class DeployReport:
    app: str
    version: str
    env: str
    urls: tuple[str, ...]
    outcomes: tuple[ServerOutcome, ...]

    @property
    def succeeded(self) -> list[ServerOutcome]:
        return [o for o in self.outcomes if o.ok]

    @property
    def failed(self) -> list[ServerOutcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or not self.outcomes else 0


class Progress(Protocol):
    """Receives pipeline events; the CLI renders them (spinner/lines on a terminal, plain lines elsewhere)."""

    def step(self, server: str, step: str, text: str) -> None: ...

    def transfer(self, server: str, sent: int, total: int) -> None: ...

    def finished(self, outcome: ServerOutcome) -> None: ...
