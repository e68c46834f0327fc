"""Training speed: the original tutorial's loop against this project's SimpleTrainer, side by side.

Same model (SimpleNN), same batch size, same machine, same digits, one run:

* original: torchvision ``MNIST(root, transform=Compose([ToTensor(), Normalize((0.1307,), (0.3081,))]))``
  and ``DataLoader(batch_size=64, shuffle=True)``: each digit goes through PIL
  and the two transforms one at a time; each batch is moved to the device in
  the loop; plain SGD lr=0.01; ``loss.item()`` every step. As the tutorial wrote it.
* ours: ``SimpleTrainer()`` with its defaults, fed by ``load_data`` from a
  dataset made by ``prepare_dataset``: the whole dataset on the device,
  normalized once, sliced per step, no per-step sync.

Reports seconds per epoch (mean over --epochs, the first epoch included: no
warm-up epoch is skipped), samples/s, the ratio original/ours, and the test
accuracy each reaches after those epochs. Only the training loop is timed;
data loading and the test pass are not. On CPU, and on CUDA when available.

    python benchmarks/bench_training.py --data-source path/to/mnist-mirror
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import common


class OriginalTrainer:
    """The original tutorial's trainer: DataLoader with per-sample PIL transforms, SGD lr=0.01."""

    def __init__(self, root: str, batch_size: int, device: str, learning_rate: float = 0.01):
        import torch
        from torch import nn
        from torch.utils.data import DataLoader
        from torchvision import datasets, transforms

        from kubetorch_example.model import SimpleNN

        self.device = torch.device(device)
        self.model = SimpleNN().to(self.device)
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=learning_rate)
        transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
        train_data = datasets.MNIST(root, train=True, download=False, transform=transform)
        test_data = datasets.MNIST(root, train=False, download=False, transform=transform)
        self.train_loader = DataLoader(train_data, batch_size=batch_size, shuffle=True)
        self.test_loader = DataLoader(test_data, batch_size=batch_size)

    def train_epoch(self) -> float:
        self.model.train()
        running_loss = 0.0
        for images, labels in self.train_loader:
            images, labels = images.to(self.device), labels.to(self.device)
            self.optimizer.zero_grad()
            loss = self.criterion(self.model(images), labels)
            loss.backward()
            self.optimizer.step()
            running_loss += loss.item()
        return running_loss / len(self.train_loader)

    def test_accuracy(self) -> float:
        import torch

        self.model.eval()
        correct = total = 0
        with torch.no_grad():
            for images, labels in self.test_loader:
                images, labels = images.to(self.device), labels.to(self.device)
                correct += (self.model(images).argmax(1) == labels).sum().item()
                total += labels.size(0)
        return correct / total


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_original(root: str, device: str, epochs: int, batch_size: int, seed: int) -> dict:
    import torch

    torch.manual_seed(seed)
    trainer = OriginalTrainer(root, batch_size, device)
    n = len(trainer.train_loader.dataset)
    times = _time_epochs("original", device, epochs, trainer.train_epoch)
    return {"times": times, "n": n, "test_accuracy": trainer.test_accuracy()}


def time_ours(dataset_uri: str, device: str, epochs: int, batch_size: int, seed: int) -> dict:
    from kubetorch_example.trainer import SimpleTrainer

    # SimpleTrainer's defaults except epochs (which sizes its cosine schedule) and the device.
    trainer = SimpleTrainer(epochs=epochs, batch_size=batch_size, seed=seed, device=device)
    n = trainer.load_data(dataset_uri)["train"]
    times = _time_epochs("ours", device, epochs, trainer.train_model)
    return {"times": times, "n": n, "test_accuracy": trainer.test_model()["test_accuracy"]}


def _time_epochs(label: str, device: str, epochs: int, train_one_epoch) -> list[float]:
    """Seconds per call of ``train_one_epoch``, with the device synchronised around each."""
    times = []
    for epoch in range(1, epochs + 1):
        _sync(device)
        start = time.perf_counter()
        train_one_epoch()
        _sync(device)
        times.append(time.perf_counter() - start)
        common.progress(f"  {label}, {device}: epoch {epoch}/{epochs} {times[-1]:.1f} s")
    return times


def build_parser() -> argparse.ArgumentParser:
    import torch

    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument("--epochs", type=int, default=2,
                        help="epochs timed per trainer and device; the mean includes the first (default: 2)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size of both trainers (default: 64)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed for both trainers (default: 0)")
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"] if cuda else ["cpu"],
                        help="devices to time on (default: cpu, plus cuda when torch.cuda.is_available(); "
                             "here %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    epochs = 1 if args.dry_run else args.epochs

    from kubetorch_example.data import prepare_dataset

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        tmp = Path(tmp)
        source = common.data_source(args, tmp / "source")
        root = common.torchvision_root(source, tmp / "root")
        dataset_uri = prepare_dataset(source, str(tmp / "dataset"))["uri"]
        for device in args.devices:
            common.progress(f"timing {epochs} epoch(s) on {device}")
            results = {
                "original": time_original(root, device, epochs, args.batch_size, args.seed),
                "ours": time_ours(dataset_uri, device, epochs, args.batch_size, args.seed),
            }
            mean = {name: sum(r["times"]) / len(r["times"]) for name, r in results.items()}
            labels = {
                "original": "original tutorial (DataLoader, PIL transforms, SGD lr=0.01)",
                "ours": "this project (SimpleTrainer defaults)",
            }
            for name, r in results.items():
                rows.append([
                    device, labels[name], f"{mean[name]:.2f}",
                    ", ".join(f"{t:.2f}" for t in r["times"]),
                    f"{r['n'] / mean[name]:,.0f}", f"{r['test_accuracy']:.4f}",
                    f"{mean['original'] / mean[name]:.1f}x",
                ])
    headers = ["device", "training", "s/epoch (mean)", "each epoch (s)", "samples/s", "test accuracy",
               "original/ours"]
    notes = [
        f"{epochs} epoch(s) per row, batch size {args.batch_size}, {results['ours']['n']:,} training digits; "
        "the mean includes the first epoch (no warm-up skipped); only the training loop is timed.",
        "Test accuracy after those epochs: SimpleTrainer's defaults (lr 0.05, Nesterov, cosine over "
        f"{epochs} epoch(s)) vs the original's SGD lr=0.01.",
    ]
    if args.dry_run:
        notes.append("DRY RUN: tiny data, the numbers mean nothing.")
    common.report("Training: original tutorial vs this project", common.table(headers, rows), notes)


if __name__ == "__main__":
    main()
