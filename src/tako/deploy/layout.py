"""Remote paths of one app on a server (docs/deployment.md, "Remote layout"), as pure functions."""

from __future__ import annotations

from dataclasses import dataclass

from tako.config.project import DEFAULT_KEEP_RELEASES

TAKO_ROOT = "/opt/tako"
KEEP_RELEASES = DEFAULT_KEEP_RELEASES  # releases a server keeps, the live one included
RELEASE_INFO = "app.json"  # at a release's root; its "release" object says who deployed what, when


@dataclass(frozen=True)
class AppLayout:
    app: str
    root: str = TAKO_ROOT

    @property
    def app_dir(self) -> str:
        return f"{self.root}/apps/{self.app}"

    @property
    def releases(self) -> str:
        return f"{self.app_dir}/releases"

    def release(self, version: str) -> str:
        return f"{self.releases}/{version}"

    @property
    def shared(self) -> str:
        return f"{self.app_dir}/shared"

    @property
    def shared_logs(self) -> str:
        return f"{self.shared}/logs"

    @property
    def shared_data(self) -> str:
        """The app's persistent data (TAKO_DATA_DIR): kept across deploys and rollbacks, removed by delete."""
        return f"{self.shared}/data"

    @property
    def lock(self) -> str:
        return f"{self.app_dir}/.deploy_lock"

    @property
    def current(self) -> str:
        return f"{self.app_dir}/current"

    def upload(self, version: str) -> str:
        return f"{self.app_dir}/.upload-{version}.tar.gz"

    def staging(self, version: str, nonce: str) -> str:
        """Where a release is unpacked before it is complete; never served, pruned if left behind."""
        return f"{self.releases}/.partial-{version}-{nonce}"

    def replaced(self, version: str, nonce: str) -> str:
        """Where an existing release dir of the same version waits while a redeploy replaces it."""
        return f"{self.releases}/.replaced-{version}-{nonce}"
