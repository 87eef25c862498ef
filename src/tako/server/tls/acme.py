"""Automatic certificates: ACME HTTP-01 issuance and renewal in the background, per-host state and backoff.

`AcmeManager` decides when to act (hosts routed, certificates on disk, retry schedule); `_Issuer` talks
to the CA with the synchronous `acme` library in worker threads. Nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email.utils
import enum
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import certifi
import requests
from acme import challenges as acme_challenges
from acme import client as acme_client
from acme import crypto_util, messages
from acme import errors as acme_errors
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.jwa import ES256
from josepy.jwk import JWKEC

from tako import __version__
from tako.config.server import AcmeSettings
from tako.errors import TakoError
from tako.server.tls import renewal
from tako.server.tls.challenges import ChallengeStore

log = logging.getLogger("tako.acme")

NETWORK_TIMEOUT = 30  # seconds per HTTP request to the CA
ORDER_TIMEOUT = 90.0  # seconds from new order to downloaded certificate


class HostState(enum.Enum):
    PENDING = "pending"  # needs a certificate; an attempt is queued
    ISSUING = "issuing"  # an order is in flight (first issuance or renewal)
    VALID = "valid"  # a managed certificate is on disk and outside the renewal window
    FAILED = "failed"  # the last attempt failed; next_attempt says when it is retried
    USER_MANAGED = "user-managed"  # a certificate the user placed in certs/ serves this host
    SKIPPED = "skipped"  # no ACME certificate possible (IP, localhost...): last_error says why
    DISABLED = "disabled"  # [acme] enabled = false and no certificate on disk


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


@dataclass(frozen=True)
class _Account:
    key: JWKEC
    regr: messages.RegistrationResource


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return (
        datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


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
    ) -> None:
        self._settings = settings
        self._certs_dir = data_dir / "certs"
        self._clock = clock
        self._issuer = _Issuer(settings, data_dir / "acme", self._certs_dir, challenges)
        self._hosts: dict[str, _Host] = {}
        self._semaphore = asyncio.Semaphore(max(1, max_concurrent))
        self._account_lock = asyncio.Lock()
        self._account: _Account | None = None
        self._wake = asyncio.Event()
        self._rescan = True  # re-read the disk at the next loop turn
        self._next_check = 0.0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

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
                "not_after": _iso(r.not_after),
                "last_error": r.last_error,
                "next_attempt": _iso(r.next_attempt) if r.state is HostState.FAILED else None,
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
                not_after = await asyncio.to_thread(self._issuer.issue, record.name, account, cancel)
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
            record.not_after = not_after
            record.failures = 0
            record.next_attempt = None
            self._set_state(record, HostState.VALID)
        finally:
            record.task = None
            record.cancel = None
            self._wake.set()

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

    async def _ensure_account(self) -> _Account:
        async with self._account_lock:
            if self._account is None:
                self._account = await asyncio.to_thread(self._issuer.account)
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


class _Network(acme_client.ClientNetwork):
    """ClientNetwork that remembers the last Retry-After header (the library drops it on errors)."""

    last_retry_after: str | None = None

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        response = super()._send_request(method, url, *args, **kwargs)
        self.last_retry_after = response.headers.get("Retry-After")
        return response


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, (when - datetime.datetime.now(datetime.UTC)).total_seconds())


class _Issuer:
    """The blocking half: account key and registration, orders, challenges, files. Runs in threads."""

    def __init__(self, settings: AcmeSettings, acme_dir: Path, certs_dir: Path, challenges: ChallengeStore):
        self._settings = settings
        self._acme_dir = acme_dir
        self._certs_dir = certs_dir
        self._challenges = challenges
        self._directory_url = settings.effective_directory
        self._key_lock = threading.Lock()
        # Serialises certificate writes: a cancelled attempt still running in its thread must never
        # interleave its key/fullchain renames with a newer attempt for the same host.
        self._write_lock = threading.Lock()

    # -- account ---------------------------------------------------------------------------------

    def account(self) -> _Account:
        """Load or create the account key, then register it (or find the existing registration)."""
        key = self._account_key()
        net = self._network(key, None)
        client = self._client(net)
        contact = (f"mailto:{self._settings.email}",) if self._settings.email else ()
        new_reg = messages.NewRegistration(contact=contact, terms_of_service_agreed=True)
        try:
            try:
                regr = client.new_account(new_reg)
            except acme_errors.ConflictError as exc:
                # Same key already registered with this CA: the library reports its URL this way.
                regr = messages.RegistrationResource(uri=exc.location, body=messages.Registration())
                net.account = regr
                if contact:
                    regr = client.query_registration(regr)
                    if tuple(regr.body.contact) != contact:
                        regr = client.update_registration(regr, regr.body.update(contact=contact))
        except Exception as exc:
            raise self._translate(exc, net, "registering the ACME account") from exc
        self._save_registration(regr)
        log.info("acme: account %s at %s", regr.uri, self._directory_url)
        return _Account(key=key, regr=regr)

    def _account_key(self) -> JWKEC:
        path = self._acme_dir / "account.key"
        with self._key_lock:
            self._acme_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                pem = path.read_bytes()
            except FileNotFoundError:
                key = ec.generate_private_key(ec.SECP256R1())
                pem = key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                renewal._write_atomic(path, pem)
                log.info("acme: created account key %s", path)
            except OSError as exc:
                raise AcmeError(
                    f"cannot read the ACME account key {path}: {exc.strerror}",
                    hint="check the permissions of the data directory",
                ) from exc
        loaded = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise AcmeError(
                f"{path} is not an EC private key",
                hint="move it away; Tako creates a new account key on the next attempt",
            )
        return JWKEC(key=loaded)

    def _save_registration(self, regr: messages.RegistrationResource) -> None:
        path = self._acme_dir / "account.json"
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                data = {}
        except (OSError, ValueError):
            data = {}
        data[self._directory_url] = {"uri": regr.uri, "body": regr.body.to_json()}
        renewal._write_atomic(path, json.dumps(data, indent=2, sort_keys=True).encode() + b"\n")

    # -- issuance --------------------------------------------------------------------------------

    def issue(self, host: str, account: _Account, cancel: threading.Event) -> float:
        """Obtain and store a certificate for `host`; return its notAfter (epoch seconds)."""
        net = self._network(account.key, account.regr)
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        csr_pem = crypto_util.make_csr(key_pem, [host])
        tokens: list[str] = []
        try:
            client = self._client(net)
            deadline = time.monotonic() + ORDER_TIMEOUT
            order = client.new_order(csr_pem)
            for authzr in order.authorizations:
                if authzr.body.status == messages.STATUS_VALID:
                    continue  # the CA reuses a recent validation
                challb = self._http01(host, authzr)
                response, validation = challb.response_and_validation(account.key)
                token = challb.chall.encode("token")
                self._challenges.set(token, validation)
                tokens.append(token)
                client.answer_challenge(challb, response)
            for authzr in order.authorizations:
                self._wait_authorization(client, host, authzr, deadline, cancel)
            if cancel.is_set():
                raise AcmeError(f"issuance for {host} was cancelled")
            remaining = max(1.0, deadline - time.monotonic())
            order = client.finalize_order(
                order, datetime.datetime.now() + datetime.timedelta(seconds=remaining)
            )
        except AcmeError:
            raise
        except Exception as exc:
            raise self._translate(exc, net, f"issuing a certificate for {host}") from exc
        finally:
            for token in tokens:
                self._challenges.remove(token)
        fullchain = order.fullchain_pem.encode()
        try:
            with self._write_lock:
                if cancel.is_set():
                    raise AcmeError(f"issuance for {host} was cancelled")
                renewal.write_managed(
                    self._certs_dir, host, fullchain, key_pem, directory_url=self._directory_url
                )
        except OSError as exc:
            raise AcmeError(
                f"cannot store the certificate for {host} in {self._certs_dir / host}: {exc}",
                hint="check the permissions of the data directory",
            ) from exc
        info = renewal.read_cert(self._certs_dir / host / renewal.FULLCHAIN)
        if info is None:
            raise AcmeError(f"the CA returned an unreadable certificate for {host}")
        log.info("acme: issued certificate for %s, valid until %s", host, _iso(info.not_after))
        return info.not_after

    @staticmethod
    def _http01(host: str, authzr: messages.AuthorizationResource) -> messages.ChallengeBody:
        for challb in authzr.body.challenges:
            if isinstance(challb.chall, acme_challenges.HTTP01):
                return challb
        offered = ", ".join(str(c.chall.typ) for c in authzr.body.challenges) or "none"
        raise AcmeError(f"the CA offers no HTTP-01 challenge for {host} (offered: {offered})")

    @staticmethod
    def _wait_authorization(
        client: acme_client.ClientV2,
        host: str,
        authzr: messages.AuthorizationResource,
        deadline: float,
        cancel: threading.Event,
    ) -> None:
        # Our own poll loop (the library's sleeps a fixed second and cannot be interrupted): short first
        # interval because validation is usually instant, growing to respect the CA.
        interval = 0.2
        while True:
            status = authzr.body.status
            if status == messages.STATUS_VALID:
                return
            if status not in (messages.STATUS_PENDING, messages.STATUS_PROCESSING):
                details = [str(c.error.detail or c.error) for c in authzr.body.challenges if c.error]
                raise AcmeError(
                    f"HTTP-01 validation of {host} failed: {'; '.join(details) or status}",
                    hint=f"{host} must resolve to this server and port 80 must reach tako-server",
                )
            if time.monotonic() >= deadline:
                raise AcmeError(f"the CA did not validate {host} within {ORDER_TIMEOUT:.0f} s")
            if cancel.wait(interval):
                raise AcmeError(f"issuance for {host} was cancelled")
            interval = min(interval * 2, 2.0)
            authzr, _ = client.poll(authzr)

    # -- plumbing --------------------------------------------------------------------------------

    def _verify(self) -> bool | str:
        """requests' `verify`: the default trust store, plus the configured extra CA if any."""
        extra = self._settings.ca_bundle
        if not extra:
            return True
        try:
            extra_pem = Path(extra).read_bytes()
        except OSError as exc:
            raise AcmeError(
                f"cannot read [acme] ca_bundle {extra}: {exc.strerror}",
                hint="point ca_bundle at a readable PEM file or remove the setting",
            ) from exc
        # requests replaces the system store with `verify=path`; "extra" means both, so combine them.
        combined = Path(certifi.where()).read_bytes().rstrip(b"\n") + b"\n" + extra_pem
        path = self._acme_dir / "ca-bundle.pem"
        self._acme_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            if path.read_bytes() == combined:
                return str(path)
        except OSError:
            pass
        renewal._write_atomic(path, combined)
        return str(path)

    def _network(self, key: JWKEC, regr: messages.RegistrationResource | None) -> _Network:
        net = _Network(
            key,
            account=regr,
            alg=ES256,
            verify_ssl=self._verify(),  # type: ignore[arg-type]  # requests accepts a CA path
            user_agent=f"tako/{__version__}",
            timeout=NETWORK_TIMEOUT,
        )
        return net

    def _client(self, net: _Network) -> acme_client.ClientV2:
        try:
            directory = acme_client.ClientV2.get_directory(self._directory_url, net)
        except Exception as exc:
            raise self._translate(exc, net, "fetching the ACME directory") from exc
        return acme_client.ClientV2(directory, net)

    def _translate(self, exc: Exception, net: _Network, doing: str) -> AcmeError:
        url = self._directory_url
        if isinstance(exc, AcmeError):
            return exc
        if isinstance(exc, requests.exceptions.SSLError):
            return AcmeError(
                f"TLS error talking to the ACME server {url} while {doing}: {_root_cause(exc)}",
                hint="for a private or test CA, set [acme] ca_bundle to its CA certificate",
            )
        if isinstance(exc, requests.exceptions.RequestException):
            return AcmeError(
                f"cannot reach the ACME server {url} while {doing}: {_root_cause(exc)}",
                hint="check the server's outbound network and [acme] directory_url",
            )
        if isinstance(exc, messages.Error):
            retry_after = _parse_retry_after(net.last_retry_after) if exc.code == "rateLimited" else None
            detail = exc.detail or exc.title or exc.typ
            return AcmeError(
                f"the ACME server refused {doing}: {detail} ({exc.code or exc.typ})",
                retry_after=retry_after,
                account_invalid=exc.code in ("accountDoesNotExist", "unauthorized"),
            )
        if isinstance(exc, acme_errors.IssuanceError):
            return AcmeError(f"the ACME server refused {doing}: {exc.error.detail or exc.error}")
        if isinstance(exc, acme_errors.TimeoutError):
            return AcmeError(f"the ACME server did not finish {doing} within {ORDER_TIMEOUT:.0f} s")
        if isinstance(exc, acme_errors.Error | ValueError):
            return AcmeError(f"ACME error while {doing}: {exc or type(exc).__name__}")
        if isinstance(exc, OSError):
            return AcmeError(f"system error while {doing}: {exc}")
        raise exc


def _root_cause(exc: BaseException) -> str:
    """The innermost readable reason (requests nests urllib3 errors three deep)."""
    seen: set[int] = set()
    current: BaseException = exc
    while id(current) not in seen:
        seen.add(id(current))
        nxt = current.__cause__ or current.__context__
        if nxt is None and current.args and isinstance(current.args[0], BaseException):
            nxt = current.args[0]
        if nxt is None:
            break
        current = nxt
    reason = getattr(current, "reason", None)
    text = str(reason if isinstance(reason, BaseException) else current)
    return text or type(current).__name__


__all__ = ["AcmeError", "AcmeManager", "ChallengeStore", "HostState"]
