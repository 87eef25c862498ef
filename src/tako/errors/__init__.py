"""The one exception tree of Tako.

    TakoError                 message + hint + exit code; the only errors the entry points print
     ├── ConfigError          a config file is wrong: names the file, the key path and, if known, the line
     ├── UsageError           the command line or the situation needs the user to do something first
     ├── RemoteError          SSH or a remote command failed (unreachable, auth, host key, exit status)
     │    └── HostKeyError    a server presented a host key other than the recorded one
     ├── DeployError          one step of a deploy failed on one server
     ├── SecretsError         secret store, keys or decryption
     ├── ProtocolError        a control-protocol message is malformed
     └── ServerError          tako-server answered a control command with an error

Lower-level exceptions are translated where they enter Tako and chained (`raise ... from exc`).
Only `tako.cli.main` and `tako.server.main` print errors and exit.
"""

from __future__ import annotations


class TakoError(Exception):
    """Base of every error Tako reports to a user."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\nhint: {self.hint}"
        return self.message


class ConfigError(TakoError):
    """A config file is invalid. The message names the file, the key path and, when known, the line."""

    exit_code = 2

    def __init__(
        self,
        file: str,
        message: str,
        *,
        key: str | None = None,
        line: int | None = None,
        hint: str | None = None,
    ) -> None:
        where = file
        if line is not None:
            where += f":{line}"
        if key:
            where += f": {key}"
        super().__init__(f"{where}: {message}", hint=hint)
        self.file = file
        self.key = key
        self.line = line
        self.detail = message


class UsageError(TakoError):
    """The user must change the command line or do something first."""

    exit_code = 2


class RemoteError(TakoError):
    """SSH or a remote command failed."""


class HostKeyError(RemoteError):
    """The server's host key differs from the one recorded in known_hosts."""


class DeployError(TakoError):
    """A deploy step failed on one server."""


class SecretsError(TakoError):
    """Secret store, key or decryption failure. Never carries a secret value."""


class ProtocolError(TakoError):
    """A control-protocol message is malformed or unknown."""


class ServerError(TakoError):
    """tako-server answered a control command with an error."""
