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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from tako.server.daemon import Daemon

    try:
        config = load_config(args)
        # uvloop: the proxy's event loop (docs/proxy.md); its child watcher also reports exits at once.
        import uvloop

        uvloop.run(Daemon(config).run())
    except TakoError as exc:
        print(f"tako-server: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
