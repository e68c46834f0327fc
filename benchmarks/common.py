"""What every benchmark script shares: the common flags, the data, the machine line, Markdown tables.

The scripts run as ``python benchmarks/<script>.py``, so this file is
importable as ``common`` from any of them. Nothing here imports torch at
module level (``bench_dag_parse.py`` must see a process without it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import struct
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DAGS = REPO / "dags"
DAG_FILE = DAGS / "kubetorch_mnist_dag.py"
sys.path.insert(0, str(DAGS))  # kubetorch_example, also without `pip install -e .`

DRY_RUN_DIGITS = (600, 200)  # train, test digits used by --dry-run


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-source", default=os.environ.get("MNIST_DATA_SOURCE", "download"),
        help="'download', a mirror folder/URI with the four MNIST .gz files, or a torchvision dataset root "
             "(folder with MNIST/raw); default: env MNIST_DATA_SOURCE, else 'download' "
             "(currently %(default)r)")
    parser.add_argument(
        "--dry-run", action="store_true",
        help="run end to end in seconds: the first %d train / %d test digits of --data-source (random digits "
             "if it is 'download', so no network is needed), one epoch, few repeats; "
             "the numbers mean nothing (default: off)" % DRY_RUN_DIGITS)


# ------------------------------------------------------------------ data


def torchvision_root(data_source: str, workdir: Path) -> str:
    """A torchvision dataset root (``<root>/MNIST/raw/*-ubyte``) holding ``data_source``'s digits.

    A root is used as it is; a mirror is checked and decompressed into
    ``workdir`` and 'download' downloads into it, both by the package's own
    ``data._load_splits`` (what ``prepare_dataset`` runs).
    """
    from kubetorch_example import mirror
    from kubetorch_example.data import _load_splits

    if mirror.source_kind(data_source) == "root":
        return data_source
    _load_splits(data_source, workdir)
    return str(workdir)


def _idx(tensor, labels: bool) -> bytes:
    """A tensor as an IDX file (MNIST's format): big-endian header, then uint8 values."""
    import torch

    n = len(tensor)
    header = struct.pack(">II", 0x801, n) if labels else struct.pack(">IIII", 0x803, n, 28, 28)
    return header + tensor.to(torch.uint8).contiguous().numpy().tobytes()


def tiny_root(data_source: str, workdir: Path, train: int = DRY_RUN_DIGITS[0], test: int = DRY_RUN_DIGITS[1]) -> str:
    """A torchvision root with the first ``train``/``test`` digits of ``data_source`` (random ones for 'download')."""
    import torch

    from kubetorch_example.data import _load_splits

    if data_source == "download":
        gen = torch.Generator().manual_seed(0)
        splits = {
            name: (torch.randint(0, 256, (n, 28, 28), generator=gen), torch.randint(0, 10, (n,), generator=gen))
            for name, n in (("train", train), ("test", test))
        }
    else:
        loaded = _load_splits(data_source, workdir / "full")
        splits = {name: (loaded[name].data[:n], loaded[name].targets[:n])
                  for name, n in (("train", train), ("test", test))}
    raw = workdir / "tiny" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, split in (("train", "train"), ("t10k", "test")):
        images, labels = splits[split]
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(images, labels=False))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(labels, labels=True))
    return str(workdir / "tiny")


def data_source(args, workdir: Path) -> str:
    """The data source a script uses: ``--data-source``, or a tiny copy of it with ``--dry-run``."""
    return tiny_root(args.data_source, workdir) if args.dry_run else args.data_source


# ------------------------------------------------------------------ output


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            pass
    return platform.processor() or platform.machine()


def machine(device: str | None = None) -> str:
    """One line describing this machine: CPU, cores, torch, device, GPU (imports torch)."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"Machine: {cpu_model()}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), "
            f"Python {platform.python_version()}, torch {torch.__version__}, device {device}, GPU {gpu}")


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table; floats are printed as they come (format them before)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def report(title: str, body: str, notes: list[str] = (), machine_line: str | None = None) -> None:
    """Print a section: title, table, notes, machine; on stdout (logs go to stderr)."""
    print(f"\n### {title}\n")
    print(body)
    print()
    for note in notes:
        print(note)
    print(machine_line or machine())
    sys.stdout.flush()


@contextlib.contextmanager
def stdout_to_stderr():
    """Point fd 1 (stdout) at stderr meanwhile: Airflow logs to stdout, and stdout must hold only the tables."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def progress(message: str) -> None:
    """Progress goes to stderr, so stdout holds only the tables."""
    print(message, file=sys.stderr, flush=True)
