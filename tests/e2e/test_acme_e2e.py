"""End to end: automatic HTTPS on testbed hosts, certificates from a real Pebble (real HTTP-01 on port 80).

Issuance after a deploy, HTTP->HTTPS redirects with /_tako/status kept on HTTP, one certificate per host
next to a user's wildcard, renewal at startup served without a restart, a CA that is down (refused) or hung
(accepts, never answers): deploys succeed on the fallback certificate and issuance resumes.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from tests.e2e.conftest import TakoCLI, user_ssh_env
from tests.support.acme_testbed import (
    AcmeOptions,
    control_status,
    host_certs_dir,
    pebble_for,
    place_managed,
    place_wildcard,
    read_files,
    served_certificate,
    served_der_unverified,
)
from tests.support.pebble import Pebble
from tests.support.projects import body_and_status, commit_all, curl, make_project, wait_for
from tests.support.testbed import Host, Testbed

pytestmark = pytest.mark.e2e

NAMES = ("acme1", "acme2", "acme3", "acme4", "acme5", "acme6")
ISSUE_TIMEOUT = 60.0  # bounded wait for a certificate (Pebble issues in ~2 s here)


@pytest.fixture(scope="module")
def hosts(testbed: Testbed) -> dict[str, Host]:
    """One fresh host per test (brought up together): no test sees another's apps or certificates."""
    return {h.name: h for h in testbed.up(*NAMES)}


def ssh_env(host: Host) -> dict[str, str]:
    return user_ssh_env(host)


def add_server(tako: TakoCLI, host: Host) -> None:
    tako.ok("servers", "add", host.address, "--name", host.name, env=ssh_env(host))


def deploy(tako: TakoCLI, host: Host, project: Path) -> str:
    out = tako.ok("deploy", "--yes", cwd=project, env=ssh_env(host)).stdout
    assert "1/1 server(s) succeeded" in out, out
    return out


def with_routes(project: Path, routes: list[str]) -> None:
    """Give the project's production env several routes (make_project writes one)."""
    toml = project / "tako.toml"
    text = toml.read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("route = "))
    toml.write_text(text.replace(line, "routes = " + json.dumps(routes)))
    commit_all(project, "routes")


def _location(headers: str) -> str:
    found = (ln.split(":", 1)[1].strip() for ln in headers.splitlines() if ln.lower().startswith("location:"))
    return next(found, "")


def http_status_doc(host: Host, name: str) -> tuple[int, dict[str, Any], str]:
    """GET http://<name>/_tako/status on the host: status code, JSON body, and Location (if any)."""
    result = curl(host.address, name, "/_tako/status", https=False, extra=("-D", "-"))
    _, status = body_and_status(result)
    headers, _, rest = result.stdout.partition("\n\n")  # curl's output is read in text mode
    body = rest.rpartition("\nHTTP ")[0]
    doc: dict[str, Any] = json.loads(body) if body.strip().startswith("{") else {}
    return status, doc, _location(headers)


def http_redirect(host: Host, name: str, path: str) -> tuple[int, str]:
    """Plain HTTP GET of `path` on `name`: status code and Location header."""
    result = curl(host.address, name, path, https=False, extra=("-D", "-", "-o", "/dev/null"))
    return body_and_status(result)[1], _location(result.stdout)


def certificate_state(host: Host, name: str) -> dict[str, Any]:
    _, doc, _ = http_status_doc(host, name)
    certs: dict[str, Any] = doc.get("certificates", {})
    return dict(certs.get(name, {}))


def wait_state(host: Host, name: str, state: str, *, timeout: float = ISSUE_TIMEOUT) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def check() -> bool:
        nonlocal seen
        seen = certificate_state(host, name)
        return seen.get("state") == state

    try:
        wait_for(check, timeout=timeout, what=f"{name} in state {state}", interval=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last status for {name}: {seen}\n{server_log(host)}") from None
    return seen


def verifies(host: Host, name: str, root: Path) -> bool:
    try:
        served_certificate(host.address, name, root)
    except (ssl.SSLError, OSError):
        return False
    return True


def wait_verified(host: Host, name: str, root: Path, *, timeout: float = ISSUE_TIMEOUT) -> None:
    try:
        wait_for(lambda: verifies(host, name, root), timeout=timeout, what=f"{name} verified", interval=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; status: {certificate_state(host, name)}\n{server_log(host)}") from None


def server_log(host: Host) -> str:
    return host.exec("tail -n 30 /opt/tako/logs/tako-server.log").stdout


def write_root(pebble: Pebble, path: Path) -> Path:
    """Pebble's current root (a new one at every Pebble start) in a file curl and ssl can read."""
    path.write_bytes(pebble.root_pem())
    return path


@pytest.fixture
def pebble_dir(tmp_path: Path) -> Path:
    return tmp_path / "pebble"


# -- issuance, redirect, status -----------------------------------------------------------------------


def test_deploy_gets_a_verified_certificate_redirects_and_status_on_http(
    hosts: dict[str, Host], tako: TakoCLI, tmp_path: Path, pebble_dir: Path
) -> None:
    host = hosts["acme1"]
    route = "hello.tako.test"
    with pebble_for(host, pebble_dir) as pebble:
        pebble.add_a(route, host.address)
        root = write_root(pebble, tmp_path / "root.pem")
        add_server(tako, host)
        deploy(tako, host, make_project(tmp_path, route=route, servers={host.name: "production"}))

        # Verified against Pebble's root (no -k), SNI hello.tako.test, within a bounded wait.
        wait_verified(host, route, root)
        body, code = body_and_status(curl(host.address, route, "/", cacert=str(root)))
        assert code == 200 and "Hello" in body, body
        served = served_certificate(host.address, route, root)
        assert served.san == (route,)

        # Plain HTTP: 301 to the HTTPS URL, path and query kept.
        code, location = http_redirect(host, route, "/some/path?q=1&r=two")
        assert (code, location) == (301, f"https://{route}/some/path?q=1&r=two")

        # /_tako/status stays on HTTP (no redirect) and shows the certificate.
        status, doc, location = http_status_doc(host, route)
        assert status == 200 and location == "" and route in doc["certificates"], (status, location, doc)
        # "valid" once every data-plane process serves it: the process curl reached may have had it first.
        cert = wait_state(host, route, "valid")
        assert cert["last_error"] is None, cert
        assert cert["not_after"] is not None

        # The control API's status names it too.
        reply = control_status(host, "hello")
        assert reply["status"] == "ok", reply
        assert reply["data"]["certificates"][route]["state"] == "valid", reply

        # Files: Tako's (marker), key 0600.
        modes = host.exec(
            f"stat -c '%a %U %n' /opt/tako/certs/{route}/privkey.pem /opt/tako/acme/account.key"
        )
        assert [ln.split()[0] for ln in modes.stdout.splitlines()] == ["600", "600"], modes.stdout
        assert (host_certs_dir(host) / route / ".managed").exists()


# -- one certificate per host; a user's wildcard served and left alone ------------------------------------


def test_two_hosts_get_their_own_certificates_and_a_user_wildcard_is_kept(
    hosts: dict[str, Host], tako: TakoCLI, tmp_path: Path, pebble_dir: Path
) -> None:
    host = hosts["acme2"]
    user_ca = trustme.CA()
    wildcard = place_wildcard(host, "wild.tako.test", user_ca)
    wildcard_dir = host_certs_dir(host) / "_wildcard.wild.tako.test"
    before = read_files(wildcard_dir)
    before_mtimes = {p.name: p.stat().st_mtime_ns for p in wildcard_dir.iterdir()}
    assert before == wildcard
    with pebble_for(host, pebble_dir) as pebble:
        pebble.add_a("one.tako.test", host.address)
        pebble.add_a("two.tako.test", host.address)
        # The wildcard hosts resolve too: if Tako asked for them, Pebble would issue (and the test fail).
        pebble.add_a("a.wild.tako.test", host.address)
        pebble.add_a("b.wild.tako.test", host.address)
        root = write_root(pebble, tmp_path / "root.pem")
        user_root = tmp_path / "user-root.pem"
        user_ca.cert_pem.write_to_path(str(user_root))
        add_server(tako, host)

        one = make_project(tmp_path, name="one", route="one.tako.test", servers={host.name: "production"})
        two = make_project(tmp_path, name="two", route="two.tako.test", servers={host.name: "production"})
        with_routes(two, ["two.tako.test", "a.wild.tako.test", "b.wild.tako.test"])
        deploy(tako, host, one)
        deploy(tako, host, two)

        wait_verified(host, "one.tako.test", root)
        wait_verified(host, "two.tako.test", root)
        first = served_certificate(host.address, "one.tako.test", root)
        second = served_certificate(host.address, "two.tako.test", root)
        assert first.san == ("one.tako.test",) and second.san == ("two.tako.test",)
        assert first.der != second.der
        for name in ("one.tako.test", "two.tako.test"):
            body, code = body_and_status(curl(host.address, name, cacert=str(root)))
            assert code == 200 and "Hello" in body

        # The wildcard hosts: the user's certificate, verified against the user's CA, and the app behind it.
        for name in ("a.wild.tako.test", "b.wild.tako.test"):
            served = served_certificate(host.address, name, user_root)
            assert served.san == ("*.wild.tako.test",)
            body, code = body_and_status(curl(host.address, name, cacert=str(user_root)))
            assert code == 200 and "Hello" in body
            state = certificate_state(host, name)
            assert state["state"] == "user-managed" and state["last_error"] is None, state

        # Tako wrote no certificate of its own for them, and the user's files are byte-identical.
        certs = sorted(p.name for p in host_certs_dir(host).iterdir())
        assert certs == ["_wildcard.wild.tako.test", "one.tako.test", "two.tako.test"], certs
        assert read_files(wildcard_dir) == before
        assert {p.name: p.stat().st_mtime_ns for p in wildcard_dir.iterdir()} == before_mtimes


# -- renewal at startup ---------------------------------------------------------------------------------


@contextlib.contextmanager
def paused(pebble: Pebble) -> Iterator[None]:
    """Pebble SIGSTOPped for the block: the kernel still accepts connections, nothing answers (a hung CA)."""
    proc = pebble._pebble  # the rig exposes no pid; it is our own child process
    assert proc is not None and proc.poll() is None
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(proc.pid, signal.SIGCONT)


def keepalive_connection(host: Host, name: str) -> http.client.HTTPConnection:
    """An HTTP/1.1 connection over TLS (SNI `name`, no verification) to the host; never reopened."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection((host.address, 443), timeout=10)
    conn = http.client.HTTPConnection(name, 443, timeout=10)
    conn.sock = ctx.wrap_socket(raw, server_hostname=name)
    conn.auto_open = 0  # a dropped connection must fail, not reconnect
    return conn


def get_on(conn: http.client.HTTPConnection) -> int:
    conn.request("GET", "/")
    response = conn.getresponse()
    response.read()
    return response.status


def test_expiring_certificate_renewed_at_startup_and_served_without_restart(
    hosts: dict[str, Host], tako: TakoCLI, tmp_path: Path, pebble_dir: Path
) -> None:
    host = hosts["acme3"]
    soon, later = "soon.tako.test", "later.tako.test"
    with pebble_for(host, pebble_dir) as pebble:
        pebble.add_a(soon, host.address)
        pebble.add_a(later, host.address)
        root = write_root(pebble, tmp_path / "root.pem")
        add_server(tako, host)
        project = make_project(tmp_path, name="renew", route=soon, servers={host.name: "production"})
        with_routes(project, [soon, later])
        deploy(tako, host, project)
        wait_state(host, soon, "valid")
        wait_state(host, later, "valid")

        # Certificates Tako issued earlier: one expiring in 10 days, one with 60 days left.
        host.exec(["tako-server-service", "stop"], user="tako", check=True)
        old_soon = place_managed(host, soon, days_left=10)
        old_later = place_managed(host, later, days_left=60)
        later_dir = host_certs_dir(host) / later
        later_files = read_files(later_dir)
        later_mtimes = {p.name: p.stat().st_mtime_ns for p in later_dir.iterdir()}

        # Hold Pebble (SIGSTOP) across the start so the renewal is still in flight when we first look:
        # the old certificate is served, then the renewed one on the same running server.
        with paused(pebble):
            host.exec(["tako-server-service", "start"], user="tako", check=True)
            server_pid = host.exec("cat /var/run/tako/tako-server.pid").stdout.strip()
            wait_state(host, soon, "issuing")
            # A keep-alive HTTPS connection opened before the renewal: it gets the old certificate and
            # must outlive the swap.
            conn = keepalive_connection(host, soon)
            old_leaf = x509.load_pem_x509_certificates(old_soon)[0]
            tls = conn.sock
            assert isinstance(tls, ssl.SSLSocket)
            assert tls.getpeercert(binary_form=True) == old_leaf.public_bytes(Encoding.DER)
            assert get_on(conn) == 200

        wait_verified(host, soon, root)
        assert get_on(conn) == 200 and conn.sock is tls, "the open connection was not dropped"
        conn.close()
        state = wait_state(host, soon, "valid")
        assert state["last_error"] is None
        assert host.exec("cat /var/run/tako/tako-server.pid").stdout.strip() == server_pid
        renewed = (host_certs_dir(host) / soon / "fullchain.pem").read_bytes()
        assert renewed != old_soon
        assert served_certificate(host.address, soon, root).san == (soon,)
        body, code = body_and_status(curl(host.address, soon, cacert=str(root)))
        assert code == 200 and "Hello" in body

        # The certificate with 60 days left: untouched on disk, still served, still Tako's.
        assert read_files(later_dir) == later_files
        assert {p.name: p.stat().st_mtime_ns for p in later_dir.iterdir()} == later_mtimes
        old_later_leaf = x509.load_pem_x509_certificates(old_later)[0]
        assert served_der_unverified(host.address, later) == old_later_leaf.public_bytes(Encoding.DER)
        assert certificate_state(host, later)["state"] == "valid"


# -- resilience: the CA unreachable ------------------------------------------------------------------------


def test_deploys_survive_an_unreachable_ca_and_issuance_resumes(
    hosts: dict[str, Host], tako: TakoCLI, tmp_path: Path, pebble_dir: Path
) -> None:
    host = hosts["acme4"]
    route = "outage.tako.test"
    with pebble_for(host, pebble_dir, AcmeOptions(retry_initial=1, retry_max=2)) as pebble:
        pebble.add_a(route, host.address)
        pebble.stop_pebble()  # the directory is now unreachable (connection refused)
        add_server(tako, host)
        deploy(
            tako, host, make_project(tmp_path, name="outage", route=route, servers={host.name: "production"})
        )

        # Served with the self-signed fallback meanwhile, the app reachable behind it.
        body, code = body_and_status(curl(host.address, route))
        assert code == 200 and "Hello" in body
        fallback = x509.load_der_x509_certificate(served_der_unverified(host.address, route))
        assert fallback.issuer == fallback.subject  # self-signed
        san = fallback.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert route in san.get_values_for_type(x509.DNSName)

        # The error is visible: /_tako/status and the control API's status.
        failed = wait_state(host, route, "failed")
        assert "cannot reach the ACME server" in str(failed["last_error"]), failed
        assert failed["next_attempt"] is not None and failed["failures"] >= 1
        reply = control_status(host, "outage")
        cert = reply["data"]["certificates"][route]
        assert cert["state"] in ("failed", "issuing") and "ACME server" in str(cert["last_error"]), cert

        # A redeploy while the CA is still down succeeds too.
        project = tmp_path / "outage"
        (project / "note.txt").write_text("v2\n")
        commit_all(project, "v2")
        deploy(tako, host, project)

        # The CA is back (with a new root): the next retry issues, served at once.
        pebble.start_pebble()
        root = write_root(pebble, tmp_path / "root.pem")
        wait_verified(host, route, root)
        state = wait_state(host, route, "valid")
        assert state["last_error"] is None and state["failures"] == 0, state
        body, code = body_and_status(curl(host.address, route, cacert=str(root)))
        assert code == 200 and "Hello" in body


def test_a_ca_that_stops_answering_holds_neither_deploys_nor_restarts(
    hosts: dict[str, Host], tako: TakoCLI, tmp_path: Path, pebble_dir: Path
) -> None:
    host = hosts["acme5"]
    route = "hang.tako.test"
    with pebble_for(host, pebble_dir) as pebble:
        pebble.add_a(route, host.address)
        root = write_root(pebble, tmp_path / "root.pem")
        with paused(pebble):
            add_server(tako, host)
            project = make_project(tmp_path, name="hang", route=route, servers={host.name: "production"})
            deploy(tako, host, project)
            wait_state(host, route, "issuing")
            body, code = body_and_status(curl(host.address, route))
            assert code == 200 and "Hello" in body
            fallback = x509.load_der_x509_certificate(served_der_unverified(host.address, route))
            assert fallback.issuer == fallback.subject

            # A restart with an order stuck on the CA: tako-server stops by itself, it is not killed.
            restarted = host.exec(["tako-server-service", "restart"], user="tako", timeout=90)
            assert restarted.returncode == 0, restarted.stderr
            assert "did not stop" not in restarted.stdout + restarted.stderr, restarted.stderr

        wait_verified(host, route, root)
        assert wait_state(host, route, "valid")["last_error"] is None


# -- data-plane workers: a validation may reach any process ------------------------------------------------


def test_issuance_works_with_data_plane_workers(
    hosts: dict[str, Host], tako: TakoCLI, tmp_path: Path, pebble_dir: Path
) -> None:
    """With `[server] workers = 2`, Pebble's validation lands on the main process or a worker at random;
    the token must be there before the CA is told to validate."""
    host = hosts["acme6"]
    route = "workers.tako.test"
    options = AcmeOptions(retry_initial=1, retry_max=2, extra="[server]\nworkers = 2\n")
    with pebble_for(host, pebble_dir, options) as pebble:
        pebble.add_a(route, host.address)
        root = write_root(pebble, tmp_path / "root.pem")
        add_server(tako, host)
        deploy(tako, host, make_project(tmp_path, route=route, servers={host.name: "production"}))
        wait_verified(host, route, root)
        assert certificate_state(host, route)["failures"] == 0, certificate_state(host, route)
        # Each process notices the new files on disk on its own (within about a second), so a connection
        # that lands on the other process may still get the fallback for a moment: wait for both.
        answers: list[tuple[str, int]] = []

        def served_verified_ten_times_in_a_row() -> bool:
            answers.append(body_and_status(curl(host.address, route, "/", cacert=str(root))))
            return len(answers) >= 10 and all(code == 200 for _, code in answers[-10:])

        wait_for(
            served_verified_ten_times_in_a_row,
            timeout=ISSUE_TIMEOUT,
            what="verified HTTPS from every process",
        )
        body, code = answers[-1]
        assert code == 200 and "Hello" in body, body
