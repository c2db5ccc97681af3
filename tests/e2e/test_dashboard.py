"""The Grafana dashboard and the scrape config use metric names the services actually export."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
METRIC_MODULES = ["tripwire.collector.metrics", "tripwire.rules.metrics", "tripwire.webhooks.metrics", "tripwire.webhooks.ssrf", "tripwire.sinks.metrics",
                  "tripwire.log.kafka"]


def exported_names() -> set[str]:
    for module in METRIC_MODULES:
        importlib.import_module(module)
    names = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        for suffix in ("_total", "_bucket", "_count", "_sum", "_created"):
            names.add(family.name + suffix)
    return names


def test_every_dashboard_query_names_an_exported_metric() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "tripwire.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\b(tripwire_[a-z_]+)", e)}
    assert used, "no tripwire_ metric in the dashboard"
    missing = sorted(used - exported_names())
    assert not missing, f"dashboard queries metrics nobody exports: {missing}"
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("ingest", "invalid", "lag", "trigger", "attempts by outcome", "sink"):
        assert topic in titles


def test_scrape_config_covers_every_service() -> None:
    text = (DEPLOY / "prometheus.yml").read_text()
    for job in ("collector", "engine", "dispatcher", "sink"):
        assert f"job_name: tripwire-{job}" in text
