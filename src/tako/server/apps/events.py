"""What happened to an app outside the data plane, counted where it happens and read by /metrics.

Cumulative since tako-server started (Prometheus counters); one `AppEvents` per app name, kept by the
registry across redeploys, so a deploy never resets an app's counts.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AppEvents:
    instance_starts: int = 0  # instances started: first start, deploy, cold start, scale-up, replacement
    instance_restarts: int = 0  # attempts to replace an instance that failed (crash, health checks)
    health_failures: int = 0  # health probes that failed
    health_late_busy: int = 0  # probes that timed out while the instance answered requests: not failures
    deploys: int = 0  # deploys that switched the app to a release (rollbacks included)
    rollbacks: int = 0  # deploys to a release recorded as deployed before the one they replaced

    def deployed(self, recorded_at: str, replaced_recorded_at: str = "") -> None:
        """A deploy switched the app; a release recorded before the one it replaced is a rollback."""
        self.deploys += 1
        if recorded_at and replaced_recorded_at and recorded_at < replaced_recorded_at:
            self.rollbacks += 1
