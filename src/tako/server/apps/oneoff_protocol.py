"""The wire format of one-off commands between `tako-server run-as-app` (oneoff_client.py) and tako-server
(oneoff.py): standard library only, so the client starts fast (it runs once per `tako run`).

One JSON object per line. Client: {"app", "release" (path or null), "argv"}, sent with its stdin, stdout and
stderr as SCM_RIGHTS descriptors; later {"signal": N}. Server: {"started": pid} or {"error", "hint",
"status"}, then {"exit": status}.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tako.errors import OneOffError

MAX_REQUEST_BYTES = 256 * 1024
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGWINCH)
NOT_FOUND = 127  # a shell's status for a command that does not exist
NOT_EXECUTABLE = 126


@dataclass(frozen=True)
class RunRequest:
    app: str
    argv: tuple[str, ...]
    release: str | None = None  # a release directory; None: the live release

    def encode(self) -> bytes:
        data = {"app": self.app, "release": self.release, "argv": list(self.argv)}
        return json.dumps(data).encode() + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> RunRequest:
        try:
            data: Any = json.loads(line)
            app, release, argv = data["app"], data["release"], data["argv"]
        except (ValueError, TypeError, KeyError) as exc:
            raise OneOffError(f"malformed one-off request: {exc}") from exc
        ok = isinstance(app, str) and (release is None or isinstance(release, str))
        if not ok or not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise OneOffError("malformed one-off request: app, release and a non-empty argv are required")
        return cls(app, tuple(argv), release)


def socket_path(control_socket: Path) -> Path:
    """The one-off socket, beside the control socket: `tako.sock` -> `tako-run.sock`."""
    return control_socket.with_name(f"{control_socket.stem}-run{control_socket.suffix}")
