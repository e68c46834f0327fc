"""What kube.py asks Kubernetes for: the manifests kubetorch renders from our kt.Compute objects.

``compute.manifest`` is the object kubetorch sends to its controller at
``.to()`` time, minus the fields it fills in then (name, selector, the
service label). It builds offline, so these tests need no cluster. The
Deployments and the Knative pod template are also checked against the
Kubernetes 1.30 OpenAPI schemas (kubernetes-validate, strict: unknown fields
fail).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import kubernetes_validate
import pytest

from kubetorch_example import backends, kube
from kubetorch_example.config import Settings

REPO = Path(__file__).resolve().parent.parent
K8S_VERSION = "1.30"
KT_SERVICE_LABEL = "kubetorch.com/service"
TTL_ANNOTATION = "kubetorch.com/inactivity-ttl"
GPU = "nvidia.com/gpu"
KNATIVE = "autoscaling.knative.dev/"

SETTINGS = Settings(
    image="registry.example.com/ml/mnist-train:2.9.1-cuda12.8",
    namespace="ml-pipelines",
    gpu_type="H100",
    pod_service_account="mnist-pods",
)
GPU_ROLES = ("train", "inference")
CPU_ROLES = ("preprocess", "evaluate")


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    return {role: copy.deepcopy(build(SETTINGS).manifest) for role, build in kube.COMPUTES.items()}


def pod_spec(manifest: dict) -> dict:
    return manifest["spec"]["template"]["spec"]


def container(manifest: dict) -> dict:
    (main,) = [c for c in pod_spec(manifest)["containers"] if c["name"] == "kubetorch"]
    return main


def all_annotations(manifest: dict) -> dict:
    return {**manifest["metadata"].get("annotations", {}), **manifest["spec"]["template"]["metadata"].get(
        "annotations", {})}


# ------------------------------------------------------------------ contents


def test_kinds(manifests):
    for role in ("preprocess", "train", "evaluate"):
        assert (manifests[role]["apiVersion"], manifests[role]["kind"]) == ("apps/v1", "Deployment"), role
    assert (manifests["inference"]["apiVersion"], manifests["inference"]["kind"]) == (
        "serving.knative.dev/v1", "Service")


def test_one_gpu_for_train_and_inference(manifests):
    for role in GPU_ROLES:
        resources = container(manifests[role])["resources"]
        assert resources["limits"][GPU] == "1", role
        assert resources["requests"][GPU] == "1", role
        assert pod_spec(manifests[role])["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}, role
        assert any(t["key"] == GPU for t in pod_spec(manifests[role])["tolerations"]), role


def test_no_gpu_for_preprocess_and_evaluate(manifests):
    for role in CPU_ROLES:
        resources = container(manifests[role])["resources"]
        assert GPU not in resources.get("limits", {}) and GPU not in resources.get("requests", {}), role
        assert resources["requests"] == {"cpu": "2", "memory": "4Gi"}, role
        spec = pod_spec(manifests[role])
        assert "nodeSelector" not in spec and not spec.get("tolerations"), role


def test_any_gpu_type_means_no_node_selector():
    for role in GPU_ROLES:
        manifest = kube.COMPUTES[role](Settings(gpu_type=None)).manifest
        assert container(manifest)["resources"]["limits"][GPU] == "1"
        assert "nodeSelector" not in pod_spec(manifest)


def test_image_namespace_and_service_account(manifests):
    for role, manifest in manifests.items():
        assert container(manifest)["image"] == SETTINGS.image, role
        assert manifest["metadata"]["namespace"] == "ml-pipelines", role
        assert pod_spec(manifest)["serviceAccountName"] == "mnist-pods", role
        assert {"name": "PYTHONUNBUFFERED", "value": "1"} in container(manifest)["env"], role


def test_without_a_pod_service_account_kubetorch_picks_its_own():
    manifest = kube.training_compute(Settings()).manifest
    assert pod_spec(manifest)["serviceAccountName"] == "kubetorch-service-account"
    assert manifest["metadata"]["namespace"] == "default"


def test_inactivity_ttl_on_batch_pods_only(manifests):
    assert manifests["train"]["metadata"]["annotations"][TTL_ANNOTATION] == "30m"
    assert manifests["preprocess"]["metadata"]["annotations"][TTL_ANNOTATION] == "15m"
    assert manifests["evaluate"]["metadata"]["annotations"][TTL_ANNOTATION] == "15m"
    # A serving endpoint scales to zero instead of being reaped for being idle.
    assert TTL_ANNOTATION not in all_annotations(manifests["inference"])


def test_knative_autoscaling_0_to_6_at_16_in_flight(manifests):
    inference = manifests["inference"]
    autoscaling = {k[len(KNATIVE):]: v for k, v in all_annotations(inference).items() if k.startswith(KNATIVE)}
    # kubetorch 0.5.1 renders only these three from autoscale(); concurrency= is dropped (kube.py says why).
    assert autoscaling == {"min-scale": "0", "max-scale": "6", "target": "16"}
    assert pod_spec(inference)["containerConcurrency"] == 16
    assert (kube.INFERENCE_MIN_REPLICAS, kube.INFERENCE_MAX_REPLICAS, kube.INFERENCE_CONCURRENCY) == (0, 6, 16)
    for role in ("preprocess", "train", "evaluate"):
        assert not any(k.startswith(KNATIVE) for k in all_annotations(manifests[role])), role
        assert "containerConcurrency" not in pod_spec(manifests[role]), role


# ---------------------------------------------------------------- validation


def as_applied(manifest: dict, name: str) -> dict:
    """The manifest with the fields kubetorch fills in at ``.to()`` time.

    ``ServiceManager._update_launchtime_manifest`` (provisioning/service_manager.py:305-350
    in 0.5.1) sets ``metadata.name``, the ``kubetorch.com/service`` label on the object and
    its pod template, and the Deployment's ``spec.selector.matchLabels`` (rendered as
    ``{"kubetorch.com/service": ""}`` until then). (kubernetes-validate's schemas accept
    null for these, so an unfilled manifest would pass too; filling them validates what
    is applied.) The ``kubetorch.com/username`` label stays as rendered: null unless
    KT_USERNAME (or ~/.kt/config.yaml) names a user.
    """
    obj = copy.deepcopy(manifest)
    obj["metadata"]["name"] = name
    for meta in (obj["metadata"], obj["spec"]["template"]["metadata"]):
        meta.setdefault("labels", {})[KT_SERVICE_LABEL] = name
    if obj["kind"] == "Deployment":
        assert obj["spec"]["selector"]["matchLabels"] == {KT_SERVICE_LABEL: ""}  # what kubetorch leaves to fill
        obj["spec"]["selector"]["matchLabels"][KT_SERVICE_LABEL] = name
    return obj


def knative_pod(manifest: dict, name: str) -> dict:
    """The Knative Service's pod template as a core/v1 Pod (containerConcurrency is a Knative-only field)."""
    applied = as_applied(manifest, name)
    spec = copy.deepcopy(applied["spec"]["template"]["spec"])
    assert spec.pop("containerConcurrency") == 16
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**applied["spec"]["template"]["metadata"], "name": name,
                     "namespace": applied["metadata"]["namespace"]},
        "spec": spec,
    }


@pytest.mark.parametrize("role", ["preprocess", "train", "evaluate"])
def test_deployments_are_valid_kubernetes(manifests, role):
    assert kubernetes_validate.validate(as_applied(manifests[role], f"mnist-{role}-run1"), K8S_VERSION,
                                        strict=True) == K8S_VERSION


def test_knative_pod_template_is_a_valid_pod(manifests):
    assert kubernetes_validate.validate(knative_pod(manifests["inference"], "mnist-classifier"), K8S_VERSION,
                                        strict=True) == K8S_VERSION


def test_validation_catches_mistakes(manifests):
    """The schema check above has teeth: a misspelled field, a wrong type or a missing required field fails it."""
    typo = as_applied(manifests["train"], "mnist-train-run1")
    typo["spec"]["template"]["spec"]["serviceAcountName"] = "mnist-pods"
    with pytest.raises(kubernetes_validate.ValidationError, match="serviceAcountName"):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)
    bad_type = as_applied(manifests["train"], "mnist-train-run1")
    bad_type["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad_type, K8S_VERSION, strict=True)
    with_concurrency = knative_pod(manifests["inference"], "mnist-classifier")
    with_concurrency["spec"]["containerConcurrency"] = 16
    with pytest.raises(kubernetes_validate.ValidationError, match="containerConcurrency"):
        kubernetes_validate.validate(with_concurrency, K8S_VERSION, strict=True)
    no_name = as_applied(manifests["train"], "mnist-train-run1")
    del no_name["spec"]["template"]["spec"]["containers"][0]["name"]  # a required field
    with pytest.raises(kubernetes_validate.ValidationError, match="'name' is a required property"):
        kubernetes_validate.validate(no_name, K8S_VERSION, strict=True)


# ------------------------------------------------------- no credentials, CLI


def test_kubernetes_backend_without_credentials_exits_2_with_the_hint(bucket, s3_env, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    assert not Path("/var/run/secrets/kubernetes.io/serviceaccount/token").exists(), (
        "this machine has an in-cluster service-account token, so kubetorch finds credentials")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KT_", "MNIST_", "KUBERNETES_")) and k != "KUBECONFIG"}
    env.update(
        MNIST_STORAGE_ROOT=f"s3://{bucket}/x",  # writable (loopback S3), so the storage check passes
        HOME=str(home),  # no ~/.kube/config, no ~/.kt/config.yaml
        KUBECONFIG=str(tmp_path / "no-such-kubeconfig"),
        PYTHONPATH=str(REPO / "dags"),
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "kubetorch_example.tasks", "preprocess", "--backend", "kubernetes"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr[-3000:]
    assert elapsed < 30
    assert "error: Kubernetes credentials not found" in result.stderr
    assert backends.CREDENTIALS_HINT in result.stderr
    assert "Traceback" not in result.stderr
    assert "preprocess done" not in result.stdout


def test_pods_accept_json_only_whatever_the_worker_env_says(monkeypatch):
    monkeypatch.setenv("KT_ALLOWED_SERIALIZATION", "json,pickle")
    for role, build in kube.COMPUTES.items():
        annotations = build(SETTINGS).manifest["metadata"]["annotations"]
        assert annotations["kubetorch.com/allowed-serialization"] == "json", role
