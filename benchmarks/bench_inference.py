"""Inference: latency of one predict call, and throughput of batched predict; in-process and over HTTP.

The model: ``SimpleTrainer`` trained briefly (--train-epochs, default 1) on
--data-source, saved with ``save_model``, the artifact the pipeline deploys.
The digits: the test split's, as JSON-style nested lists of raw pixels (what
a client sends).

Three ways of calling it, each timed per call:

* in-process ``MnistClassifier.predict(images)``: checks every pixel of the
  JSON input, then runs the model (what the service does per request);
* in-process ``MnistClassifier.classify(tensor)``: the model alone, on an
  already-checked tensor (the part ``predict`` adds is the difference);
* over HTTP: ``MnistClassifier`` behind kubetorch's own HTTP server on
  127.0.0.1 (``local_server.LocalServer``, as an inference pod runs it),
  called through kubetorch's client: JSON encode, POST, decode, both ways.

Latency: --calls calls of 1 digit, p50/p95. Throughput: batches of --batches
digits, --batch-calls calls each, digits/s. A few untimed warm-up calls come
first for every row.

    python benchmarks/bench_inference.py --data-source path/to/mnist-mirror
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import common

WARMUP = 3


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def time_calls(fn, batch, calls: int) -> list[float]:
    for _ in range(WARMUP):
        fn(batch)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn(batch)
        times.append(time.perf_counter() - start)
    return times


def row(path: str, size: int, times: list[float]) -> list:
    return [path, size, len(times), f"{1000 * percentile(times, 50):.2f}", f"{1000 * percentile(times, 95):.2f}",
            f"{size * len(times) / sum(times):,.0f}"]


def train_model(dataset_uri: str, epochs: int, out: Path, device: str | None) -> tuple[dict, float | None]:
    """A model as the pipeline saves it; trained ``epochs`` epochs (0: freshly initialised weights)."""
    from kubetorch_example.trainer import SimpleTrainer

    trainer = SimpleTrainer(epochs=max(epochs, 1), device=device)
    trainer.load_data(dataset_uri)
    for _ in range(epochs):
        trainer.train_model()
    accuracy = trainer.test_model()["test_accuracy"] if epochs else None
    return trainer.save_model(str(out / "model.pt")), accuracy


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument("--train-epochs", type=int, default=1,
                        help="epochs to train the model first; 0 serves freshly initialised weights (default: 1)")
    parser.add_argument("--calls", type=int, default=200, help="timed 1-digit calls per way (default: 200)")
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 1024],
                        help="batch sizes for throughput, at most 1024, the service's limit (default: 256 1024)")
    parser.add_argument("--batch-calls", type=int, default=20, help="timed calls per batch size and way (default: 20)")
    parser.add_argument("--device", default=None,
                        help="device of the model, in-process and in the server (default: cuda when available, "
                             "else cpu)")
    parser.add_argument("--no-server", action="store_true", help="skip the HTTP rows (default: off)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    calls, batch_calls, epochs = (5, 2, 1) if args.dry_run else (args.calls, args.batch_calls, args.train_epochs)

    import torch

    from kubetorch_example.data import load_dataset, prepare_dataset
    from kubetorch_example.inference import MnistClassifier
    from kubetorch_example.local_server import LocalServer

    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        tmp = Path(tmp)
        source = common.data_source(args, tmp / "source")
        dataset_uri = prepare_dataset(source, str(tmp / "dataset"))["uri"]
        common.progress(f"training the model for {epochs} epoch(s)")
        model, accuracy = train_model(dataset_uri, epochs, tmp / "model", args.device)
        _, tensors = load_dataset(dataset_uri)
        test = tensors["test_images"]
        sizes = [1, *args.batches]
        raw = {n: test[torch.arange(n) % len(test)] for n in sizes}  # repeats digits if the split is smaller
        images = {n: raw[n].tolist() for n in sizes}
        pixels = {n: raw[n].to(torch.float32) for n in sizes}  # as images_to_tensor hands them to classify

        classifier = MnistClassifier(model, device=args.device)
        device = str(classifier.device)
        ways = [("in-process predict (checks + model)", classifier.predict, images),
                ("in-process classify (model only)", classifier.classify, pixels)]
        for name, fn, inputs in ways:
            common.progress(f"timing {name}")
            for n in sizes:
                rows.append(row(name, n, time_calls(fn, inputs[n], calls if n == 1 else batch_calls)))
        here = classifier.predict(images[sizes[-1]])["predictions"]

        if not args.no_server:
            common.progress("starting kubetorch's HTTP server")
            start = time.perf_counter()
            init_args = {"model": model, **({"device": args.device} if args.device else {})}
            with LocalServer("kubetorch_example.inference", "MnistClassifier", init_args) as server:
                remote = server.connect()
                startup = time.perf_counter() - start
                name = "kubetorch HTTP server predict (JSON over loopback)"
                common.progress(f"timing {name}")
                for n in sizes:
                    rows.append(row(name, n, time_calls(remote.predict, images[n], calls if n == 1 else batch_calls)))
                same = remote.predict(images[sizes[-1]])["predictions"] == here
            notes.append(f"HTTP server: started and ready in {startup:.1f} s (not timed above); its answers for "
                         f"{sizes[-1]} digits {'equal' if same else 'DIFFER FROM'} the in-process ones.")

    trained = (f"trained {epochs} epoch(s) with SimpleTrainer's defaults (test accuracy {accuracy:.4f})" if epochs
               else "freshly initialised SimpleTrainer weights (untrained)")
    notes.insert(0, f"Model: {trained}, saved by save_model. p50/p95 per call; digits/s = digits / time over the "
                    f"timed calls; {WARMUP} warm-up calls per row are not timed. Digits are sent as raw pixels, "
                    "28x28 nested lists.")
    if args.dry_run:
        notes.append("DRY RUN: tiny data and few calls, the numbers mean nothing.")
    headers = ["way", "digits per call", "calls", "p50 ms", "p95 ms", "digits/s"]
    common.report("Inference latency and throughput", common.table(headers, rows), notes, common.machine(device))


if __name__ == "__main__":
    main()
