"""The Helm chart helm/lablink, rendered and taken apart (tests/test_helm_chart.py and
tests/test_helm_wiring.py).

``render`` renders the chart as ``helm template`` would (release ``lablink`` in the
namespace ``lablink``, offline: ``lookup`` finds nothing; with ``kube_apiserver`` it asks
that API server) and returns every object as a dict; the other functions pick the
objects apart::

    objects = chart.render(chart.VALUES_DIR / "values-full.yaml")
    hub = chart.one(objects, "Deployment", "lablink-hub")
    env = chart.env_of(chart.container_of(hub))
    site = chart.rendered_site(objects)

Values come as a file, a dict (deep-copied, never changed) or None (the chart's
defaults); ``merged`` puts changes on top of one of these. A template's ``fail`` and a
schema error raise ``helm_python.HelmError``; ``render_error`` returns its message.
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent.parent
CHART = REPO / "helm" / "lablink"
VALUES_DIR = REPO / "tests" / "helm"
RELEASE = "lablink"
NAMESPACE = "lablink"
# kubeVersion of Chart.yaml: the oldest and the newest Kubernetes the chart supports
KUBE_VERSIONS = ("1.29.0", "1.37.0")

SECRETS = f"{RELEASE}-secrets"
SITE_CONFIGMAP = f"{RELEASE}-site"
SITE_KEY = "site.yaml"
SITE_PATH = "/etc/lablink/site/site.yaml"
COMPONENTS = ("hub", "proxy", "backend", "tunnel", "userlab-manager", "devsite")
LAB_SELECTOR = {"app.kubernetes.io/managed-by": "lablink-userlab-manager"}
METADATA_ADDRESS = ipaddress.IPv4Address("169.254.169.254")

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "Pod")
# kinds of CRDs that kubernetes-validate has no schema for (apiVersion, kind): their
# shape is checked by tests of their own (tests/test_helm_metrics.py)
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

Values = Mapping[str, Any] | str | os.PathLike[str] | None
Obj = dict[str, Any]


# -- values ---------------------------------------------------------------------------


def values_of(source: Values) -> dict[str, Any]:
    """The values as a new dict: a YAML file's, a copy of a dict, or {} for None."""
    if source is None:
        return {}
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source))
    loaded = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
    return loaded if isinstance(loaded, dict) else {}


def chart_defaults() -> dict[str, Any]:
    """helm/lablink/values.yaml."""
    return values_of(CHART / "values.yaml")


def deep_merge(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` on top, as Helm merges values (dicts merge, the rest is
    replaced); neither argument is changed."""
    out = copy.deepcopy(dict(base))
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def merged(source: Values, changes: Mapping[str, Any]) -> dict[str, Any]:
    """The values of ``source`` with ``changes`` deep-merged on top."""
    return deep_merge(values_of(source), changes)


# -- rendering ------------------------------------------------------------------------


def load_chart() -> Any:
    import helm_python

    return helm_python.Chart.load(CHART)


def render_templates(
    values: Values = None,
    *,
    name: str = RELEASE,
    namespace: str = NAMESPACE,
    is_upgrade: bool = False,
    kube_apiserver: str | None = None,
) -> dict[str, list[Obj]]:
    """The objects of each template file (NOTES.txt and empty documents left out).

    With ``kube_apiserver`` the render is cluster-aware: ``lookup`` reads from that API
    server (helm_python sends it no credentials: give it an emulator without a token)."""
    import helm_python

    chart = load_chart()
    given = values_of(values)
    options: dict[str, Any] = {"name": name, "namespace": namespace}
    options["is_upgrade" if is_upgrade else "is_install"] = True
    if kube_apiserver is None:
        manifests = chart.render(given, **options)
    else:
        config = helm_python.Config(kube_apiserver=kube_apiserver, namespace=namespace)
        manifests = config.render(chart, given, **options)
    out: dict[str, list[Obj]] = {}
    for path, text in sorted(manifests.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        docs = [doc for doc in yaml.safe_load_all(text) if doc]
        if docs:
            out[path] = docs
    return out


def render(values: Values = None, **options: Any) -> list[Obj]:
    """Every object the chart renders with ``values`` (see ``render_templates``)."""
    return [obj for docs in render_templates(values, **options).values() for obj in docs]


def render_error(values: Values = None, **options: Any) -> str:
    """The message of the error the render raises; AssertionError when it renders."""
    import helm_python

    try:
        render_templates(values, **options)
    except helm_python.HelmError as exc:
        return str(exc)
    raise AssertionError("the chart rendered, and an error was expected")


def lint_findings(values: Values = None, *, kube_version: str) -> list[str]:
    """``helm lint --strict --kube-version`` findings of severity warning or error."""
    import helm_python

    report = helm_python.lint(
        CHART,
        values_of(values),
        strict=True,
        namespace=NAMESPACE,
        kube_version=f"v{kube_version.removeprefix('v')}",
    )
    found = [
        f"{m.get('path', '?')}: {m.get('error', m)} (severity {m.get('severity')})"
        for m in report.get("messages") or []
        if (m.get("severity") or 0) >= 2
    ]
    return found + [str(e) for e in report.get("errors") or []]


def validation_errors(objects: list[Obj], kube_version: str) -> list[str]:
    """What kubernetes-validate (strict: no unknown fields) finds wrong in each object
    (the CRD_KINDS left out: it knows no CRD)."""
    import kubernetes_validate

    problems = []
    for obj in objects:
        if (obj.get("apiVersion"), obj.get("kind")) in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            problems.append(f"{ref(obj)} at {where or '(top)'}: {exc.message}")
        except (
            kubernetes_validate.SchemaNotFoundError,
            kubernetes_validate.InvalidSchemaError,
        ) as exc:
            problems.append(f"{ref(obj)}: {exc}")
    return problems


# -- picking objects ------------------------------------------------------------------


def ref(obj: Mapping[str, Any]) -> str:
    """``Kind namespace/name`` for messages."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    name = f"{namespace}/{meta.get('name')}" if namespace else str(meta.get("name"))
    return f"{obj.get('kind')} {name}"


def name_of(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def namespace_of(obj: Mapping[str, Any], default: str = NAMESPACE) -> str:
    """The object's namespace; one without goes to the release's (as Helm installs it)."""
    return str((obj.get("metadata") or {}).get("namespace") or default)


def objects_of(objects: list[Obj], kind: str) -> list[Obj]:
    return [obj for obj in objects if obj.get("kind") == kind]


def names_of(objects: list[Obj], kind: str) -> set[str]:
    return {name_of(obj) for obj in objects_of(objects, kind)}


def find(objects: list[Obj], kind: str, name: str, namespace: str | None = None) -> Obj | None:
    for obj in objects_of(objects, kind):
        if name_of(obj) == name and (namespace is None or namespace_of(obj) == namespace):
            return obj
    return None


def one(objects: list[Obj], kind: str, name: str, namespace: str | None = None) -> Obj:
    """The object, or AssertionError naming the objects of that kind there are."""
    found = find(objects, kind, name, namespace)
    if found is None:
        there = sorted(f"{namespace_of(o)}/{name_of(o)}" for o in objects_of(objects, kind))
        where = f" in {namespace}" if namespace else ""
        raise AssertionError(f"no {kind} {name}{where}; there are: {there}")
    return found


def workloads(objects: list[Obj]) -> list[Obj]:
    """The objects that have pods (Deployments, StatefulSets, ...)."""
    return [obj for obj in objects if obj.get("kind") in WORKLOAD_KINDS]


def pod_template(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The pod (metadata + spec) a workload makes: ``spec.template``, or the Pod itself."""
    if obj.get("kind") == "Pod":
        return {"metadata": obj.get("metadata") or {}, "spec": obj.get("spec") or {}}
    spec = obj.get("spec") or {}
    if obj.get("kind") == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    template: dict[str, Any] = spec.get("template") or {}
    return template


def pod_spec(obj: Mapping[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = pod_template(obj).get("spec") or {}
    return spec


def pod_labels(obj: Mapping[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = (pod_template(obj).get("metadata") or {}).get("labels") or {}
    return labels


def containers_of(obj: Mapping[str, Any], init: bool = True) -> list[dict[str, Any]]:
    """The containers of a workload's pod, init containers first (with ``init``)."""
    spec = pod_spec(obj)
    found = list(spec.get("initContainers") or []) if init else []
    return found + list(spec.get("containers") or [])


def container_of(obj: Mapping[str, Any], name: str | None = None) -> dict[str, Any]:
    """The named (main) container, or the only one."""
    main = containers_of(obj, init=False)
    if name is None:
        if len(main) != 1:
            raise AssertionError(f"{ref(obj)} has {len(main)} containers; name one")
        return main[0]
    for container in main:
        if container.get("name") == name:
            return container
    raise AssertionError(f"{ref(obj)} has no container {name}: {[c.get('name') for c in main]}")


def env_of(container: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each variable's EnvVar (``{"name", "value"}`` or ``{"name", "valueFrom"}``) by
    name; a name set twice keeps the last, as the kubelet does."""
    return {env["name"]: env for env in container.get("env") or []}


def literal_env(container: Mapping[str, Any]) -> dict[str, str]:
    """The variables with a literal value."""
    return {
        name: str(env.get("value", ""))
        for name, env in env_of(container).items()
        if "valueFrom" not in env
    }


def secret_ref(env: Mapping[str, Any]) -> tuple[str, str] | None:
    """(Secret, key) of an EnvVar from ``secretKeyRef``, else None."""
    ref_ = (env.get("valueFrom") or {}).get("secretKeyRef")
    return (ref_["name"], ref_["key"]) if ref_ else None


def volumes_of(obj: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod_spec(obj).get("volumes") or []}


def mounts_of(obj: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The container's mounts by mount path, each with its ``volume`` (the pod's
    volume, or the StatefulSet's volumeClaimTemplate, as ``{"claimTemplate": ...}``)."""
    volumes = volumes_of(obj)
    for claim in (obj.get("spec") or {}).get("volumeClaimTemplates") or []:
        volumes.setdefault(name_of(claim), {"name": name_of(claim), "claimTemplate": claim})
    return {
        m["mountPath"]: {**m, "volume": volumes.get(m["name"])}
        for m in container.get("volumeMounts") or []
    }


def secret_data(obj: Mapping[str, Any]) -> dict[str, str]:
    """A Secret's data, decoded (``data`` base64, ``stringData`` as is)."""
    out = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
    out.update({k: str(v) for k, v in (obj.get("stringData") or {}).items()})
    return out


def configmap_data(objects: list[Obj], name: str) -> dict[str, str]:
    data: dict[str, str] = one(objects, "ConfigMap", name).get("data") or {}
    return data


def rendered_site(objects: list[Obj]) -> dict[str, Any]:
    """The site file the chart renders (ConfigMap lablink-site, key site.yaml), parsed."""
    text = configmap_data(objects, SITE_CONFIGMAP)[SITE_KEY]
    site: dict[str, Any] = yaml.safe_load(text)
    return site


def site_text(objects: list[Obj]) -> str:
    return configmap_data(objects, SITE_CONFIGMAP)[SITE_KEY]


def strings_in(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(path, string) for every string (keys too) in a nested value."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield f"{path}.{key}(key)", str(key)
            yield from strings_in(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from strings_in(item, f"{path}[{i}]")
    elif isinstance(value, str):
        yield path, value


# -- label selectors and network policies ---------------------------------------------


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether a LabelSelector matches ``labels`` ({} selects everything; None nothing)."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def reaches_address(peer: Mapping[str, Any], address: ipaddress.IPv4Address) -> bool:
    """Whether a NetworkPolicyPeer's ipBlock lets ``address`` through (pod and namespace
    selectors pick pods, never an address outside the cluster)."""
    block = peer.get("ipBlock")
    if not block:
        return False
    network = ipaddress.ip_network(block["cidr"], strict=False)
    if address not in network:
        return False
    return not any(
        address in ipaddress.ip_network(cidr, strict=False) for cidr in block.get("except") or []
    )


def policy_ports(rule: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(protocol, port, endPort) of a rule; [] means every port."""
    return [
        (p.get("protocol", "TCP"), p.get("port"), p.get("endPort")) for p in rule.get("ports") or []
    ]


def only_dns(rule: Mapping[str, Any]) -> bool:
    ports = policy_ports(rule)
    return bool(ports) and all(port in (53, "dns", "dns-tcp") for _, port, _ in ports)
