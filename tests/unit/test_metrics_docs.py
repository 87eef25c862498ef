"""docs/metrics.md, the Grafana dashboard and the scrape config name what tako-server really exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from tako.server.apps.events import AppEvents
from tako.server.apps.instance import InstanceState
from tako.server.observe.metrics import render
from tako.server.observe.metrics_sources import MetricsSources
from tako.server.observe.traffic import TrafficCounters

DOCS = Path(__file__).resolve().parents[2] / "docs"
NAME = re.compile(r"\btako_[a-z_]+")


def exposed() -> tuple[set[str], set[str]]:
    """(family names as documented, every sample name) of a scrape with one app of each kind of figure."""
    counters = TrafficCounters()
    counters.for_app("web").finished(200, 0.01, 0.005, 100, 1000)
    app = SimpleNamespace(name="web", instances=[SimpleNamespace(state=InstanceState.HEALTHY)])
    sources = MetricsSources(
        traffic=counters.snapshot,
        apps=lambda: [app],
        events=lambda: {"web": AppEvents()},
        certificates=lambda: {"web.example.com": {"not_after": "2027-01-01T00:00:00Z"}},
        workers=lambda: [{"pid": 7, "restarts": 0}],
    )
    families = list(text_string_to_metric_families(render(sources).decode()))
    documented = {f.name + ("_total" if f.type == "counter" else "") for f in families}
    samples = {s.name for f in families for s in f.samples}
    return documented, samples


def test_the_docs_list_every_metric_and_only_those() -> None:
    documented, samples = exposed()
    text = (DOCS / "metrics.md").read_text()
    table = set(re.findall(r"^\| `(tako_[a-z_]+)`", text, re.M))
    assert table == documented
    assert set(NAME.findall(text)) <= samples | documented


def test_every_dashboard_query_reads_an_exposed_metric() -> None:
    _, samples = exposed()
    dashboard = json.loads((DOCS / "grafana" / "tako-dashboard.json").read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    used = {name for query in queries for name in NAME.findall(query)}
    assert used and used <= samples, used - samples


def test_the_scrape_config_names_the_default_port() -> None:
    assert ":9898" in (DOCS / "prometheus" / "scrape.yml").read_text()
