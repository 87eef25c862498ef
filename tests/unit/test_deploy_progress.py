"""Plain deploy progress (logs, CI, pipes): the release command's output and each server's outcome, one
line each, prefixed with the server's name."""

from __future__ import annotations

import io

from rich.console import Console

from tako.cli.progress import PlainProgress
from tako.errors import StepFailed
from tako.remote.connection import ServerAddress
from tako.remote.fanout import HostResult


def plain() -> tuple[PlainProgress, io.StringIO]:
    out = io.StringIO()
    return PlainProgress(Console(file=out, width=200, color_system=None)), out


def test_release_command_output_is_prefixed_with_the_server() -> None:
    progress, out = plain()
    progress.step("web1", "release", "running the release command")
    progress.output("web1", "Applying shop.0002_price... OK")
    assert out.getvalue().splitlines() == [
        "[web1] running the release command",
        "[web1] Applying shop.0002_price... OK",
    ]


def test_outcomes_name_the_failed_step() -> None:
    progress, out = plain()
    failure = StepFailed("release", "the release command `false` exited with status 1")
    progress.finished(HostResult(ServerAddress("web1", "10.0.0.5"), error=failure))
    progress.finished(HostResult(ServerAddress("web2", "10.0.0.6"), value="shop abc1234 is live"))
    assert out.getvalue().splitlines() == [
        "[web1] FAILED at release: the release command `false` exited with status 1",
        "[web2] ok: shop abc1234 is live",
    ]
