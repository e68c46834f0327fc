"""Preprocess: MNIST -> one compact tensor artifact plus a JSON manifest.

Runs where torch is: in a CPU pod (kubernetes backend) or in-process (local).
The artifact holds uint8 images, int64 labels and the normalization
constants, so the trainer loads it straight into tensors on its device.
"""

from __future__ import annotations

import gzip
import io
import json
import tempfile
from pathlib import Path

import torch
from torchvision.datasets import MNIST

from kubetorch_example import mirror, storage
from kubetorch_example.transforms import normalization_constants

SAMPLE_DIGITS = 64  # test digits kept as JSON, for smoke-testing a served model without torch


def _load_splits(data_source: str, workdir: Path) -> dict[str, MNIST]:
    kind = mirror.source_kind(data_source)
    root, download = workdir, kind == "download"
    if kind == "root":
        root = Path(storage.parse(data_source).path)
    elif kind == "mirror":
        raw = workdir / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for name, data in mirror.read_mirror(data_source).items():
            (raw / name[: -len(".gz")]).write_bytes(gzip.decompress(data))
    return {split: MNIST(str(root), train=split == "train", download=download) for split in ("train", "test")}


def _tensor_bytes(tensors: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    return buffer.getvalue()


# [START prepare_dataset]
def prepare_dataset(data_source: str, output_uri: str) -> dict:
    """Read MNIST from ``data_source``; write ``dataset.pt``, ``samples.json`` and ``dataset.json`` under ``output_uri``.

    Returns the manifest (JSON-friendly), whose ``uri`` the trainer takes.
    """
    with tempfile.TemporaryDirectory(prefix="mnist-") as workdir:
        splits = _load_splits(data_source, Path(workdir))
    train, test = splits["train"], splits["test"]
    mean, std = normalization_constants(train.data)
    tensors = {
        "train_images": train.data.to(torch.uint8).contiguous(),
        "train_labels": train.targets.to(torch.int64).contiguous(),
        "test_images": test.data.to(torch.uint8).contiguous(),
        "test_labels": test.targets.to(torch.int64).contiguous(),
    }
    samples = {
        "images": tensors["test_images"][:SAMPLE_DIGITS].tolist(),
        "labels": tensors["test_labels"][:SAMPLE_DIGITS].tolist(),
    }
    manifest = {
        "kind": "mnist-dataset",
        "source": data_source,
        "counts": {"train": len(train), "test": len(test)},
        "mean": mean,
        "std": std,
        "dataset": storage.write_artifact(storage.join(output_uri, "dataset.pt"), _tensor_bytes(tensors)),
        "samples": storage.write_artifact(storage.join(output_uri, "samples.json"), json.dumps(samples).encode()),
        "uri": storage.join(output_uri, "dataset.json"),
    }
    storage.write_json(manifest["uri"], manifest)  # written last: its presence means the rest is complete
    return manifest
# [END prepare_dataset]


def load_dataset(manifest_uri: str) -> tuple[dict, dict]:
    """The manifest and its tensors, verified against the manifest's sha256."""
    manifest = storage.read_json(manifest_uri)
    tensors = torch.load(io.BytesIO(storage.read_artifact(manifest["dataset"])), weights_only=True)
    return manifest, tensors
