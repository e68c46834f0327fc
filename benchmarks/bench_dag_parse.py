"""DAG parse time, and proof that parsing the DAG file imports no torch.

Airflow's DAG processor re-parses every DAG file every few minutes, so the
DAG file must be cheap to import: here it imports Airflow, the package's
config and tasks modules, and nothing of torch. Measured three ways:

* fresh subprocess: a new interpreter imports Airflow (timed apart), then
  ``DagBag(<the DAG file>)`` is timed: what a DAG processor pays for a file
  whose imports it has not cached. Repeated --repeats times; and the whole
  process's wall time (interpreter start + Airflow import + parse).
* this process, first parse: ``DagBag`` with the package not yet imported.
* this process, again: ``DagBag`` re-executes the file with its imports cached.

After each parse, ``'torch' in sys.modules`` is recorded (the last column).

    python benchmarks/bench_dag_parse.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import common

CHILD = """
import json, sys, time
start = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
imported = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
parsed = time.perf_counter()
print("RESULT " + json.dumps({"import_s": imported - start, "parse_s": parsed - imported, "dags": list(bag.dag_ids),
                             "errors": {str(k): str(v) for k, v in bag.import_errors.items()},
                             "torch": "torch" in sys.modules}))
"""


def parse_in_subprocess(env: dict) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(common.DAG_FILE)], env=env, capture_output=True,
                          text=True, timeout=300)
    wall = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"parsing in a subprocess failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return {**json.loads(lines[-1][len("RESULT "):]), "wall_s": wall}


def parse_here() -> dict:
    from airflow.dag_processing.dagbag import DagBag

    start = time.perf_counter()
    bag = DagBag(dag_folder=str(common.DAG_FILE))
    seconds = time.perf_counter() - start
    return {"parse_s": seconds, "dags": list(bag.dag_ids), "errors": {str(k): str(v) for k, v in
                                                                       bag.import_errors.items()},
            "torch": "torch" in sys.modules}


def check(result: dict) -> None:
    if result["errors"] or result["dags"] != ["mnist_training_pipeline"]:
        raise SystemExit(f"the DAG file did not parse cleanly: dags {result['dags']}, errors {result['errors']}")


def stats(values: list[float]) -> tuple[str, str]:
    return f"{statistics.mean(values):.3f}", f"{min(values):.3f}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)  # --data-source is accepted for run_all.py and unused: parsing reads no data
    parser.add_argument("--repeats", type=int, default=10,
                        help="parses in fresh subprocesses, and warm parses in this process (default: 10)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    repeats = 2 if args.dry_run else args.repeats

    with tempfile.TemporaryDirectory(prefix="bench-dag-parse-") as home:
        env = {**os.environ, "AIRFLOW_HOME": home, "AIRFLOW__CORE__DAGS_FOLDER": str(common.DAGS),
               "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(common.DAGS), os.environ.get("PYTHONPATH")]))}
        os.environ.update({k: env[k] for k in ("AIRFLOW_HOME", "AIRFLOW__CORE__DAGS_FOLDER",
                                               "AIRFLOW__CORE__LOAD_EXAMPLES")})
        fresh = []
        for i in range(repeats):
            fresh.append(parse_in_subprocess(env))
            check(fresh[-1])
            common.progress(f"  subprocess {i + 1}/{repeats}: parse {fresh[-1]['parse_s']:.3f} s")

        assert "torch" not in sys.modules, "this process imported torch before parsing: the check would mean nothing"
        with common.stdout_to_stderr():
            start = time.perf_counter()
            import airflow.dag_processing.dagbag  # noqa: F401

            import_here = time.perf_counter() - start
            first = parse_here()
            warm = [parse_here() for _ in range(repeats)]
        for result in [first, *warm]:
            check(result)

    def torch_column(results):
        return "yes" if any(r["torch"] for r in results) else "no"

    rows = [
        ["fresh subprocess: DagBag(DAG file)", repeats, *stats([r["parse_s"] for r in fresh]), torch_column(fresh)],
        ["fresh subprocess: import Airflow first (not in the row above)", repeats,
         *stats([r["import_s"] for r in fresh]), "-"],
        ["fresh subprocess: whole process (interpreter + Airflow + parse)", repeats,
         *stats([r["wall_s"] for r in fresh]), torch_column(fresh)],
        ["this process: first DagBag (package not yet imported)", 1, *stats([first["parse_s"]]),
         torch_column([first])],
        ["this process: DagBag again (imports cached)", repeats, *stats([r["parse_s"] for r in warm]),
         torch_column(warm)],
    ]
    notes = [f"DAG file: dags/{common.DAG_FILE.name}; importing Airflow in this process took {import_here:.2f} s "
             "(not in any row). 'torch imported' is `'torch' in sys.modules` right after the parse."]
    if args.dry_run:
        notes.append("DRY RUN: few repeats, the numbers mean little.")
    common.report("DAG file parse time",
                  common.table(["parse", "parses", "mean s", "min s", "torch imported"], rows), notes)


if __name__ == "__main__":
    main()
