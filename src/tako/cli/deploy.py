"""`tako deploy`: build locally, then run the per-server pipeline on every server of the env at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click
from rich.console import Console

from tako.cli.confirm import Confirmation, confirm_or_require_yes
from tako.cli.context import get_cli
from tako.cli.progress import LiveProgress, PlainProgress
from tako.config.edit import add_server_mapping
from tako.config.inventory import load_inventory
from tako.config.project import load_project
from tako.deploy.fleet import build_report, deploy_all
from tako.deploy.prepare import prepare
from tako.deploy.report import DeployReport, failed_step, outcome_hint, outcome_text
from tako.errors import UsageError


def render_report(console: Console, report: DeployReport) -> None:
    console.print()
    for outcome in report.outcomes:
        name = outcome.server.name
        if outcome.ok:
            console.print(f"✓ {name}: deployed {report.app} {report.version}", highlight=False)
        else:
            text = f"✗ {name}: failed at {failed_step(outcome)}: {outcome_text(outcome)}"
            console.print(text, highlight=False)
            hint = outcome_hint(outcome)
            if hint:
                console.print(f"    hint: {hint}", highlight=False)
    total = len(report.outcomes)
    ok = len(report.succeeded)
    console.print(
        f"{report.app} {report.version} → {report.env}: {ok}/{total} server(s) succeeded", highlight=False
    )
    if report.succeeded:
        for url in report.urls:
            console.print(f"  {url}", highlight=False)


def offer_server(project_dir: Path, env: str) -> None:
    """On a terminal, when no server is mapped to `env`, offer the known ones and save the choice."""
    project = load_project(project_dir)
    if project.servers_for_env(env) or env == "development" or env not in project.envs:
        return
    known = sorted(load_inventory().servers, key=lambda s: s.name)
    if not known:
        return  # prepare() explains how to add one
    if len(known) == 1:
        choice = known[0].name
        if not click.confirm(f"No server is mapped to {env}. Use {choice} ({known[0].host})?", default=True):
            raise UsageError(f"no server mapped to {env}", hint=f'add [servers.<name>] env = "{env}"')
    else:
        for number, entry in enumerate(known, start=1):
            click.echo(f"  {number}) {entry.name} ({entry.host})")
        picked = click.prompt(
            f"No server is mapped to {env}. Deploy to which one?",
            type=click.IntRange(1, len(known)),
        )
        choice = known[picked - 1].name
    add_server_mapping(project.file, choice, env)
    click.echo(f'Saved [servers.{choice}] env = "{env}" in {project.file}')


@click.command()
@click.option("--env", "env", default="production", show_default=True, help="Environment to deploy.")
@click.option(
    "--yes", "-y", is_flag=True, help="Do not ask for confirmation (required off a terminal for production)."
)
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
def deploy(env: str, yes: bool, directory: Path | None) -> None:
    """Build the app and deploy it to every server of an environment (all at once, or as [deploy] in
    tako.toml says)."""
    cli = get_cli()
    project_dir = directory.resolve() if directory else cli.project_dir()
    console = cli.console
    interactive = cli.interactive
    if env == "production" and not yes:
        ask = Confirmation(
            question="Deploy to production?",
            refusal="deploying to production needs confirmation",
            hint="pass --yes to deploy to production without a terminal",
            declined="Not deployed.",
        )
        confirm_or_require_yes(cli, ask)
    if interactive:
        offer_server(project_dir, env)
    prepared = prepare(project_dir, env, output=lambda line: console.print(f"  {line}", markup=False))
    plan = prepared.plan
    console.print(
        f"Deploying {plan.app} {plan.version} to {env} "
        f"({len(prepared.targets)} server{'s' if len(prepared.targets) != 1 else ''})",
        highlight=False,
    )
    servers = [t.address.name for t in prepared.targets]
    interrupted = False

    def on_interrupt() -> None:
        nonlocal interrupted
        interrupted = True
        cli.err_console.print(
            "Interrupted: servers not yet switching stop and undo this deploy; servers already switching "
            "finish. Press Ctrl-C again to quit at once.",
            highlight=False,
        )

    if console.is_terminal:
        with LiveProgress(console, servers) as live:
            outcomes = asyncio.run(deploy_all(plan, prepared.targets, live, on_interrupt=on_interrupt))
    else:
        progress = PlainProgress(console)
        outcomes = asyncio.run(deploy_all(plan, prepared.targets, progress, on_interrupt=on_interrupt))
    report = build_report(plan, [*prepared.early_failures, *outcomes])
    render_report(console, report)
    # Interrupted and not everything deployed: the shell's convention for a command stopped by Ctrl-C.
    raise click.exceptions.Exit(130 if interrupted and report.exit_code else report.exit_code)
