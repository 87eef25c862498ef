"""Removing an app from servers: stop it in tako-server, forget its routes and state, remove its files."""

from __future__ import annotations

from tako.deploy import commands
from tako.deploy.layout import AppLayout
from tako.errors import DeployError
from tako.protocol import ERROR_UNKNOWN_APP, Delete
from tako.remote.executor import Executor, sh

_REMOVE_APP = 'rm -rf -- "$1"'


async def delete_app(ex: Executor, app: str) -> str:
    """Delete `app` on one server; returns what was done. Refuses while a deploy holds the lock."""
    layout = AppLayout(app)
    holder = f"tako delete of {app}"
    locked = await ex.run(commands.acquire_lock(layout, holder), check=False, what="lock")
    if locked.exit_status == commands.LOCK_HELD_STATUS:
        raise DeployError(
            f"a deploy holds the lock {layout.lock} ({locked.stdout.strip() or 'unknown holder'})",
            hint="wait for it to finish, then run delete again",
        )
    try:
        reply = await ex.control(Delete(app=app))
        if not reply.ok and reply.extra.get("code") != ERROR_UNKNOWN_APP:
            raise DeployError(f"tako-server refused to delete {app!r}: {reply.message}")
        await ex.run(sh(_REMOVE_APP, layout.app_dir), what="remove app files")
    except BaseException:
        await ex.run(commands.release_lock(layout, holder), check=False)
        raise
    return "deleted" if reply.ok else "removed files (tako-server did not know the app)"
