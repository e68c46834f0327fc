"""End to end: Airflow runs the real DAG (dag.test on SQLite) with the local backend on synthetic IDX data."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from conftest import DAGS
from kubetorch_example import storage, tasks


@pytest.fixture(scope="module")
def dag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    return bag.get_dag(tasks.DAG_ID)


@pytest.fixture
def artifacts(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MNIST_STORAGE_ROOT", str(tmp_path / "artifacts"))
    return tmp_path / "artifacts"


def _test(dag, **conf):
    """dag.test with every param given: dag.test leaves a run's conf in dag.params for the next call."""
    from kubetorch_example.config import RunConfig

    return dag.test(run_conf={**RunConfig(backend="local").__dict__, **conf})


def _states(run) -> dict:
    return {ti.task_id: ti.state for ti in run.get_task_instances()}


def _run_prefix(artifacts: Path, run) -> Path:
    return Path(storage.parse(tasks.Run(None, tasks.Settings(storage_root=str(artifacts)), run.run_id).prefix).path)


def test_the_dag_trains_and_deploys(dag, artifacts, mnist_root):
    run = _test(dag, epochs=2, batch_size=32, data_source=str(mnist_root), min_accuracy=0.8)
    assert run.state == "success", _states(run)

    prefix = _run_prefix(artifacts, run)
    summary = json.loads((prefix / "summary.json").read_text())
    assert summary["run_id"] == run.run_id and summary["backend"] == "local"
    assert summary["test_accuracy"] >= 0.8
    model = storage.read_json(summary["model"])
    assert [h["epoch"] for h in model["history"]] == [1, 2]
    for artifact in (model["model"], model["training_curve"]):
        storage.read_artifact(artifact)  # exists and matches its sha256
    assert (prefix / "checkpoints" / "epoch-0002.pt").is_file()
    assert (prefix / "model" / "training_curve.svg").read_text().startswith("<svg")
    latest = json.loads((artifacts / tasks.DAG_ID / "latest.json").read_text())
    assert latest == summary


def test_the_quality_gate_fails_the_deploy_task(dag, artifacts, mnist_root):
    # One tiny-learning-rate epoch cannot reach 99% accuracy: deploy must refuse the model.
    conf = {"epochs": 1, "learning_rate": 1e-6, "data_source": str(mnist_root), "min_accuracy": 0.99}
    run = _test(dag, **conf)
    assert run.state == "failed"
    assert _states(run) == {"preprocess": "success", "train": "success", "deploy": "failed"}
    (deploy,) = [ti for ti in run.get_task_instances() if ti.task_id == "deploy"]
    assert deploy.try_number == 1  # the gate fails the same way every time: no retries
    assert not (_run_prefix(artifacts, run) / "summary.json").exists()


def test_a_retried_train_task_resumes_from_its_last_checkpoint(dag, artifacts, mnist_root, monkeypatch):
    monkeypatch.setenv(tasks.FAIL_AFTER_EPOCH_ENV, "2")  # the first attempt dies after epoch 2
    train = dag.get_task("train")
    saved = train.retry_delay, train.retry_exponential_backoff
    train.retry_delay, train.retry_exponential_backoff = dt.timedelta(0), False
    try:
        run = _test(dag, epochs=4, batch_size=32, data_source=str(mnist_root), min_accuracy=0.5)
    finally:
        train.retry_delay, train.retry_exponential_backoff = saved
    assert run.state == "success", _states(run)
    (train_ti,) = [ti for ti in run.get_task_instances() if ti.task_id == "train"]
    assert train_ti.try_number == 2

    model = storage.read_json(str(_run_prefix(artifacts, run) / "model" / "model.json"))
    assert model["resumed_after_epoch"] == 2
    assert [h["epoch"] for h in model["history"]] == [1, 2, 3, 4]  # none lost, none repeated


def test_a_new_run_starts_fresh(dag, artifacts, mnist_root):
    conf = {"epochs": 1, "batch_size": 32, "data_source": str(mnist_root), "min_accuracy": 0.5}
    first, second = _test(dag, **conf), _test(dag, **conf)
    assert first.state == second.state == "success"
    assert _run_prefix(artifacts, first) != _run_prefix(artifacts, second)
    model = storage.read_json(str(_run_prefix(artifacts, second) / "model" / "model.json"))
    assert model["resumed_after_epoch"] is None


def test_the_command_line_runs_all_steps(artifacts, mnist_root, capsys):
    code = tasks.main(["all", "--epochs", "1", "--data-source", str(mnist_root), "--min-accuracy", "0.5",
                       "--run-id", "cli-test"])
    assert code == 0
    summary = json.loads((artifacts / tasks.DAG_ID / "cli-test" / "summary.json").read_text())
    assert summary["run_id"] == "cli-test"
    assert tasks.main(["summary"]) == 0
    assert "test accuracy" in capsys.readouterr().out


def test_the_command_line_draws_a_progress_bar_only_in_a_terminal(monkeypatch):
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    metrics = {"test_accuracy": 0.5}
    for stream, expected in ((Terminal(), "[###############...............] epoch 1/2"), (io.StringIO(), "")):
        monkeypatch.setattr("sys.stderr", stream)
        tasks._progress_bar(1, 2, metrics)
        assert stream.getvalue().strip().startswith(expected) and (expected or stream.getvalue() == "")
