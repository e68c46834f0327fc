"""The quality gate's measurement: a saved model on the held-out test split."""

from __future__ import annotations

import torch

from kubetorch_example.data import SAMPLE_DIGITS, load_dataset
from kubetorch_example.inference import MnistClassifier

BATCH = 4096


# [START evaluate_model]
def evaluate_model(model: dict, dataset_uri: str) -> dict:
    """Accuracy of ``model`` (a manifest entry) on every test digit, plus its answers for the sample digits.

    Uses MnistClassifier, the code the service runs (the pixels are known good, so unchecked).
    """
    classifier = MnistClassifier(model)
    _, tensors = load_dataset(dataset_uri)
    images, labels = tensors["test_images"], tensors["test_labels"]
    predictions = torch.cat([classifier.classify(images[i : i + BATCH])[1] for i in range(0, len(labels), BATCH)])
    correct = int((predictions == labels).sum())
    return {
        "accuracy": correct / len(labels),
        "correct": correct,
        "total": len(labels),
        "sample_predictions": predictions[:SAMPLE_DIGITS].tolist(),
    }
# [END evaluate_model]
