"""Accuracy: the default run (5 epochs, default hyperparameters) on real MNIST, over several seeds.

Each seed trains ``SimpleTrainer`` from scratch exactly as the pipeline's
train step does (train_model then test_model, every epoch) and reports the
test accuracy after the last epoch; then min/mean/max over the seeds, and
whether every seed reaches --threshold. The dataset is prepared once with
``prepare_dataset``.

    python benchmarks/bench_accuracy.py --data-source path/to/mnist-mirror
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import common


def train_one(dataset_uri: str, seed: int, epochs: int, device: str | None) -> dict:
    """One default run with this seed: what the pipeline's train step computes, without the checkpoints."""
    from kubetorch_example.trainer import SimpleTrainer

    trainer = SimpleTrainer(epochs=epochs, seed=seed, device=device)
    trainer.load_data(dataset_uri)
    start = time.perf_counter()
    for _ in range(epochs):
        metrics = {**trainer.train_model(), **trainer.test_model()}
        trainer.record(metrics)
    return {"seed": seed, "test_accuracy": metrics["test_accuracy"], "train_accuracy": metrics["accuracy"],
            "seconds": time.perf_counter() - start, "device": str(trainer.device)}


def build_parser() -> argparse.ArgumentParser:
    from kubetorch_example.config import RunConfig

    defaults = RunConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds, 0..N-1 (default: 5)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs,
                        help=f"epochs per seed (default: {defaults.epochs}, the pipeline's default)")
    parser.add_argument("--threshold", type=float, default=0.98,
                        help="accuracy every seed should reach (default: 0.98)")
    parser.add_argument("--device", default=None,
                        help="training device (default: cuda when available, else cpu, as SimpleTrainer picks)")
    return parser


def main(argv: list[str] | None = None) -> None:
    from kubetorch_example.config import RunConfig

    defaults = RunConfig()
    args = build_parser().parse_args(argv)
    seeds, epochs = (2, 1) if args.dry_run else (args.seeds, args.epochs)

    from kubetorch_example.data import prepare_dataset

    with tempfile.TemporaryDirectory(prefix="bench-accuracy-") as tmp:
        source = common.data_source(args, Path(tmp) / "source")
        manifest = prepare_dataset(source, str(Path(tmp) / "dataset"))
        results = []
        for seed in range(seeds):
            results.append(train_one(manifest["uri"], seed, epochs, args.device))
            common.progress(f"  seed {seed}: test accuracy {results[-1]['test_accuracy']:.4f} "
                            f"({results[-1]['seconds']:.1f} s)")

    accs = [r["test_accuracy"] for r in results]
    per_seed = common.table(
        ["seed", "test accuracy", "train accuracy (last epoch)", "train + test s"],
        [[r["seed"], f"{r['test_accuracy']:.4f}", f"{r['train_accuracy']:.4f}", f"{r['seconds']:.1f}"]
         for r in results],
    )
    summary = common.table(
        ["seeds", "epochs", "min", "mean", "max", f"all >= {args.threshold}"],
        [[len(accs), epochs, f"{min(accs):.4f}", f"{sum(accs) / len(accs):.4f}", f"{max(accs):.4f}",
          "yes" if min(accs) >= args.threshold else "no"]],
    )
    notes = [
        f"{manifest['counts']['train']:,} training / {manifest['counts']['test']:,} test digits; hyperparameters: "
        f"batch_size={defaults.batch_size}, learning_rate={defaults.learning_rate} (SGD, Nesterov momentum 0.9, "
        f"cosine decay over {epochs} epoch(s)).",
    ]
    if args.dry_run:
        notes.append("DRY RUN: tiny data, the numbers mean nothing.")
    common.report("Accuracy of the default run over seeds", per_seed + "\n\n" + summary, notes,
                  common.machine(results[0]["device"]))


if __name__ == "__main__":
    main()
