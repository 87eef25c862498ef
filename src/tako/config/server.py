"""`/opt/tako/server-config.toml`: tako-server's settings, as frozen models with defaults.

Every section is optional. Example:

    [server]
    http_port = 80
    https_port = 443

    [proxy]
    header_timeout = 10

    [acme]
    email = "ops@example.com"
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from tako.config.loading import find_line
from tako.errors import ConfigError

DEFAULT_DATA_DIR = "/opt/tako"
DEFAULT_SOCKET = "/var/run/tako/tako.sock"
LETSENCRYPT_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"
LETSENCRYPT_STAGING_DIRECTORY = "https://acme-staging-v02.api.letsencrypt.org/directory"


WORKERS_AUTO = "auto"


# A hand-over passes every worker's two listeners in one message, which holds at most 125 workers' pairs.
AUTO_MAX_WORKERS = 126


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask (taskset, a container's cpuset), not the machine's."""
    return max(1, len(os.sched_getaffinity(0)))


def auto_workers() -> int:
    """`workers = "auto"`: one data-plane process per usable CPU."""
    return min(usable_cpus(), AUTO_MAX_WORKERS)


@dataclass(frozen=True)
class ListenSettings:
    data_dir: str = DEFAULT_DATA_DIR
    socket: str = DEFAULT_SOCKET
    listen: str = "0.0.0.0"
    http_port: int = 80
    https_port: int = 443
    # Processes serving the data plane (the main process and workers - 1 others). `workers = "auto"`, the
    # default, is resolved at load to one per CPU this process may run on, like nginx's `worker_processes
    # auto`: one process uses one core, and on 2 cores workers = 1 served half of nginx's HTTPS rate
    # through a testbed host (docs/benchmarks.md).
    workers: int = field(default_factory=auto_workers)
    # Seconds a data-plane worker whose main process died (kill -9, a crash) serves on from its last routes
    # when no new tako-server serves: its routes grow stale and its requests hold no drain back. The service
    # manager's next tako-server serves within a second (docs/benchmarks.md, "Crash"): 30 s is a wide margin.
    orphan_timeout: float = 30.0


@dataclass(frozen=True)
class ProxySettings:
    """Limits and timeouts of the data plane (seconds and bytes). 0 for max_body_bytes = unlimited, for
    tunnel_idle_timeout = never, for min_body_rate = only "no body byte for a whole window"."""

    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    upstream_connect_timeout: float = 5.0
    upstream_response_timeout: float = 60.0
    # Request bodies are buffered (memory, then a temporary file under the data dir) before an instance
    # sees them, so the cap bounds disk use per request too: 1 GiB allows large uploads while keeping a
    # handful of hostile clients from filling the disk. Raise it (or 0) for apps that take bigger uploads.
    max_body_bytes: int = 1024 * 1024 * 1024
    # Receive each request body completely before forwarding it: a slow client never holds an app worker.
    request_buffering: bool = True
    # Bytes of one request body kept in memory before the rest goes to a temporary file.
    request_buffer_memory: int = 1024 * 1024
    # A request body arriving slower than min_body_rate bytes/s over a body_rate_window gets 408 and the
    # connection is closed (with 0: when not a single byte came in a window). The first window is the
    # grace period of a slow start.
    min_body_rate: int = 1024
    body_rate_window: float = 20.0
    # Bytes of response a client connection may have pending before the proxy stops reading from the
    # instance: a response up to this size releases the instance at once, however slowly the client reads.
    # 256 KiB covers most pages and API answers; more would let each connection that never reads (a
    # request of a few bytes) hold that much of the server's memory.
    response_buffer_bytes: int = 256 * 1024
    # A WebSocket (or other upgraded connection) with no bytes either way for this long is closed: a
    # vanished peer would otherwise hold it, and keep its app instance busy (never scaled to zero), for good.
    tunnel_idle_timeout: float = 3600.0


@dataclass(frozen=True)
class AppSettings:
    """Runtime bounds: cold-start queue, health checks, rollout timing."""

    cold_start_queue: int = 1000
    cold_start_timeout: float = 30.0
    health_interval: float = 1.0
    healthy_timeout: float = 30.0
    drain_timeout: float = 30.0
    stop_grace: float = 10.0
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 3
    # "auto": each app runs as its own uid when tako-server holds the capabilities for it; "off": apps run
    # as tako-server's own user (docs/server.md, "Threat model and app isolation").
    isolation: str = "auto"


@dataclass(frozen=True)
class AcmeSettings:
    enabled: bool = True
    directory_url: str = LETSENCRYPT_DIRECTORY
    staging: bool = False
    email: str = ""
    ca_bundle: str = ""
    renew_before_days: int = 30
    check_interval: float = 12 * 3600.0
    # Backoff between failed issuance attempts: doubles from retry_initial up to retry_max (seconds).
    retry_initial: float = 30.0
    retry_max: float = 3600.0

    @property
    def effective_directory(self) -> str:
        if self.staging and self.directory_url == LETSENCRYPT_DIRECTORY:
            return LETSENCRYPT_STAGING_DIRECTORY
        return self.directory_url


DEFAULT_METRICS_LISTEN = "127.0.0.1:9898"


@dataclass(frozen=True)
class MetricsSettings:
    """The Prometheus `/metrics` listener, apart from the public ports. Loopback by default; a host's own
    address exposes it to a scraper elsewhere; "" turns it off. `count_requests = false` stops counting
    requests on the data plane: `/metrics` then has no per-app request series and `tako status` no
    last-minute figures (metrics fully off: both)."""

    listen: str = DEFAULT_METRICS_LISTEN
    count_requests: bool = True

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) to listen on, or None when off; `listen` was checked at load."""
        if not self.listen:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


def check_metrics_listen(file: str, value: str) -> None:
    """`host:port` (`[v6]:port` for IPv6), port 0-65535, or "" for off."""
    if value == "":
        return
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(
            file,
            f'expected HOST:PORT (or "" to turn the listener off), got {value!r}',
            key="metrics.listen",
            hint=f'e.g. listen = "{DEFAULT_METRICS_LISTEN}", or the server\'s own address to let a '
            "scraper in",
        )


@dataclass(frozen=True)
class AccessLogSettings:
    """Access logs: one JSON line per request in each app's `shared/logs/access.log`, rotated like
    `app.log` ([apps] log_max_bytes, log_backups). `query` adds query strings (they may carry tokens)."""

    enabled: bool = True
    query: bool = False


@dataclass(frozen=True)
class ServerConfig:
    server: ListenSettings = field(default_factory=ListenSettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    apps: AppSettings = field(default_factory=AppSettings)
    acme: AcmeSettings = field(default_factory=AcmeSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    access_log: AccessLogSettings = field(default_factory=AccessLogSettings)

    @property
    def data_dir(self) -> Path:
        return Path(self.server.data_dir)


# String settings that take one of a few words: (section, key) -> the words.
_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {("apps", "isolation"): ("auto", "off")}

_SECTIONS: dict[str, type[Any]] = {
    "server": ListenSettings,
    "proxy": ProxySettings,
    "apps": AppSettings,
    "acme": AcmeSettings,
    "metrics": MetricsSettings,
    "access_log": AccessLogSettings,
}


def _check_workers(file: str, value: Any, line: int | None) -> int:
    """`[server] workers`: "auto" (resolved here) or a whole number of processes, at least 1."""
    if value == WORKERS_AUTO:
        return auto_workers()
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ConfigError(
        file,
        f'expected "auto" or a whole number of processes (1 or more), got {value!r}',
        key="server.workers",
        line=line,
        hint=f'workers = "auto" (the default) runs one per CPU, {auto_workers()} here; workers = 1 runs one',
    )


def _check_value(file: str, key: str, value: Any, default: Any, line: int | None = None) -> Any:
    if key == "server.workers":
        return _check_workers(file, value, line)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
        kind = "true or false"
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        kind = "a non-negative integer"
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
        kind = "a non-negative number"
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
        kind = "a string"
    if not ok:
        raise ConfigError(file, f"expected {kind}, got {value!r}", key=key, line=line)
    return value


def parse_server_config(data: dict[str, Any], file: str, text: str = "") -> ServerConfig:
    """Check and freeze server-config.toml's tables; `text` (the file's) lets errors name the line."""
    from difflib import get_close_matches

    sections: dict[str, Any] = {}
    for name, table in data.items():
        cls = _SECTIONS.get(name)
        if cls is None:
            close = get_close_matches(name, list(_SECTIONS), n=1)
            raise ConfigError(
                file, "unknown section", key=name, hint=f"did you mean [{close[0]}]?" if close else None
            )
        if not isinstance(table, dict):
            raise ConfigError(file, "expected a table", key=name)
        defaults = cls()
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in known:
                close = get_close_matches(key, sorted(known), n=1)
                raise ConfigError(
                    file,
                    "unknown key",
                    key=f"{name}.{key}",
                    hint=f"did you mean {close[0]!r}?" if close else None,
                )
            line = find_line(text, [name, key]) if text else None
            values[key] = _check_value(file, f"{name}.{key}", value, getattr(defaults, key), line)
            choices = _CHOICES.get((name, key))
            if choices is not None and value not in choices:
                raise ConfigError(
                    file,
                    f"expected one of {', '.join(repr(c) for c in choices)}, got {value!r}",
                    key=f"{name}.{key}",
                )
        sections[name] = replace(defaults, **values)
    if "metrics" in sections:
        check_metrics_listen(file, sections["metrics"].listen)
    return ServerConfig(**sections)


def load_server_config(path: Path) -> ServerConfig:
    """Load server-config.toml; a missing file means all defaults."""
    if not path.exists():
        return ServerConfig()
    text = path.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None)
        raise ConfigError(str(path), f"invalid TOML: {exc}", line=line) from exc
    return parse_server_config(data, str(path), text)
