"""The Helm chart helm/lablink (issue 17, point 8): it renders with the default values,
a minimal production values file and one that sets every option; ``helm lint --strict``
finds nothing; every object is valid for the oldest and the newest Kubernetes the chart
supports; the security invariants hold on every rendered object (secrets only through
Secrets, non-root and locked-down pods, requests, NetworkPolicies around every pod,
exact RBAC); typos and impossible values fail at install with a sentence that names the
key; an upgrade keeps the generated secrets that ``lookup`` finds; and ``lablink check``
accepts the site file the chart renders.

Each values file is rendered once per module (``rendered``); the names, ports and keys
checked here are those of docs/reference.md, "The Helm chart".
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.helpers import chart
from tests.helpers.chart import Obj
from tests.helpers.kube import KubeApi, KubeError
from tests.helpers.peers import peer_missing

pytestmark = pytest.mark.helm

REPO = chart.REPO
CENTRE_EXAMPLE = REPO / "docs" / "examples" / "values-centre.yaml"

# the values files, by a short name; None: the chart's own defaults
CASES: dict[str, Path | None] = {
    "default": None,
    "minimal": chart.VALUES_DIR / "values-minimal.yaml",
    "full": chart.VALUES_DIR / "values-full.yaml",
    "wiring": chart.VALUES_DIR / "values-wiring.yaml",
    # the example of docs/install-kubernetes.md: two HPC systems, a cloud, OIDC, PostgreSQL
    "centre": CENTRE_EXAMPLE,
}

SECRET_KEYS = ("hub-token", "tunnel-token", "userlab-manager-token", "proxy-token",
               "cookie-secret", "crypt-key", "state-key",
               "metrics-token")  # with metrics.access token, the default  # fmt: skip
HEX_KEYS = ("cookie-secret", "crypt-key", "state-key")
SECRET_ENV_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|KEY|DATABASE_URL|DB_URL")
PRIVATE_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16")
PORTS = {"hub": 8081, "backend": 8010, "tunnel": 8020, "userlab-manager": 8030,
         "devsite": 8040}  # fmt: skip
# the separate metrics listeners (metrics.access port)
METRICS_PORTS = {"backend": 8011, "tunnel": 8021, "userlab-manager": 8031}
# who may call each component (NetworkPolicy ingress), per the contract; "scraper" is a
# peer of networkPolicy.metricsFrom, and it may reach the port serving /metrics only
CALLERS = {
    "hub": {"proxy", "tunnel", "hub", "labs"},
    "backend": {"hub", "backend", "scraper"},
    "tunnel": {"backend", "proxy", "hub", "scraper"},  # the hub checks a new lab at its forward
    "userlab-manager": {"backend", "scraper"},
    "devsite": {"backend"},
    "labs": {"proxy", "hub"},
}
ROLE_RULES = {
    "pods": {"create", "get", "list", "watch", "delete"},
    "pods/log": {"get"},
    "services": {"create", "delete"},
    "secrets": {"create", "delete"},
}
COMMON_LABELS = {
    "app.kubernetes.io/name": "lablink",
    "app.kubernetes.io/instance": chart.RELEASE,
    "app.kubernetes.io/managed-by": "Helm",
    "helm.sh/chart": "lablink-0.1.0",
}

# what each values file must render, and must not: (kind, name[, namespace])
PRESENT: dict[str, list[tuple[str, ...]]] = {
    "default": [
        ("Deployment", "lablink-hub"), ("Deployment", "lablink-proxy"),
        ("Deployment", "lablink-backend"), ("Deployment", "lablink-userlab-manager"),
        ("Service", "lablink-hub"), ("Service", "lablink-proxy-public"),
        ("Service", "lablink-proxy-api"), ("Service", "lablink-backend"),
        ("Service", "lablink-userlab-manager"),
        ("ConfigMap", "lablink-site"), ("Secret", "lablink-secrets"),
        ("PersistentVolumeClaim", "lablink-hub"), ("PersistentVolumeClaim", "lablink-backend"),
        ("PersistentVolumeClaim", "lablink-userlab-manager"),
        ("ServiceAccount", "lablink-userlab-manager"),
        ("Role", "lablink-userlab-manager", "lablink"),
        ("RoleBinding", "lablink-userlab-manager", "lablink"),
        ("NetworkPolicy", "lablink-hub"), ("NetworkPolicy", "lablink-proxy"),
        ("NetworkPolicy", "lablink-backend"), ("NetworkPolicy", "lablink-userlab-manager"),
        ("NetworkPolicy", "lablink-labs", "lablink"),
    ],
    "minimal": [
        ("Deployment", "lablink-hub"), ("Deployment", "lablink-proxy"),
        ("Deployment", "lablink-backend"), ("Ingress", "lablink"),
        ("Secret", "lablink-secrets"), ("ConfigMap", "lablink-site"),
    ],
    "full": [
        ("Deployment", "lablink-hub"), ("Deployment", "lablink-proxy"),
        ("Deployment", "lablink-backend"), ("Deployment", "lablink-userlab-manager"),
        ("Deployment", "lablink-devsite"), ("StatefulSet", "lablink-tunnel"),
        ("Service", "lablink-tunnel"), ("Service", "lablink-tunnel-forwards"),
        ("Service", "lablink-devsite"), ("Ingress", "lablink"),
        ("Secret", "lablink-secrets"), ("Secret", "lablink-database"),
        ("Secret", "lablink-oidc"), ("PodDisruptionBudget", "lablink-backend"),
        ("Role", "lablink-userlab-manager", "labs"),
        ("RoleBinding", "lablink-userlab-manager", "labs"),
        ("NetworkPolicy", "lablink-labs", "labs"), ("NetworkPolicy", "lablink-tunnel"),
        ("NetworkPolicy", "lablink-devsite"),
    ],
    "wiring": [
        ("Deployment", "lablink-hub"), ("Deployment", "lablink-backend"),
        ("Deployment", "lablink-userlab-manager"), ("PersistentVolumeClaim", "lablink-backend"),
    ],
    "centre": [("Deployment", "lablink-backend"), ("Ingress", "lablink")],
}  # fmt: skip
ABSENT: dict[str, list[tuple[str, str]]] = {
    "default": [
        ("Deployment", "lablink-devsite"), ("Service", "lablink-devsite"),
        ("StatefulSet", "lablink-tunnel"), ("Ingress", "lablink"),
        ("Secret", "lablink-database"), ("Secret", "lablink-oidc"),
        ("Secret", "lablink-hub-db"),
    ],
    "minimal": [
        ("Deployment", "lablink-devsite"), ("PersistentVolumeClaim", "lablink-backend"),
        ("Secret", "lablink-database"), ("Secret", "lablink-oidc"),
    ],
    "full": [("PersistentVolumeClaim", "lablink-backend")],
    "wiring": [("StatefulSet", "lablink-tunnel"), ("Deployment", "lablink-devsite"),
               ("Secret", "lablink-database")],
    "centre": [("Deployment", "lablink-devsite"), ("PersistentVolumeClaim", "lablink-backend")],
}  # fmt: skip


class Rendered:
    """One values file's render: its values (as given) and every object."""

    def __init__(self, case: str, path: Path | None) -> None:
        self.case = case
        self.path = path
        self.values = chart.values_of(path)
        self.objects = chart.render(path)

    def site(self) -> dict[str, Any]:
        return chart.rendered_site(self.objects)

    def labs_namespaces(self) -> set[str]:
        """The namespaces of the site's cloud systems (every one has its namespace)."""
        systems = self.site().get("systems") or {}
        return {s["namespace"] for s in systems.values() if s.get("kind") == "kubernetes"}


@pytest.fixture(scope="module", params=sorted(CASES))
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return Rendered(request.param, CASES[request.param])


@pytest.fixture(scope="module")
def full() -> Rendered:
    return Rendered("full", CASES["full"])


@pytest.fixture(scope="module")
def open_kube(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A Kubernetes API emulator without a token (helm_python's cluster-aware render
    sends no credentials), one per module."""
    try:
        import kmock  # noqa: F401
    except ImportError as exc:
        peer_missing("Kubernetes API emulator (kmock)", repr(exc))
    api = KubeApi(tmp_path_factory.mktemp("kube"), token="")
    try:
        api.start()
    except (KubeError, OSError) as exc:
        peer_missing("Kubernetes API emulator (kmock)", str(exc))
    try:
        yield api
    finally:
        api.stop()


def problems_of(rendered: Rendered, problems: list[str]) -> None:
    where = rendered.path.relative_to(REPO) if rendered.path else "the default values"
    assert not problems, f"{where}:\n" + "\n".join(problems)


def component_of(obj: Obj) -> str:
    return str(chart.pod_labels(obj).get("app.kubernetes.io/component", ""))


# -- what renders -------------------------------------------------------------------


def test_expected_objects_are_rendered_and_others_are_not(rendered: Rendered) -> None:
    objects = rendered.objects
    problems = []
    for kind, name, *namespace in PRESENT.get(rendered.case, []):
        if chart.find(objects, kind, name, *namespace) is None:
            there = sorted(chart.names_of(objects, kind))
            problems.append(f"missing {kind} {name} {namespace or ''}(there are: {there})")
    for kind, name in ABSENT.get(rendered.case, []):
        if chart.find(objects, kind, name) is not None:
            problems.append(f"{kind} {name} is rendered and should not be")
    problems_of(rendered, problems)


def test_the_full_values_render_what_they_ask_for(full: Rendered) -> None:
    backend = chart.one(full.objects, "Deployment", "lablink-backend")
    assert backend["spec"]["replicas"] == 2
    tunnel = chart.one(full.objects, "StatefulSet", "lablink-tunnel")
    assert tunnel["spec"]["replicas"] == 1
    assert tunnel["spec"]["serviceName"] == "lablink-tunnel-forwards"
    forwards = chart.one(full.objects, "Service", "lablink-tunnel-forwards")
    assert forwards["spec"]["clusterIP"] == "None"
    pdb = chart.one(full.objects, "PodDisruptionBudget", "lablink-backend")
    assert pdb["spec"]["maxUnavailable"] == 1
    ingress = chart.one(full.objects, "Ingress", "lablink")
    backends = [
        path["backend"]["service"]
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    ]
    assert backends and all(
        b == {"name": "lablink-proxy-public", "port": {"name": "http"}} for b in backends
    )
    assert full.labs_namespaces() == {"labs"}
    secret = chart.secret_data(chart.one(full.objects, "Secret", "lablink-secrets"))
    assert "devsite-password" in secret
    assert "demo-password" not in secret  # OIDC: nobody logs in with the demo password


def test_every_object_carries_the_chart_labels(rendered: Rendered) -> None:
    problems = []
    for obj in rendered.objects:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        wrong = {k: labels.get(k) for k, v in COMMON_LABELS.items() if labels.get(k) != v}
        if wrong or "app.kubernetes.io/version" not in labels:
            problems.append(f"{chart.ref(obj)}: labels {wrong} (want {COMMON_LABELS})")
    for obj in chart.workloads(rendered.objects):
        selector = obj["spec"].get("selector", {}).get("matchLabels", {})
        if component_of(obj) not in chart.COMPONENTS or set(selector) != {
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/component",
        }:
            problems.append(f"{chart.ref(obj)}: component/selector labels: {selector}")
    problems_of(rendered, problems)


def test_services_select_pods_and_target_their_ports(rendered: Rendered) -> None:
    problems = []
    pods = chart.workloads(rendered.objects)
    for service in chart.objects_of(rendered.objects, "Service"):
        selector = {"matchLabels": service["spec"].get("selector") or {}}
        chosen = [
            w
            for w in pods
            if chart.namespace_of(w) == chart.namespace_of(service)
            and selector["matchLabels"]
            and chart.selects(selector, chart.pod_labels(w))
        ]
        if not chosen:
            problems.append(f"{chart.ref(service)} selects no pod of the chart")
            continue
        ports = {
            key
            for w in chosen
            for c in chart.containers_of(w, init=False)
            for p in c.get("ports") or []
            for key in (p["containerPort"], p.get("name"))
        }
        for port in service["spec"].get("ports") or []:
            if port.get("targetPort", port["port"]) not in ports:
                problems.append(f"{chart.ref(service)}: targetPort of {port} is no container port")
    problems_of(rendered, problems)


# -- lint and validity ----------------------------------------------------------------


@pytest.mark.parametrize("kube_version", chart.KUBE_VERSIONS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_lint_strict_finds_nothing(case: str, kube_version: str) -> None:
    findings = chart.lint_findings(CASES[case], kube_version=kube_version)
    assert not findings, f"helm lint --strict ({case}, v{kube_version}):\n" + "\n".join(findings)


@pytest.mark.parametrize("kube_version", chart.KUBE_VERSIONS)
def test_every_object_is_valid_kubernetes(rendered: Rendered, kube_version: str) -> None:
    assert rendered.objects
    problems_of(rendered, chart.validation_errors(rendered.objects, kube_version))


def test_chart_yaml_names_the_kubernetes_versions_tested() -> None:
    meta = yaml.safe_load((chart.CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2" and meta["name"] == "lablink"
    assert meta["kubeVersion"] == f">={chart.KUBE_VERSIONS[0]}-0"


# -- secrets (issue 17, point 4) ------------------------------------------------------


def test_secret_variables_come_only_from_secrets(rendered: Rendered) -> None:
    """Every variable named like a secret is a secretKeyRef, and each reference to a
    Secret the chart renders names a key that Secret has."""
    secrets = {
        chart.name_of(s): chart.secret_data(s) for s in chart.objects_of(rendered.objects, "Secret")
    }
    problems = []
    for obj in chart.workloads(rendered.objects):
        for container in chart.containers_of(obj):
            for name, env in chart.env_of(container).items():
                ref = chart.secret_ref(env)
                where = f"{chart.ref(obj)} {container['name']} {name}"
                if SECRET_ENV_NAME.search(name) and ref is None:
                    problems.append(f"{where}: not from a secretKeyRef: {env}")
                if ref and ref[0] in secrets and ref[1] not in secrets[ref[0]]:
                    problems.append(f"{where}: Secret {ref[0]} has no key {ref[1]}")
            for source in container.get("envFrom") or []:
                if "configMapRef" in source:
                    problems.append(f"{chart.ref(obj)}: envFrom a ConfigMap: {source}")
    problems_of(rendered, problems)


def secret_values(rendered: Rendered) -> set[str]:
    """Every secret value the render knows: the rendered Secrets' data, the explicit
    secrets of the values file, and a database URL's password."""
    found = {
        value
        for s in chart.objects_of(rendered.objects, "Secret")
        for value in chart.secret_data(s).values()
    }
    values = rendered.values
    found.update(
        str(v) for k, v in (values.get("secrets") or {}).items() if v and k != "existingSecret"
    )
    for candidate in (
        (values.get("hub") or {}).get("oidc", {}).get("clientSecret"),
        (values.get("hub") or {}).get("db", {}).get("url"),
        (values.get("database") or {}).get("url"),
    ):
        if candidate:
            found.add(str(candidate))
            password = urlsplit(str(candidate)).password
            if password:
                found.add(password)
    return {v for v in found if len(v) >= 8}  # shorter ones would match by chance


def test_no_secret_value_outside_a_secret(rendered: Rendered) -> None:
    """No secret value in a ConfigMap, an annotation, a label, a literal env value or
    anywhere else but a Secret."""
    secrets = secret_values(rendered)
    assert secrets, "the render has no secret at all"
    problems = [
        f"{chart.ref(obj)} at {path} holds a secret value"
        for obj in rendered.objects
        # a Secret's data is its place, not its labels or annotations
        for path, text in (
            chart.strings_in(obj)
            if obj.get("kind") != "Secret"
            else chart.strings_in(obj.get("metadata"), ".metadata")
        )
        if any(secret in text for secret in secrets)
    ]
    problems_of(rendered, problems)


def test_explicit_secrets_of_the_full_values_are_only_in_secrets(full: Rendered) -> None:
    explicit = {
        k: str(v)
        for k, v in (full.values.get("secrets") or {}).items()
        if v and k != "existingSecret"
    }
    explicit["hub.oidc.clientSecret"] = full.values["hub"]["oidc"]["clientSecret"]
    explicit["database.url"] = full.values["database"]["url"]
    assert len(explicit) >= 9, f"values-full.yaml sets every explicit secret: {sorted(explicit)}"
    homes: dict[str, set[str]] = {key: set() for key in explicit}
    for obj in full.objects:
        for _, text in chart.strings_in(obj):
            for key, value in explicit.items():
                if value in text:
                    homes[key].add(chart.ref(obj))
        if obj.get("kind") == "Secret":
            for key, value in explicit.items():
                if value in chart.secret_data(obj).values():
                    homes[key].add(chart.ref(obj))
    for key, where in homes.items():
        assert where, f"{key} is in no rendered object"
        assert all(w.startswith("Secret ") for w in where), f"{key} is in {sorted(where)}"
    generated = chart.secret_data(chart.one(full.objects, "Secret", "lablink-secrets"))
    assert generated["hub-token"] == explicit["hubToken"]
    assert generated["cookie-secret"] == explicit["cookieSecret"]


def test_generated_secrets_have_their_form_and_are_kept(rendered: Rendered) -> None:
    secret = chart.find(rendered.objects, "Secret", chart.SECRETS)
    if (rendered.values.get("secrets") or {}).get("existingSecret"):
        assert secret is None
        return
    assert secret is not None
    annotations = secret["metadata"].get("annotations") or {}
    assert annotations.get("helm.sh/resource-policy") == "keep"
    data = chart.secret_data(secret)
    assert set(SECRET_KEYS) <= set(data), sorted(data)
    explicit = set((rendered.values.get("secrets") or {}).keys())
    for key in HEX_KEYS:
        camel = re.sub(r"-(\w)", lambda m: m.group(1).upper(), key)
        if camel not in explicit:
            assert re.fullmatch(r"[0-9a-f]{64}", data[key]), f"{key}: {data[key]!r}"
    for key in SECRET_KEYS:
        camel = re.sub(r"-(\w)", lambda m: m.group(1).upper(), key)
        if camel not in explicit:  # generated: 48 characters or 64 hex digits
            assert len(data[key]) >= 48, f"{key} is short: {len(data[key])} characters"


def test_an_existing_secret_replaces_the_generated_one() -> None:
    objects = chart.render({"secrets": {"existingSecret": "centre-secrets"}})
    assert chart.find(objects, "Secret", chart.SECRETS) is None
    refs = {
        chart.secret_ref(env)
        for obj in chart.workloads(objects)
        for c in chart.containers_of(obj)
        for env in chart.env_of(c).values()
    } - {None}
    used = {ref for ref in refs if ref and ref[1] in SECRET_KEYS}
    assert {key for _, key in used} >= {"hub-token", "proxy-token", "cookie-secret"}
    assert {name for name, _ in used} == {"centre-secrets"}, used


def test_callers_and_callees_share_their_tokens(rendered: Rendered) -> None:
    """The hub sends the token the backend checks, and so on for every pair."""
    pairs = [
        (("hub", "LABLINK_BACKEND_TOKEN"), ("backend", "LABLINK_HUB_TOKEN")),
        (("tunnel", "LABLINK_TUNNEL_TOKEN"), ("backend", "LABLINK_TUNNEL_TOKEN")),
        (("userlab-manager", "LABLINK_USERLAB_MANAGER_TOKEN"),
         ("backend", "LABLINK_USERLAB_MANAGER_TOKEN")),
    ]  # fmt: skip
    env = {
        component_of(w): chart.env_of(chart.containers_of(w, init=False)[0])
        for w in chart.workloads(rendered.objects)
    }
    checked = 0
    for (a, a_var), (b, b_var) in pairs:
        if a in env and b in env:
            assert chart.secret_ref(env[a][a_var]) == chart.secret_ref(env[b][b_var]), (a, b)
            checked += 1
    assert checked, "no pair of components to check"
    hub = env["hub"]
    assert hub["LABLINK_BACKEND_URL"].get("value") == "http://lablink-backend:8010"
    assert hub["LABLINK_PROXY_API_URL"].get("value") == "http://lablink-proxy-api:8001"
    assert hub["LABLINK_HUB_BIND_URL"].get("value") == "http://0.0.0.0:8081"
    assert hub["LABLINK_HUB_CONNECT_URL"].get("value") == "http://lablink-hub.lablink.svc:8081"
    assert chart.secret_ref(hub["CONFIGPROXY_AUTH_TOKEN"])[1] == "proxy-token"  # type: ignore[index]


# -- pods (issue 17, point 5) ---------------------------------------------------------


def test_pods_and_containers_are_locked_down(rendered: Rendered) -> None:
    problems = []
    for obj in chart.workloads(rendered.objects):
        spec = chart.pod_spec(obj)
        pod = spec.get("securityContext") or {}
        if not (
            pod.get("runAsNonRoot") is True
            and isinstance(pod.get("runAsUser"), int)
            and pod["runAsUser"] > 0
            and isinstance(pod.get("runAsGroup"), int)
            and isinstance(pod.get("fsGroup"), int)
            and (pod.get("seccompProfile") or {}).get("type") == "RuntimeDefault"
        ):
            problems.append(f"{chart.ref(obj)}: pod securityContext {pod}")
        for container in chart.containers_of(obj):
            sc = container.get("securityContext") or {}
            if not (
                sc.get("allowPrivilegeEscalation") is False
                and (sc.get("capabilities") or {}).get("drop") == ["ALL"]
                and not (sc.get("capabilities") or {}).get("add")
                and sc.get("readOnlyRootFilesystem") is True
                and sc.get("runAsNonRoot") is True
                and not sc.get("privileged")
            ):
                problems.append(f"{chart.ref(obj)} {container['name']}: securityContext {sc}")
            tmp = chart.mounts_of(obj, container).get("/tmp")
            if not tmp or "emptyDir" not in (tmp["volume"] or {}):
                problems.append(f"{chart.ref(obj)} {container['name']}: no emptyDir at /tmp")
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(key):
                problems.append(f"{chart.ref(obj)}: {key}")
    problems_of(rendered, problems)


def test_every_container_requests_cpu_and_memory(rendered: Rendered) -> None:
    problems = [
        f"{chart.ref(obj)} {c['name']}: resources {c.get('resources')}"
        for obj in chart.workloads(rendered.objects)
        for c in chart.containers_of(obj)
        if not {"cpu", "memory"} <= set((c.get("resources") or {}).get("requests") or {})
        or "memory" not in ((c.get("resources") or {}).get("limits") or {})
    ]
    problems_of(rendered, problems)


def test_only_the_manager_gets_a_service_account_token(rendered: Rendered) -> None:
    problems = []
    for obj in chart.workloads(rendered.objects):
        spec = chart.pod_spec(obj)
        if component_of(obj) == "userlab-manager":
            if spec.get("automountServiceAccountToken") is not True:
                problems.append(f"{chart.ref(obj)}: the manager needs its token mounted")
            if spec.get("serviceAccountName") != "lablink-userlab-manager":
                problems.append(
                    f"{chart.ref(obj)}: serviceAccountName {spec.get('serviceAccountName')}"
                )
        elif spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{chart.ref(obj)}: automountServiceAccountToken is not false")
    for account in chart.objects_of(rendered.objects, "ServiceAccount"):
        if account.get("automountServiceAccountToken") is True:
            problems.append(f"{chart.ref(account)} mounts its token into every pod")
    problems_of(rendered, problems)


# -- RBAC -----------------------------------------------------------------------------


def role_rules(role: Obj) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for rule in role.get("rules") or []:
        assert rule.get("apiGroups") == [""], (
            f"{chart.ref(role)}: apiGroups {rule.get('apiGroups')}"
        )
        assert not rule.get("resourceNames") and not rule.get("nonResourceURLs")
        for resource in rule["resources"]:
            out.setdefault(resource, set()).update(rule["verbs"])
    return out


def test_the_manager_role_has_exactly_the_verbs_it_uses(rendered: Rendered) -> None:
    objects = rendered.objects
    for kind in ("Role", "ClusterRole"):
        for role in chart.objects_of(objects, kind):
            for _, text in chart.strings_in(role.get("rules")):
                assert text != "*", f"{chart.ref(role)} grants *"
    assert not chart.objects_of(objects, "ClusterRole")
    assert not chart.objects_of(objects, "ClusterRoleBinding")
    roles = chart.objects_of(objects, "Role")
    if not chart.find(objects, "Deployment", "lablink-userlab-manager"):
        assert not roles
        return
    namespaces = {chart.namespace_of(r) for r in roles}
    manager_ns = (rendered.values.get("userlabManager") or {}).get("namespace") or chart.NAMESPACE
    assert rendered.labs_namespaces() <= namespaces <= rendered.labs_namespaces() | {manager_ns}
    for role in roles:
        assert chart.name_of(role) == "lablink-userlab-manager"
        assert role_rules(role) == ROLE_RULES, chart.ref(role)
        binding = chart.one(
            objects, "RoleBinding", "lablink-userlab-manager", chart.namespace_of(role)
        )
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "lablink-userlab-manager",
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "lablink-userlab-manager",
             "namespace": chart.NAMESPACE}
        ]  # fmt: skip


def test_the_role_is_exactly_the_calls_of_the_manager() -> None:
    """The calls userlab_manager/kube.py makes (read from its source), as verbs on
    resources, are the role's rules, no more and no less: a new call fails here first,
    and so does a verb the manager no longer uses."""
    source = (REPO / "userlab_manager" / "kube.py").read_text()
    verbs = {"create": "create", "read": "get", "list": "list", "delete": "delete",
             "patch": "patch", "replace": "update"}  # fmt: skip
    used: dict[str, set[str]] = {}
    for action, resource, log in re.findall(r"\.(\w+?)_namespaced_(\w+?)(_log)?\b", source):
        plural = f"{resource}s/log" if log else f"{resource}s"
        used.setdefault(plural, set()).add(verbs[action])
    if re.search(r"watch\.Watch\(\)\.stream\(\s*self\.core\.list_namespaced_pod", source):
        used.setdefault("pods", set()).add("watch")
    assert used.get("pods", set()) >= {"create", "get", "list", "delete", "watch"}, used
    assert used == ROLE_RULES


# -- network policies -----------------------------------------------------------------


def peer_kind(peer: dict[str, Any], scrapers: list[dict[str, Any]] | None = None) -> str:
    """Who a NetworkPolicyPeer lets in: a component, "labs", "scraper" (a peer of
    networkPolicy.metricsFrom, given as ``scrapers``), or "anywhere"."""
    if scrapers and peer in scrapers:
        return "scraper"
    if "ipBlock" in peer:
        return "anywhere"
    selector = peer.get("podSelector")
    if selector is None:
        return "any pod in a namespace"
    labels = selector.get("matchLabels") or {}
    if "app.kubernetes.io/component" in labels:
        return str(labels["app.kubernetes.io/component"])
    if chart.selects(selector, chart.LAB_SELECTOR) and selector:
        return "labs"
    return f"pods {selector}"


def policies(rendered: Rendered) -> list[Obj]:
    return chart.objects_of(rendered.objects, "NetworkPolicy")


def test_a_network_policy_guards_every_pod(rendered: Rendered) -> None:
    if (rendered.values.get("networkPolicy") or {}).get("enabled") is False:
        pytest.skip("this values file switches NetworkPolicies off")
    problems = []
    for policy in policies(rendered):
        if sorted(policy["spec"].get("policyTypes") or []) != ["Egress", "Ingress"]:
            problems.append(f"{chart.ref(policy)}: policyTypes {policy['spec'].get('policyTypes')}")
    pods = [
        (chart.namespace_of(w), chart.pod_labels(w), chart.ref(w))
        for w in chart.workloads(rendered.objects)
    ]
    pods += [
        (ns, dict(chart.LAB_SELECTOR), f"lab pods in {ns}") for ns in rendered.labs_namespaces()
    ]
    for namespace, labels, what in pods:
        if not any(
            chart.namespace_of(p) == namespace
            and chart.selects(p["spec"].get("podSelector"), labels)
            for p in policies(rendered)
        ):
            problems.append(f"no NetworkPolicy selects {what}")
    problems_of(rendered, problems)


def scraper_ports(access: str, component: str) -> set[Any]:
    """The pod port a scraper may reach: /metrics on the API port (token), on the
    metrics listener (port), or none (off)."""
    if access == "token":
        return {PORTS[component], "http"}
    if access == "port":
        return {METRICS_PORTS[component], "metrics"}
    return set()


def caller_problems(
    objects: list[Obj], site: dict[str, Any], access: str, scrapers: list[dict[str, Any]]
) -> list[str]:
    """What the NetworkPolicies let in beyond CALLERS: a caller not listed, a port not
    the component's, or the scraper on any port but the one serving /metrics."""
    problems = []
    forward = (site.get("tunnel_service") or {}).get("ports") or {}
    for policy in chart.objects_of(objects, "NetworkPolicy"):
        name = chart.name_of(policy).removeprefix("lablink-")
        if name not in CALLERS:
            continue  # the proxy takes the public's requests
        allowed_ports: set[Any] = {PORTS.get(name), "http"}
        if name == "tunnel":
            allowed_ports |= {forward.get("min", 9000)}
        if name == "labs":
            allowed_ports = set()  # any port of a lab (its own JupyterLab's)
        for rule in policy["spec"].get("ingress") or []:
            peers = rule.get("from")
            if not peers:
                problems.append(f"{chart.ref(policy)}: ingress from anywhere: {rule}")
                continue
            ports = {port for _, port, _ in chart.policy_ports(rule)}
            for peer in peers:
                who = peer_kind(peer, scrapers)
                if who not in CALLERS[name]:
                    problems.append(f"{chart.ref(policy)}: ingress from {who}")
                    continue
                if who == "scraper":
                    wanted = scraper_ports(access, name)
                    if not wanted:
                        problems.append(f"{chart.ref(policy)}: a scraper with metrics off")
                    elif not ports or not ports <= wanted:
                        problems.append(
                            f"{chart.ref(policy)}: the scraper on ports {ports or 'all'}"
                        )
                elif allowed_ports and (not ports or not ports <= allowed_ports):
                    problems.append(f"{chart.ref(policy)}: ingress on ports {ports or 'all'}")
    return problems


def metrics_setup(values: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """metrics.access and networkPolicy.metricsFrom of the values (the chart's defaults
    under them; Helm replaces a list as a whole)."""
    effective = chart.deep_merge(chart.chart_defaults(), values)
    return effective["metrics"]["access"], effective["networkPolicy"]["metricsFrom"]


def test_services_accept_only_their_callers(rendered: Rendered) -> None:
    access, scrapers = metrics_setup(rendered.values)
    problems_of(rendered, caller_problems(rendered.objects, rendered.site(), access, scrapers))


@pytest.mark.metrics
@pytest.mark.parametrize("access", ["token", "port", "off"])
def test_the_scraper_reaches_only_the_metrics_port(access: str) -> None:
    """With each metrics.access the policies pass, the scraper is let in exactly where
    /metrics is served, and the check above fails when a policy lets in too much."""
    values = {"metrics": {"access": access}, "tunnel": {"enabled": True}}
    objects = chart.render(values)
    site = chart.rendered_site(objects)
    _, scrapers = metrics_setup(values)
    assert caller_problems(objects, site, access, scrapers) == []
    for component in METRICS_PORTS:
        policy = chart.one(objects, "NetworkPolicy", f"lablink-{component}")
        let_in = {
            port
            for rule in policy["spec"]["ingress"]
            if any(peer in scrapers for peer in rule["from"])
            for _, port, _ in chart.policy_ports(rule)
        }
        assert let_in == scraper_ports(access, component) - {"http", "metrics"}, component

    # a policy that lets too much in fails the check
    scraper = scrapers[0]
    widened = [
        ("backend", {"from": [scraper]}),  # every port
        ("tunnel", {"from": [scraper], "ports": [{"port": 9000, "endPort": 9099}]}),
        ("hub", {"from": [scraper], "ports": [{"port": 8081}]}),  # not the hub's caller
        ("backend", {"from": [{"namespaceSelector": {}}], "ports": [{"port": 8011}]}),
    ]
    if access == "port":  # the API port is no metrics port then
        widened.append(("userlab-manager", {"from": [scraper], "ports": [{"port": 8030}]}))
    for component, rule in widened:
        changed = copy.deepcopy(objects)
        policy = chart.one(changed, "NetworkPolicy", f"lablink-{component}")
        policy["spec"]["ingress"].append(rule)
        assert caller_problems(changed, site, access, scrapers), (component, rule)


@pytest.mark.metrics
def test_without_scrapers_no_policy_lets_anyone_in() -> None:
    """metricsFrom: [] renders no rule at all (an empty `from` would let in everyone)."""
    objects = chart.render({"networkPolicy": {"metricsFrom": []}, "tunnel": {"enabled": True}})
    for component in METRICS_PORTS:
        policy = chart.one(objects, "NetworkPolicy", f"lablink-{component}")
        for rule in policy["spec"].get("ingress") or []:
            assert rule.get("from"), f"{chart.ref(policy)}: {rule}"
            assert not {8011, 8021, 8031} & {p for _, p, _ in chart.policy_ports(rule)}
    assert caller_problems(objects, chart.rendered_site(objects), "token", []) == []


def test_no_pod_may_reach_the_metadata_address(rendered: Rendered) -> None:
    problems = []
    for policy in policies(rendered):
        for rule in policy["spec"].get("egress") or []:
            peers = rule.get("to")
            if not peers:
                if not chart.only_dns(rule):
                    problems.append(f"{chart.ref(policy)}: egress to anywhere: {rule}")
                continue
            if chart.only_dns(rule):
                continue
            for peer in peers:
                if chart.reaches_address(peer, chart.METADATA_ADDRESS):
                    problems.append(f"{chart.ref(policy)}: egress to 169.254.169.254: {peer}")
    problems_of(rendered, problems)


def lab_egress_problems(policy: Obj, allow_internet: bool) -> list[str]:
    problems = []
    internet = False
    for rule in policy["spec"].get("egress") or []:
        if chart.only_dns(rule):
            continue
        for peer in rule.get("to") or [{"ipBlock": {"cidr": "0.0.0.0/0"}}]:
            who = peer_kind(peer)
            if who == "hub":
                hub_ns = (peer.get("namespaceSelector") or {}).get("matchLabels") or {}
                if chart.namespace_of(policy) != chart.NAMESPACE and hub_ns != {
                    "kubernetes.io/metadata.name": chart.NAMESPACE
                }:
                    problems.append(
                        f"{chart.ref(policy)}: the hub peer misses its namespace: {peer}"
                    )
                if {port for _, port, _ in chart.policy_ports(rule)} - {8081, "http"}:
                    problems.append(f"{chart.ref(policy)}: hub ports {chart.policy_ports(rule)}")
                continue
            if who == "anywhere" and allow_internet:
                excepted = {
                    str(ipaddress.ip_network(c)) for c in peer["ipBlock"].get("except") or []
                }
                if peer["ipBlock"]["cidr"] != "0.0.0.0/0" or not set(PRIVATE_RANGES) <= excepted:
                    problems.append(f"{chart.ref(policy)}: internet rule {peer}")
                internet = True
                continue
            problems.append(f"{chart.ref(policy)}: labs reach {who}: {peer}")
    if allow_internet and not internet:
        problems.append(f"{chart.ref(policy)}: allowInternet and no rule for it")
    dns = [r for r in policy["spec"].get("egress") or [] if chart.only_dns(r)]
    protocols = {proto for r in dns for proto, _, _ in chart.policy_ports(r)}
    if protocols != {"UDP", "TCP"}:
        problems.append(f"{chart.ref(policy)}: DNS over {protocols}")
    return problems


def test_labs_reach_only_dns_and_the_hub(rendered: Rendered) -> None:
    allow = bool(
        ((rendered.values.get("networkPolicy") or {}).get("labs") or {}).get("allowInternet")
    )
    problems = []
    for namespace in rendered.labs_namespaces():
        policy = chart.one(rendered.objects, "NetworkPolicy", "lablink-labs", namespace)
        assert policy["spec"]["podSelector"] == {"matchLabels": chart.LAB_SELECTOR}
        problems += lab_egress_problems(policy, allow)
    problems_of(rendered, problems)


@pytest.mark.parametrize("allow", [False, True])
def test_labs_reach_the_internet_only_when_allowed(allow: bool) -> None:
    objects = chart.render({"networkPolicy": {"labs": {"allowInternet": allow}}})
    policy = chart.one(objects, "NetworkPolicy", "lablink-labs", chart.NAMESPACE)
    assert lab_egress_problems(policy, allow) == []
    blocks = [p for r in policy["spec"]["egress"] for p in r.get("to") or [] if "ipBlock" in p]
    assert bool(blocks) is allow


def test_network_policies_can_be_switched_off() -> None:
    objects = chart.render({"networkPolicy": {"enabled": False}})
    assert not chart.objects_of(objects, "NetworkPolicy")


# -- mistakes in values fail at install -----------------------------------------------


# a whole site of one cloud system, so that a test does not lean on the default values
CLOUD_SITE: dict[str, Any] = {
    "login": "demo",
    "default_system": "cloud",
    "systems": {
        "cloud": {
            "kind": "kubernetes",
            "flavors": {"small": {"cpu": 1, "memory": 2}},
            "images": [{"image": "lablink/lab:0.1.0"}],
        }
    },
}


def site_with(changes: dict[str, Any]) -> dict[str, Any]:
    """Values with CLOUD_SITE and ``changes`` on top of it."""
    return {"site": chart.deep_merge(CLOUD_SITE, changes)}


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"netwrokPolicy": {"enabled": False}}, "netwrokPolicy"),
        ({"backend": {"replica": 2}}, "replica"),
        ({"hub": {"oidc": {"isuer": "https://login.example.org"}}}, "isuer"),
        (
            site_with({"systems": {"cloud": {"flavours": {"big": {"cpu": 2, "memory": 4}}}}}),
            "flavours",
        ),
        (site_with({"idle_culer": {"timeout": 60}}), "idle_culer"),
        ({"metrics": {"servicemonitor": {"enabled": True}}}, "servicemonitor"),
        ({"metrics": {"access": "public"}}, "access"),
    ],
    ids=[
        "top level",
        "backend.replica",
        "hub.oidc.isuer",
        "site.systems.cloud.flavours",
        "site.idle_culer",
        "metrics.servicemonitor",
        "metrics.access",
    ],
)
def test_a_typo_in_values_fails_and_names_the_key(changes: dict[str, Any], key: str) -> None:
    message = chart.render_error(changes)
    assert key in message, message


SQLITE = (
    "backend.replicas is 2 but the backend uses SQLite, which allows one backend; set "
    "database.url or database.existingSecret to a PostgreSQL database to run several."
)


def test_sqlite_with_two_backends_fails_with_a_sentence() -> None:
    message = chart.render_error({"backend": {"replicas": 2}})
    assert SQLITE in message, message
    assert "goroutine" not in message and "\n" not in message.strip()
    chart.render({"backend": {"replicas": 2}, "database": {"existingSecret": "db"}})


@pytest.mark.parametrize(
    ("site", "key"),
    [
        ({"state_dir": "/data"}, "state_dir"),
        ({"userlab_manager": {"url": "http://elsewhere:8030"}}, "userlab_manager.url"),
        ({"tunnel_service": {"url": "http://elsewhere:8020"}}, "tunnel_service.url"),
        ({"metrics": {"access": "port"}}, "metrics.access"),
    ],
    ids=["state_dir", "userlab_manager.url", "tunnel_service.url", "metrics"],
)
def test_a_chart_owned_site_key_fails(site: dict[str, Any], key: str) -> None:
    message = chart.render_error(site_with(site))
    assert key.partition(".")[0] in message, message
    assert "set by the chart" in message, message


def test_a_database_url_in_the_site_never_reaches_a_configmap() -> None:
    """The database URL (with its password) is an env variable from a Secret: in
    ``site`` it either fails or is left out of the rendered site."""
    import helm_python

    url = "postgresql://lablink:site-password-123456@db/lablink"
    try:
        objects = chart.render(site_with({"database_url": url}))
    except helm_python.HelmError as exc:
        assert "database_url" in str(exc), str(exc)
        return
    for obj in objects:
        if obj.get("kind") != "Secret":
            assert not any("site-password-123456" in t for _, t in chart.strings_in(obj))


def test_too_few_database_connections_fail() -> None:
    message = chart.render_error(
        {
            "database": {"url": "postgresql://lablink@db/lablink", "maxConnections": 20},
            "backend": {"replicas": 3},
        }
    )
    assert "raise database.maxConnections or lower backend.replicas" in message, message


@pytest.mark.parametrize(
    ("replicas", "max_connections", "site_connections", "expected"),
    [
        (1, 100, None, 15),  # min(15, 90 // 2)
        (1, 40, None, 15),  # 30 // 2
        (2, 40, None, 10),  # 30 // 3
        (3, 40, None, 7),  # 30 // 4
        (3, 26, None, 4),  # 16 // 4
        (2, 40, 4, 4),  # the admin's value wins
    ],
)
def test_replica_connections_fit_the_database(
    replicas: int, max_connections: int, site_connections: int | None, expected: int
) -> None:
    values: dict[str, Any] = {
        "backend": {"replicas": replicas},
        "database": {"existingSecret": "db", "maxConnections": max_connections},
    }
    if site_connections is not None:
        values["site"] = {"replicas": {"connections": site_connections}}
    site = chart.rendered_site(chart.render(values))
    assert site["replicas"]["connections"] == expected


# -- the rendered site ----------------------------------------------------------------


def test_the_rendered_site_has_what_the_chart_owns(rendered: Rendered) -> None:
    site = rendered.site()
    assert site["state_dir"] == "/var/lib/lablink"
    assert "database_url" not in site
    tunnel = site["tunnel_service"]
    assert tunnel["url"] == "http://lablink-tunnel:8020"
    assert tunnel["bind"] == "0.0.0.0"
    assert tunnel["advertise"] == "lablink-tunnel-0.lablink-tunnel-forwards.lablink.svc"
    assert tunnel["hub_api"] == "http://lablink-hub.lablink.svc:8081"
    assert site["userlab_manager"]["url"] == "http://lablink-userlab-manager:8030"
    assert not site["userlab_manager"].get("kubeconfig")
    hub_tokens = [t for t in site["tokens"] if t["name"] == "hub"]
    assert len(hub_tokens) == 1
    assert hub_tokens[0]["secret_env"] == "LABLINK_HUB_TOKEN"
    assert hub_tokens[0]["role"] == "hub" and hub_tokens[0]["admin_header"] is True
    assert 3 <= site["replicas"]["connections"] <= 15
    access, _ = metrics_setup(rendered.values)
    assert site["metrics"]["access"] == access
    if access == "token":
        assert site["metrics"]["token_env"] == "LABLINK_METRICS_TOKEN"
    for name, system in site["systems"].items():
        if system["kind"] == "kubernetes":
            assert system.get("namespace"), f"system {name} has no namespace"
    # Helm merges an admin's site into the default one: the demo's system must not
    # join a centre's systems
    if rendered.values.get("site"):  # else the chart's demo site
        wanted = set(rendered.values["site"].get("systems") or {})
        assert set(site["systems"]) == wanted, "systems of the rendered site"


def run_check(site_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "site.yaml"
    path.write_text(site_text)
    return subprocess.run(
        [sys.executable, "-m", "backend.cli", "check", "--site", str(path), "--no-secrets"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_lablink_check_accepts_the_rendered_site(rendered: Rendered, tmp_path: Path) -> None:
    result = run_check(chart.site_text(rendered.objects), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is valid" in result.stdout
    assert str(len(rendered.site()["systems"])) in result.stdout


@pytest.mark.parametrize(
    ("site", "key"),
    [
        ({"default_system": "nowhere"}, "default_system"),
        ({"systems": {"cloud": {"flavors": None}}}, "flavors"),  # null: Helm drops the key
        ({"systems": {"cloud": {"port": 80}}}, "port"),
    ],
    ids=["default_system", "no flavors", "port 80"],
)
def test_a_broken_site_fails_at_render_or_at_check(
    site: dict[str, Any], key: str, tmp_path: Path
) -> None:
    import helm_python

    try:
        objects = chart.render(site_with(site))
    except helm_python.HelmError as exc:
        assert key in str(exc), str(exc)
        return
    result = run_check(chart.site_text(objects), tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert key in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_the_generated_schema_is_not_stale() -> None:
    generator = REPO / "docs" / "generate_chart_schema.py"
    assert generator.exists(), (
        "docs/generate_chart_schema.py writes helm/lablink/values.schema.json"
    )
    result = subprocess.run(
        [sys.executable, str(generator), "--check"], cwd=REPO, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    schema = yaml.safe_load((chart.CHART / "values.schema.json").read_text())
    assert schema.get("additionalProperties") is False


# -- upgrades keep the generated secrets (lookup) -------------------------------------


KEPT = {key: f"kept-{key}-" + "x" * 40 for key in SECRET_KEYS} | {
    "demo-password": "kept-demo-" + "y" * 40
}


def put_secret(kube: KubeApi, namespace: str, data: dict[str, str]) -> None:
    import httpx

    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": chart.SECRETS, "namespace": namespace},
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }
    with httpx.Client(base_url=kube.url, trust_env=False, timeout=10) as http:
        http.post(f"/api/v1/namespaces/{namespace}/secrets", json=body).raise_for_status()


def generated(objects: list[Obj]) -> dict[str, str]:
    return chart.secret_data(chart.one(objects, "Secret", chart.SECRETS))


def test_an_upgrade_keeps_the_secrets_lookup_finds(open_kube: KubeApi) -> None:
    put_secret(open_kube, chart.NAMESPACE, KEPT)
    objects = chart.render(None, is_upgrade=True, kube_apiserver=open_kube.url)
    assert generated(objects) == KEPT
    # and the explicit value wins over the kept one
    explicit = "explicit-hub-token-" + "z" * 40
    objects = chart.render(
        {"secrets": {"hubToken": explicit}}, is_upgrade=True, kube_apiserver=open_kube.url
    )
    assert generated(objects) == {**KEPT, "hub-token": explicit}


def test_without_a_secret_each_render_generates_new_ones(open_kube: KubeApi) -> None:
    first = generated(chart.render(None, namespace="fresh", kube_apiserver=open_kube.url))
    second = generated(chart.render(None, namespace="fresh", kube_apiserver=open_kube.url))
    offline = generated(chart.render(None))
    assert set(first) == set(second) == set(offline)
    for key in first:
        assert len({first[key], second[key], offline[key]}) == 3, key


def test_the_site_these_tests_change_renders_and_passes_check(tmp_path: Path) -> None:
    """The control for the typo and broken-site tests: CLOUD_SITE itself is fine."""
    objects = chart.render(site_with({}))
    assert set(chart.rendered_site(objects)["systems"]) == {"cloud"}
    result = run_check(chart.site_text(objects), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_centre_example_is_what_the_issue_asks_for() -> None:
    """docs/examples/values-centre.yaml: two HPC systems and a cloud one, OIDC, an
    external PostgreSQL and two backends (the other tests hold it to points 4 and 5)."""
    centre = Rendered("centre", CENTRE_EXAMPLE)
    kinds = sorted(s["kind"] for s in centre.site()["systems"].values())
    assert kinds.count("kubernetes") == 1 and len(kinds) - 1 >= 2, kinds
    backend = chart.one(centre.objects, "Deployment", "lablink-backend")
    assert backend["spec"]["replicas"] == 2
    assert chart.secret_ref(chart.env_of(chart.container_of(backend))["LABLINK_DATABASE_URL"])
    hub = chart.env_of(chart.container_of(chart.one(centre.objects, "Deployment", "lablink-hub")))
    assert hub["LABLINK_OIDC_ISSUER"].get("value", "").startswith("https://")
    assert chart.secret_ref(hub["LABLINK_OIDC_CLIENT_SECRET"])
    assert "LABLINK_DEMO_PASSWORD" not in hub


def test_every_key_of_values_yaml_is_commented_and_described() -> None:
    """An admin reads values.yaml: every key has a comment line right above it, and the
    schema (what `helm install` checks) describes every key but the site's own."""
    lines = (REPO / "helm" / "lablink" / "values.yaml").read_text().splitlines()
    bare = []
    for number, line in enumerate(lines, 1):
        key = re.match(r"^(\s*)([A-Za-z][\w-]*):", line)
        if not key:
            continue
        above = lines[number - 2].strip() if number > 1 else ""
        if not above.startswith("#"):
            bare.append(f"line {number}: {line.strip()}")
    assert bare == []

    schema = json.loads((REPO / "helm" / "lablink" / "values.schema.json").read_text())

    def undescribed(node: dict[str, Any], path: str) -> list[str]:
        out = []
        for name, sub in (node.get("properties") or {}).items():
            where = f"{path}.{name}".lstrip(".")
            if where == "site":
                continue  # the backend's settings model, described in config-reference.md
            if not sub.get("description"):
                out.append(where)
            out += undescribed(sub, where)
        return out

    assert undescribed(schema, "") == []
