"""Entry point of `tako-server`: parse flags, load server-config.toml, run the daemon.

Flags override the config file. A TakoError is printed on stderr and sets the exit code.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from tako import __version__
from tako.config.server import ServerConfig, load_server_config
from tako.errors import TakoError

DEFAULT_CONFIG = "/opt/tako/server-config.toml"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tako-server", description="Tako's HTTP(S) proxy and app supervisor.")
    p.add_argument("--version", action="version", version=f"tako-server {__version__}")
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"server config file (default {DEFAULT_CONFIG})")
    p.add_argument("--data-dir", help="data directory (apps, state, certificates)")
    p.add_argument("--socket", help="control socket path")
    p.add_argument("--listen", help="address the HTTP and HTTPS listeners bind")
    p.add_argument("--http-port", type=int, help="HTTP port (0 = any free port)")
    p.add_argument("--https-port", type=int, help="HTTPS port (0 = any free port)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    commands = p.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser(
        "run-as-app",
        help="run a command as an app, in a release dir, with its environment",
        description="Run CMD as APP's user in its live release (or --release DIR, also a staged release "
        "not yet live) with the release's environment (.env vars and secrets, TAKO_*), stdin, stdout and "
        "stderr attached; exits with CMD's status. tako-server must be running: it starts the command.",
    )
    run.add_argument("--config", default=argparse.SUPPRESS, help="server config file")
    run.add_argument("--socket", default=argparse.SUPPRESS, help="control socket path")
    run.add_argument("--release", help="a release directory of APP (default: the live release)")
    run.add_argument("app", metavar="APP")
    run.add_argument("argv", nargs="*", metavar="-- CMD", help="the command and its arguments, after --")
    over = commands.add_parser(
        "handover",
        help="restart the running tako-server without dropping a request",
        description="Ask the running tako-server to start a new process (the installed version) and hand "
        "it the listening sockets; the old one then finishes its in-flight requests and exits. If the new "
        "process fails or is not ready in time, the old one keeps serving and this says why.",
    )
    over.add_argument("--config", default=argparse.SUPPRESS, help="server config file")
    over.add_argument("--socket", default=argparse.SUPPRESS, help="control socket path")
    return p


def load_config(args: argparse.Namespace) -> ServerConfig:
    config = load_server_config(Path(args.config))
    overrides = {
        name: getattr(args, name)
        for name in ("data_dir", "socket", "listen", "http_port", "https_port")
        if getattr(args, name) is not None
    }
    if overrides:
        config = dataclasses.replace(config, server=dataclasses.replace(config.server, **overrides))
    return config


def split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """tako-server's own arguments, and the command after the first `--` (which may hold options)."""
    if "--" not in argv:
        return argv, []
    at = argv.index("--")
    return argv[:at], argv[at + 1 :]


def run_as_app(args: argparse.Namespace, command: list[str]) -> int:
    """`tako-server run-as-app`: hand the command to the running tako-server (apps/oneoff_client.py)."""
    from tako.server.apps import oneoff_client, oneoff_protocol

    try:
        if not command:
            raise TakoError("run-as-app needs a command", hint="tako-server run-as-app APP -- CMD ARGS...")
        socket = Path(args.socket) if args.socket else Path(load_config(args).server.socket)
        return oneoff_client.run(
            oneoff_protocol.socket_path(socket),
            oneoff_protocol.RunRequest(args.app, tuple(command), args.release),
        )
    except TakoError as exc:
        hint = f"\n  hint: {exc.hint}" if exc.hint else ""
        print(f"tako-server: error: {exc.message}{hint}", file=sys.stderr)
        return exc.exit_code


def request_handover(args: argparse.Namespace) -> int:
    """`tako-server handover`: ask the running server to hand over to a new process (server/handover.py)."""
    from tako.server import handover

    try:
        socket = Path(args.socket) if args.socket else Path(load_config(args).server.socket)
        reply = handover.request(handover.socket_path(socket))
    except TakoError as exc:
        hint = f"\n  hint: {exc.hint}" if exc.hint else ""
        print(f"tako-server: error: {exc.message}{hint}", file=sys.stderr)
        return exc.exit_code
    print(f"tako-server {reply['version']} (pid {reply['pid']}) took over")
    return 0


def main(argv: list[str] | None = None) -> int:
    own, command = split_command(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(own)
    if args.command == "run-as-app":
        return run_as_app(args, [*args.argv, *command])
    if args.command == "handover":
        return request_handover(args)
    return serve(args)


def serve(args: argparse.Namespace) -> int:
    """Run the daemon; a successor in a hand-over tells the running server why it could not start."""
    from tako.server import handover
    from tako.server.startup_clock import StartupClock

    clock = StartupClock()
    clock.mark("python")  # the interpreter's start and this module's imports
    channel = handover.pending_channel()
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from tako.server.daemon import Daemon

    try:
        import uvloop

        clock.mark("imports")
        config = load_config(args)
        # uvloop: the proxy's event loop (docs/proxy.md); its child watcher also reports exits at once.
        uvloop.run(Daemon(config, channel, clock).run())
    except TakoError as exc:
        handover.report_failure(channel, exc)
        print(f"tako-server: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
