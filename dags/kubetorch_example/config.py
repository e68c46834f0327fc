"""Run parameters and deployment settings, validated before any compute starts.

Two kinds of configuration, kept apart on purpose:

* ``RunConfig``: what a user may change per run (DAG params, CLI flags).
* ``Settings``: how this deployment is wired (environment variables set once
  in the Helm values or your shell): backend, storage, images, namespace.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping

BACKENDS = ("local", "kubernetes")
DOWNLOAD = "download"


class ConfigError(ValueError):
    """A parameter or setting is wrong; the message names it and the fix."""


# [START run_config]
@dataclass(frozen=True)
class RunConfig:
    """What one pipeline run trains and how strictly it is judged.

    Defaults: epochs=5, batch_size=64, learning_rate=0.05 (SGD, Nesterov
    momentum 0.9, cosine decay to 0), seed=0, min_accuracy=0.97,
    data_source="download" (torchvision's mirrors), backend from
    ``MNIST_BACKEND`` (else "local").
    """

    epochs: int = 5
    batch_size: int = 64
    learning_rate: float = 0.05
    seed: int = 0
    min_accuracy: float = 0.97
    data_source: str = DOWNLOAD
    backend: str = "local"
# [END run_config]

    def hyperparameters(self) -> dict:
        """The JSON-friendly part the trainer needs."""
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "seed": self.seed,
        }


FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))

# The allowed range of each numeric field, shared with the DAG's Params. All bounds are
# inclusive except learning_rate's lower one (it must be > 0).
BOUNDS = {
    "epochs": (1, 1000),
    "batch_size": (1, 60000),
    "seed": (0, 2**31 - 1),
    "learning_rate": (0.0, 10.0),
    "min_accuracy": (0.0, 1.0),
}
_INT_FIELDS = ("epochs", "batch_size", "seed")


def _fail(field: str, expected: str, got: Any) -> ConfigError:
    return ConfigError(f"{field} must be {expected} (got {got!r}). Fix the '{field}' parameter and run again.")


def _check_int(field: str, value: Any) -> int:
    low, high = BOUNDS[field]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(field, f"an integer from {low} to {high}", value)
    return value


def _check_number(field: str, value: Any, low: float, high: float, low_open: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise _fail(field, f"a number in {bracket}{low}, {high}]", value)
    return float(value)


def validate(config: RunConfig) -> RunConfig:
    """Return ``config`` if every field is usable, else raise ConfigError naming the field."""
    for field in _INT_FIELDS:
        _check_int(field, getattr(config, field))
    _check_number("learning_rate", config.learning_rate, *BOUNDS["learning_rate"], low_open=True)
    _check_number("min_accuracy", config.min_accuracy, *BOUNDS["min_accuracy"], low_open=False)
    if config.backend not in BACKENDS:
        raise _fail("backend", f"one of {', '.join(BACKENDS)}", config.backend)
    if not isinstance(config.data_source, str) or not config.data_source.strip():
        raise _fail("data_source", f"'{DOWNLOAD}' or the URI of a mirror folder", config.data_source)
    return config


def from_params(params: Mapping[str, Any], conf: Mapping[str, Any] | None = None) -> RunConfig:
    """Build a validated RunConfig from DAG params (or CLI values).

    ``conf`` is the run's raw ``dag_run.conf``: Airflow accepts undeclared keys
    silently, so a typo such as ``{"epoch": 3}`` would train with the default.
    We refuse it instead.
    """
    unknown = sorted(set(conf or {}) - set(FIELDS))
    if unknown:
        raise ConfigError(
            f"unknown parameter(s) {', '.join(unknown)}; the known ones are {', '.join(FIELDS)}. "
            "Fix the spelling in the run's conf."
        )
    values = {name: params[name] for name in FIELDS if params.get(name) is not None}
    return validate(RunConfig(**values))


# [START settings]
@dataclass(frozen=True)
class Settings:
    """How this deployment is wired; every field comes from an environment variable.

    ========================== =========================================== ==============================
    variable                   meaning                                     default
    ========================== =========================================== ==============================
    MNIST_BACKEND              default backend: local or kubernetes        local
    MNIST_STORAGE_ROOT         where artifacts go: a folder or s3://b/p     ./artifacts
    KT_NAMESPACE               namespace of the kubetorch pods             default
    MNIST_TRAIN_IMAGE          PyTorch image for all pods                  pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime
    MNIST_GPU_TYPE             GPU type to ask for (optional)              (any)
    MNIST_SERVICE_NAME         stable name of the inference service        mnist-classifier
    MNIST_POD_SERVICE_ACCOUNT  service account of the pods (S3 via IAM)    (kubetorch's default)
    ========================== =========================================== ==============================
    """

    backend: str = "local"
    storage_root: str = "artifacts"
    namespace: str = "default"
    image: str = "pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime"
    gpu_type: str | None = None
    service_name: str = "mnist-classifier"
    pod_service_account: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        defaults = cls()
        return cls(
            backend=env.get("MNIST_BACKEND", defaults.backend),
            storage_root=env.get("MNIST_STORAGE_ROOT", defaults.storage_root),
            namespace=env.get("KT_NAMESPACE", defaults.namespace),
            image=env.get("MNIST_TRAIN_IMAGE", defaults.image),
            gpu_type=env.get("MNIST_GPU_TYPE") or None,
            service_name=env.get("MNIST_SERVICE_NAME", defaults.service_name),
            pod_service_account=env.get("MNIST_POD_SERVICE_ACCOUNT") or None,
        )
# [END settings]
