"""Automatic certificates: ACME HTTP-01 issuance and renewal in the background, per-host state and backoff.

`AcmeManager` decides when to act (hosts routed, certificates on disk, retry schedule); the issuer
(`acme_issuer.AcmeIssuer`, behind the `acme_base.Issuer` interface) talks to the CA with the synchronous
`acme` library in worker threads. Nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tako.config.server import AcmeSettings
from tako.errors import AcmeError
from tako.server.tls import renewal
from tako.server.tls.acme_base import Account, Issuer, iso_utc
from tako.server.tls.challenges import ChallengeStore

log = logging.getLogger("tako.acme")

_T = TypeVar("_T")


async def _in_daemon_thread(func: Callable[..., _T], *args: Any) -> _T:
    """Run blocking `func(*args)` in a daemon thread and await its result.

    Not asyncio.to_thread: the default executor is joined when the event loop closes and at interpreter
    exit, so a CA that stops answering mid-request held tako-server's shutdown for up to NETWORK_TIMEOUT
    per request (the service script then SIGKILLs it). A daemon thread is simply abandoned at exit; the
    cancel flag and the write lock keep an abandoned attempt from writing files.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return  # the awaiting task was cancelled
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        try:
            outcome: tuple[Any, BaseException | None] = (func(*args), None)
        except Exception as exc:  # handed to the awaiting task, which decides
            outcome = (None, exc)
        with contextlib.suppress(RuntimeError):  # the loop is closed: tako-server is exiting
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=run, name=f"tako-acme-{getattr(func, '__name__', 'call')}", daemon=True).start()
    return await future


class HostState(enum.Enum):
    PENDING = "pending"  # needs a certificate; an attempt is queued
    ISSUING = "issuing"  # an order is in flight (first issuance or renewal)
    VALID = "valid"  # a managed certificate is on disk and outside the renewal window
    FAILED = "failed"  # the last attempt failed; next_attempt says when it is retried
    USER_MANAGED = "user-managed"  # a certificate the user placed in certs/ serves this host
    SKIPPED = "skipped"  # no ACME certificate possible (IP, localhost...): last_error says why
    DISABLED = "disabled"  # [acme] enabled = false and no certificate on disk


@dataclass
class _Host:
    name: str
    state: HostState = HostState.PENDING
    not_after: float | None = None
    last_error: str | None = None
    next_attempt: float | None = None  # epoch seconds; None when nothing is scheduled
    hold_until: float | None = None  # the CA's Retry-After on a rate limit: no attempt before this
    failures: int = 0
    task: asyncio.Task[None] | None = None
    cancel: threading.Event | None = None


class AcmeManager:
    """Keeps a certificate on disk for every routed host that can have one.

    Call `set_hosts` with the routed non-wildcard hosts whenever routes change (cheap, never blocks);
    `start`/`stop` run the background task; `status` is a JSON-ready per-host view.
    """

    def __init__(
        self,
        settings: AcmeSettings,
        data_dir: Path,
        challenges: ChallengeStore,
        *,
        clock: Callable[[], float] = time.time,
        max_concurrent: int = 4,
        on_stored: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._settings = settings
        self._certs_dir = data_dir / "certs"
        self._clock = clock
        self._acme_dir = data_dir / "acme"
        self._challenges = challenges
        self._issuer_instance: Issuer | None = None
        self._hosts: dict[str, _Host] = {}
        self._semaphore = asyncio.Semaphore(max(1, max_concurrent))
        self._account_lock = asyncio.Lock()
        self._account: Account | None = None
        self._wake = asyncio.Event()
        self._rescan = True  # re-read the disk at the next loop turn
        self._next_check = 0.0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        # Awaited after a certificate is written and before its host is reported valid: tako-server makes
        # every process serving HTTPS re-read it, so no client is shown the fallback once it is reported.
        self._on_stored = on_stored

    @property
    def _issuer(self) -> Issuer:
        """The ACME client side, imported on first use: the `acme`, `josepy` and `requests` libraries
        cost about 9 MB of memory that an idle server with no routed host should not pay."""
        if self._issuer_instance is None:
            from tako.server.tls.acme_issuer import AcmeIssuer

            self._issuer_instance = AcmeIssuer(
                self._settings, self._acme_dir, self._certs_dir, self._challenges
            )
        return self._issuer_instance

    # -- API used by the daemon ------------------------------------------------------------------

    def set_hosts(self, hosts: Iterable[str]) -> None:
        """Declare the routed hosts. New hosts are queued; dropped hosts stop being tracked (files stay)."""
        wanted = {h.strip().lower().rstrip(".") for h in hosts if h.strip()}
        for name in list(self._hosts):
            if name not in wanted:
                record = self._hosts.pop(name)
                self._cancel(record)
        for name in sorted(wanted - self._hosts.keys()):
            self._hosts[name] = _Host(name)
        self._rescan = True
        self._wake.set()

    def retry_now(self, hosts: Iterable[str] | None = None) -> None:
        """Forget the backoff of failed hosts (all, or those named), unless the CA asked us to wait."""
        names = set(self._hosts) if hosts is None else set(hosts)
        now = self._clock()
        for name in names:
            record = self._hosts.get(name)
            if record is not None and record.state is HostState.FAILED and record.next_attempt is not None:
                record.next_attempt = max(now, record.hold_until or now)
        self._wake.set()

    async def start(self) -> None:
        self._stopping = False
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="tako-acme")

    async def stop(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        attempts = [r.task for r in self._hosts.values() if r.task is not None]
        for record in self._hosts.values():
            self._cancel(record)
        if task is not None:
            task.cancel()
        # Worker threads notice the cancel flag at their next poll; we do not wait for them.
        await asyncio.gather(*attempts, *([task] if task else []), return_exceptions=True)

    def status(self) -> dict[str, dict[str, Any]]:
        """Per host: state, not_after, last_error, next_attempt (ISO 8601 UTC or None), failures in a row."""
        return {
            name: {
                "state": r.state.value,
                "not_after": iso_utc(r.not_after),
                "last_error": r.last_error,
                "next_attempt": iso_utc(r.next_attempt) if r.state is HostState.FAILED else None,
                "failures": r.failures,
            }
            for name, r in sorted(self._hosts.items())
        }

    # -- background loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._turn()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must survive anything: a dead loop means silent expiry
                log.exception("acme: unexpected error in the certificate loop")
                self._rescan = True
                await asyncio.sleep(min(self._settings.retry_max, 60.0))
                continue
            timeout = self._wait_time()
            self._wake.clear()
            if self._rescan:
                continue
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that races the event.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _turn(self) -> None:
        now = self._clock()
        full_check = now >= self._next_check
        if full_check or self._rescan:
            self._rescan = False
            await self._reconcile(now)
            if full_check:
                self._next_check = now + max(1.0, self._settings.check_interval)
        self._launch_due()

    def _wait_time(self) -> float:
        now = self._clock()
        wake_at = self._next_check
        for r in self._hosts.values():
            if r.task is None and r.next_attempt is not None:
                wake_at = min(wake_at, r.next_attempt)
        return max(0.0, wake_at - now)

    async def _reconcile(self, now: float) -> None:
        """Re-read certs/ and set each idle host's state and next attempt from what is there."""
        names = [n for n, r in self._hosts.items() if r.task is None]
        if not names:
            return
        renew_before = self._settings.renew_before_days * 86400.0
        found = await asyncio.to_thread(
            renewal.assess, names, self._certs_dir, now=now, renew_before=renew_before
        )
        for name, a in found.items():
            record = self._hosts.get(name)
            if record is None or record.task is not None:
                continue  # dropped or started while we were reading the disk
            record.not_after = a.not_after
            if a.skipped is not None:
                self._set_state(record, HostState.SKIPPED, error=a.skipped)
                record.next_attempt = None
            elif a.user_managed:
                self._set_state(record, HostState.USER_MANAGED, error=a.note)
                record.next_attempt = None
                record.failures = 0
            elif a.need is renewal.Need.NOTHING:
                self._set_state(record, HostState.VALID)
                record.next_attempt = None
                record.failures = 0
            elif not self._settings.enabled:
                self._set_state(
                    record,
                    HostState.VALID if a.need is renewal.Need.RENEW else HostState.DISABLED,
                    error="ACME is disabled ([acme] enabled = false in server-config.toml)",
                )
                record.next_attempt = None
            elif record.state is HostState.FAILED and record.next_attempt is not None:
                pass  # keep the backoff schedule
            else:
                if record.state is not HostState.VALID or a.need is renewal.Need.ISSUE:
                    self._set_state(record, HostState.PENDING, error=record.last_error)
                record.next_attempt = now

    def _launch_due(self) -> None:
        if not self._settings.enabled:
            return
        now = self._clock()
        for record in self._hosts.values():
            if record.task is None and record.next_attempt is not None and record.next_attempt <= now:
                record.next_attempt = None
                record.cancel = threading.Event()
                record.task = asyncio.create_task(self._attempt(record), name=f"tako-acme-{record.name}")

    async def _attempt(self, record: _Host) -> None:
        cancel = record.cancel
        assert cancel is not None
        try:
            async with self._semaphore:
                if cancel.is_set():
                    return
                self._set_state(record, HostState.ISSUING, error=record.last_error)
                account = await self._ensure_account()
                not_after = await _in_daemon_thread(self._issuer.issue, record.name, account, cancel)
        except asyncio.CancelledError:
            cancel.set()
            raise
        except AcmeError as exc:
            if exc.account_invalid:
                self._account = None
            self._failed(record, str(exc), exc.retry_after)
        except Exception as exc:  # a bug or an unforeseen library error must not stop retries
            log.exception("acme: unexpected error issuing for %s", record.name)
            self._failed(record, f"unexpected error: {exc!r}", None)
        else:
            await self._announce_stored(record.name)
            record.not_after = not_after
            record.failures = 0
            record.next_attempt = None
            self._set_state(record, HostState.VALID)
        finally:
            record.task = None
            record.cancel = None
            self._wake.set()

    async def _announce_stored(self, name: str) -> None:
        if self._on_stored is None:
            return
        try:
            await self._on_stored(name)
        except Exception:  # the certificate is on disk: every process reads it within a second anyway
            log.exception("acme: telling the proxy about the certificate for %s failed", name)

    def _failed(self, record: _Host, error: str, retry_after: float | None) -> None:
        record.failures += 1
        delay = min(self._settings.retry_max, self._settings.retry_initial * 2 ** (record.failures - 1))
        now = self._clock()
        record.hold_until = None
        if retry_after is not None:
            delay = max(delay, retry_after)  # the CA's rate limit wins over our cap
            record.hold_until = now + retry_after
        record.next_attempt = now + delay
        self._set_state(record, HostState.FAILED, error=error)
        self._rescan = True  # the user may have placed a certificate meanwhile: look again

    async def _ensure_account(self) -> Account:
        async with self._account_lock:
            if self._account is None:
                # `self._issuer` is read in the thread: its first use imports the ACME libraries (~0.2 s),
                # which must not stall the event loop (and with it the proxy). Issuance always follows this.
                self._account = await _in_daemon_thread(lambda: self._issuer.account())
            return self._account

    def _set_state(self, record: _Host, state: HostState, *, error: str | None = None) -> None:
        changed = record.state is not state or record.last_error != error
        previous = record.state
        record.state = state
        record.last_error = error
        if changed:
            log.log(
                logging.WARNING if state is HostState.FAILED else logging.INFO,
                "acme: %s %s -> %s%s",
                record.name,
                previous.value,
                state.value,
                f" ({error})" if error else "",
                extra={"host": record.name, "state": state.value, "error": error},
            )

    @staticmethod
    def _cancel(record: _Host) -> None:
        if record.cancel is not None:
            record.cancel.set()
        if record.task is not None:
            record.task.cancel()


__all__ = ["AcmeError", "AcmeManager", "ChallengeStore", "HostState"]
