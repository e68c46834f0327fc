"""The three callables Airflow runs, and a command line that runs them without Airflow.

Each callable validates its parameters, asks the configured backend to run
the work (in-process, or in Kubernetes pods through kubetorch), and hands a
URI to the next task through XCom. No torch is imported here.

    python -m kubetorch_example.tasks all --epochs 1            # the whole pipeline, locally
    python -m kubetorch_example.tasks train --backend kubernetes --run-id my-run
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Any, Mapping

from kubetorch_example import storage
from kubetorch_example.backends import CLASSIFIER, EVALUATE, PREPARE_DATASET, TRAINER, get_backend
from kubetorch_example.config import DOWNLOAD, FIELDS, ConfigError, RunConfig, Settings, from_params
from kubetorch_example.curve import training_curve_svg
from kubetorch_example.mirror import check_source

DAG_ID = "mnist_training_pipeline"
FAIL_AFTER_EPOCH_ENV = "MNIST_FAIL_AFTER_EPOCH"  # fault injection for tests; unset in real runs

log = logging.getLogger("kubetorch_example")


class QualityGateError(RuntimeError):
    """The trained model is not good enough to deploy."""


class InjectedFault(RuntimeError):
    """Raised on purpose (MNIST_FAIL_AFTER_EPOCH) to test resume-on-retry."""


@dataclass(frozen=True)
class Run:
    """One pipeline run: validated parameters, deployment settings and its storage prefix."""

    config: RunConfig
    settings: Settings
    run_id: str

    @property
    def prefix(self) -> str:
        # Each DAG run writes under its own prefix, so runs never clobber each other. Characters that
        # are awkward in paths and keys become "_", plus a hash of the real id so "a:b" and "a_b" differ.
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", self.run_id)
        if safe != self.run_id:
            safe += "-" + storage.sha256(self.run_id.encode())[:8]
        return storage.join(self.settings.storage_root, DAG_ID, safe)

    def uri(self, *parts: str) -> str:
        return storage.join(self.prefix, *parts)

    def service_name(self, step: str) -> str:
        """A DNS-safe kubetorch service name, unique per run and step."""
        suffix = re.sub(r"[^a-z0-9]", "", self.run_id.lower())[-12:] or "run"
        return f"mnist-{step}-{suffix}"

    @property
    def backend(self):
        return get_backend(self.config.backend, self.settings)


def start(params: Mapping[str, Any], run_id: str, conf: Mapping[str, Any] | None = None) -> Run:
    """Validate everything a task needs before it launches any compute."""
    run = Run(from_params(params, conf), Settings.from_env(), run_id)
    try:
        location = storage.parse(run.settings.storage_root)
    except ValueError as exc:
        raise ConfigError(f"MNIST_STORAGE_ROOT: {exc}") from exc
    if run.config.backend == "kubernetes" and location.scheme == "file":
        raise ConfigError(
            f"MNIST_STORAGE_ROOT={run.settings.storage_root!r} is a local folder, which pods cannot write. "
            "Set it to s3://your-bucket/prefix for the kubernetes backend."
        )
    storage.check_writable(run.settings.storage_root)
    log.info("run %s: backend=%s, artifacts under %s", run_id, run.config.backend, run.prefix)
    return run


# [START preprocess_step]
def run_preprocess(run: Run) -> str:
    """Turn MNIST into one tensor artifact; return its manifest URI."""
    check_source(run.config.data_source, run.config.backend)  # missing mirror or bad md5: fail before any pod
    manifest = run.backend.call(
        PREPARE_DATASET, run.service_name("preprocess"),
        data_source=run.config.data_source, output_uri=run.uri("dataset"),
    )
    log.info("dataset: %s train / %s test digits -> %s", manifest["counts"]["train"], manifest["counts"]["test"],
             manifest["uri"])
    return manifest["uri"]
# [END preprocess_step]


def _latest_checkpoint(run: Run) -> dict | None:
    pointer = run.uri("checkpoints", "latest.json")
    return storage.read_json(pointer) if storage.exists(pointer) else None


def _fail_after() -> int | None:
    value = os.environ.get(FAIL_AFTER_EPOCH_ENV)
    return int(value) if value else None


# [START train_step]
def run_train(run: Run, dataset_uri: str, progress=None) -> str:
    """Train on the backend's compute, one remote call per step; return the model manifest URI.

    A checkpoint is written after every epoch. If this run already has one (the
    task is being retried after a crash or preemption), training resumes from it.
    """
    config = run.config
    with run.backend.instance(TRAINER, run.service_name("train"), init_args=config.hyperparameters()) as trainer:
        info = trainer.load_data(dataset_uri)
        log.info("training on %s: %s train digits, %s epochs", info["device"], info["train"], config.epochs)
        latest = _latest_checkpoint(run)
        history = trainer.load_checkpoint(latest)["history"] if latest else []
        if latest:
            log.info("resuming after epoch %s from %s", latest["epoch"], latest["uri"])
        for epoch in range(latest["epoch"] + 1 if latest else 1, config.epochs + 1):
            metrics = {**trainer.train_model(), **trainer.test_model()}
            history = trainer.record(metrics)
            checkpoint = trainer.save_checkpoint(run.uri("checkpoints", f"epoch-{epoch:04d}.pt"))
            storage.write_json(run.uri("checkpoints", "latest.json"), checkpoint)  # only after the checkpoint is whole
            log.info("epoch %d/%d loss %.4f acc %.4f test_acc %.4f %.0f samples/s", epoch, config.epochs,
                     metrics["loss"], metrics["accuracy"], metrics["test_accuracy"], metrics["samples_per_s"])
            if progress:
                progress(epoch, config.epochs, metrics)
            if _fail_after() == epoch:
                raise InjectedFault(f"{FAIL_AFTER_EPOCH_ENV}={epoch}: failing on purpose after epoch {epoch}")
        model = trainer.save_model(run.uri("model", "model.pt"))
    return _write_model_manifest(run, dataset_uri, model, history, resumed_after=latest["epoch"] if latest else None)
# [END train_step]


def _write_model_manifest(run: Run, dataset_uri: str, model: dict, history: list[dict],
                          resumed_after: int | None) -> str:
    curve = storage.write_artifact(run.uri("model", "training_curve.svg"), training_curve_svg(history).encode())
    manifest = {
        "kind": "mnist-model",
        "model": model,
        "dataset": dataset_uri,
        "hyperparameters": run.config.hyperparameters(),
        "history": history,
        "resumed_after_epoch": resumed_after,
        "test_accuracy": history[-1]["test_accuracy"],
        "training_curve": curve,
        "uri": run.uri("model", "model.json"),
    }
    storage.write_json(manifest["uri"], manifest)
    log.info("model -> %s (test accuracy %.4f); training curve -> %s", model["uri"], manifest["test_accuracy"],
             curve["uri"])
    return manifest["uri"]


# [START deploy_step]
def run_deploy(run: Run, model_uri: str) -> dict:
    """Quality gate, then roll out the service and check its answers on real test digits."""
    manifest = storage.read_json(model_uri)
    score = run.backend.call(EVALUATE, run.service_name("evaluate"), model=manifest["model"],
                             dataset_uri=manifest["dataset"])
    if score["accuracy"] < run.config.min_accuracy:
        raise QualityGateError(
            f"test accuracy {score['accuracy']:.4f} is below min_accuracy {run.config.min_accuracy:.4f}: "
            "the model is not deployed. Train longer or tune learning_rate, or lower min_accuracy."
        )
    log.info("quality gate passed: accuracy %.4f >= %.4f", score["accuracy"], run.config.min_accuracy)
    samples = storage.read_json(storage.read_json(manifest["dataset"])["samples"]["uri"])
    name = run.settings.service_name
    with run.backend.instance(CLASSIFIER, name, init_args={"model": manifest["model"]}, keep=True) as service:
        answers = service.predict(samples["images"])["predictions"]
    wrong = sum(a != b for a, b in zip(answers, score["sample_predictions"]))
    if wrong:
        raise QualityGateError(f"service {name!r} disagrees with the evaluated model on {wrong} of "
                               f"{len(answers)} sample digits: the rollout is broken")
    return _write_summary(run, manifest, score, name)
# [END deploy_step]


def _write_summary(run: Run, manifest: dict, score: dict, service: str) -> dict:
    summary = {
        "run_id": run.run_id,
        "backend": run.config.backend,
        "artifacts": run.prefix,
        "dataset": manifest["dataset"],
        "model": manifest["uri"],
        "training_curve": manifest["training_curve"]["uri"],
        "test_accuracy": score["accuracy"],
        "min_accuracy": run.config.min_accuracy,
        "service": service if run.config.backend == "kubernetes" else None,
    }
    storage.write_json(run.uri("summary.json"), summary)
    storage.write_json(_latest_summary_uri(run.settings), summary)
    log.info("%s", format_summary(summary))
    return summary


def _latest_summary_uri(settings: Settings) -> str:
    return storage.join(settings.storage_root, DAG_ID, "latest.json")


def latest_summary(settings: Settings | None = None) -> dict:
    """The summary of the newest successful run under the storage root."""
    settings = settings or Settings.from_env()
    uri = _latest_summary_uri(settings)
    if not storage.exists(uri):
        raise ConfigError(f"no finished run under {settings.storage_root!r} (no {uri}); run the pipeline first, "
                          "or set MNIST_STORAGE_ROOT to where it wrote")
    return storage.read_json(uri)


def format_summary(summary: dict) -> str:
    serving = (
        f"service {summary['service']!r} is live (autoscaling 0..6 replicas)"
        if summary["service"]
        else f"serve it locally: python -m kubetorch_example.serve --model {summary['model']}"
    )
    return "\n".join([
        f"Pipeline run {summary['run_id']} ({summary['backend']} backend) succeeded.",
        f"  artifacts:      {summary['artifacts']}",
        f"  model:          {summary['model']}",
        f"  training curve: {summary['training_curve']}",
        f"  test accuracy:  {summary['test_accuracy']:.4f} (quality gate: >= {summary['min_accuracy']:.4f})",
        f"  {serving}",
    ])


# [START callables]
@contextlib.contextmanager
def no_retry_for_deterministic_failures():
    """A bad parameter or a model below the gate fails the same way every time: tell Airflow not to retry."""
    try:
        yield
    except (ConfigError, QualityGateError) as exc:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(str(exc)) from exc


def preprocess(params, run_id, dag_run=None):
    with no_retry_for_deterministic_failures():
        run = start(params, run_id, conf=dag_run.conf if dag_run else None)
        return run_preprocess(run)


def train(params, run_id, ti):
    with no_retry_for_deterministic_failures():
        run = start(params, run_id)
        return run_train(run, dataset_uri=ti.xcom_pull(task_ids="preprocess"))


def deploy(params, run_id, ti):
    with no_retry_for_deterministic_failures():
        run = start(params, run_id)
        return run_deploy(run, model_uri=ti.xcom_pull(task_ids="train"))
# [END callables]


# ---------------------------------------------------------------- command line


def _progress_bar(epoch: int, epochs: int, metrics: dict) -> None:
    if not sys.stderr.isatty():
        return
    done = int(30 * epoch / epochs)
    sys.stderr.write(f"\r[{'#' * done}{'.' * (30 - done)}] epoch {epoch}/{epochs} "
                     f"test_acc {metrics['test_accuracy']:.4f}" + ("\n" if epoch == epochs else ""))
    sys.stderr.flush()


def build_parser() -> argparse.ArgumentParser:
    d = RunConfig()
    parser = argparse.ArgumentParser(
        prog="python -m kubetorch_example.tasks",
        description="Run the MNIST pipeline's steps without Airflow, locally or on Kubernetes through kubetorch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("step", choices=["preprocess", "train", "deploy", "all", "summary"],
                        help="which step to run ('all' runs the three in order; 'summary' prints the latest run's)")
    parser.add_argument("--epochs", type=int, default=d.epochs, help="training epochs")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="training batch size")
    parser.add_argument("--learning-rate", type=float, default=d.learning_rate, help="peak SGD learning rate")
    parser.add_argument("--seed", type=int, default=d.seed, help="random seed (weights and shuffling)")
    parser.add_argument("--min-accuracy", type=float, default=d.min_accuracy,
                        help="quality gate: deploy fails below this test accuracy")
    parser.add_argument("--data-source", default=os.environ.get("MNIST_DATA_SOURCE", DOWNLOAD),
                        help="'download', a mirror folder/URI with the four MNIST .gz files, or a torchvision root "
                             "(env MNIST_DATA_SOURCE)")
    parser.add_argument("--backend", default=Settings.from_env().backend, choices=["local", "kubernetes"],
                        help="where the work runs (env MNIST_BACKEND)")
    parser.add_argument("--run-id", default=None,
                        help="names the run's artifact folder; reuse one to resume or to run a later step "
                             "(default: cli-<UTC time>)")
    parser.add_argument("--dataset-uri", default=None, help="train: dataset manifest (default: the run's own)")
    parser.add_argument("--model-uri", default=None, help="deploy: model manifest (default: the run's own)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate parameters, storage and data source, then stop before any compute")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.step == "summary":
        try:
            print(format_summary(latest_summary()))
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    params = {name: getattr(args, name) for name in FIELDS}
    run_id = args.run_id or dt.datetime.now(dt.timezone.utc).strftime("cli-%Y%m%dT%H%M%SZ")
    started = time.perf_counter()
    try:
        run = start(params, run_id)
        if args.dry_run:
            if args.step in ("preprocess", "all"):
                check_source(run.config.data_source, run.config.backend)  # run_preprocess checks it otherwise
            print(f"dry run: parameters, storage and data source are valid; artifacts would go to {run.prefix}")
            return 0
        dataset_uri = args.dataset_uri or run.uri("dataset", "dataset.json")
        model_uri = args.model_uri or run.uri("model", "model.json")
        if args.step in ("preprocess", "all"):
            dataset_uri = run_preprocess(run)
        if args.step in ("train", "all"):
            model_uri = run_train(run, dataset_uri, progress=_progress_bar)
        if args.step in ("deploy", "all"):
            run_deploy(run, model_uri)  # logs the run's summary
        else:
            print(f"{args.step} done; artifacts under {run.prefix}")
    except (ConfigError, QualityGateError, storage.StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        # Matched by name so that the local backend never needs kubetorch installed.
        if type(exc).__name__ != "KubernetesCredentialsError":
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wall time: {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
