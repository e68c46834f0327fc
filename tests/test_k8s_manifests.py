"""The Kubernetes manifests and Helm values in k8s/, checked without a cluster.

* every object in k8s/rbac.yaml and k8s/networkpolicy.yaml is valid Kubernetes
  1.30 (kubernetes-validate, strict: unknown fields fail);
* the RBAC is least privilege: namespaced, no wildcards, only what
  `kubectl port-forward svc/kubetorch-controller` needs;
* the NetworkPolicies admit only Airflow task pods and kubetorch's own pods
  (evaluated with a small NetworkPolicy matcher on example pods);
* k8s/values.yaml validates against the official Airflow chart's values schema
  (jsonschema, draft-07), holds no literal secret, and agrees with the manifests.

The chart schema is looked up in $AIRFLOW_CHART_SCHEMA, else in
../shared/data/airflow-chart/values.schema.json next to the repository.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import kubernetes_validate
import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
RBAC = K8S / "rbac.yaml"
NETPOL = K8S / "networkpolicy.yaml"
VALUES = K8S / "values.yaml"
K8S_VERSION = "1.30"

# How the official Airflow chart names and labels things for release `airflow`
# (chart/files/pod-template-file.kubernetes-helm-yaml labels task pods).
AIRFLOW_NAMESPACE = "airflow"
AIRFLOW_RELEASE = "airflow"
WORKER_SA = f"{AIRFLOW_RELEASE}-worker"
WORKER_POD_LABELS = {"tier": "airflow", "component": "worker", "release": AIRFLOW_RELEASE}

# kubetorch 0.5: the label it puts on every workload pod
# (kubetorch/provisioning/constants.py KT_SERVICE_LABEL) and the chart's labels.
KT_SERVICE_LABEL = "kubetorch.com/service"
CONTROLLER_LABELS = {"app": "kubetorch-controller"}
DATA_STORE_LABELS = {"app": "kubetorch-data-store"}

# Everything any Role here may grant: what `kubectl port-forward svc/...` needs.
PORT_FORWARD_RULES = {
    ("", "services"): {"get"},
    ("", "pods"): {"get", "list"},
    ("", "pods/portforward"): {"create"},
}
ALLOWED_KINDS = {"ServiceAccount", "Role", "RoleBinding", "NetworkPolicy"}
REMOVED_CHART_ROLES = (
    "kubetorch-minimal-role",
    "kubetorch-configmap-reader",
    "kubetorch-core-service-reader",
    "kubetorch-tokenreview-creator",
)
# Values keys whose value would be a secret; *SecretName keys are fine.
SECRET_VALUE_KEYS = {
    "fernetkey",
    "apisecretkey",
    "webserversecretkey",
    "jwtsecret",
    "password",
    "pass",
    "postgrespassword",
    "brokerurl",
    "token",
    "secretkey",
}
REGISTRY_HOSTS = re.compile(r"docker\.io|ghcr\.io|nvcr\.io|gcr\.io|quay\.io|azurecr\.io|\.dkr\.ecr\.|registry\.k8s\.io")
ACCOUNT_ID = re.compile(r"(?<![\w.-])\d{12}(?![\w.-])")


# ----------------------------------------------------------------- loading ---


def load_docs(path: Path) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path.name} holds no YAML documents"
    return docs


@pytest.fixture(scope="module")
def rbac_docs() -> list[dict]:
    return load_docs(RBAC)


@pytest.fixture(scope="module")
def netpols() -> list[dict]:
    docs = load_docs(NETPOL)
    assert all(d["kind"] == "NetworkPolicy" for d in docs), "networkpolicy.yaml holds only NetworkPolicies"
    return docs


@pytest.fixture(scope="module")
def values() -> dict:
    data = yaml.safe_load(VALUES.read_text())
    assert isinstance(data, dict)
    return data


def env_of(values: dict) -> dict[str, str]:
    names = [e["name"] for e in values.get("env", [])]
    assert len(names) == len(set(names)), f"duplicate env names in values.yaml: {names}"
    return {e["name"]: e["value"] for e in values.get("env", [])}


def chart_schema_path() -> Path | None:
    env = os.environ.get("AIRFLOW_CHART_SCHEMA")
    path = Path(env) if env else REPO.parent / "shared" / "data" / "airflow-chart" / "values.schema.json"
    return path if path.is_file() else None


def airflow_pin() -> str:
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["airflow"]
    pins = [r.split("==", 1)[1].strip() for r in extra if r.replace(" ", "").startswith("apache-airflow==")]
    assert len(pins) == 1, f"pyproject's airflow extra must pin apache-airflow exactly once: {extra}"
    return pins[0]


# ------------------------------------------------- Kubernetes schema checks ---


@pytest.mark.parametrize("path", [RBAC, NETPOL], ids=lambda p: p.name)
def test_every_object_is_valid_kubernetes(path: Path) -> None:
    for doc in load_docs(path):
        # Raises ValidationError on unknown fields, wrong types or missing keys.
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_strict_validation_catches_a_typo(rbac_docs: list[dict]) -> None:
    """Guard for the test above: strict mode must reject a misspelt field."""
    role = next(d for d in rbac_docs if d["kind"] == "Role")
    broken = json.loads(json.dumps(role))
    broken["rules"][0]["verb"] = broken["rules"][0].pop("verbs")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


@pytest.mark.parametrize("path", [RBAC, NETPOL], ids=lambda p: p.name)
def test_only_namespaced_kinds_in_the_kubetorch_namespace(path: Path, values: dict) -> None:
    kt_namespace = env_of(values)["KT_NAMESPACE"]
    for doc in load_docs(path):
        assert doc["kind"] in ALLOWED_KINDS, f"{doc['kind']} {doc['metadata']['name']}: not allowed here"
        assert doc["metadata"].get("namespace") == kt_namespace, (
            f"{doc['kind']} {doc['metadata']['name']} must live in the kubetorch namespace {kt_namespace!r}"
        )


# ------------------------------------------------------------------- RBAC ----


def roles(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in ("Role", "ClusterRole")]


def bindings(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]


def test_no_cluster_wide_rbac(rbac_docs: list[dict]) -> None:
    kinds = {d["kind"] for d in rbac_docs}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}, kinds
    for binding in bindings(rbac_docs):
        assert binding["roleRef"]["kind"] == "Role", f"{binding['metadata']['name']} must bind a namespaced Role"


def test_no_wildcards_in_rules(rbac_docs: list[dict]) -> None:
    for role in roles(rbac_docs):
        for rule in role["rules"]:
            for field in ("verbs", "resources", "apiGroups", "resourceNames"):
                assert "*" not in rule.get(field, []), f"{role['metadata']['name']}: '*' in {field}"


def test_rules_grant_only_port_forward_access(rbac_docs: list[dict]) -> None:
    granted: dict[tuple[str, str], set[str]] = {}
    for role in roles(rbac_docs):
        for rule in role["rules"]:
            assert not rule.get("nonResourceURLs"), "no non-resource URLs"
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    key = (group, resource)
                    assert key in PORT_FORWARD_RULES, f"{role['metadata']['name']} grants {key}, not needed"
                    extra = set(rule["verbs"]) - PORT_FORWARD_RULES[key]
                    assert not extra, f"{role['metadata']['name']} grants {sorted(extra)} on {key}"
                    granted.setdefault(key, set()).update(rule["verbs"])
    # ...and everything port-forward needs is there, or laptops fail with 403.
    assert granted == PORT_FORWARD_RULES


def test_service_access_is_limited_to_the_controller(rbac_docs: list[dict]) -> None:
    for role in roles(rbac_docs):
        for rule in role["rules"]:
            if "services" in rule["resources"]:
                assert rule.get("resourceNames") == ["kubetorch-controller"], rule


def test_bindings_point_at_roles_defined_here(rbac_docs: list[dict]) -> None:
    defined = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in roles(rbac_docs)}
    assert bindings(rbac_docs), "the optional port-forward RoleBinding is missing"
    for binding in bindings(rbac_docs):
        ref = (binding["metadata"]["namespace"], binding["roleRef"]["name"])
        assert ref in defined, f"{binding['metadata']['name']} binds {ref}, which this file does not define"


def test_roles_removed_from_the_kubetorch_chart_are_not_used(rbac_docs: list[dict]) -> None:
    referenced = {b["roleRef"]["name"] for b in bindings(rbac_docs)} | {r["metadata"]["name"] for r in roles(rbac_docs)}
    assert not referenced & set(REMOVED_CHART_ROLES), referenced


def subjects(docs: list[dict]) -> list[dict]:
    return [s for b in bindings(docs) for s in b.get("subjects", [])]


def test_worker_service_account_gets_no_role(rbac_docs: list[dict], values: dict) -> None:
    worker_sa = values["workers"]["serviceAccount"]["name"]
    pod_sa = env_of(values)["MNIST_POD_SERVICE_ACCOUNT"]
    for subject in subjects(rbac_docs):
        if subject["kind"] == "ServiceAccount":
            assert subject["name"] not in (worker_sa, pod_sa), f"{subject} needs no Kubernetes permission"
    # The worker is covered by a comment instead, which names it.
    assert f"{AIRFLOW_NAMESPACE}/{worker_sa}" in RBAC.read_text()


def test_pod_service_account_exists_in_the_kubetorch_namespace(rbac_docs: list[dict], values: dict) -> None:
    env = env_of(values)
    accounts = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in rbac_docs if d["kind"] == "ServiceAccount"}
    assert (env["KT_NAMESPACE"], env["MNIST_POD_SERVICE_ACCOUNT"]) in accounts, accounts


# ------------------------------------------------------ NetworkPolicies ------


def selector_matches(selector: dict, labels: dict[str, str]) -> bool:
    """Kubernetes LabelSelector semantics ({} matches everything)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, vals = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in vals:
            return False
        if op == "NotIn" and key in labels and labels[key] in vals:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def admits(policy: dict, namespace: str, labels: dict[str, str]) -> bool:
    """Whether `policy` lets a pod (namespace, labels) in, per NetworkPolicy rules."""
    own_ns = policy["metadata"]["namespace"]
    for rule in policy["spec"].get("ingress", []):
        peers = rule.get("from")
        if not peers:  # missing or empty `from` admits every source
            return True
        for peer in peers:
            if "ipBlock" in peer:
                return True  # treat as open: pod IPs may fall in the block
            ns_sel = peer.get("namespaceSelector")
            if ns_sel is None:
                ns_ok = namespace == own_ns
            else:
                ns_ok = selector_matches(ns_sel, {"kubernetes.io/metadata.name": namespace})
            pod_ok = selector_matches(peer.get("podSelector") or {}, labels)
            if ns_ok and pod_ok:
                return True
    return False


def policy_for(netpols: list[dict], pod_labels: dict[str, str]) -> dict:
    matching = [p for p in netpols if selector_matches(p["spec"]["podSelector"], pod_labels)]
    assert len(matching) == 1, f"expected one policy selecting {pod_labels}, got {len(matching)}"
    return matching[0]


def test_policies_select_pods_and_restrict_ingress(netpols: list[dict]) -> None:
    for policy in netpols:
        spec = policy["spec"]
        name = policy["metadata"]["name"]
        assert spec["podSelector"].get("matchLabels") or spec["podSelector"].get("matchExpressions"), (
            f"{name}: an empty podSelector would cover every pod in the namespace"
        )
        assert spec.get("policyTypes") == ["Ingress"], name
        assert spec.get("ingress"), f"{name}: no ingress rules would deny everything"
        for rule in spec["ingress"]:
            assert rule.get("from"), f"{name}: a rule without `from` admits all sources"
            for peer in rule["from"]:
                assert "ipBlock" not in peer, f"{name}: ipBlock is not pod-identity based"
                assert peer.get("podSelector"), f"{name}: peer {peer} admits whole namespaces"


def test_controller_and_data_store_are_both_protected(netpols: list[dict]) -> None:
    policy_for(netpols, CONTROLLER_LABELS)
    policy_for(netpols, DATA_STORE_LABELS)


WORKER = (AIRFLOW_NAMESPACE, WORKER_POD_LABELS)
WORKLOAD_POD = ("kubetorch", {KT_SERVICE_LABEL: "mnist-classifier", "app": "mnist-classifier"})
STRANGERS = [
    pytest.param(AIRFLOW_NAMESPACE, {"tier": "airflow", "component": "scheduler", "release": "airflow"}, id="scheduler"),
    pytest.param(AIRFLOW_NAMESPACE, {"tier": "airflow", "component": "api-server", "release": "airflow"}, id="api-server"),
    pytest.param(AIRFLOW_NAMESPACE, {"tier": "airflow", "component": "worker", "release": "other"}, id="other-release"),
    pytest.param("default", WORKER_POD_LABELS, id="worker-labels-in-another-namespace"),
    pytest.param("default", {KT_SERVICE_LABEL: "x"}, id="kt-label-in-another-namespace"),
    pytest.param("kubetorch", {"app": "something-else"}, id="unlabelled-pod-in-kubetorch"),
]


@pytest.mark.parametrize("target", [CONTROLLER_LABELS, DATA_STORE_LABELS], ids=["controller", "data-store"])
def test_airflow_task_pods_and_workload_pods_get_in(netpols: list[dict], target: dict) -> None:
    policy = policy_for(netpols, target)
    assert admits(policy, *WORKER), "Airflow task pods must reach kubetorch"
    assert admits(policy, *WORKLOAD_POD), "kubetorch's workload pods must reach it"


@pytest.mark.parametrize("target", [CONTROLLER_LABELS, DATA_STORE_LABELS], ids=["controller", "data-store"])
@pytest.mark.parametrize(("namespace", "labels"), STRANGERS)
def test_other_pods_are_kept_out(netpols: list[dict], target: dict, namespace: str, labels: dict) -> None:
    assert not admits(policy_for(netpols, target), namespace, labels)


def test_matcher_flags_an_open_policy(netpols: list[dict]) -> None:
    """Guard for the matcher: an empty `from` must read as 'everyone'."""
    open_policy = json.loads(json.dumps(netpols[0]))
    open_policy["spec"]["ingress"] = [{}]
    assert admits(open_policy, "default", {})


def test_worker_selector_matches_the_release_in_values(netpols: list[dict], values: dict) -> None:
    """The `release` label the policies trust is the release the SA name comes from."""
    assert values["workers"]["serviceAccount"]["name"] == WORKER_SA
    for policy in netpols:
        releases = {
            peer["podSelector"]["matchLabels"]["release"]
            for rule in policy["spec"]["ingress"]
            for peer in rule["from"]
            if peer.get("namespaceSelector")
        }
        assert releases == {AIRFLOW_RELEASE}, policy["metadata"]["name"]


# -------------------------------------------------------------- values.yaml ---


def test_values_validate_against_the_chart_schema(values: dict) -> None:
    path = chart_schema_path()
    if path is None:
        pytest.skip(
            "Airflow chart values.schema.json not found: set AIRFLOW_CHART_SCHEMA or place it at "
            "../shared/data/airflow-chart/values.schema.json next to the repository"
        )
    schema = json.loads(path.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(values), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)
    # The schema's root accepts unknown keys, so a misspelt top-level key would pass.
    unknown = set(values) - set(schema["properties"])
    assert not unknown, f"top-level keys the chart does not know: {sorted(unknown)}"


def test_values_executor_image_and_version(values: dict) -> None:
    assert values["executor"] == "KubernetesExecutor"
    assert "executor" not in values.get("config", {}).get("core", {}), "set the executor via `executor:` only"
    assert values["airflowVersion"] == airflow_pin()
    images = values["images"]
    # KubernetesExecutor task pods use images.pod_template (or the defaults), not images.airflow.
    refs = {
        (images["airflow"]["repository"], images["airflow"]["tag"]),
        (images["pod_template"]["repository"], images["pod_template"]["tag"]),
        (values["defaultAirflowRepository"], values["defaultAirflowTag"]),
    }
    assert len(refs) == 1, f"every Airflow image must be the custom one: {refs}"
    repository, tag = refs.pop()
    assert isinstance(tag, str) and tag, "quote the tag so YAML keeps it a string"
    assert repository != "apache/airflow", "the stock image lacks kubetorch and the DAGs"


def test_values_env_for_the_dag(values: dict, netpols: list[dict]) -> None:
    env = env_of(values)
    assert env["MNIST_BACKEND"] == "kubernetes"
    assert env["MNIST_STORAGE_ROOT"].startswith("s3://")
    assert env["MNIST_SERVICE_NAME"] == "mnist-classifier"
    assert env["MNIST_TRAIN_IMAGE"] and env["MNIST_POD_SERVICE_ACCOUNT"]
    assert {p["metadata"]["namespace"] for p in netpols} == {env["KT_NAMESPACE"]}


def test_values_worker_service_account(values: dict) -> None:
    sa = values["workers"]["serviceAccount"]
    assert sa["create"] is True
    assert sa["name"] == WORKER_SA
    # kubetorch's client refuses to run without a mounted token (has_k8s_credentials).
    assert sa.get("automountServiceAccountToken", True) is True
    assert values["workers"].get("useWorkerDedicatedServiceAccounts", False) is False


def test_values_dags_baked_in_and_logs_kept(values: dict) -> None:
    assert values["dags"]["persistence"]["enabled"] is False
    assert values["dags"]["gitSync"]["enabled"] is False
    assert not values["dags"].get("mountPath"), "DAGs live at /opt/airflow/dags in the image"
    remote = str(values.get("config", {}).get("logging", {}).get("remote_logging", "")).lower() == "true"
    assert values["logs"]["persistence"]["enabled"] is True or remote, "task pod logs would vanish with the pods"


def test_values_no_default_admin_user(values: dict) -> None:
    for component in ("webserver", "apiServer"):
        assert values[component]["defaultUser"]["enabled"] is False, component


def test_values_secrets_come_from_existing_secrets(values: dict) -> None:
    for key in ("fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName", "webserverSecretKeySecretName"):
        assert isinstance(values.get(key), str) and values[key], f"{key} must name an existing Secret"
    assert values["data"]["metadataSecretName"]
    assert values["postgresql"]["enabled"] is False, "the bundled PostgreSQL uses a default password"


def walk(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, str(key), value
            yield from walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from walk(item, f"{path}/{i}")


def literal_secrets(values: dict) -> list[str]:
    found = []
    for path, key, value in walk(values):
        if key.lower() in SECRET_VALUE_KEYS and value not in (None, "", {}, []):
            found.append(f"{path}/{key}")
    for item in values.get("env", []):
        if re.search(r"PASSWORD|SECRET|TOKEN|_KEY$", item["name"], re.I) and item.get("value"):
            found.append(f"/env/{item['name']}")
    return found


def test_values_hold_no_literal_secret(values: dict) -> None:
    assert literal_secrets(values) == []


def test_secret_walker_finds_nested_literals(values: dict) -> None:
    """Guard for the walker: literals planted at several depths are all found."""
    planted = json.loads(json.dumps(values))
    planted["fernetKey"] = "x" * 44
    planted["data"]["metadataConnection"] = {"user": "airflow", "pass": "hunter2"}
    planted["env"].append({"name": "AWS_SECRET_ACCESS_KEY", "value": "abc"})
    assert sorted(literal_secrets(planted)) == ["/data/metadataConnection/pass", "/env/AWS_SECRET_ACCESS_KEY", "/fernetKey"]


@pytest.mark.parametrize("path", [RBAC, NETPOL, VALUES], ids=lambda p: p.name)
def test_no_registry_hostnames_or_account_ids(path: Path) -> None:
    text = path.read_text()
    assert not REGISTRY_HOSTS.search(text), REGISTRY_HOSTS.search(text)
    assert not ACCOUNT_ID.search(text), f"looks like a cloud account id: {ACCOUNT_ID.search(text)}"


def test_detect_secrets_finds_nothing() -> None:
    from detect_secrets import SecretsCollection
    from detect_secrets.settings import default_settings

    with default_settings():
        collection = SecretsCollection()
        for path in (RBAC, NETPOL, VALUES):
            collection.scan_file(str(path))
    assert collection.json() == {}
