"""The one exception tree of Tako: every exception class a user can see is defined here.

    TakoError                     message + hint + exit code (+ the control protocol's error code)
     │  categories, to catch one kind of failure whatever raised it:
     ├── Timeout                  something did not finish or answer in time
     ├── Unavailable              cannot connect, the connection was lost, nobody answers
     ├── Refused                  the other side said no (a login, a control command)
     ├── NotFound                 a named thing does not exist (an app)
     │  the CLI side:
     ├── ConfigError              a config file is wrong: names the file, the key path and, if known, the line
     ├── UsageError               the command line or the situation needs the user to do something first
     ├── SecretsError             secret store, keys or decryption
     ├── ProtocolError            a control-protocol message is malformed
     ├── DeployError              a deploy failed on one server
     │    └── StepFailed          ... at one named step
     ├── RemoteError              SSH or a remote command failed
     │    ├── HostKeyError        a server presented a host key other than the recorded one
     │    ├── LoginRefused        (Refused) no key we offered was accepted
     │    ├── CannotConnect       (Unavailable) no SSH connection: refused, unreachable, no such host
     │    ├── ConnectionLost      (Unavailable) the connection broke during a command
     │    ├── RemoteTimeout       (Timeout) a connection or a remote command took too long
     │    ├── CommandFailed       a remote command exited with an error
     │    └── ServerNotAnswering  (Unavailable) tako-server is not listening or closed the connection
     │         └── ServerTimeout  (Timeout) tako-server did not answer a control request in time
     ├── ServerError              (Refused) tako-server answered a control command with an error
     │  tako-server:
     ├── DataDirInUse             another tako-server holds the data dir
     ├── ControlError             the control socket cannot be created
     ├── StateError               the state database cannot be opened or written
     ├── AppError                 a control command about an app cannot be done
     │    └── UnknownApp          (NotFound) no app of that name
     ├── ReleaseError             a release directory cannot be used
     ├── InstanceFailed           an instance did not come up or died
     ├── IsolationError           an app cannot be run isolated
     ├── OneOffError              a one-off command cannot be started (exit 125)
     └── AcmeError                one certificate issuance attempt failed

Library exceptions (asyncssh, OSError, timeouts) become these in one place, `tako.errors.library`, where
they enter Tako, chained (`raise ... from exc`). Only `tako.cli.main` and `tako.server.main` print errors
and exit.
"""

from __future__ import annotations


class TakoError(Exception):
    """Base of every error Tako reports to a user."""

    exit_code: int = 1
    code: str | None = None  # sent as a control error reply's `code` when a client may act on it

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


# --- categories -------------------------------------------------------------------------------------


class Timeout(TakoError):
    """Something did not finish or answer in time."""


class Unavailable(TakoError):
    """Cannot connect, the connection was lost, or nobody answers."""


class Refused(TakoError):
    """The other side said no: a login, a control command."""


class NotFound(TakoError):
    """A named thing does not exist."""


# --- the CLI side -----------------------------------------------------------------------------------


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


class SecretsError(TakoError):
    """Secret store, key or decryption failure. Never carries a secret value."""


class ProtocolError(TakoError):
    """A control-protocol message is malformed or unknown."""


class DeployError(TakoError):
    """A deploy failed on one server."""


class StepFailed(DeployError):
    """A server's deploy stopped at `step` (a name of the step table) for the reason in the message."""

    def __init__(self, step: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.step = step


class RemoteError(TakoError):
    """SSH or a remote command failed."""


class HostKeyError(RemoteError):
    """The server's host key differs from the one recorded in known_hosts."""


class LoginRefused(RemoteError, Refused):
    """The SSH server accepted none of the keys offered."""


class CannotConnect(RemoteError, Unavailable):
    """No SSH connection: refused, unreachable, no such host."""


class ConnectionLost(RemoteError, Unavailable):
    """The SSH connection broke while a command ran."""


class RemoteTimeout(RemoteError, Timeout):
    """Connecting, or a remote command, took longer than allowed."""


class CommandFailed(RemoteError):
    """A remote command exited with an error (its output is in the message)."""


class ServerNotAnswering(RemoteError, Unavailable):
    """tako-server is not listening on its control socket, or closed the connection."""


class ServerTimeout(ServerNotAnswering, Timeout):
    """tako-server did not answer a control request in time."""


class ServerError(Refused):
    """tako-server answered a control command with an error."""


# --- tako-server --------------------------------------------------------------------------------------


class DataDirInUse(TakoError):
    """Another tako-server holds the data dir."""


class HandoverFailed(TakoError):
    """A new tako-server did not take over from the running one, which keeps serving."""


class ControlError(TakoError):
    """The control socket cannot be created."""


class StateError(TakoError):
    """The state database cannot be opened or written."""


class AppError(TakoError):
    """A control command about an app cannot be done (unknown app, busy, conflicting routes...)."""


class UnknownApp(AppError, NotFound):
    """No app of that name is deployed."""

    code = "unknown-app"  # the protocol's ERROR_UNKNOWN_APP: `tako` acts on it


class ReleaseError(TakoError):
    """A release directory cannot be used: missing or invalid app.json or .env."""


class InstanceFailed(TakoError):
    """An instance did not come up or died; the message names it and quotes its last output."""


class IsolationError(TakoError):
    """An app cannot be run isolated (bad uid, release outside its app dir)."""


class OneOffError(TakoError):
    """A one-off command cannot be started (unknown app, bad release dir, tako-server unreachable)."""

    exit_code = 125  # as `env` and container runners: the runner failed, not the command


class AcmeError(TakoError):
    """One issuance attempt failed. `retry_after` is the CA's minimum wait (rate limits), if it gave one."""

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        retry_after: float | None = None,
        account_invalid: bool = False,
    ) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after
        self.account_invalid = account_invalid
