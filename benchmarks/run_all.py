"""Run every benchmark in sequence and print their tables (``make benchmark`` runs this).

Each script runs in its own process, so one's imports and threads cannot
skew the next. Their progress and logs go to stderr as they run; their
tables (stdout) are printed as each finishes, and again all together at
the end. --data-source and --dry-run are passed to every script.

    python benchmarks/run_all.py --data-source path/to/mnist-mirror
    python benchmarks/run_all.py --dry-run          # seconds, random digits, no network
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["bench_dag_parse", "bench_training", "bench_accuracy", "bench_inference", "bench_pipeline"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-source", default=os.environ.get("MNIST_DATA_SOURCE", "download"),
                        help="passed to every script: 'download', a mirror folder/URI with the four MNIST .gz "
                             "files, or a torchvision dataset root; default: env MNIST_DATA_SOURCE, else "
                             "'download' (currently %(default)r)")
    parser.add_argument("--dry-run", action="store_true",
                        help="passed to every script: tiny data, one epoch, few repeats (default: off)")
    parser.add_argument("--only", nargs="+", choices=SCRIPTS, default=SCRIPTS,
                        help=f"run only these, in this order (default: all, in the order {' '.join(SCRIPTS)})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    outputs, failed = [], []
    started = time.perf_counter()
    for name in args.only:
        command = [sys.executable, str(HERE / f"{name}.py"), "--data-source", args.data_source]
        if args.dry_run:
            command.append("--dry-run")
        print(f"\n== {name} ==", file=sys.stderr, flush=True)
        start = time.perf_counter()
        result = subprocess.run(command, stdout=subprocess.PIPE, text=True)  # stderr streams through
        seconds = time.perf_counter() - start
        print(result.stdout, flush=True)
        outputs.append(result.stdout.strip())
        if result.returncode != 0:
            failed.append(f"{name} (exit {result.returncode})")
        print(f"== {name}: {seconds:.0f} s, exit {result.returncode} ==", file=sys.stderr, flush=True)

    print("\n\n## All benchmark tables\n")
    print("\n\n".join(outputs))
    print(f"\nTotal: {time.perf_counter() - started:.0f} s for {len(args.only)} scripts"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
