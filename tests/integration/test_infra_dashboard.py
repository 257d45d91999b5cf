"""infra/grafana/bookwire.json and infra/prometheus/prometheus.yml against what a running API exports.

Every metric name that a dashboard query uses must be one that `/metrics` or `/metrics/cluster` of a
live `bookwire api` exports, so a renamed metric breaks this test instead of a panel going blank.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from browser import private_redis
from conftest import running_api
from prometheus_client.parser import text_string_to_metric_families

INFRA = Path(__file__).resolve().parents[2] / "infra"
DASHBOARD = INFRA / "grafana" / "bookwire.json"
# What a series name in PromQL looks like here; functions, labels and keywords are not these.
METRIC_NAME = re.compile(r"\b((?:bookwire|process|python)_[a-z0-9_]+)\b")
SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "summary": ["_sum", "_count"]}


def exported_names(text: str) -> set[str]:
    """Every series name an exposition text has or will have once its labelled children exist."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, []))
        names.update(sample.name for sample in family.samples)
    return names


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    data_dir = tmp_path_factory.mktemp("dashboard")
    with private_redis(data_dir / "redis") as redis_url, running_api(data_dir, redis_url) as (url, _):
        with httpx.Client(base_url=url, timeout=10) as client:
            assert client.get("/health").status_code == 200  # a request, so the per-route children exist
            per_process = client.get("/metrics")
            cluster = client.get("/metrics/cluster")
    assert per_process.status_code == 200 and cluster.status_code == 200, (per_process.text, cluster.text)
    return exported_names(per_process.text) | exported_names(cluster.text)


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["panels"]
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    for panel in dashboard["panels"]:
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys(), panel["title"]
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"].strip("${}") in variables, panel["title"]  # no fixed datasource uid
        for target in panel["targets"]:
            assert METRIC_NAME.search(target["expr"]), target["expr"]
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]


def test_every_metric_the_dashboard_uses_is_exported(exported: set[str]) -> None:
    used = {name for expr in expressions(json.loads(DASHBOARD.read_text())) for name in METRIC_NAME.findall(expr)}
    missing = sorted(used - exported)
    assert not missing, f"the dashboard queries metrics that no API exports: {missing}"


def test_the_scrape_config_scrapes_both_endpoints() -> None:
    config = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    paths = {job["job_name"]: job.get("metrics_path", "/metrics") for job in config["scrape_configs"]}
    assert sorted(paths.values()) == ["/metrics", "/metrics/cluster"], paths
    cluster = next(job for job in config["scrape_configs"] if job["metrics_path"] == "/metrics/cluster")
    assert [len(group["targets"]) for group in cluster["static_configs"]] == [1], "cluster figures: one target"
