"""An app's maintenance setting (on or off, the message, the clients let through) and the data plane's
answer built from it and the live release's `maintenance.html`."""

from __future__ import annotations

from dataclasses import dataclass

from tako.protocol.client_networks import parse_networks
from tako.server.apps.release import Release
from tako.server.proxy.maintenance import MaintenanceAnswer, default_maintenance_page


@dataclass(frozen=True)
class MaintenanceSetting:
    """What `tako maintenance` and deploys set; persisted per app. `allow` is kept while off, so turning
    maintenance on again lets the same clients through."""

    on: bool = False
    message: str = ""
    allow: tuple[str, ...] = ()

    def as_status(self) -> dict[str, object]:
        return {"on": self.on, "message": self.message or None, "allow": list(self.allow)}


OFF = MaintenanceSetting()


def maintenance_page(setting: MaintenanceSetting, release: Release) -> bytes:
    """The release's maintenance.html, or the default page with the setting's message."""
    own = release.pages.maintenance
    return own if own is not None else default_maintenance_page(setting.message)


def build_answer(setting: MaintenanceSetting, release: Release) -> MaintenanceAnswer | None:
    """The data plane's answer while `setting` is on (None when off). `allow` was checked on arrival."""
    if not setting.on:
        return None
    return MaintenanceAnswer(maintenance_page(setting, release), parse_networks(setting.allow))
