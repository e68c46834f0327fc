"""The kubetorch compute each step runs on. Imports kubetorch, never torch.

Every setting comes from ``Settings`` (environment variables), so the same
DAG runs in any cluster. The kubetorch client must be the version of the
kubetorch Helm chart installed on the cluster (pinned in pyproject.toml).
"""

from __future__ import annotations

import kubetorch as kt

from kubetorch_example import CODE_ROOT  # noqa: F401  (kube.CODE_ROOT: the folder synced to the pods)
from kubetorch_example.config import Settings

# Pods need boto3 for s3:// artifacts; torch and torchvision come with the image.
POD_PACKAGES = ["boto3>=1.34"]

INFERENCE_MIN_REPLICAS = 0
INFERENCE_MAX_REPLICAS = 6
INFERENCE_CONCURRENCY = 16  # in-flight requests per replica


def image(settings: Settings) -> kt.Image:
    return kt.Image(image_id=settings.image).pip_install(POD_PACKAGES)


def _common(settings: Settings) -> dict:
    return {
        "image": image(settings),
        "namespace": settings.namespace,
        "service_account_name": settings.pod_service_account,
        "env_vars": {"PYTHONUNBUFFERED": "1"},
        # JSON only, whatever KT_ALLOWED_SERIALIZATION says in the caller's environment
        # (kubetorch 0.5.1 reads it when Compute() is built): a pickled request runs code on the pod.
        "allowed_serialization": ["json"],
    }


# [START computes]
def preprocess_compute(settings: Settings) -> kt.Compute:
    """A small CPU pod: reading MNIST needs torchvision, not a GPU."""
    return kt.Compute(cpus="2", memory="4Gi", launch_timeout=900, inactivity_ttl="15m", **_common(settings))


def training_compute(settings: Settings) -> kt.Compute:
    """One GPU. The inactivity TTL is only a backstop: the train task tears the service down itself."""
    return kt.Compute(
        gpus=1,
        gpu_type=settings.gpu_type,
        cpus="4",
        memory="16Gi",
        launch_timeout=1200,
        inactivity_ttl="30m",
        **_common(settings),
    )


def inference_compute(settings: Settings) -> kt.Compute:
    """One GPU per replica, autoscaling 0..6 replicas, at most 16 requests in flight per replica.

    kubetorch 0.5.1's ``autoscale(concurrency=...)`` does not reach the rendered
    Knative Service (only min/max-scale and target do), so the hard limit goes in
    through Compute's supported ``service_template`` hook as Knative's
    ``containerConcurrency``; ``target`` makes the autoscaler aim at the same number.
    """
    compute = kt.Compute(
        gpus=1,
        gpu_type=settings.gpu_type,
        cpus="2",
        memory="8Gi",
        launch_timeout=1200,
        inactivity_ttl=None,  # a serving endpoint must not be reaped for being idle; it scales to zero instead
        service_template={"spec": {"template": {"spec": {"containerConcurrency": INFERENCE_CONCURRENCY}}}},
        **_common(settings),
    )
    return compute.autoscale(
        min_scale=INFERENCE_MIN_REPLICAS,
        max_scale=INFERENCE_MAX_REPLICAS,
        concurrency=INFERENCE_CONCURRENCY,
        target=INFERENCE_CONCURRENCY,
    )
# [END computes]


COMPUTES = {
    "preprocess": preprocess_compute,
    "train": training_compute,
    "evaluate": preprocess_compute,
    "inference": inference_compute,
}
