"""Pipeline wall time: the whole DAG through Airflow on this machine, split by task.

Runs ``dag.test()`` (Airflow's in-process runner, what ``airflow dags test``
does) with the local backend, on a fresh SQLite Airflow home and a fresh
artifact folder, both in a temporary directory. Each task's time is its task
instance's end_date - start_date; what is left of the total is Airflow's own
work around the tasks. Creating the database and parsing the DAG file are
timed apart, before the run, and are not in the total.

    python benchmarks/bench_pipeline.py --data-source path/to/mnist-mirror
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument("--epochs", type=int, default=5, help="training epochs (default: 5, the pipeline's default)")
    parser.add_argument("--min-accuracy", type=float, default=None,
                        help="the run's quality gate (default: the pipeline's, 0.97; 0 with --dry-run)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    epochs = 1 if args.dry_run else args.epochs

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        tmp = Path(tmp)
        source = common.data_source(args, tmp / "source")
        if source != "download" and "://" not in source:
            source = str(Path(source).resolve())  # Airflow's tasks may run from another folder
        # Airflow reads its configuration when first imported: set it all before.
        os.environ.update({
            "AIRFLOW_HOME": str(tmp / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(common.DAGS),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "MNIST_STORAGE_ROOT": str(tmp / "artifacts"),
            "MNIST_BACKEND": "local",
            "MNIST_DATA_SOURCE": source,
        })
        os.environ.pop("MNIST_FAIL_AFTER_EPOCH", None)
        with common.stdout_to_stderr():
            phases, run, wall = run_pipeline(source, epochs, args)
            states = {ti.task_id: ti for ti in run.get_task_instances()}
        summary_file = tmp / "artifacts" / "mnist_training_pipeline" / "latest.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None

    rows = [[name, f"{seconds:.2f}", "", ""] for name, seconds in phases]
    task_total = 0.0
    for task_id in ("preprocess", "train", "deploy"):
        ti = states.get(task_id)
        if ti is None or ti.start_date is None or ti.end_date is None:
            rows.append([task_id, "", "", ti.state if ti else "not run"])
            continue
        seconds = (ti.end_date - ti.start_date).total_seconds()
        task_total += seconds
        label = f"{task_id} ({epochs} epoch(s))" if task_id == "train" else task_id
        rows.append([label, f"{seconds:.1f}", f"{100 * seconds / wall:.0f}%", ti.state])
    rows.append(["Airflow around the tasks", f"{wall - task_total:.1f}", f"{100 * (wall - task_total) / wall:.0f}%",
                 ""])
    rows.append(["**total (dag.test)**", f"**{wall:.1f}**", "100%", run.state])
    notes = [
        "Setup rows are not in the total. Task times are the task instances' end_date - start_date; the first "
        "task's also holds Airflow's one-time start of dag.test's in-process task runner, and this process's first "
        "import of torch and torchvision.",
        f"Local backend, SQLite, {epochs} epoch(s), other parameters at their defaults"
        + (f"; test accuracy {summary['test_accuracy']:.4f}." if summary else "; the run wrote no summary."),
    ]
    if args.dry_run:
        notes.append("DRY RUN: tiny data, the numbers mean nothing.")
    common.report("Pipeline through Airflow (dag.test, local backend)",
                  common.table(["phase", "seconds", "share of total", "state"], rows), notes)
    if run.state != "success":
        sys.exit(f"the DAG run ended {run.state}: {({k: ti.state for k, ti in states.items()})}")


def run_pipeline(source: str, epochs: int, args):
    """Fresh DB, parse, dag.test; returns the setup phases, the DagRun and the run's wall time."""
    phases = []
    start = time.perf_counter()
    from airflow.utils import db

    db.resetdb()
    phases.append(("setup: import Airflow, create a fresh SQLite DB", time.perf_counter() - start))

    start = time.perf_counter()
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(common.DAG_FILE))
    if bag.import_errors:
        raise SystemExit(f"the DAG file does not parse: {bag.import_errors}")
    dag = bag.get_dag("mnist_training_pipeline")
    phases.append(("setup: parse the DAG file", time.perf_counter() - start))

    from kubetorch_example.config import RunConfig

    defaults = RunConfig()
    min_accuracy = args.min_accuracy if args.min_accuracy is not None else (0.0 if args.dry_run else
                                                                              defaults.min_accuracy)
    conf = {**defaults.__dict__, "backend": "local", "epochs": epochs, "data_source": source,
            "min_accuracy": min_accuracy}
    start = time.perf_counter()
    run = dag.test(run_conf=conf)
    return phases, run, time.perf_counter() - start


if __name__ == "__main__":
    main()
