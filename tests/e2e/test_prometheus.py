"""End to end on one testbed host: a real Prometheus (the Debian package) scrapes tako-server's /metrics
listener on the host's own address, and the app's request count is read back from Prometheus's HTTP API;
`tako status` shows the same requests as the last minute's figures."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.e2e.conftest import TakoCLI, user_ssh_env
from tests.support.acme_testbed import SERVER_CONFIG, restart_server
from tests.support.processes import stop_process
from tests.support.projects import body_and_status, curl, make_project, wait_for
from tests.support.testbed import Host

pytestmark = pytest.mark.e2e

SERVER = "prom"
APP = "hello"
ROUTE = "hello.tako.test"
METRICS_PORT = 9898
REQUESTS = 25


@pytest.fixture(scope="module")
def exposed(host: Host) -> Iterator[Host]:
    """The host's tako-server with its metrics listener on the host's own address (restored after)."""
    saved = host.exec(f"cat {SERVER_CONFIG}").stdout
    listen = f'listen = "{host.address}:{METRICS_PORT}"\n'
    # The installer's config has a [metrics] table (its keys commented out): the setting goes into it.
    config = (
        saved.replace("[metrics]\n", "[metrics]\n" + listen)
        if "[metrics]\n" in saved
        else saved + "\n[metrics]\n" + listen
    )
    host.exec(f"cat > {SERVER_CONFIG} && chown tako:tako {SERVER_CONFIG}", input=config, check=True)
    try:
        restart_server(host)
        yield host
    finally:
        host.exec(f"cat > {SERVER_CONFIG} && chown tako:tako {SERVER_CONFIG}", input=saved, check=True)
        restart_server(host)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Prometheus:
    """`prometheus` on this machine, scraping one target every second; its data in `workdir`."""

    def __init__(self, workdir: Path, target: str) -> None:
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            f"scrape_configs:\n  - job_name: tako\n    static_configs:\n      - targets: ['{target}']\n"
        )
        binary = shutil.which("prometheus")
        assert binary, "prometheus is not installed (scripts/test installs the Debian package)"
        argv = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        self.log = open(workdir / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)

    def query(self, promql: str) -> list[dict[str, object]]:
        """The result vector of an instant query through Prometheus's HTTP API."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as resp:
            answer = json.load(resp)
        assert answer["status"] == "success", answer
        result: list[dict[str, object]] = answer["data"]["result"]
        return result

    def value(self, promql: str) -> float | None:
        """The query's one sample, or None while there is none."""
        try:
            result = self.query(promql)
        except OSError:
            return None  # not listening yet
        if not result:
            return None
        sample = result[0]["value"]
        assert isinstance(sample, list)
        return float(sample[1])

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


@pytest.fixture
def prometheus(exposed: Host, tmp_path: Path) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path, f"{exposed.address}:{METRICS_PORT}")
    try:
        yield server
    finally:
        server.stop()


def served(host: Host) -> float:
    """The app's requests as tako-server's /metrics counts them now (every status class)."""
    url = f"http://{host.address}:{METRICS_PORT}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "tako_http_requests_total" and sample.labels.get("app") == APP
    )


def test_prometheus_reads_back_the_apps_request_count(
    exposed: Host, cli: TakoCLI, prometheus: Prometheus, tmp_path: Path
) -> None:
    project = make_project(tmp_path, name=APP, route=ROUTE, servers={SERVER: "production"})
    cli.ok("deploy", "--yes", cwd=project, env=user_ssh_env(exposed))
    wait_for(
        lambda: prometheus.value('up{job="tako"}') == 1.0,
        timeout=60,
        what="Prometheus scraping tako-server's /metrics on the host's address",
    )
    requests = f'sum(tako_http_requests_total{{app="{APP}"}})'
    before = served(exposed)  # what the server counted so far (a deploy may probe its route), read direct
    for _ in range(REQUESTS):
        _, status = body_and_status(curl(exposed.address, ROUTE))
        assert status == 200
    expected = before + REQUESTS
    wait_for(
        lambda: prometheus.value(requests) == expected,
        timeout=30,
        what=f"Prometheus to read {expected:g} requests of {APP} (had {before:g})",
    )
    assert prometheus.value(f'sum(tako_http_requests_total{{app="{APP}",status_class="5xx"}})') == 0
    assert prometheus.value(f'tako_instances{{app="{APP}",state="healthy"}}') == 1
    assert prometheus.value(f'tako_deploys_total{{app="{APP}"}}') == 1

    status = cli.ok("status", env=user_ssh_env(exposed)).stdout
    line = next((ln for ln in status.splitlines() if ln.strip().startswith(f"{APP}: last")), "")
    assert "requests/s, 0.0% 5xx, p95 " in line, status
