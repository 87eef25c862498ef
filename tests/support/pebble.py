"""A real ACME CA for tests: Pebble plus pebble-challtestsrv as its DNS, on free ports chosen at runtime.

Validation is real HTTP-01: Pebble resolves each host through the DNS server we run (A records set with
`add_a`) and fetches `http://<host>:<http_port>/.well-known/acme-challenge/<token>` from that address.
The `pebble` Debian package provides both binaries (`apt-get install pebble`); nothing is installed here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import IO, Any

import httpx
import trustme

PEBBLE_BIN = "/usr/bin/pebble"
CHALLTESTSRV_BIN = "/usr/bin/pebble-challtestsrv"


class PebbleError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1", *, udp: bool = False) -> int:
    """A port free now on `host` (TCP, and UDP too if asked): bind 0, read back, release."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            if not udp:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dgram:
                try:
                    dgram.bind((host, port))
                except OSError:
                    continue
                return port
    raise PebbleError(f"no free port on {host}")


def _wait(predicate: Any, timeout: float, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        if proc.poll() is not None:
            raise PebbleError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        with contextlib.suppress(httpx.HTTPError, OSError):
            if predicate():
                return
        if time.monotonic() >= deadline:
            raise PebbleError(f"{what} not ready after {timeout:.0f} s:\n{_tail(log)}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


class Pebble:
    """Pebble + its DNS. `http_port` is where Pebble's validator connects for HTTP-01 (80 for testbed
    hosts); `listen_host` is where Pebble's API listens (a bridge address if other namespaces must reach
    it). Ports default to free ones. Use as a context manager, or call start()/stop()."""

    def __init__(
        self,
        workdir: Path,
        *,
        http_port: int,
        listen_host: str = "127.0.0.1",
        port: int | None = None,
        cert_validity: int | None = None,
    ) -> None:
        for binary in (PEBBLE_BIN, CHALLTESTSRV_BIN):
            if not os.access(binary, os.X_OK):
                raise PebbleError(
                    f"{binary} not found: install the Debian package with `apt-get install pebble`"
                )
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.http_port = http_port
        self.listen_host = listen_host
        self.port = port or free_port(listen_host)
        self.management_port = free_port(listen_host)
        self.dns_port = free_port("127.0.0.1", udp=True)
        self.dns_management_port = free_port("127.0.0.1")
        self._cert_validity = cert_validity
        self._pebble: subprocess.Popen[bytes] | None = None
        self._dns: subprocess.Popen[bytes] | None = None
        self._logs: list[IO[bytes]] = []
        # Pebble's own API certificate: the package ships none. The CA is what ACME clients trust.
        self._ca = trustme.CA()
        names = sorted({"localhost", "127.0.0.1", listen_host})
        leaf = self._ca.issue_cert(*names)
        self.ca_bundle = workdir / "pebble-api-ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_bundle))
        self._cert_path = workdir / "pebble-api-cert.pem"
        self._key_path = workdir / "pebble-api-key.pem"
        leaf.private_key_pem.write_to_path(str(self._key_path))
        self._cert_path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))

    # -- addresses ---------------------------------------------------------------------------------

    @property
    def directory_url(self) -> str:
        return f"https://{self.listen_host}:{self.port}/dir"

    @property
    def management_url(self) -> str:
        return f"https://{self.listen_host}:{self.management_port}"

    @property
    def dns_management_url(self) -> str:
        return f"http://127.0.0.1:{self.dns_management_port}"

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> Pebble:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> None:
        """Start the DNS server (if not running) and Pebble; return once both answer."""
        try:
            self.start_dns(timeout)
            self.start_pebble(timeout)
        except BaseException:
            self.stop()
            raise

    def start_dns(self, timeout: float = 30.0) -> None:
        if self._dns is not None and self._dns.poll() is None:
            return
        log = self.workdir / "challtestsrv.log"
        self._dns = self._spawn(
            log,
            [
                CHALLTESTSRV_BIN,
                "-dns01",
                f"127.0.0.1:{self.dns_port}",
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                f"127.0.0.1:{self.dns_management_port}",
                # Only names added with add_a resolve: nothing leaks to a default address.
                "-defaultIPv4",
                "",
                "-defaultIPv6",
                "",
            ],
        )

        def ready() -> bool:
            httpx.get(self.dns_management_url + "/", timeout=1.0)
            return True

        _wait(ready, timeout, "pebble-challtestsrv", self._dns, log)

    def start_pebble(self, timeout: float = 30.0) -> None:
        if self._pebble is not None and self._pebble.poll() is None:
            return
        config: dict[str, Any] = {
            "listenAddress": f"{self.listen_host}:{self.port}",
            "managementListenAddress": f"{self.listen_host}:{self.management_port}",
            "certificate": str(self._cert_path),
            "privateKey": str(self._key_path),
            "httpPort": self.http_port,
            "tlsPort": free_port(),  # TLS-ALPN-01 is never answered; keep it off well-known ports
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        if self._cert_validity is not None:
            config["certificateValidityPeriod"] = self._cert_validity
        config_path = self.workdir / "pebble-config.json"
        config_path.write_text(json.dumps({"pebble": config}, indent=2))
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": "0",
        }
        log = self.workdir / "pebble.log"
        self._pebble = self._spawn(
            log,
            [
                PEBBLE_BIN,
                "-config",
                str(config_path),
                "-dnsserver",
                f"127.0.0.1:{self.dns_port}",
                "-strict=false",
            ],
            env=env,
        )

        def ready() -> bool:
            return httpx.get(self.directory_url, verify=self._client_ssl(), timeout=1.0).status_code == 200

        _wait(ready, timeout, "pebble", self._pebble, log)

    def _spawn(
        self, log: Path, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `argv` in the work dir, its output appended to `log` (closed in stop())."""
        out = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(out)
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=self.workdir
        )

    def stop_pebble(self) -> None:
        """Stop Pebble only (the DNS keeps its records): the directory becomes unreachable."""
        _stop(self._pebble)
        self._pebble = None

    def stop(self) -> None:
        _stop(self._pebble)
        _stop(self._dns)
        self._pebble = self._dns = None
        for out in self._logs:
            out.close()
        self._logs.clear()

    # -- DNS and roots ------------------------------------------------------------------------------

    def add_a(self, host: str, ip: str) -> None:
        """Make `host` resolve to `ip` for Pebble's validator."""
        r = httpx.post(self.dns_management_url + "/add-a", json={"host": host, "addresses": [ip]}, timeout=5)
        r.raise_for_status()

    def clear_a(self, host: str) -> None:
        r = httpx.post(self.dns_management_url + "/clear-a", json={"host": host}, timeout=5)
        r.raise_for_status()

    def root_pem(self) -> bytes:
        """The root that signs issued certificates (regenerated at every Pebble start)."""
        r = httpx.get(self.management_url + "/roots/0", verify=self._client_ssl(), timeout=5)
        r.raise_for_status()
        return r.content

    def _client_ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    def logs(self) -> str:
        return _tail(self.workdir / "pebble.log", 200)


def pebble_installed() -> bool:
    return all(shutil.which(b) for b in (PEBBLE_BIN, CHALLTESTSRV_BIN))
