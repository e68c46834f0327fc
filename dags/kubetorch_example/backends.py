"""Where the work runs: in this process (local) or in Kubernetes pods (kubetorch).

This is the one place that decides. The task callables ask a backend to
``call`` a function or open an ``instance`` of a class, and get back either
the real object (local) or a kubetorch handle whose methods run in a pod
(kubernetes): the loop that drives training is the same for both.

Targets are named by module and attribute, not imported: building the
kubetorch handles never imports torch, so the Airflow image needs none.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from dataclasses import dataclass
from typing import Any, Iterator

from kubetorch_example import CODE_ROOT
from kubetorch_example.config import ConfigError, Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    module: str
    name: str
    role: str  # picks the compute: preprocess, train, evaluate or inference

    def resolve(self):
        return getattr(importlib.import_module(self.module), self.name)


PREPARE_DATASET = Target("kubetorch_example.data", "prepare_dataset", "preprocess")
TRAINER = Target("kubetorch_example.trainer", "SimpleTrainer", "train")
EVALUATE = Target("kubetorch_example.evaluate", "evaluate_model", "evaluate")
CLASSIFIER = Target("kubetorch_example.inference", "MnistClassifier", "inference")

CREDENTIALS_HINT = (
    "kubetorch found no Kubernetes credentials. From a laptop, point KUBECONFIG at a cluster that runs the "
    "kubetorch Helm chart; in Airflow, run the worker with a service account (see k8s/). "
    "Or run without a cluster: --backend local / MNIST_BACKEND=local."
)


class LocalBackend:
    """Runs everything in this process. Needs torch here; used when no cluster is configured."""

    name = "local"

    def call(self, target: Target, name: str, **kwargs) -> Any:
        return target.resolve()(**kwargs)

    @contextlib.contextmanager
    def instance(self, target: Target, name: str, init_args: dict, keep: bool = False) -> Iterator[Any]:
        yield target.resolve()(**init_args)


# [START kubernetes_backend]
class KubernetesBackend:
    """Runs each target as a kubetorch service on the compute its role asks for."""

    name = "kubernetes"

    def __init__(self, settings: Settings):
        self.settings = settings
        if CODE_ROOT.name in ("site-packages", "dist-packages"):
            raise ConfigError(
                f"the kubernetes backend syncs the folder holding kubetorch_example to the pods, and here that is "
                f"{CODE_ROOT}. Run from the repository's dags/ folder or an editable install (pip install -e .)."
            )

    def _deploy(self, module, target: Target):
        import kubetorch as kt

        from kubetorch_example import kube

        compute = kube.COMPUTES[target.role](self.settings)
        try:
            # Stable names (no username prefix) so another process can reach the service by name.
            return module.to(compute, prefix_username=False)
        except kt.KubernetesCredentialsError as exc:
            raise kt.KubernetesCredentialsError(f"{exc}\n{CREDENTIALS_HINT}") from None

    def _pointers(self, target: Target) -> tuple:
        return (str(CODE_ROOT), target.module, target.name)

    def function(self, target: Target, name: str):
        """An undeployed kubetorch function handle (for inspection and tests)."""
        import kubetorch as kt

        return kt.Fn(name=name, pointers=self._pointers(target), sync_dir=str(CODE_ROOT))

    def cls(self, target: Target, name: str, init_args: dict):
        """An undeployed kubetorch class handle (for inspection and tests)."""
        import kubetorch as kt

        return kt.Cls(name=name, pointers=self._pointers(target), init_args=init_args, sync_dir=str(CODE_ROOT))

    def call(self, target: Target, name: str, **kwargs) -> Any:
        remote = self._deploy(self.function(target, name), target)
        try:
            return remote(**kwargs)
        finally:
            _teardown(remote)

    @contextlib.contextmanager
    def instance(self, target: Target, name: str, init_args: dict, keep: bool = False) -> Iterator[Any]:
        remote = self._deploy(self.cls(target, name, init_args), target)
        try:
            yield remote
        finally:
            if not keep:
                _teardown(remote)
# [END kubernetes_backend]


def _teardown(remote) -> None:
    # Success or failure, free the GPU now; the inactivity TTL is only the backstop.
    try:
        remote.teardown()
    except Exception:  # a failed teardown must not hide the task's own error
        log.exception("could not tear down %s; its inactivity TTL will remove it", remote.name)


def get_backend(name: str, settings: Settings):
    if name == "local":
        return LocalBackend()
    if name == "kubernetes":
        return KubernetesBackend(settings)
    raise ConfigError(f"backend must be 'local' or 'kubernetes' (got {name!r})")
