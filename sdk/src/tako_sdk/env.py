"""Tako's environment for an app instance (set by tako-server and the release `.env`), as a frozen object."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class TakoEnv:
    env: str  # ENV: the Tako environment name ("production", ...); "development" when unset
    build: str | None  # TAKO_BUILD: the deployed version
    port: int | None  # PORT: where this instance must listen
    host: str  # HOST: the address to bind, 127.0.0.1 under Tako
    app: str | None  # TAKO_APP
    instance: str | None  # TAKO_INSTANCE

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def is_development(self) -> bool:
        return self.env == "development"

    @property
    def under_tako(self) -> bool:
        """True when tako-server started this process."""
        return self.app is not None


def env(environ: Mapping[str, str] | None = None) -> TakoEnv:
    """Read Tako's variables from `environ` (default: os.environ). ValueError if PORT is not a port."""
    source = os.environ if environ is None else environ
    raw_port = source.get("PORT") or None
    port: int | None = None
    if raw_port is not None:
        try:
            port = int(raw_port)
        except ValueError:
            raise ValueError(f"PORT must be a port number, got {raw_port!r}") from None
        if not 0 < port < 65536:
            raise ValueError(f"PORT must be between 1 and 65535, got {port}")
    return TakoEnv(
        env=source.get("ENV") or "development",
        build=source.get("TAKO_BUILD") or None,
        port=port,
        host=source.get("HOST") or "127.0.0.1",
        app=source.get("TAKO_APP") or None,
        instance=source.get("TAKO_INSTANCE") or None,
    )
