"""The chart's side of the metrics (issue 18): metrics.access writes the site's metrics
block, the Secret's metrics-token and the services' LABLINK_METRICS_TOKEN, a Service port
named metrics on the backend, the tunnel service and the UserLab Manager; the
ServiceMonitor (monitoring.coreos.com/v1, which kubernetes-validate does not know: its
shape is checked here) and the Grafana dashboard's ConfigMap when enabled; the dashboard
itself asks only for the metrics of the contract.

The NetworkPolicy rows of the scraper are checked with the other callers in
tests/test_helm_chart.py (CALLERS).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import chart
from tests.helpers.chart import Obj

pytestmark = [pytest.mark.helm, pytest.mark.metrics]

DASHBOARD = chart.CHART / "files" / "grafana-dashboard.json"
COMPONENTS = {"backend": (8010, 8011), "tunnel": (8020, 8021), "userlab-manager": (8030, 8031)}
SITE_PORT_KEYS = {"backend": "backend", "tunnel": "tunnel", "userlab-manager": "userlab_manager"}
# every values case renders all three (the tunnel service only when enabled)
WITH_TUNNEL: dict[str, Any] = {"tunnel": {"enabled": True}}

OPERATIONS = chart.REPO / "docs" / "operations.md"


def contract() -> dict[str, str]:
    """The metrics of issue 18 and their types, from docs/operations.md's tables."""
    rows = re.findall(
        r"^\| `(lablink_\w+)` \| (gauge|counter|histogram) \|",
        OPERATIONS.read_text(encoding="utf-8"),
        flags=re.M,
    )
    return dict(rows)


# the metrics of the contract and their types
CONTRACT = contract()
# the series a query may name: a histogram's as _bucket, _sum and _count
SERIES = {
    f"{name}{suffix}"
    for name, kind in CONTRACT.items()
    for suffix in (("_bucket", "_sum", "_count") if kind == "histogram" else ("",))
}
# what the issue asks the dashboard to show
ASKED_FOR = ("lablink_labs", "lablink_lab_start_duration_seconds_bucket",
             "lablink_lab_failures_total", "lablink_vo_labs", "lablink_vo_labs_limit",
             "lablink_workshop_labs", "lablink_tunnel_link_up",
             "lablink_tunnel_reconnects_total", "lablink_tunnel_bytes_total",
             "lablink_userlab_pods", "lablink_driver_call_duration_seconds_bucket")  # fmt: skip
PROMQL_FUNCTIONS = {
    "sum", "max", "min", "avg", "count", "topk", "bottomk", "quantile", "stddev",
    "rate", "irate", "increase", "delta", "histogram_quantile", "clamp_min", "clamp_max",
    "abs", "round", "label_replace", "vector", "scalar", "time", "max_over_time",
    "min_over_time", "avg_over_time", "changes", "resets", "absent",
}  # fmt: skip
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                "and", "or", "unless", "offset"}  # fmt: skip


def render(values: dict[str, Any]) -> list[Obj]:
    return chart.render(chart.deep_merge(WITH_TUNNEL, values))


def ports_of(service: Obj) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in service["spec"]["ports"]}


# -- metrics.access -------------------------------------------------------------------


@pytest.mark.parametrize("access", ["token", "port", "off"])
def test_access_writes_the_site_secret_env_and_ports(access: str) -> None:
    objects = render({"metrics": {"access": access}})
    site = chart.rendered_site(objects)["metrics"]
    secret = chart.secret_data(chart.one(objects, "Secret", chart.SECRETS))
    assert site["access"] == access
    if access == "token":
        assert site == {"access": "token", "token_env": "LABLINK_METRICS_TOKEN"}
        assert len(secret["metrics-token"]) >= 16
    else:
        assert "metrics-token" not in secret
    if access == "port":
        assert site["bind"] == "0.0.0.0"
        assert site["ports"] == {SITE_PORT_KEYS[c]: p[1] for c, p in COMPONENTS.items()}
    for component, (api_port, metrics_port) in COMPONENTS.items():
        workload = chart.workloads(objects)
        [pod] = [w for w in workload if chart.name_of(w) == f"lablink-{component}"]
        container = chart.container_of(pod)
        env = chart.env_of(container)
        container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        service = ports_of(chart.one(objects, "Service", f"lablink-{component}"))
        if access == "token":
            assert chart.secret_ref(env["LABLINK_METRICS_TOKEN"]) == (
                chart.SECRETS,
                "metrics-token",
            )
            assert container_ports == {"http": api_port}
            assert service["metrics"]["targetPort"] == "http"
        else:
            assert "LABLINK_METRICS_TOKEN" not in env
        if access == "port":
            assert container_ports == {"http": api_port, "metrics": metrics_port}
            assert service["metrics"]["targetPort"] == "metrics"
        if access == "off":
            assert container_ports == {"http": api_port}
            assert "metrics" not in service
        else:
            assert service["metrics"]["port"] == metrics_port
    # only these three serve /metrics
    for other in ("lablink-hub", "lablink-proxy-public", "lablink-tunnel-forwards"):
        assert "metrics" not in ports_of(chart.one(objects, "Service", other))


@pytest.mark.parametrize("access", ["token", "port"])
def test_the_site_of_each_access_passes_lablink_check(
    access: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from backend.cli import main

    path = tmp_path / "site.yaml"
    path.write_text(chart.site_text(render({"metrics": {"access": access}})))
    assert main(["check", "--site", str(path), "--no-secrets"]) == 0, capsys.readouterr().err


def test_an_explicit_metrics_token_is_used_and_an_existing_secret_named() -> None:
    token = "explicit-metrics-token-" + "m" * 30
    objects = render({"secrets": {"metricsToken": token}})
    assert chart.secret_data(chart.one(objects, "Secret", chart.SECRETS))["metrics-token"] == token
    objects = render(
        {
            "secrets": {"existingSecret": "centre-secrets"},
            "metrics": {"serviceMonitor": {"enabled": True}},
        }
    )
    assert chart.find(objects, "Secret", chart.SECRETS) is None
    for component in COMPONENTS:
        [pod] = [w for w in chart.workloads(objects) if chart.name_of(w) == f"lablink-{component}"]
        env = chart.env_of(chart.container_of(pod))
        assert chart.secret_ref(env["LABLINK_METRICS_TOKEN"]) == ("centre-secrets", "metrics-token")
    monitor = chart.one(objects, "ServiceMonitor", "lablink-metrics")
    assert monitor["spec"]["endpoints"][0]["authorization"]["credentials"] == {
        "name": "centre-secrets",
        "key": "metrics-token",
    }


def test_a_short_metrics_token_fails_at_install() -> None:
    message = chart.render_error({"secrets": {"metricsToken": "short"}})
    assert "metricsToken" in message, message


# -- the ServiceMonitor ----------------------------------------------------------------


def selects_service(monitor: Obj, service: Obj) -> bool:
    spec = monitor["spec"]
    namespaces = spec["namespaceSelector"]["matchNames"]
    labels = (service.get("metadata") or {}).get("labels") or {}
    return chart.namespace_of(service) in namespaces and chart.selects(spec["selector"], labels)


def service_monitor_problems(monitor: Obj, objects: list[Obj], access: str) -> list[str]:
    """The shape of a monitoring.coreos.com/v1 ServiceMonitor (the fields of its CRD the
    chart uses) and what it scrapes: the port named metrics of exactly the three
    Services, with the bearer token of the Secret when access is token."""
    problems = []
    if monitor.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append(f"apiVersion {monitor.get('apiVersion')}")
    spec = monitor.get("spec") or {}
    known = {"jobLabel", "namespaceSelector", "selector", "endpoints"}
    if set(spec) - known:
        problems.append(f"unknown spec fields {set(spec) - known}")
    endpoints = spec.get("endpoints") or []
    if len(endpoints) != 1:
        return [*problems, f"endpoints {endpoints}"]
    [endpoint] = endpoints
    allowed = {"port", "path", "scheme", "interval", "authorization"}
    if set(endpoint) - allowed:
        problems.append(f"unknown endpoint fields {set(endpoint) - allowed}")
    if endpoint.get("port") != "metrics" or endpoint.get("path") != "/metrics":
        problems.append(f"endpoint {endpoint}")
    if not re.fullmatch(r"(\d+h)?(\d+m)?(\d+s)?(\d+ms)?", str(endpoint.get("interval"))):
        problems.append(f"interval {endpoint.get('interval')!r} is no Prometheus duration")
    auth = endpoint.get("authorization")
    if access == "token":
        credentials = (auth or {}).get("credentials") or {}
        if (auth or {}).get("type") != "Bearer" or set(credentials) != {"name", "key"}:
            problems.append(f"authorization {auth}")
        elif credentials["key"] != "metrics-token":
            problems.append(f"authorization key {credentials['key']}")
        secret = chart.find(objects, "Secret", credentials.get("name", ""))
        if secret is not None and "metrics-token" not in chart.secret_data(secret):
            problems.append(f"Secret {credentials.get('name')} has no metrics-token")
    elif auth is not None:
        problems.append(f"authorization with access {access}: {auth}")
    scraped = {
        chart.name_of(s)
        for s in chart.objects_of(objects, "Service")
        if selects_service(monitor, s) and "metrics" in ports_of(s)
    }
    wanted = {f"lablink-{c}" for c in COMPONENTS}
    if scraped != wanted:
        problems.append(f"scrapes {sorted(scraped)}, not {sorted(wanted)}")
    if spec.get("jobLabel") and any(
        spec["jobLabel"] not in (s["metadata"].get("labels") or {})
        for s in chart.objects_of(objects, "Service")
        if chart.name_of(s) in scraped
    ):
        problems.append(f"jobLabel {spec['jobLabel']} is not on every Service")
    return problems


@pytest.mark.parametrize("access", ["token", "port"])
def test_the_service_monitor_scrapes_the_three_services(access: str) -> None:
    labels = {"release": "kube-prometheus"}
    objects = render(
        {
            "metrics": {
                "access": access,
                "serviceMonitor": {"enabled": True, "interval": "1m", "labels": labels},
            }
        }
    )
    monitor = chart.one(objects, "ServiceMonitor", "lablink-metrics")
    assert service_monitor_problems(monitor, objects, access) == []
    assert monitor["metadata"]["labels"].items() >= labels.items()
    assert monitor["spec"]["endpoints"][0]["interval"] == "1m"


def test_the_service_monitor_check_catches_a_wrong_one() -> None:
    """The control for the test above: the shape check finds what is wrong."""
    objects = render({"metrics": {"serviceMonitor": {"enabled": True}}})
    monitor = chart.one(objects, "ServiceMonitor", "lablink-metrics")
    endpoint = monitor["spec"]["endpoints"][0]
    for change in (
        {"bearerTokenSecret": {"name": chart.SECRETS, "key": "metrics-token"}},
        {"port": "http"},
        {
            "authorization": {
                "type": "Bearer",
                "credentials": {"name": chart.SECRETS, "key": "hub-token"},
            }
        },
    ):
        wrong = {**monitor, "spec": {**monitor["spec"], "endpoints": [{**endpoint, **change}]}}
        assert service_monitor_problems(wrong, objects, "token"), change
    assert service_monitor_problems(monitor, objects, "port")  # a token where none is asked


def test_no_service_monitor_unless_enabled_and_none_with_access_off() -> None:
    assert not chart.objects_of(render({}), "ServiceMonitor")
    assert not chart.objects_of(render({"metrics": {"access": "off"}}), "ServiceMonitor")
    message = chart.render_error(
        {"metrics": {"access": "off", "serviceMonitor": {"enabled": True}}}
    )
    assert "metrics.serviceMonitor.enabled is true but metrics.access is off" in message, message


# -- the dashboard ------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def all_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in board.get("panels") or []:
        out.append(panel)
        out += panel.get("panels") or []  # a collapsed row's
    return out


def expressions(board: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in all_panels(board) for t in p.get("targets") or [] if "expr" in t]


def names_in(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, functions) a PromQL expression names: strings, label matchers,
    ranges and by/without/on clauses taken out first."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    functions = set(re.findall(r"\b([a-zA-Z_]\w*)\s*\(", text))
    words = set(re.findall(r"(?<![\w.$])([a-zA-Z_:][\w:]*)", text))
    return words - functions - PROMQL_WORDS, functions


def test_the_name_check_sees_metrics_and_functions() -> None:
    """The control for the dashboard test: a name outside the contract is found."""
    names, functions = names_in(
        'histogram_quantile(0.95, sum by (le, peer) (rate(other_seconds_bucket{a="x"}[5m])))'
        " / on (peer) lablink_labs"
    )
    assert names == {"other_seconds_bucket", "lablink_labs"}
    assert functions == {"histogram_quantile", "sum", "rate"}


def test_the_dashboard_asks_only_for_contract_metrics() -> None:
    assert len(CONTRACT) >= 20 and "lablink_lab_start_duration_seconds" in CONTRACT, CONTRACT
    board = dashboard()
    found = expressions(board)
    assert len(found) >= 10
    problems = []
    used: set[str] = set()
    for expr in found:
        names, functions = names_in(expr)
        used |= names
        if names - SERIES:
            problems.append(f"{expr}: not in the contract: {sorted(names - SERIES)}")
        if functions - PROMQL_FUNCTIONS:
            problems.append(f"{expr}: unknown functions {sorted(functions - PROMQL_FUNCTIONS)}")
        if not names:
            problems.append(f"{expr}: names no metric")
        for histogram in (n for n, k in CONTRACT.items() if k == "histogram"):
            if re.search(rf"\b{histogram}\b(?!_)", expr):
                problems.append(f"{expr}: {histogram} without _bucket/_sum/_count")
    assert problems == []
    # what the issue asks to see
    for series in ASKED_FOR:
        assert series in used, series
    assert 'max by (system) (lablink_labs{state="running"})' in found
    for q in ("0.5", "0.95"):
        assert (
            f"histogram_quantile({q}, sum by (le, system) "
            "(rate(lablink_lab_start_duration_seconds_bucket[$__rate_interval])))"
        ) in found
    assert any(
        "histogram_quantile(0.95, sum by (le, peer)" in e
        and "lablink_driver_call_duration_seconds_bucket" in e
        for e in found
    )


def test_the_dashboard_takes_its_datasource_from_a_variable() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    uids = set()
    for panel in all_panels(board):
        for holder in [panel, *(panel.get("targets") or [])]:
            source = holder.get("datasource")
            if source is not None:
                uids.add(source.get("uid"))
                assert source.get("type") == "prometheus", panel["title"]
    assert uids == {"${datasource}"}
    assert "__inputs" not in board and "__requires" not in board
    ids = [p["id"] for p in all_panels(board)]
    assert len(ids) == len(set(ids))


def test_the_dashboard_configmap_carries_the_file_unchanged() -> None:
    assert not chart.find(render({}), "ConfigMap", "lablink-grafana-dashboard")
    objects = render({"metrics": {"dashboard": {"enabled": True}}})
    configmap = chart.one(objects, "ConfigMap", "lablink-grafana-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["data"] == {"lablink.json": DASHBOARD.read_text(encoding="utf-8")}
    objects = render(
        {"metrics": {"dashboard": {"enabled": True, "labels": {"grafana_dashboard": None,
                                                                 "dashboards": "lablink"}}}}
    )  # fmt: skip
    labels = chart.one(objects, "ConfigMap", "lablink-grafana-dashboard")["metadata"]["labels"]
    assert labels["dashboards"] == "lablink" and "grafana_dashboard" not in labels


# -- every combination renders, lints and validates --------------------------------------

COMBINATIONS = [
    {"metrics": {"access": "off"}},
    {"metrics": {"access": "token", "serviceMonitor": {"enabled": True},
                 "dashboard": {"enabled": True}}},
    {"metrics": {"access": "port", "serviceMonitor": {"enabled": True},
                 "dashboard": {"enabled": False}}},
    {"metrics": {"access": "port", "dashboard": {"enabled": True}},
     "networkPolicy": {"metricsFrom": []}},
]  # fmt: skip


@pytest.mark.parametrize(
    "values", COMBINATIONS, ids=["off", "token-all", "port-monitor", "port-dashboard"]
)
def test_each_combination_lints_and_validates(values: dict[str, Any]) -> None:
    values = chart.deep_merge(WITH_TUNNEL, values)
    for kube_version in chart.KUBE_VERSIONS:
        assert chart.lint_findings(values, kube_version=kube_version) == []
        assert chart.validation_errors(chart.render(values), kube_version) == []


def test_validation_skips_only_the_service_monitor() -> None:
    objects = render({"metrics": {"serviceMonitor": {"enabled": True}}})
    wrong = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": "x"},
    }
    assert chart.validation_errors(objects, chart.KUBE_VERSIONS[-1]) == []
    assert chart.validation_errors([wrong], chart.KUBE_VERSIONS[-1])
