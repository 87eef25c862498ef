"""The `/_tako/status` document: every app with its version, state and instances.

HTTP 200 when every always-on app (instances > 0, not stopped) has a healthy instance, else 503.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from tako import __version__
from tako.server.apps.app import ManagedApp
from tako.server.apps.instance import InstanceState


def status_document(
    apps: Iterable[ManagedApp], *, certificates: Mapping[str, Any] | None = None
) -> tuple[int, bytes]:
    healthy_overall = True
    entries: list[dict[str, object]] = []
    for app in sorted(apps, key=lambda a: a.name):
        healthy = sum(1 for i in app.instances if i.state is InstanceState.HEALTHY)
        if app.min_instances > 0 and not app.stopped and healthy == 0:
            healthy_overall = False
        entries.append(
            {
                "app": app.name,
                "version": app.release.version,
                "state": app.state.value,
                "min_instances": app.min_instances,
                "healthy_instances": healthy,
                "instances": [
                    {"id": i.id, "state": i.state.value, "healthy": i.state is InstanceState.HEALTHY}
                    for i in app.instances
                ],
            }
        )
    body = {
        "server_version": __version__,
        "healthy": healthy_overall,
        "apps": entries,
        "certificates": dict(certificates or {}),
    }
    return (200 if healthy_overall else 503), json.dumps(body, separators=(",", ":")).encode()
