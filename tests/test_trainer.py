"""SimpleTrainer on synthetic digits: it learns, checkpoints round-trip, resume is exact, predict works."""

from __future__ import annotations

import json

import pytest
import torch

from kubetorch_example.data import load_dataset
from kubetorch_example.inference import MAX_BATCH, MnistClassifier, images_to_tensor
from kubetorch_example.trainer import SimpleTrainer


def _trainer(dataset_uri, **kwargs):
    trainer = SimpleTrainer(**{"epochs": 3, "batch_size": 32, "learning_rate": 0.05, "device": "cpu", **kwargs})
    trainer.load_data(dataset_uri)
    return trainer


def _test_digits(dataset_uri, n=50):
    _, tensors = load_dataset(dataset_uri)
    return tensors["test_images"][:n].tolist(), tensors["test_labels"][:n].tolist()


def test_training_lowers_loss_and_beats_chance(dataset_uri):
    trainer = _trainer(dataset_uri)
    before = trainer.test_model()
    epochs = [trainer.train_model() for _ in range(3)]
    after = trainer.test_model()
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    assert after["test_loss"] < before["test_loss"]
    assert after["test_accuracy"] > 0.9  # chance is 0.1
    assert all(e["samples_per_s"] > 0 for e in epochs)
    json.dumps(epochs + [after])  # everything crosses HTTP as JSON


def test_train_before_load_data_says_what_to_do():
    with pytest.raises(RuntimeError, match="load_data"):
        SimpleTrainer(device="cpu").train_model()


def test_resume_from_checkpoint_continues_exactly(dataset_uri, tmp_path):
    straight = _trainer(dataset_uri)
    for _ in range(3):
        straight.record({**straight.train_model(), **straight.test_model()})

    first = _trainer(dataset_uri)
    first.record({**first.train_model(), **first.test_model()})
    entry = first.save_checkpoint(str(tmp_path / "epoch-1.pt"))
    assert entry["epoch"] == 1

    resumed = _trainer(dataset_uri)
    state = resumed.load_checkpoint(entry)
    assert state["epoch"] == 1 and len(state["history"]) == 1
    for _ in range(2):
        resumed.record({**resumed.train_model(), **resumed.test_model()})

    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for name, tensor in straight.model.state_dict().items():
        assert torch.allclose(tensor, resumed.model.state_dict()[name], atol=1e-6), name
    assert resumed.history[-1]["test_accuracy"] == pytest.approx(straight.history[-1]["test_accuracy"])


def test_saved_model_predicts_like_the_trainer(dataset_uri, tmp_path):
    trainer = _trainer(dataset_uri)
    trainer.train_model()
    entry = trainer.save_model(str(tmp_path / "model.pt"))
    images, labels = _test_digits(dataset_uri)

    predictions = trainer.predict(images)
    assert isinstance(predictions, list) and all(isinstance(p, int) for p in predictions)
    assert sum(p == t for p, t in zip(predictions, labels)) / len(labels) > 0.8

    assert SimpleTrainer.from_checkpoint(entry, device="cpu").predict(images) == predictions
    served = MnistClassifier(entry, device="cpu").predict(images)
    assert served["predictions"] == predictions
    assert all(0.0 <= c <= 1.0 for c in served["confidences"])


def test_predict_accepts_flat_784_pixel_digits(dataset_uri, tmp_path):
    trainer = _trainer(dataset_uri)
    images, _ = _test_digits(dataset_uri, n=5)
    flat = [[p for row in img for p in row] for img in images]
    assert trainer.predict(flat) == trainer.predict(images)


@pytest.mark.parametrize(
    "images, message",
    [
        ("not a list", "must be a list"),
        ([], "empty"),
        ([[0] * 783], "28x28"),
        ([[[0] * 27] * 28], "28 pixels"),
        ([[["x"] * 28] * 28], "must be numbers"),
        ([[[float("nan")] * 28] * 28], "outside 0..255"),
        ([[[256] * 28] * 28], "outside 0..255"),
        ([[[-1] * 28] * 28], "outside 0..255"),
        ([[[True] * 28] * 28], "must be numbers"),
        ([[[0] * 28] * 28] * (MAX_BATCH + 1), "over the maximum"),
    ],
)
def test_predict_input_is_checked(images, message):
    with pytest.raises(ValueError, match=message):
        images_to_tensor(images)


def test_methods_that_need_data_say_so_before_load_data(tmp_path):
    trainer = SimpleTrainer(device="cpu")
    with pytest.raises(RuntimeError, match="load_data"):
        trainer.predict([[[0] * 28] * 28])
    with pytest.raises(RuntimeError, match="load_data"):
        trainer.load_checkpoint({"uri": str(tmp_path / "none.pt"), "sha256": "0"})
