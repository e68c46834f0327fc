"""The Airflow side never needs torch: the DAG, the task callables and the kubetorch handles import without it.

Each check runs in a fresh interpreter where torch and torchvision cannot be
imported: a finder at the front of ``sys.meta_path`` refuses them and records
who asked. The Airflow image of a real deployment has no torch at all; this is
the same situation with this repo's venv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DAGS = REPO / "dags"
DAG_FILE = DAGS / "kubetorch_mnist_dag.py"

# Runs first in each subprocess: any import of torch/torchvision raises ImportError and is recorded,
# together with the files on the import's stack, so a test can say which code asked.
PRELUDE = textwrap.dedent(
    """
    import sys, traceback
    BLOCKED = ("torch", "torchvision")
    ATTEMPTS = []

    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                ATTEMPTS.append({"module": name, "stack": [f.filename for f in traceback.extract_stack()[:-1]]})
                raise ModuleNotFoundError(f"No module named {name!r} (blocked: this process has no torch)",
                                          name=name)
            return None

    assert not any(m.split(".")[0] in BLOCKED for m in sys.modules), "torch was imported before the prelude"
    sys.meta_path.insert(0, _NoTorch())
    """
)


def run_without_torch(body: str, tmp_path: Path) -> subprocess.CompletedProcess:
    home = tmp_path / "airflow-home"
    home.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": str(DAGS),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "HOME": str(tmp_path),  # no ~/.kt/config.yaml, no ~/.kube/config
        "KT_NAMESPACE": "default",  # else kubetorch may run `kubectl config view` for a namespace
    }
    for name in ("MNIST_BACKEND", "MNIST_STORAGE_ROOT", "KT_API_URL"):
        env.pop(name, None)
    script = PRELUDE + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=180)


AIRFLOW_SIDE = """
import json, sys

from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=DAG_FILE)  # examples are off: AIRFLOW__CORE__LOAD_EXAMPLES=False
dag = bag.dags.get("mnist_training_pipeline")

import kubetorch as kt
import kubetorch_example.backends
import kubetorch_example.kube
import kubetorch_example.local_server
import kubetorch_example.serve
import kubetorch_example.tasks
from kubetorch_example import kube
from kubetorch_example.backends import CLASSIFIER, EVALUATE, PREPARE_DATASET, TRAINER, KubernetesBackend
from kubetorch_example.config import Settings

settings = Settings()
computes = {role: build(settings) for role, build in kube.COMPUTES.items()}
backend = KubernetesBackend(settings)
trainer = backend.cls(TRAINER, "n", {"epochs": 1, "batch_size": 64, "learning_rate": 0.05, "seed": 0})
classifier = backend.cls(CLASSIFIER, "m", {"model": {"uri": "s3://b/model.pt", "sha256": "0" * 64}})
prepare = backend.function(PREPARE_DATASET, "n")
evaluate = backend.function(EVALUATE, "e")

print(json.dumps({
    "import_errors": {str(k): str(v) for k, v in bag.import_errors.items()},
    "dag_tasks": sorted(dag.task_ids) if dag else None,
    "computes": {role: [c.manifest["kind"], c.manifest["apiVersion"]] for role, c in computes.items()},
    "handles": [[type(h).__name__, h.callable_name, h._import_path] for h in (trainer, classifier, prepare, evaluate)],
    "trainer_init_args": trainer.init_args,
    "attempts": ATTEMPTS,
    "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED),
}))
"""


def test_airflow_side_imports_and_builds_handles_without_torch(tmp_path):
    result = run_without_torch(f"DAG_FILE = {str(DAG_FILE)!r}\n" + AIRFLOW_SIDE, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])

    assert report["import_errors"] == {}
    assert report["dag_tasks"] == ["deploy", "preprocess", "train"]
    assert report["computes"] == {
        "preprocess": ["Deployment", "apps/v1"],
        "train": ["Deployment", "apps/v1"],
        "evaluate": ["Deployment", "apps/v1"],
        "inference": ["Service", "serving.knative.dev/v1"],
    }
    assert report["handles"] == [
        ["Cls", "SimpleTrainer", "kubetorch_example.trainer"],
        ["Cls", "MnistClassifier", "kubetorch_example.inference"],
        ["Fn", "prepare_dataset", "kubetorch_example.data"],
        ["Fn", "evaluate_model", "kubetorch_example.evaluate"],
    ]
    assert report["trainer_init_args"] == {"epochs": 1, "batch_size": 64, "learning_rate": 0.05, "seed": 0}
    assert report["loaded"] == []
    # Nobody even tried: not this repo's code, not Airflow, not kubetorch.
    assert report["attempts"] == [], json.dumps(report["attempts"], indent=1)[:3000]


CONTROL = """
import json
outcomes = {}
for module in ("torch", "torchvision", "torch.nn", "kubetorch_example.trainer", "kubetorch_example.inference",
               "kubetorch_example.data", "kubetorch_example.evaluate"):
    try:
        __import__(module)
        outcomes[module] = "imported"
    except ImportError as exc:
        outcomes[module] = str(exc)
print(json.dumps({"outcomes": outcomes, "attempted": sorted({a["module"] for a in ATTEMPTS})}))
"""


def test_control_the_block_really_stops_torch(tmp_path):
    result = run_without_torch(CONTROL, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for module, outcome in report["outcomes"].items():
        assert "(blocked: this process has no torch)" in outcome, (module, outcome)
    assert {"torch", "torchvision"} <= set(report["attempted"])


def test_control_torch_is_importable_without_the_block(tmp_path):
    # So the control above fails because of the block, not because torch is missing here.
    result = subprocess.run([sys.executable, "-c", "import torch, kubetorch_example.trainer; print(torch.__version__)"],
                            env={**os.environ, "PYTHONPATH": str(DAGS)}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
