"""The channel between tako-server's main process and a data-plane worker: one frozen dataclass per
message, sent as one JSON line (`{"kind": ..., ...fields}`) and checked on arrival by the control
protocol's codec, over a socketpair. Nothing travels on it per request.

Main process → worker: `Configure` (first and once), then `RoutingSnapshot`, `StatusDocument`,
`AcmeTokens`, `CertificateStored`, `WakeFailed` and `Stop` as things change. Worker → main process:
`Ready` (listening), `Report` (in-flight counters and the snapshot applied, every 50 ms when something
changed and at least every second), `Wake` (a request waits for an on-demand app), `Traffic` (the
worker's per-app traffic counters, cumulative, every second when they changed). Access log lines do not
travel here: each worker appends its own to the files (observe/access_log.py). `Configure` and `Ready` carry
`CHANNEL_VERSION`, raised whenever a message changes meaning, so processes of two Tako versions (a worker
restarted after the files on disk were upgraded) refuse each other with a clear error instead of
misreading a field.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import ClassVar

from tako.config.server import AccessLogSettings, ProxySettings
from tako.errors import ProtocolError
from tako.protocol.codec import decode_message, encode_message
from tako.server.observe.traffic import TrafficSnapshot

# 2: AppRouting carries maintenance and error pages; 3: traffic and access lines; 4: the main process binds
# the worker's listeners (passed on its command line), Stop says whether a successor took over, and the
# control socket tells an orphaned worker when a new tako-server serves; 5: AppRouting carries static mounts;
# 6: and the compression switch; 7: no AccessLines (workers write their access lines), Configure carries the
# log rotation settings; 8: AppRouting carries the https switch; 9: CertificateStored (the main process
# stored a certificate: a worker re-reads it at once, not within its once-a-second check); 10: Counters
# carries `answered`.
CHANNEL_VERSION = 10
TAG = "kind"
MAX_TO_WORKER = 64 * 1024 * 1024  # a routing snapshot lists every app, route and instance
MAX_FROM_WORKER = 16 * 1024 * 1024


# -- main process → worker ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Configure:
    """What a worker needs to serve: listeners, data dir, proxy limits, cold-start bounds, log level."""

    kind: ClassVar[str] = "configure"
    channel: int
    log_level: str  # a `logging` level name, as tako-server's own `--log-level`
    listen: str
    http_port: int
    https_port: int
    data_dir: str  # certificates, ACME challenge files and buffered bodies live below it
    proxy: ProxySettings
    cold_start_queue: int
    cold_start_timeout: float
    drain_timeout: float
    access_log: AccessLogSettings = field(default_factory=AccessLogSettings)
    log_max_bytes: int = 0  # [apps] log_max_bytes and log_backups: the access logs rotate like app.log
    log_backups: int = 0
    count_requests: bool = True  # [metrics] count_requests
    # tako-server's control socket: a worker whose main process died serves on until a new one answers
    # there ("" in tests: it stops at once).
    control_socket: str = ""
    orphan_timeout: float = 30.0  # [server] orphan_timeout: how long it serves on when none answers there


@dataclass(frozen=True)
class InstanceAddress:
    """An instance in rotation; `key` names it in reports."""

    key: str
    host: str
    port: int


@dataclass(frozen=True)
class MaintenanceRouting:
    """An app in maintenance: the page its routes answer with, and the clients let through."""

    page: str
    allow: tuple[str, ...]


@dataclass(frozen=True)
class AppRouting:
    name: str
    routes: tuple[str, ...]
    rotation: tuple[InstanceAddress, ...]
    stopped: bool  # stopped, or going away: answered 503 without a cold start
    request_buffering: bool
    maintenance: MaintenanceRouting | None = None  # None: not in maintenance
    error_pages: dict[str, str] = field(default_factory=dict)  # "502" -> the live release's errors/502.html
    static: dict[str, str] = field(default_factory=dict)  # URL prefix -> directory of the live release
    compression: bool = True  # [tako] compression of the live release
    https: bool = True  # [tako] https of the live release (false: proxied on the HTTP listener too)


@dataclass(frozen=True)
class RoutingSnapshot:
    """Every app's routes and instances in rotation, sent on every route or instance change."""

    kind: ClassVar[str] = "snapshot"
    version: int  # increases with each snapshot; a `Report` acknowledges the one applied
    apps: tuple[AppRouting, ...]


@dataclass(frozen=True)
class StatusDocument:
    """The `/_tako/status` answer as the main process computed it (the worker adds `served_by`)."""

    kind: ClassVar[str] = "status"
    code: int
    body: str


@dataclass(frozen=True)
class AcmeTokens:
    """Every pending HTTP-01 token with its key authorization (the whole set, replacing the last)."""

    kind: ClassVar[str] = "tokens"
    tokens: dict[str, str]


@dataclass(frozen=True)
class CertificateStored:
    """The main process wrote `<certs>/<name>/`: re-read it now. The routing snapshot sent right after it
    is acknowledged only once this is applied (a worker applies messages in order)."""

    kind: ClassVar[str] = "certificate"
    name: str


@dataclass(frozen=True)
class WakeFailed:
    """A cold start a worker asked for failed: its waiting requests get this answer."""

    kind: ClassVar[str] = "wake_failed"
    app: str
    reason: str
    status: int
    retry_after: int | None


@dataclass(frozen=True)
class Stop:
    """Stop accepting, finish in-flight requests within `timeout` seconds, exit. `handed_over`: a new
    tako-server's worker accepts on these listeners now, so connections accepted but before their first
    request get it answered (a client cannot retry a connection closed before it sent anything)."""

    kind: ClassVar[str] = "stop"
    timeout: float
    handed_over: bool = False


# -- worker → main process ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ready:
    """The worker listens on both ports."""

    kind: ClassVar[str] = "ready"
    channel: int
    pid: int
    http_port: int
    https_port: int


@dataclass(frozen=True)
class Counters:
    inflight: int
    starts: int  # cumulative: activity shows even when requests came and went between two reports
    answered: int = 0  # cumulative: requests the instance answered whole (a sign of life for health checks)


@dataclass(frozen=True)
class Report:
    """Counters that changed since the last report, and the routing snapshot version applied."""

    kind: ClassVar[str] = "report"
    version: int
    counters: dict[str, Counters]


@dataclass(frozen=True)
class Wake:
    """A request waits for an app with no instance: the main process cold-starts it."""

    kind: ClassVar[str] = "wake"
    app: str


@dataclass(frozen=True)
class Traffic:
    """The worker's per-app traffic counters since it started (cumulative: the last one counts)."""

    kind: ClassVar[str] = "traffic"
    snapshot: TrafficSnapshot


ToWorker = Configure | RoutingSnapshot | StatusDocument | AcmeTokens | CertificateStored | WakeFailed | Stop
FromWorker = Ready | Report | Wake | Traffic

TO_WORKER: dict[str, type[ToWorker]] = {
    cls.kind: cls
    for cls in (Configure, RoutingSnapshot, StatusDocument, AcmeTokens, CertificateStored, WakeFailed, Stop)
}
FROM_WORKER: dict[str, type[FromWorker]] = {cls.kind: cls for cls in (Ready, Report, Wake, Traffic)}


def encode(message: ToWorker | FromWorker) -> bytes:
    return encode_message(message, TAG, message.kind)


async def read_line(reader: asyncio.StreamReader) -> bytes:
    """The next message line from the other process; b"" once it is gone. A process that dies (kill -9)
    with messages of ours unread resets the channel rather than ending it (ECONNRESET), and a message
    sent before the end of file was read breaks the pipe (EPIPE): gone all the same, like end of file."""
    try:
        return await reader.readline()
    except ConnectionError:
        return b""


def decode_to_worker(line: bytes) -> ToWorker:
    """A line from the main process; ProtocolError if it is not one of its messages."""
    message: ToWorker = decode_message(
        line, TO_WORKER, tag=TAG, noun="message from the main process", limit=MAX_TO_WORKER
    )
    return message


def decode_from_worker(line: bytes) -> FromWorker:
    """A line from a worker; ProtocolError if it is not one of its messages."""
    message: FromWorker = decode_message(
        line, FROM_WORKER, tag=TAG, noun="message from a worker", limit=MAX_FROM_WORKER
    )
    return message


def check_channel(version: int, peer: str) -> None:
    """Both ends must speak the same channel version."""
    if version != CHANNEL_VERSION:
        raise ProtocolError(
            f"{peer} speaks worker channel version {version}, this process {CHANNEL_VERSION}",
            hint="tako was upgraded under a running tako-server: restart tako-server",
        )
