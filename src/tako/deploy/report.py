"""Deploy outcomes as data: one `HostResult` per server (its value says what is live, its error names the
step that failed); the report decides the exit code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tako.errors import StepFailed, TakoError
from tako.remote.fanout import HostResult

Outcome = HostResult[str]  # value: what the server now serves; error: why not (a StepFailed)


def failed_step(outcome: Outcome) -> str:
    return outcome.error.step if isinstance(outcome.error, StepFailed) else "connect"


def outcome_text(outcome: Outcome) -> str:
    if outcome.error is not None:
        return outcome.error.message
    return outcome.value or ""


def outcome_hint(outcome: Outcome) -> str | None:
    return outcome.error.hint if isinstance(outcome.error, TakoError) else None


@dataclass(frozen=True)
class DeployReport:
    app: str
    version: str
    env: str
    urls: tuple[str, ...]
    outcomes: tuple[Outcome, ...]

    @property
    def succeeded(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.ok]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or not self.outcomes else 0


class Progress(Protocol):
    """Receives pipeline events; the CLI renders them (spinner/lines on a terminal, plain lines elsewhere)."""

    def step(self, server: str, step: str, text: str) -> None: ...

    def transfer(self, server: str, sent: int, total: int) -> None: ...

    def output(self, server: str, line: str) -> None: ...

    def finished(self, outcome: Outcome) -> None: ...
