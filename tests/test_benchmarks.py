"""The benchmark scripts run end to end (``--dry-run``, synthetic digits) and print their tables.

Each script runs in a subprocess, as a user runs it. Nothing here checks a
timing: only that each script finishes, and prints the table it promises.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from conftest import REPO, write_idx

BENCH = REPO / "benchmarks"
SCRIPTS = ["bench_training", "bench_accuracy", "bench_pipeline", "bench_dag_parse", "bench_inference", "run_all"]

EXPECTED = {  # script -> lines its stdout must hold
    "bench_training": [
        "| device | training | s/epoch (mean) | each epoch (s) | samples/s | test accuracy | original/ours |",
        "| cpu | original tutorial (DataLoader, PIL transforms, SGD lr=0.01) |",
        "| cpu | this project (SimpleTrainer defaults) |",
    ],
    "bench_accuracy": [
        "| seed | test accuracy | train accuracy (last epoch) | train + test s |",
        "| seeds | epochs | min | mean | max | all >= 0.98 |",
    ],
    "bench_pipeline": [
        "| phase | seconds | share of total | state |",
        "| **total (dag.test)** |",
    ],
    "bench_dag_parse": [
        "| parse | parses | mean s | min s | torch imported |",
    ],
    "bench_inference": [
        "| way | digits per call | calls | p50 ms | p95 ms | digits/s |",
        "| in-process predict (checks + model) | 1024 |",
        "| kubetorch HTTP server predict (JSON over loopback) | 1024 |",
    ],
}


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    """A torchvision root of synthetic digits: what --data-source takes besides a mirror or 'download'."""
    root = tmp_path_factory.mktemp("bench-mnist")
    write_idx(root / "MNIST" / "raw")
    return root


def run_script(name: str, *args: str, cwd) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MNIST_")}
    result = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--dry-run", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{name} exited {result.returncode}:\n{result.stderr[-4000:]}"
    return result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_benchmark_runs_and_prints_its_table(name, synthetic_root, tmp_path):
    out = run_script(name, "--data-source", str(synthetic_root), cwd=tmp_path)
    for line in EXPECTED[name]:
        assert line in out, f"{name}: {line!r} missing from:\n{out}"
    assert "Machine: " in out and "torch " in out and "DRY RUN" in out
    assert "| --- |" in out  # a Markdown table
    if name == "bench_dag_parse":
        rows = [line for line in out.splitlines() if line.startswith("| fresh") or line.startswith("| this")]
        assert rows and all(row.endswith("| no |") or row.endswith("| - |") for row in rows), out
    if name == "bench_inference":
        assert "answers for 1024 digits equal the in-process ones" in out
    if name == "bench_pipeline":
        assert "| **total (dag.test)** | **" in out and out.rstrip().count("| success |") == 4


@pytest.mark.slow
def test_run_all_passes_its_flags_through(synthetic_root, tmp_path):
    out = run_script("run_all", "--data-source", str(synthetic_root), "--only", "bench_accuracy", cwd=tmp_path)
    assert "## All benchmark tables" in out and "DRY RUN" in out
    assert "600 training / 200 test digits" in out  # the synthetic root's digits, not a download
    assert "Total: " in out and "FAILED" not in out


def test_dry_run_needs_no_data_source(tmp_path):
    # 'download' with --dry-run makes random digits: no network needed.
    out = run_script("bench_accuracy", "--data-source", "download", cwd=tmp_path)
    assert "| seeds | epochs | min | mean | max | all >= 0.98 |" in out


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_option_states_its_default(name):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"_benchmark_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        parser = module.build_parser()
    finally:
        sys.path.remove(str(BENCH))
    for action in parser._actions:
        if action.dest != "help":
            assert action.help and "default" in action.help, f"{name} {action.option_strings}: {action.help!r}"
    assert "--dry-run" in parser.format_help()
