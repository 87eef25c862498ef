"""ManagedApp as the proxy's AppGate and the status document, without processes (instances are never
started here; their state is set directly)."""

from __future__ import annotations

import json
from pathlib import Path

from tako.config.server import AppSettings
from tako.server.apps.app import AppState, ManagedApp
from tako.server.apps.instance import InstanceState
from tako.server.apps.logs import AppLog
from tako.server.apps.release import Release
from tako.server.status import status_document


def make_app(tmp_path: Path, name: str = "web", min_instances: int = 2) -> ManagedApp:
    release = Release(app=name, version="v1", path=tmp_path, start="true")
    return ManagedApp(
        release,
        routes=(f"{name}.test",),
        min_instances=min_instances,
        idle_timeout=300,
        settings=AppSettings(),
        log_file=AppLog(tmp_path / "logs", max_bytes=0, backups=0),
        ports=set(),
        changed=lambda app: None,
    )


async def test_pick_round_robin_and_least_busy(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    assert app.pick() is None
    a, b = app.new_instance(app.release), app.new_instance(app.release)
    app.instances += [a, b]
    a.set_state(InstanceState.HEALTHY)
    b.set_state(InstanceState.HEALTHY)
    app.refresh()
    assert app.state is AppState.RUNNING
    picks = [app.pick() for _ in range(4)]
    assert picks.count(a) == 2 and picks.count(b) == 2
    # A busy instance is skipped for an idle one.
    a.request_started()
    a.request_started()
    assert all(app.pick() is b for _ in range(4))
    assert app.activity.inflight == 2
    a.request_finished()
    a.request_finished()
    assert a.inflight == 0 and app.activity.inflight == 0
    # Out of rotation when unhealthy; the app is degraded below its minimum.
    a.set_state(InstanceState.UNHEALTHY)
    assert app.rotation == (b,) and app.state is AppState.DEGRADED


async def test_status_document_is_503_when_an_always_on_app_has_no_healthy_instance(tmp_path: Path) -> None:
    web = make_app(tmp_path, "web", 1)
    lazy = make_app(tmp_path, "lazy", 0)
    code, body = status_document([web, lazy])
    doc = json.loads(body)
    assert code == 503 and doc["healthy"] is False
    assert [a["app"] for a in doc["apps"]] == ["lazy", "web"]
    inst = web.new_instance(web.release)
    web.instances.append(inst)
    inst.set_state(InstanceState.HEALTHY)
    code, body = status_document([web, lazy])
    assert code == 200
    assert json.loads(body)["apps"][1]["instances"][0]["healthy"] is True
    web.stopped = True
    inst.set_state(InstanceState.STOPPED)
    assert status_document([web, lazy])[0] == 200  # a stopped app is not expected to serve
