"""The listening sockets, kept by the service manager, so connections wait while no tako-server runs.

After a crash (kill -9, a fatal error) the kernel would close the listening sockets with the process, and
every connection arriving until the service manager's next tako-server listens again would be refused.
Instead, once listening, tako-server gives copies of its listening sockets (HTTP, HTTPS, and each
data-plane worker's pair) to the service manager, which gives them back to the next tako-server it starts:
meanwhile the sockets stay open, and the kernel queues new connections in their backlog until the next
tako-server accepts them.

- Under systemd (`FileDescriptorStoreMax=` in the unit): `FDSTORE=1` messages on `$NOTIFY_SOCKET`, each
  socket with its name; the next start finds them in `$LISTEN_FDS` / `$LISTEN_FDNAMES`.
- Under `tako-server-service`: its supervisor runs a small holder process (server/fd_holder.py) for its
  whole life, on the unix socket named by `$TAKO_FD_STORE`: `put` replaces what it keeps, `get` returns
  copies (SCM_RIGHTS both ways).

A socket kept for another address or port (the config changed) is closed and a new one bound. A hand-over
passes the sockets itself (server/handover.py); the successor then gives the store the same sockets.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from dataclasses import dataclass

log = logging.getLogger("tako.server.fd_store")

ENV_STORE = "TAKO_FD_STORE"  # the holder's unix socket, set by tako-server-service's supervisor
SD_LISTEN_FDS_START = 3
MAX_SOCKETS = 253  # the kernel passes at most this many descriptors in one message
MAX_HEADER = 64 * 1024
TIMEOUT = 5.0  # the holder answers at once; this bounds a hung one


@dataclass
class Listeners:
    """tako-server's listening sockets: its own (None: not kept), and each data-plane worker's."""

    http: socket.socket | None
    https: socket.socket | None
    workers: list[tuple[socket.socket, socket.socket]]

    def ports(self) -> tuple[int, int]:
        """The HTTP and HTTPS ports these sockets listen on."""
        http, https = (self.http, self.https) if self.http and self.https else self.workers[0]
        return http.getsockname()[1], https.getsockname()[1]

    def named(self) -> dict[str, socket.socket]:
        named = {"http": self.http, "https": self.https} if self.http and self.https else {}
        for i, (http, https) in enumerate(self.workers):
            named[f"worker{i}.http"], named[f"worker{i}.https"] = http, https
        return named


def take() -> dict[str, socket.socket]:
    """The sockets the service manager kept for this start, by name (empty when it kept none)."""
    if os.environ.get("LISTEN_PID") == str(os.getpid()):
        return _take_systemd()
    path = os.environ.get(ENV_STORE)
    if not path:
        return {}
    try:
        return _ask_holder(path, "get", {})
    except (OSError, ValueError) as exc:
        log.warning("no listening sockets from the descriptor store %s: %s", path, exc)
        return {}


def matching(kept: dict[str, socket.socket], host: str, http_port: int, https_port: int) -> Listeners | None:
    """The kept sockets when they listen where this configuration says (port 0: any), else None (every kept
    socket is then closed, and tako-server binds new ones)."""
    wanted = {"http": http_port, "https": https_port}
    main = "http" in kept and "https" in kept
    usable = True
    for name, sock in kept.items():
        address, port = sock.getsockname()[:2]
        want = wanted["https" if name.endswith("https") else "http"]
        usable = usable and address == host and (want in (0, port)) and sock.type == socket.SOCK_STREAM
    pairs: list[tuple[socket.socket, socket.socket]] = []
    while f"worker{len(pairs)}.http" in kept and f"worker{len(pairs)}.https" in kept:
        pairs.append((kept[f"worker{len(pairs)}.http"], kept[f"worker{len(pairs)}.https"]))
    if usable and kept and len(kept) == 2 * main + 2 * len(pairs):
        return Listeners(kept.get("http"), kept.get("https"), pairs)
    if kept:
        log.warning("the kept listening sockets do not match the configured address and ports: new ones")
    for sock in kept.values():
        sock.close()
    return None


def keep(listeners: Listeners, *, known_workers: int = 0) -> None:
    """Give copies of the listening sockets to the service manager: it then holds exactly these (systemd's
    store is told to drop the main process's pair when not given, and workers' pairs up to
    `known_workers`, the count this process was given)."""
    named = listeners.named()
    if os.environ.get("NOTIFY_SOCKET") and not os.environ.get(ENV_STORE):
        workers = max(known_workers, len(listeners.workers))
        every = [
            "http",
            "https",
            *(f"worker{i}.{kind}" for i in range(workers) for kind in ("http", "https")),
        ]
        _store_systemd(named, [name for name in every if name not in named])
        return
    path = os.environ.get(ENV_STORE)
    if not path:
        return
    try:
        _ask_holder(path, "put", named)
    except (OSError, ValueError) as exc:
        log.warning("the descriptor store %s did not take the listening sockets: %s", path, exc)


def _take_systemd() -> dict[str, socket.socket]:
    count = int(os.environ.get("LISTEN_FDS", "0") or 0)
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    for variable in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(variable, None)  # not for the processes tako-server starts
    kept = {}
    for i in range(count):
        fd = SD_LISTEN_FDS_START + i
        os.set_inheritable(fd, False)
        name = names[i] if i < len(names) else ""
        sock = socket.socket(fileno=fd)
        if name in kept or not _listening(sock):
            sock.close()  # not ours (a unit edited by hand), or a duplicate
            continue
        kept[name] = sock
    return kept


def _listening(sock: socket.socket) -> bool:
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False


def _store_systemd(named: dict[str, socket.socket], stale: list[str]) -> None:
    path = os.environ["NOTIFY_SOCKET"]
    address = "\0" + path[1:] if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        for name in [*named, *stale]:
            # Replace, not add: the store keeps whatever it was given under a name until told otherwise.
            sock.sendall(f"FDSTOREREMOVE=1\nFDNAME={name}".encode())
        for name, listener in named.items():
            socket.send_fds(sock, [f"FDSTORE=1\nFDNAME={name}".encode()], [listener.fileno()])


def _ask_holder(path: str, verb: str, named: dict[str, socket.socket]) -> dict[str, socket.socket]:
    """One request to the holder: `put` these sockets, or `get` the ones it keeps."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(TIMEOUT)
        conn.connect(path)
        header = json.dumps({"verb": verb, "names": list(named)}).encode() + b"\n"
        socket.send_fds(conn, [header], [s.fileno() for s in named.values()])
        data, fds, _, _ = socket.recv_fds(conn, MAX_HEADER, MAX_SOCKETS)
    sockets = []
    for fd in fds:
        os.set_inheritable(fd, False)
        sockets.append(socket.socket(fileno=fd))
    try:
        reply = json.loads(data)
        names = list(reply.get("names", []))
        if reply.get("status") != "ok" or len(names) != len(sockets):
            raise ValueError(f"the holder answered {data[:200]!r}")
    except ValueError:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
        raise
    return dict(zip(names, sockets, strict=True))
