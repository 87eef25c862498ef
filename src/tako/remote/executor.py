"""Run command values on one server over an open SSH connection; upload files; talk to tako-server.

Commands are argument lists (`Command`); quoting happens only here, with `shlex.join`. Data for a shell
snippet travels as positional parameters of `sh -c`, never spliced into the script text.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from tako.errors import CommandFailed, RemoteError, ServerNotAnswering, ServerTimeout
from tako.errors.library import TRANSPORT_ERRORS, exit_status, remote_failure
from tako.protocol import Hello, Reply, Request, decode_reply, encode_request
from tako.remote.connection import ServerAddress

CONTROL_SOCKET = "/var/run/tako/tako.sock"
UPLOAD_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]

    def render(self) -> str:
        return shlex.join(self.argv)


def cmd(*argv: str) -> Command:
    return Command(tuple(argv))


def sh(script: str, *args: str) -> Command:
    """A constant shell script run by `sh -c`, with `args` as its `$1`, `$2`, ..."""
    return Command(("sh", "-c", script, "sh", *args))


@dataclass(frozen=True)
class CommandResult:
    exit_status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


class Executor:
    """One server's command runner over one SSH connection."""

    def __init__(self, conn: asyncssh.SSHClientConnection, address: ServerAddress) -> None:
        self.conn = conn
        self.address = address
        self._control: tuple[asyncssh.SSHReader[bytes], asyncssh.SSHWriter[bytes]] | None = None
        self._control_lock = asyncio.Lock()

    async def run(
        self,
        command: Command,
        *,
        input: str | bytes | None = None,
        check: bool = True,
        timeout: float = 120.0,
        what: str | None = None,
    ) -> CommandResult:
        """Run one command; with `check`, a non-zero exit raises RemoteError with its stderr."""
        data = input.encode() if isinstance(input, str) else input
        try:
            result = await self.conn.run(
                command.render(), input=data, check=False, timeout=timeout, encoding=None
            )
        except TRANSPORT_ERRORS as exc:
            raise remote_failure(exc, self.address.name, what or command.argv[0]) from exc
        stdout = _text(result.stdout)
        stderr = _text(result.stderr)
        status = exit_status(result.exit_status, self.address.name, what or command.argv[0])
        if check and status != 0:
            detail = stderr.strip() or stdout.strip() or f"exit status {status}"
            step = what or command.argv[0]
            if _disk_full(detail):
                raise CommandFailed(
                    f"{self.address.name}: the server's disk is full: {step} failed: {detail}",
                    hint="free some space on the server (`df -h /opt/tako`; old releases live in "
                    "/opt/tako/apps/*/releases) and deploy again",
                )
            raise CommandFailed(f"{self.address.name}: {step} failed: {detail}")
        return CommandResult(status, stdout, stderr)

    async def stream(
        self, command: Command, on_line: Callable[[str], None], *, timeout: float, what: str
    ) -> int:
        """Run `command` with no input, handing each line of its output (stdout and stderr as they
        interleave) to `on_line` as it comes; its exit status. Cancelled or timed out, the channel closes."""
        try:
            async with asyncio.timeout(timeout):
                process = await self.conn.create_process(
                    command.render(), stdin=asyncssh.DEVNULL, stderr=asyncssh.STDOUT, encoding=None
                )
                try:
                    async for line in process.stdout:
                        on_line(_text(line).rstrip("\r\n"))
                    completed = await process.wait()
                except BaseException:
                    # Cut short: ask the remote command to stop too. A closed channel alone stops it
                    # later (an interrupted release command: the deploy ended after 53 s without this
                    # signal, 10 s with it, one run each).
                    with contextlib.suppress(asyncssh.Error, OSError):
                        process.send_signal("TERM")
                    raise
                finally:
                    process.close()
        except TRANSPORT_ERRORS as exc:
            raise remote_failure(exc, self.address.name, what, timeout=timeout) from exc
        return exit_status(completed.exit_status, self.address.name, what)

    async def upload(
        self,
        local: Path,
        remote_path: str,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> str:
        """Stream `local` into `remote_path` over an exec channel and verify its sha256 there."""
        total = local.stat().st_size
        digest = hashlib.sha256()
        sent = 0
        try:
            # The checksum is taken by the same remote command: one exec channel fewer per deploy.
            process = await self.conn.create_process(
                sh('umask 077; cat > "$1" && sha256sum "$1"', remote_path).render(), encoding=None
            )
            with local.open("rb") as handle:
                while chunk := handle.read(UPLOAD_CHUNK):
                    digest.update(chunk)
                    process.stdin.write(chunk)
                    await process.stdin.drain()
                    sent += len(chunk)
                    if progress:
                        progress(sent, total)
            process.stdin.write_eof()
            completed = await asyncio.wait_for(process.wait(), timeout=120)
        except TRANSPORT_ERRORS as exc:
            interrupted = f"{self.address.name}: upload interrupted after {sent} of {total} bytes"
            raise remote_failure(exc, self.address.name, "the upload", message=interrupted) from exc
        if completed.exit_status != 0:
            raise CommandFailed(f"{self.address.name}: upload failed: {_text(completed.stderr).strip()}")
        expected = digest.hexdigest()
        checksum = _text(completed.stdout).split()
        actual = checksum[0] if checksum else ""
        if actual != expected:
            raise RemoteError(
                f"{self.address.name}: uploaded archive is corrupt (sha256 {actual} != {expected})"
            )
        return expected

    async def control(self, request: Request, *, timeout: float = 300.0) -> Reply:
        """Send one control request to tako-server and return its reply."""
        line = encode_request(request)
        async with self._control_lock:
            try:
                return await asyncio.wait_for(self._control_roundtrip(line), timeout=timeout)
            except TimeoutError as exc:
                self._control = None
                raise ServerTimeout(
                    f"{self.address.name}: tako-server did not answer {request.command!r} in {timeout:.0f}s"
                ) from exc

    async def _control_roundtrip(self, line: bytes) -> Reply:
        if self._control is None:
            try:
                self._control = await self.conn.open_unix_connection(CONTROL_SOCKET, encoding=None)
            except asyncssh.ChannelOpenError:
                return await self._control_via_nc(line)
        reader, writer = self._control
        try:
            writer.write(line)
            reply = await reader.readline()
        except TRANSPORT_ERRORS as exc:
            self._control = None
            lost = f"{self.address.name}: control connection to tako-server lost"
            raise remote_failure(exc, self.address.name, "a control request", message=lost) from exc
        if not reply:
            self._control = None
            raise ServerNotAnswering(f"{self.address.name}: tako-server closed the control connection")
        return decode_reply(reply)

    async def _control_via_nc(self, line: bytes) -> Reply:
        """Fallback for servers that forbid streamlocal forwarding: one `nc -U` per request."""
        result = await self.run(
            cmd("nc", "-U", "-q", "5", CONTROL_SOCKET), input=line, check=False, what="nc -U", timeout=300
        )
        first = result.stdout.split("\n", 1)[0]
        if not first:
            raise ServerNotAnswering(
                f"{self.address.name}: tako-server is not answering on {CONTROL_SOCKET}",
                hint="check it with `tako servers status " + self.address.name + "`",
            )
        return decode_reply(first.encode())

    def forget_control(self) -> None:
        """Drop the control connection (after tako-server restarted); the next request reopens it."""
        if self._control is not None:
            self._control[1].close()
            self._control = None

    async def hello(self) -> Reply:
        from tako import __version__

        return await self.control(Hello(client=f"tako {__version__}"), timeout=15)

    async def close(self) -> None:
        self.forget_control()
        self.conn.close()
        await self.conn.wait_closed()


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode("utf-8", errors="replace")
    return data


# GNU tar when a write to an extracted file came up short: "tar: f: Wrote only 7168 of 10240 bytes".
_SHORT_WRITE = re.compile(r"Wrote only \d+ of \d+ bytes")


def _disk_full(stderr: str) -> bool:
    """Whether a remote command failed for lack of disk space: ENOSPC's text, or tar's short write."""
    return "No space left on device" in stderr or _SHORT_WRITE.search(stderr) is not None
