"""Every kind of wrong run parameter fails before any compute, naming the field and what is expected.

The runs use the kubernetes backend with no cluster credentials on purpose: if
a check let a bad value through, the step would reach kubetorch and fail with
KubernetesCredentialsError instead of the ConfigError/StorageError asserted here.
"""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException

from conftest import write_idx
from kubetorch_example import storage, tasks
from kubetorch_example.config import ConfigError, RunConfig, from_params

GOOD = {"epochs": 1, "batch_size": 64, "learning_rate": 0.05, "seed": 0, "min_accuracy": 0.5,
        "data_source": "download", "backend": "kubernetes"}

CASES = {
    # id: (param overrides, env overrides, conf, expected message)
    "epochs zero": ({"epochs": 0}, {}, None, r"epochs must be an integer from 1 to 1000 \(got 0\)"),
    "epochs a string": ({"epochs": "5"}, {}, None, r"epochs must be an integer .*got '5'"),
    "epochs a float": ({"epochs": 2.5}, {}, None, r"epochs must be an integer"),
    "batch size negative": ({"batch_size": -1}, {}, None, r"batch_size must be an integer from 1"),
    "learning rate zero": ({"learning_rate": 0}, {}, None, r"learning_rate must be a number in \(0.0, 10.0\]"),
    "learning rate nan": ({"learning_rate": float("nan")}, {}, None, r"learning_rate must be a number"),
    "min accuracy over 1": ({"min_accuracy": 1.5}, {}, None, r"min_accuracy must be a number in \[0.0, 1.0\]"),
    "seed negative": ({"seed": -1}, {}, None, r"seed must be an integer from 0"),
    "unknown backend": ({"backend": "gpu"}, {}, None, r"backend must be one of local, kubernetes \(got 'gpu'\)"),
    "unknown conf key": ({}, {}, {"epoch": 3}, r"unknown parameter\(s\) epoch; the known ones are epochs"),
    "unsupported data source": ({"data_source": "gs://b/mnist"}, {}, None, r"data_source: unsupported storage URI"),
    "missing mirror": ({"data_source": "s3://{bucket}/no-mirror"}, {}, None, r"not a usable MNIST mirror"),
    "mirror with bad checksums": ({"data_source": "s3://{bucket}/bad-mirror"}, {}, None, r"fails its checksum"),
    "local mirror with kubernetes": ({"data_source": "{tmp}"}, {}, None, r"pods cannot see"),
    "malformed storage root": ({}, {"MNIST_STORAGE_ROOT": "s3://Bad_Bucket/x"}, None,
                               r"MNIST_STORAGE_ROOT: malformed S3 URI"),
    "bucket does not exist": ({}, {"MNIST_STORAGE_ROOT": "s3://no-such-bucket-42/x"}, None,
                              r"bucket 'no-such-bucket-42' does not exist"),
    "local storage with kubernetes": ({}, {"MNIST_STORAGE_ROOT": "{tmp}/artifacts"}, None,
                                      r"MNIST_STORAGE_ROOT=.* is a local folder, which pods cannot write"),
}


class _DagRun:
    def __init__(self, conf):
        self.conf = conf


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_fails_before_any_compute(case, bucket, tmp_path, monkeypatch):
    overrides, env, conf, message = CASES[case]
    fill = {"bucket": bucket, "tmp": str(tmp_path)}
    # A mirror whose files have the right names but not MNIST's bytes.
    for path in write_idx(tmp_path / "mirror", gz=True).values():
        storage.write_bytes(f"s3://{bucket}/bad-mirror/{path.name}", path.read_bytes())
    monkeypatch.setenv("MNIST_STORAGE_ROOT", f"s3://{bucket}/artifacts")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(**fill))
    params = {**GOOD, **{k: v.format(**fill) if isinstance(v, str) else v for k, v in overrides.items()}}

    # A bad value fails the same way on every try, so Airflow is told not to retry it; storage may recover.
    with pytest.raises((AirflowFailException, storage.StorageError), match=message) as failure:
        tasks.preprocess(params=params, run_id="bad-input", dag_run=_DagRun(conf or {}))
    if isinstance(failure.value, AirflowFailException):
        assert isinstance(failure.value.__cause__, ConfigError)
    assert not storage.exists(f"s3://{bucket}/artifacts/{tasks.DAG_ID}/bad-input/dataset/dataset.json")


def test_the_command_line_reports_bad_input_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MNIST_STORAGE_ROOT", str(tmp_path / "artifacts"))
    assert tasks.main(["all", "--epochs", "0", "--backend", "local"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: epochs must be an integer") and "Traceback" not in err
    assert not (tmp_path / "artifacts").exists()


def test_dry_run_validates_and_stops(mnist_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MNIST_STORAGE_ROOT", str(tmp_path / "artifacts"))
    assert tasks.main(["all", "--dry-run", "--data-source", str(mnist_root), "--run-id", "dry"]) == 0
    assert "dry run" in capsys.readouterr().out
    assert not (tmp_path / "artifacts" / tasks.DAG_ID / "dry").exists()


def test_good_values_pass_and_none_means_default():
    config = from_params({"epochs": 3, "learning_rate": 1, "min_accuracy": 0, "backend": None})
    assert config == RunConfig(epochs=3, learning_rate=1.0, min_accuracy=0.0)


def test_the_kubernetes_backend_refuses_to_sync_a_whole_site_packages(tmp_path):
    """A non-editable install would make kubetorch rsync all of site-packages to every pod."""
    import shutil
    import subprocess
    import sys

    from conftest import DAGS

    site = tmp_path / "site-packages"
    shutil.copytree(DAGS / "kubetorch_example", site / "kubetorch_example")
    code = ("from kubetorch_example.backends import KubernetesBackend; from kubetorch_example.config import Settings;"
            "KubernetesBackend(Settings())")
    result = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(site), "PATH": ""},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "editable install" in result.stderr
