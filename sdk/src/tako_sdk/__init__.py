"""Tako app SDK: `/_tako/status` middleware for ASGI and WSGI apps, and Tako's environment as an object."""

from tako_sdk.asgi import ASGIMiddleware
from tako_sdk.env import TakoEnv, env
from tako_sdk.status import STATUS_PATH, status_payload
from tako_sdk.wsgi import WSGIMiddleware

__all__ = ["STATUS_PATH", "ASGIMiddleware", "TakoEnv", "WSGIMiddleware", "env", "status_payload"]
__version__ = "0.1.0"
