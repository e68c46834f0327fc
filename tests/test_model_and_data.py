"""Model shapes, transforms, and preprocessing of real IDX files read by torchvision's own MNIST class."""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest
import torch
from torchvision import transforms as tv
from torchvision.datasets import MNIST

from conftest import IDX_FILES, write_idx
from kubetorch_example import mirror, storage
from kubetorch_example.config import ConfigError
from kubetorch_example.data import SAMPLE_DIGITS, load_dataset, prepare_dataset
from kubetorch_example.model import SimpleNN
from kubetorch_example.transforms import normalization_constants, normalize


def test_simple_nn_is_the_tutorials_784_128_64_10_network():
    model = SimpleNN()
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(128, 784), (128,), (64, 128), (64,), (10, 64), (10,)]
    assert model(torch.zeros(5, 1, 28, 28)).shape == (5, 10)
    assert model(torch.zeros(3, 28, 28)).shape == (3, 10)  # flattening happens in forward


def test_normalize_matches_torchvision_per_sample_transforms():
    images = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
    mean, std = 0.1307, 0.3081
    reference = tv.Compose([tv.ToTensor(), tv.Normalize((mean,), (std,))])
    expected = torch.stack([reference(img.numpy()) for img in images])
    assert torch.allclose(normalize(images, mean, std), expected, atol=1e-6)


def test_normalization_constants_are_those_of_the_pixels_in_0_1():
    images = torch.tensor([[[0, 255]]], dtype=torch.uint8)
    mean, std = normalization_constants(images)
    assert mean == pytest.approx(0.5)
    assert std == pytest.approx(0.7071, abs=1e-4)


def test_mirror_md5s_are_the_ones_torchvision_checks():
    assert dict(MNIST.resources) == mirror.MNIST_MD5


def test_prepare_dataset_from_a_torchvision_root(mnist_root, tmp_path):
    manifest = prepare_dataset(str(mnist_root), str(tmp_path / "out"))
    assert manifest["counts"] == {"train": 600, "test": 200}
    stored = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert stored == manifest
    blob = (tmp_path / "out" / "dataset.pt").read_bytes()
    assert manifest["dataset"]["sha256"] == hashlib.sha256(blob).hexdigest()

    _, tensors = load_dataset(manifest["uri"])
    reference = MNIST(str(mnist_root), train=False)
    assert torch.equal(tensors["test_images"], reference.data)
    assert torch.equal(tensors["test_labels"], reference.targets)
    assert tensors["train_images"].dtype == torch.uint8 and tensors["train_images"].shape == (600, 28, 28)
    assert manifest["mean"] == pytest.approx(float(tensors["train_images"].double().div(255).mean()))

    samples = storage.read_json(manifest["samples"]["uri"])
    assert len(samples["images"]) == SAMPLE_DIGITS and samples["labels"] == reference.targets[:SAMPLE_DIGITS].tolist()


def test_a_mirror_is_verified_against_torchvisions_md5s(tmp_path):
    write_idx(tmp_path / "mirror", gz=True)  # synthetic files: right names, wrong bytes
    with pytest.raises(ConfigError, match="train-images-idx3-ubyte.gz fails its checksum"):
        prepare_dataset(str(tmp_path / "mirror"), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "dataset.json").exists()


def test_a_mirror_missing_a_file_names_what_it_must_hold(tmp_path):
    paths = write_idx(tmp_path / "mirror", gz=True)
    paths["t10k-labels-idx1-ubyte"].unlink()
    with pytest.raises(ConfigError, match="not a usable MNIST mirror"):
        mirror.read_mirror(str(tmp_path / "mirror"))


def test_a_mirror_that_verifies_is_decompressed_and_read(tmp_path, monkeypatch):
    """The mirror path end to end, with the md5 table pointed at our synthetic files."""
    paths = write_idx(tmp_path / "mirror", gz=True)
    table = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in paths.values()}
    monkeypatch.setattr(mirror, "MNIST_MD5", table)
    manifest = prepare_dataset(str(tmp_path / "mirror"), str(tmp_path / "out"))
    _, tensors = load_dataset(manifest["uri"])
    raw = gzip.decompress(paths["t10k-labels-idx1-ubyte"].read_bytes())[8:]
    assert tensors["test_labels"].tolist() == list(raw)


def test_source_kinds(mnist_root, tmp_path):
    assert mirror.source_kind("download") == "download"
    assert mirror.source_kind(str(mnist_root)) == "root"
    assert mirror.source_kind(str(tmp_path)) == "mirror"
    assert set(IDX_FILES) == set(mirror.RAW_FILES)
