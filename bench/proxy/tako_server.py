"""The `tako-server` benchmark entry: the real daemon (`python -m tako.server.main`) with
`[server] workers = N`, one app deployed through the control socket whose instance is the benchmark's
fixed upstream (nginx, 1 worker, fixed 200 body) on the port tako-server gives it. CPU and RSS count
tako's processes only.

Its plain-HTTP listener redirects routed hosts to HTTPS (as in production) unless the app is deployed with
`app_https=False` (`[tako] https = false`).
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[2]
APP = "bench"


class _Control:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(120)
        self.sock.connect(str(path))
        self.buf = b""

    def call(self, command: str, **fields: Any) -> Any:
        self.sock.sendall(json.dumps({"command": command, **fields}).encode() + b"\n")
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("tako-server closed the control socket")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        reply = json.loads(line)
        if reply.get("status") != "ok":
            raise RuntimeError(f"tako-server {command} failed: {reply.get('message')}")
        return reply["data"]

    def close(self) -> None:
        self.sock.close()


def _release(base: Path, data: Path, body: str, pin: str, https: bool = True) -> Path:
    """A release whose start command runs nginx on $PORT answering every path with `body` (`https`: False
    serves the app on the plain-HTTP listener too, `[tako] https = false`, instead of redirecting)."""
    release = data / "apps" / APP / "releases" / "v1"
    release.mkdir(parents=True)
    (data / "apps" / APP / "shared" / "logs").mkdir(parents=True)
    prefix = base / "app-nginx"
    prefix.mkdir()
    (release / "nginx.conf.in").write_text(
        f"""worker_processes 1;
pid {prefix}/nginx-__PORT__.pid;
error_log {prefix}/error.log crit;
worker_rlimit_nofile 20000;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fcgi; uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;
  keepalive_requests 1000000;
  server {{ listen 127.0.0.1:__PORT__ backlog=4096; location / {{ return 200 "{body.strip()}\\n"; }} }}
}}
"""
    )
    nginx = shutil.which("nginx") or "nginx"
    taskset = f"{shutil.which('taskset') or 'taskset'} -c {pin} " if pin else ""
    start = (
        f'sed "s/__PORT__/$PORT/g" nginx.conf.in > "{prefix}/nginx-$PORT.conf" && '
        f"exec {taskset}{nginx} -c \"{prefix}/nginx-$PORT.conf\" -g 'daemon off;'"
    )
    meta = {"name": APP, "version": "v1", "start": start, "health_check": "/", "env": "bench", "https": https}
    (release / "app.json").write_text(json.dumps(meta))
    env = release / ".env"
    env.write_text("ENV=bench\n")
    env.chmod(0o600)
    return release


def start(
    work: Path,
    workers: int,
    cert_dir: Path,
    body: str,
    pin: str,
    process_class: Any,
    access_log: bool = True,
    metrics: bool = True,
    app_https: bool = True,
) -> tuple[Any, int, int]:
    """Start tako-server, deploy the upstream app on route 127.0.0.1, return (process, http, https);
    `app_https=False` deploys it with `[tako] https = false` (proxied on the plain-HTTP port too)."""
    base = Path(tempfile.mkdtemp(prefix="tako-server-", dir=work))
    data = base / "data"
    (data / "certs").mkdir(parents=True)
    shutil.copytree(cert_dir, data / "certs" / cert_dir.name)
    config = base / "server-config.toml"
    # /metrics on a port of its own (not the default 9898): several servers may run at once on one machine.
    # metrics=False: no listener and requests not counted, the configuration with metrics fully off.
    section = (
        '[metrics]\nlisten = "127.0.0.1:0"\n'
        if metrics
        else '[metrics]\nlisten = ""\ncount_requests = false\n'
    )
    access = "" if access_log else "\n[access_log]\nenabled = false\n"
    # The app (nginx) writes its config under this temporary directory: as tako-server's own user, since a
    # root tako-server would otherwise run it as a uid of its own, which cannot write there.
    apps = '\n[apps]\nisolation = "off"\n'
    config.write_text(f"[server]\nworkers = {workers}\n\n[acme]\nenabled = false\n\n{section}{access}{apps}")
    sock = base / "tako.sock"
    http, https = _free_port(), _free_port()
    argv = [
        sys.executable,
        "-m",
        "tako.server.main",
        "--config",
        str(config),
        "--data-dir",
        str(data),
        "--socket",
        str(sock),
        "--listen",
        "127.0.0.1",
        "--http-port",
        str(http),
        "--https-port",
        str(https),
        "--log-level",
        "warning",
    ]

    class TakoProcess(process_class):  # type: ignore[misc]
        def tree(self) -> list[psutil.Process]:
            # The app instance (nginx, the upstream) is tako-server's child: not the proxy's cost.
            found = []
            for p in super().tree():
                try:
                    if "nginx" not in p.name():
                        found.append(p)
                except psutil.NoSuchProcess:
                    pass
            return found

    proc = TakoProcess(argv, https, env={"PYTHONPATH": str(REPO / "src")})
    deadline = time.monotonic() + 30
    while True:
        try:
            control = _Control(sock)
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.stop()
                raise RuntimeError("tako-server did not open its control socket") from None
            time.sleep(0.05)
    try:
        release = _release(base, data, body, pin, app_https)
        control.call(
            "deploy",
            app=APP,
            version="v1",
            path=str(release),
            routes=["127.0.0.1"],
            instances=1,
            idle_timeout=0,
        )
    except Exception:
        proc.stop()
        raise
    finally:
        control.close()
    return proc, http, https


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
