"""Every artifact is checked against the sha256 its manifest recorded, and no pickled code runs.

Corruption is done to the stored object itself (the file, or the S3 object
through boto3), behind storage's back, the way a bad disk, a partial copy or
someone else's upload would. Then the real readers are used: storage's
``read_artifact``, ``data.load_dataset``, ``inference.load_model`` /
``MnistClassifier`` and ``SimpleTrainer.load_checkpoint``.
"""

from __future__ import annotations

import io
import json
import pathlib
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kubetorch_example import storage
from kubetorch_example.data import load_dataset
from kubetorch_example.inference import MnistClassifier, load_model, save_model
from kubetorch_example.model import SimpleNN
from kubetorch_example.storage import IntegrityError, StorageError
from kubetorch_example.trainer import SimpleTrainer

# --- corrupting stored objects, bypassing storage -------------------------------------------------


def _raw_read(uri: str) -> bytes:
    loc = storage.parse(uri)
    if loc.scheme == "file":
        return Path(loc.path).read_bytes()
    import boto3

    return boto3.client("s3").get_object(Bucket=loc.bucket, Key=loc.path)["Body"].read()


def _raw_write(uri: str, data: bytes) -> None:
    loc = storage.parse(uri)
    if loc.scheme == "file":
        Path(loc.path).write_bytes(data)
        return
    import boto3

    boto3.client("s3").put_object(Bucket=loc.bucket, Key=loc.path, Body=data)


def flip_byte(uri: str, where: float = 0.5) -> None:
    """Flip the low bit of one byte of the stored object (at fraction ``where`` of its length)."""
    data = bytearray(_raw_read(uri))
    data[min(int(len(data) * where), len(data) - 1)] ^= 0x01
    _raw_write(uri, bytes(data))


def truncate(uri: str) -> None:
    data = _raw_read(uri)
    _raw_write(uri, data[: len(data) - 1])


CORRUPTIONS = {
    "first byte flipped": lambda uri: flip_byte(uri, 0.0),
    "middle byte flipped": lambda uri: flip_byte(uri, 0.5),
    "last byte flipped": lambda uri: flip_byte(uri, 1.0),
    "truncated by one byte": truncate,
    "emptied": lambda uri: _raw_write(uri, b""),
}


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "store")
    return f"s3://{request.getfixturevalue('bucket')}/store"


def _model_bytes(seed: int = 0) -> bytes:
    torch.manual_seed(seed)
    buffer = io.BytesIO()
    torch.save({"state_dict": SimpleNN().state_dict(), "mean": 0.13, "std": 0.31}, buffer)
    return buffer.getvalue()


# --- storage.read_artifact ----------------------------------------------------------------------


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_read_artifact_refuses_a_corrupted_object(root, corrupt):
    uri = storage.join(root, "run", "model.pt")
    entry = storage.write_artifact(uri, _model_bytes())
    assert entry == {"uri": uri, "sha256": storage.sha256(_model_bytes()), "bytes": len(_model_bytes())}
    assert storage.read_artifact(entry) == _model_bytes()
    corrupt(uri)
    with pytest.raises(IntegrityError) as info:
        storage.read_artifact(entry)
    assert uri in str(info.value) and entry["sha256"] in str(info.value)
    assert isinstance(info.value, StorageError)  # the CLI and tasks report it like any storage failure


def test_read_artifact_refuses_a_swapped_object(root):
    """A different, perfectly valid artifact put in its place (e.g. another run's model) is refused too."""
    ours = storage.write_artifact(storage.join(root, "a", "model.pt"), _model_bytes(seed=0))
    theirs = storage.write_artifact(storage.join(root, "b", "model.pt"), _model_bytes(seed=1))
    assert ours["bytes"] == theirs["bytes"]
    _raw_write(ours["uri"], _raw_read(theirs["uri"]))
    with pytest.raises(IntegrityError, match="a/model.pt"):
        storage.read_artifact(ours)


def test_torch_alone_would_load_a_flipped_bit_silently(tmp_path):
    """Why the sha256 matters: torch.load accepts a model with one flipped bit and returns different weights."""
    uri = str(tmp_path / "model.pt")
    entry = storage.write_artifact(uri, _model_bytes())
    flip_byte(uri, 0.5)  # lands in the tensor data
    blob = torch.load(uri, weights_only=True)
    torch.manual_seed(0)
    original = SimpleNN().state_dict()
    changed = sum(int((blob["state_dict"][k] != v).sum()) for k, v in original.items())
    assert changed == 1
    with pytest.raises(IntegrityError):
        load_model(entry, torch.device("cpu"))


# --- the real readers ----------------------------------------------------------------------------


@pytest.fixture
def dataset_copy(dataset_uri, tmp_path) -> str:
    """A private copy of the session's dataset artifact, safe to corrupt.

    The manifest records each artifact's absolute URI, so the copy's manifest is
    pointed at the copied files (otherwise it would still read the originals).
    """
    source = Path(storage.parse(dataset_uri).path).parent
    folder = shutil.copytree(source, tmp_path / "dataset")
    manifest = json.loads((folder / "dataset.json").read_text())
    for key in ("dataset", "samples"):
        manifest[key]["uri"] = str(folder / Path(manifest[key]["uri"]).name)
    manifest["uri"] = str(folder / "dataset.json")
    (folder / "dataset.json").write_text(json.dumps(manifest))
    return manifest["uri"]


@pytest.mark.parametrize("corrupt", [flip_byte, truncate], ids=["flipped", "truncated"])
def test_load_dataset_refuses_a_corrupted_dataset(dataset_copy, dataset_uri, corrupt):
    manifest, tensors = load_dataset(dataset_copy)  # the copy is good before we touch it
    assert tensors["train_images"].dtype == torch.uint8
    corrupt(manifest["dataset"]["uri"])
    with pytest.raises(IntegrityError, match="dataset.pt"):
        load_dataset(dataset_copy)
    load_dataset(dataset_uri)  # the shared session artifact is untouched


def test_trainer_load_data_refuses_a_corrupted_dataset(dataset_copy):
    flip_byte(json.loads(Path(dataset_copy).read_text())["dataset"]["uri"])
    with pytest.raises(IntegrityError, match="dataset.pt"):
        SimpleTrainer(epochs=1, device="cpu").load_data(dataset_copy)


def test_load_model_and_classifier_refuse_a_corrupted_model(root):
    torch.manual_seed(0)
    model = SimpleNN()
    uri = storage.join(root, "model", "model.pt")
    entry = save_model(model, 0.13, 0.31, uri)
    loaded, mean, std = load_model(entry, torch.device("cpu"))  # good before we touch it
    assert (mean, std) == (0.13, 0.31)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    flip_byte(uri)
    with pytest.raises(IntegrityError, match="model/model.pt"):
        load_model(entry, torch.device("cpu"))
    with pytest.raises(IntegrityError, match="model/model.pt"):
        MnistClassifier(entry, device="cpu")
    with pytest.raises(IntegrityError, match="model/model.pt"):
        SimpleTrainer.from_checkpoint(entry, device="cpu")


@pytest.mark.parametrize("corrupt", [flip_byte, truncate], ids=["flipped", "truncated"])
def test_load_checkpoint_refuses_a_corrupted_checkpoint(dataset_uri, tmp_path, corrupt):
    trainer = SimpleTrainer(epochs=1, batch_size=128, device="cpu")
    trainer.load_data(dataset_uri)
    trainer.record({**trainer.train_model(), **trainer.test_model()})
    uri = str(tmp_path / "checkpoints" / "epoch-1.pt")
    entry = trainer.save_checkpoint(uri)

    resumed = SimpleTrainer(epochs=1, batch_size=128, device="cpu")
    resumed.load_data(dataset_uri)
    assert resumed.load_checkpoint(entry)["epoch"] == 1  # good before we touch it

    corrupt(uri)
    fresh = SimpleTrainer(epochs=1, batch_size=128, device="cpu")
    fresh.load_data(dataset_uri)
    with pytest.raises(IntegrityError, match="epoch-1.pt"):
        fresh.load_checkpoint(entry)
    assert fresh.epoch == 0  # nothing half-loaded


# --- a crafted pickle: correct sha256, so weights_only=True is what refuses it ---------------------


class _TouchPayload:
    """Unpickles as ``Path(marker).touch()``: harmless, but proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _crafted(marker: Path, what: str) -> bytes:
    """A torch.save file shaped like a real artifact, with the payload hidden inside."""
    torch.manual_seed(0)
    weights = SimpleNN().state_dict()
    payload = _TouchPayload(marker)
    if what == "model":
        obj = {"state_dict": weights, "mean": payload, "std": 0.31}
    elif what == "checkpoint":
        obj = {"model": weights, "optimizer": {}, "scheduler": {}, "epoch": 1, "history": [payload]}
    else:
        empty = torch.zeros(0, dtype=torch.uint8)
        obj = {"train_images": empty, "train_labels": payload, "test_images": empty, "test_labels": empty}
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _read_model(entry, request):
    load_model(entry, torch.device("cpu"))


def _read_classifier(entry, request):
    MnistClassifier(entry, device="cpu")


def _read_checkpoint(entry, request):
    trainer = SimpleTrainer(epochs=1, device="cpu")
    trainer.load_data(request.getfixturevalue("dataset_uri"))  # a resume loads the data first
    trainer.load_checkpoint(entry)


def _read_dataset(entry, request):
    manifest = request.getfixturevalue("tmp_path") / "dataset.json"
    manifest.write_text(json.dumps({"kind": "mnist-dataset", "mean": 0.1, "std": 0.3, "dataset": entry}))
    load_dataset(str(manifest))


READERS = {
    "inference.load_model": ("model", _read_model),
    "MnistClassifier": ("model", _read_classifier),
    "SimpleTrainer.load_checkpoint": ("checkpoint", _read_checkpoint),
    "data.load_dataset": ("dataset", _read_dataset),
}

_UNSAFE_LOAD = "import sys, torch; torch.load(sys.argv[1], weights_only=False)"


@pytest.mark.parametrize("reader", READERS, ids=READERS.keys())
def test_crafted_pickle_with_a_valid_sha256_runs_no_code(tmp_path, request, reader):
    what, read = READERS[reader]
    marker = tmp_path / "payload-ran"
    blob = _crafted(marker, what)
    entry = storage.write_artifact(str(tmp_path / f"{what}.pt"), blob)  # integrity passes: sha256 is right
    assert storage.read_artifact(entry) == blob

    with pytest.raises(pickle.UnpicklingError, match="[Ww]eights only load failed"):
        read(entry, request)
    assert not marker.exists()

    # Control: the payload is real. An unrestricted torch.load of the same bytes, in a separate
    # process, runs it; only the marker file in this test's tmp folder is created.
    proc = subprocess.run([sys.executable, "-c", _UNSAFE_LOAD, entry["uri"]], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert marker.exists()
