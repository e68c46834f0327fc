"""
### MNIST training pipeline: preprocess -> train on a GPU -> deploy

Three thin `PythonOperator` tasks. Each validates its parameters, then asks
the configured backend to run the work:

* **local** (default): in the Airflow worker's own process; no cluster needed.
* **kubernetes**: in pods launched by [kubetorch](https://www.run.house/kubetorch):
  a CPU pod preprocesses, a GPU pod trains (`kt.cls(SimpleTrainer)`), and an
  autoscaling GPU service (0..6 replicas, 16 requests each) serves the model.

Tasks hand each other artifact URIs through XCom. Artifacts go under
`$MNIST_STORAGE_ROOT/<dag id>/<run id>/`, so runs never clobber each other; a
retried `train` task resumes from its last checkpoint. `deploy` is a quality
gate: it fails, and serves nothing, if test accuracy is below `min_accuracy`.

Trigger with a conf such as `{"epochs": 5, "learning_rate": 0.05}`; unknown
keys are refused.
"""

# [START dag]
from __future__ import annotations

import datetime as dt
import os

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG, Param

from kubetorch_example import tasks
from kubetorch_example.config import BACKENDS, BOUNDS, DOWNLOAD, RunConfig

DEFAULTS = RunConfig()


def between(name: str, low_open: bool = False) -> dict:
    """JSON-schema bounds for a Param, from the same table RunConfig is validated against."""
    low, high = BOUNDS[name]
    return {"exclusiveMinimum" if low_open else "minimum": low, "maximum": high}


default_args = {
    "owner": "ml-platform",
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=1),
    "retry_exponential_backoff": True,
}

with DAG(
    dag_id=tasks.DAG_ID,
    description="Preprocess MNIST, train SimpleNN on a GPU, deploy an autoscaling inference service",
    doc_md=__doc__,
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=default_args,
    tags=["kubetorch", "pytorch", "mnist", "example"],
    params={
        "epochs": Param(DEFAULTS.epochs, type="integer", **between("epochs")),
        "batch_size": Param(DEFAULTS.batch_size, type="integer", **between("batch_size")),
        "learning_rate": Param(DEFAULTS.learning_rate, type="number", **between("learning_rate", low_open=True)),
        "seed": Param(DEFAULTS.seed, type="integer", **between("seed")),
        "min_accuracy": Param(DEFAULTS.min_accuracy, type="number", **between("min_accuracy")),
        "data_source": Param(os.environ.get("MNIST_DATA_SOURCE", DOWNLOAD), type="string", minLength=1,
                             description="'download', a mirror folder/URI with the four MNIST .gz files, "
                                         "or a torchvision dataset root"),
        "backend": Param(os.environ.get("MNIST_BACKEND", DEFAULTS.backend), type="string", enum=list(BACKENDS)),
    },
) as dag:
    preprocess = PythonOperator(
        task_id="preprocess",
        python_callable=tasks.preprocess,
        execution_timeout=dt.timedelta(minutes=30),
    )
    train = PythonOperator(
        task_id="train",
        python_callable=tasks.train,
        execution_timeout=dt.timedelta(hours=2),
        retries=3,  # pods get preempted; each retry resumes from the last checkpoint
    )
    deploy = PythonOperator(
        task_id="deploy",
        python_callable=tasks.deploy,
        execution_timeout=dt.timedelta(minutes=45),
    )

    preprocess >> train >> deploy
# [END dag]
