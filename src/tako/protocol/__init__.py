"""The control protocol between the CLI and tako-server: typed messages and the JSON-lines codec."""

from tako.protocol.codec import (
    MAX_LINE_BYTES,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
    error_reply,
    ok_reply,
)
from tako.protocol.limits import MAX_ENV_BYTES, MAX_ENV_VALUE_BYTES, MAX_IDLE_TIMEOUT, MAX_INSTANCES
from tako.protocol.messages import (
    ERROR_UNKNOWN_APP,
    PROTOCOL_VERSION,
    Delete,
    Deploy,
    Hello,
    List,
    Maintenance,
    Reload,
    Reply,
    Request,
    Routes,
    Status,
    Stop,
)

__all__ = [
    "ERROR_UNKNOWN_APP",
    "MAX_ENV_BYTES",
    "MAX_ENV_VALUE_BYTES",
    "MAX_IDLE_TIMEOUT",
    "MAX_INSTANCES",
    "MAX_LINE_BYTES",
    "PROTOCOL_VERSION",
    "Delete",
    "Deploy",
    "Hello",
    "List",
    "Maintenance",
    "Reload",
    "Reply",
    "Request",
    "Routes",
    "Status",
    "Stop",
    "decode_reply",
    "decode_request",
    "encode_reply",
    "encode_request",
    "error_reply",
    "ok_reply",
]
