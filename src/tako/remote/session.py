"""An interactive remote command: this process's stdin, stdout and stderr attached to a command run over SSH.

With `pty`, the command gets a terminal on the server (the local `TERM` and window size, resized when the
local window is) and the local terminal is put in raw mode, so keys, Ctrl-C and Ctrl-D reach the remote
program as typed; its stderr then arrives on the terminal's single stream. Without, stdin is copied until
its end, stdout and stderr stay apart, and Ctrl-C (or SIGTERM) sends SIGINT (SIGTERM) to the remote command
through SSH; a second one closes the channel. The exit status comes back as a shell reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import termios
import threading
import tty
from collections.abc import Iterator
from typing import Any

import asyncssh

from tako.errors import ConnectionLost
from tako.errors.library import TRANSPORT_ERRORS, remote_failure
from tako.remote.connection import ServerAddress
from tako.remote.executor import Command

CHUNK = 64 * 1024
INTERRUPTED = 130  # a shell's status after Ctrl-C


async def attach(
    conn: asyncssh.SSHClientConnection, address: ServerAddress, command: Command, *, pty: bool
) -> int:
    """Run `command` with the local stdio attached; its exit status (128 + N when killed by signal N)."""
    options: dict[str, object] = {}
    if pty:
        columns, lines = os.get_terminal_size(0)
        options = {"term_type": os.environ.get("TERM") or "xterm", "term_size": (columns, lines)}
    try:
        process = await conn.create_process(command.render(), encoding=None, **options)
    except TRANSPORT_ERRORS as exc:
        cannot = f"{address.name}: cannot start the command: {exc}"
        raise remote_failure(exc, address.name, "starting the command", message=cannot) from exc
    with _raw_terminal(pty), _signals(process, pty) as cut:
        copies = [
            asyncio.create_task(_copy_out(process.stdout, 1)),
            asyncio.create_task(_copy_out(process.stderr, 2)),
        ]
        feeding = asyncio.create_task(_feed_stdin(process))
        finished = asyncio.gather(*copies, process.wait())
        either: list[asyncio.Future[Any]] = [finished, cut]
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if cut.done():
                finished.cancel()
                process.close()
                # Collected, or asyncio prints "exception was never retrieved" on the user's terminal.
                with contextlib.suppress(asyncio.CancelledError, asyncssh.Error, OSError):
                    await finished
                return INTERRUPTED
            finished.result()
        except TRANSPORT_ERRORS as exc:
            raise remote_failure(exc, address.name, "the command") from exc
        finally:
            feeding.cancel()
    return _status(process, address)


def _status(process: asyncssh.SSHClientProcess[bytes], address: ServerAddress) -> int:
    if process.exit_signal is not None:  # then exit_status is -1
        name = process.exit_signal[0]
        with contextlib.suppress(KeyError):
            return 128 + signal.Signals[f"SIG{name}"].value
        return 128 + signal.SIGTERM
    if process.exit_status is not None and process.exit_status >= 0:
        return process.exit_status
    raise ConnectionLost(f"{address.name}: the connection ended before the command reported its exit status")


async def _copy_out(stream: asyncssh.SSHReader[bytes], fd: int) -> None:
    while data := await stream.read(CHUNK):
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]


async def _feed_stdin(process: asyncssh.SSHClientProcess[bytes]) -> None:
    """Copy local stdin to the command until its end (then EOF); a thread reads, so a regular file, a pipe
    and a terminal all work (epoll accepts no regular files), and at most a few chunks wait in memory."""
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)

    def read() -> None:
        while True:
            try:
                data = os.read(0, CHUNK)
            except OSError:
                data = b""
            try:
                asyncio.run_coroutine_threadsafe(chunks.put(data), loop).result()
            except (RuntimeError, asyncio.CancelledError):
                return  # the loop is gone: the command is over
            if not data:
                return

    # A daemon thread: one blocked reading the terminal must not keep `tako` alive after the command ends.
    threading.Thread(target=read, name="tako-run-stdin", daemon=True).start()
    # The command may end (or the channel close) before it read everything: the rest is not needed.
    with contextlib.suppress(asyncssh.Error, OSError):
        while data := await chunks.get():
            process.stdin.write(data)
            await process.stdin.drain()
        process.stdin.write_eof()


@contextlib.contextmanager
def _raw_terminal(pty: bool) -> Iterator[None]:
    if not pty:
        yield
        return
    saved = termios.tcgetattr(0)
    tty.setraw(0)
    try:
        yield
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _signals(process: asyncssh.SSHClientProcess[bytes], pty: bool) -> Iterator[asyncio.Future[None]]:
    """Forward SIGINT/SIGTERM to the command (a second one resolves the future: give up on it); with a
    PTY, window size changes too."""
    loop = asyncio.get_running_loop()
    cut: asyncio.Future[None] = loop.create_future()
    sent: list[str] = []

    def forward(name: str) -> None:
        if sent and not cut.done():
            cut.set_result(None)
        sent.append(name)
        with contextlib.suppress(asyncssh.Error, OSError):
            process.send_signal(name)

    def resize() -> None:
        with contextlib.suppress(asyncssh.Error, OSError):
            columns, lines = os.get_terminal_size(0)
            process.change_terminal_size(columns, lines)

    loop.add_signal_handler(signal.SIGINT, forward, "INT")
    loop.add_signal_handler(signal.SIGTERM, forward, "TERM")
    if pty:
        loop.add_signal_handler(signal.SIGWINCH, resize)
    try:
        yield cut
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGWINCH):
            loop.remove_signal_handler(sig)
