"""The blocking half of ACME issuance: account key and registration, orders, HTTP-01 challenges and
certificate files, with the `acme` library. Runs in worker threads; imported only when needed."""

from __future__ import annotations

import datetime
import email.utils
import json
import logging
import threading
import time
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
from tako.errors import AcmeError
from tako.fsutil import write_atomic
from tako.server.tls import renewal
from tako.server.tls.acme_base import NETWORK_TIMEOUT, ORDER_TIMEOUT, Account, iso_utc
from tako.server.tls.challenges import ChallengeStore

log = logging.getLogger("tako.acme")


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


class AcmeIssuer:
    """The blocking half: account key and registration, orders, challenges, files. Runs in threads.

    The manager's `acme_base.Issuer`."""

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

    def account(self) -> Account:
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
        return Account(key=key, regr=regr)

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
                write_atomic(path, pem, mode=0o600)
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
        write_atomic(path, json.dumps(data, indent=2, sort_keys=True).encode() + b"\n", mode=0o600)

    # -- issuance --------------------------------------------------------------------------------

    def issue(self, host: str, account: Account, cancel: threading.Event) -> float:
        """Obtain and store a certificate for `host`; return its notAfter (epoch seconds)."""
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fullchain = self._order(host, account, crypto_util.make_csr(key_pem, [host]), cancel)
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
        log.info("acme: issued certificate for %s, valid until %s", host, iso_utc(info.not_after))
        return info.not_after

    def _order(self, host: str, account: Account, csr_pem: bytes, cancel: threading.Event) -> bytes:
        """Order a certificate for the CSR, answer its HTTP-01 challenges; the PEM chain the CA issued."""
        net = self._network(account.key, account.regr)
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
        fullchain: bytes = order.fullchain_pem.encode()
        return fullchain

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
        write_atomic(path, combined, mode=0o600)
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
