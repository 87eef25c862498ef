"""`tako rollback`: switch every server of an env back to a release it keeps (code and `.env` as deployed)."""

from __future__ import annotations

import asyncio

import click

from tako.cli.confirm import Confirmation, confirm_or_require_yes
from tako.cli.context import get_cli
from tako.cli.progress import LiveProgress, PlainProgress
from tako.deploy.prepare import resolve_targets
from tako.deploy.report import Outcome, Progress, outcome_hint, outcome_text
from tako.deploy.rollback import rollback_all


@click.command()
@click.argument("version", required=False)
@click.option("--env", "env", default="production", show_default=True, help="Environment to roll back.")
@click.option(
    "--yes", "-y", is_flag=True, help="Do not ask for confirmation (required off a terminal for production)."
)
def rollback(version: str | None, env: str, yes: bool) -> None:
    """Switch back to VERSION (default: the release before the live one, on each server).

    No upload and no rebuild: each server rolls its instances over to the release it kept, with that
    release's own variables and secrets, without downtime. `tako releases` lists what can be chosen.
    """
    cli = get_cli()
    project = cli.load_project()
    addresses = [t.address for t in resolve_targets(project, cli.load_inventory(), env)]
    target = version or "the previous release"
    if env == "production" and not yes:
        ask = Confirmation(
            question=f"Roll {project.name} in production back to {target}?",
            refusal="rolling back production needs confirmation",
            hint="pass --yes to roll back production without a terminal",
            declined=f"{project.name} not rolled back.",
        )
        confirm_or_require_yes(cli, ask)
    console = cli.console
    console.print(f"Rolling {project.name} ({env}) back to {target} on {len(addresses)} server(s)")
    interrupted = False

    def on_interrupt() -> None:
        nonlocal interrupted
        interrupted = True
        cli.err_console.print(
            "Interrupted: servers not yet switching stop and change nothing; servers already switching "
            "finish. Press Ctrl-C again to quit at once.",
            highlight=False,
        )

    def run(progress: Progress) -> list[Outcome]:
        return asyncio.run(
            rollback_all(
                project.name, addresses, version, cli.known_hosts_path, progress, on_interrupt=on_interrupt
            )
        )

    if console.is_terminal:
        with LiveProgress(console, [a.name for a in addresses]) as live:
            results = run(live)
    else:
        results = run(PlainProgress(console))
    for result in results:
        if result.error is None:
            console.print(f"✓ {result.server.name}: {result.value}", highlight=False)
        else:
            console.print(f"✗ {result.server.name}: {outcome_text(result)}", highlight=False)
            hint = outcome_hint(result)
            if hint:
                console.print(f"    hint: {hint}", highlight=False)
    failed = sum(1 for r in results if not r.ok)
    console.print(f"{len(results) - failed}/{len(results)} server(s) rolled back", highlight=False)
    if failed:
        raise click.exceptions.Exit(130 if interrupted else 1)
