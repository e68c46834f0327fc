"""The DAG file: loads cleanly, declares what it should, and validates its params."""

from __future__ import annotations

import pytest

from conftest import DAGS

DAG_ID = "mnist_training_pipeline"


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


@pytest.fixture(scope="module")
def dag(dagbag):
    return dagbag.get_dag(DAG_ID)


def test_dag_loads_without_errors_or_warnings(dagbag):
    assert dagbag.import_errors == {}
    assert dagbag.captured_warnings == {}
    assert list(dagbag.dag_ids) == [DAG_ID]


def test_three_tasks_in_order(dag):
    assert [t.task_id for t in dag.topological_sort()] == ["preprocess", "train", "deploy"]
    assert dag.get_task("train").upstream_task_ids == {"preprocess"}
    assert dag.get_task("deploy").upstream_task_ids == {"train"}


def test_dag_level_settings_are_dag_arguments_not_default_args(dag):
    assert dag.schedule is None
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert "kubetorch" in dag.tags and dag.doc_md
    assert "max_active_runs" not in dag.default_args and "catchup" not in dag.default_args


def test_tasks_retry_with_a_delay_and_time_out(dag):
    for task in dag.tasks:
        assert task.retries >= 1 and task.retry_delay.total_seconds() > 0
        assert task.execution_timeout is not None
        assert task.owner == "ml-platform"


def test_params_defaults_match_the_run_config(dag):
    from kubetorch_example.config import RunConfig

    defaults = RunConfig()
    params = dag.params
    for name in ("epochs", "batch_size", "learning_rate", "seed", "min_accuracy", "backend", "data_source"):
        assert params[name] == getattr(defaults, name), name


@pytest.mark.parametrize(
    "conf",
    [{"epochs": 0}, {"epochs": "five"}, {"batch_size": -1}, {"learning_rate": 0}, {"min_accuracy": 1.5},
     {"backend": "gpu"}, {"data_source": ""}],
)
def test_bad_params_are_rejected_by_airflow(dag, conf):
    from airflow.sdk.definitions.param import ParamsDict
    from airflow.sdk.exceptions import ParamValidationError

    params = ParamsDict(dag.params)
    with pytest.raises(ParamValidationError, match=next(iter(conf))):
        params.update(conf)  # the same check Airflow runs on a triggered run's conf
        params.validate()


def test_the_dag_file_imports_no_torch():
    import subprocess
    import sys

    code = (
        "import runpy, sys; runpy.run_path(sys.argv[1]);"
        "assert 'torch' not in sys.modules, 'the DAG file imported torch'"
    )
    result = subprocess.run([sys.executable, "-c", code, str(DAGS / "kubetorch_mnist_dag.py")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
