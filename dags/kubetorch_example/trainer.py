"""SimpleTrainer: the class kubetorch runs on a GPU pod (or in-process, locally).

It keeps the original tutorial's shape (load_data, train_model, test_model,
predict, save_model, from_checkpoint) but every argument and result is
JSON-friendly, because over kubetorch each call crosses HTTP as JSON.

Speed: the whole dataset lives on the device as one tensor, normalized once;
each step slices a shuffled index, so there is no DataLoader, no per-sample
PIL work, no host-to-device copy per step, and no ``.item()`` sync per step
(losses and hits are summed on the device and read once per epoch).
"""

from __future__ import annotations

import io
import math
import time

import torch
from torch import nn

from kubetorch_example import storage
from kubetorch_example.data import load_dataset
from kubetorch_example.inference import images_to_tensor, load_model, save_model
from kubetorch_example.model import SimpleNN
from kubetorch_example.transforms import normalize

EVAL_BATCH = 4096


def _pick_device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


# [START trainer]
class SimpleTrainer:
    """Trains SimpleNN with SGD (Nesterov momentum 0.9) and a per-step cosine schedule.

    Defaults: epochs=5, batch_size=64, learning_rate=0.05, seed=0; device is
    CUDA when present, else CPU. ``epochs`` sizes the learning-rate schedule.
    """

    def __init__(self, epochs: int = 5, batch_size: int = 64, learning_rate: float = 0.05,
                 seed: int = 0, device: str | None = None):
        self.device = _pick_device(device)
        self.epochs, self.batch_size, self.seed = epochs, batch_size, seed
        torch.manual_seed(seed)
        self.model = SimpleNN().to(self.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=learning_rate, momentum=0.9, nesterov=True)
        self.scheduler = None  # sized in load_data, once the number of steps is known
        self.loss_fn = nn.CrossEntropyLoss()
        self.epoch = 0
        self.history: list[dict] = []
        self.data: dict[str, torch.Tensor] = {}
        self.mean = self.std = None  # normalization constants, from the dataset or a saved model

    def load_data(self, dataset_uri: str) -> dict:
        """Load the preprocessed dataset onto the device, normalized once."""
        manifest, tensors = load_dataset(dataset_uri)
        self.mean, self.std = manifest["mean"], manifest["std"]
        for split in ("train", "test"):
            images = tensors[f"{split}_images"].to(self.device)
            self.data[f"{split}_x"] = normalize(images, self.mean, self.std)
            self.data[f"{split}_y"] = tensors[f"{split}_labels"].to(self.device)
        steps = self.epochs * math.ceil(len(self.data["train_y"]) / self.batch_size)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=steps)
        return {"train": len(self.data["train_y"]), "test": len(self.data["test_y"]), "device": str(self.device)}

    def train_model(self) -> dict:
        """Train one epoch; return its loss, accuracy and samples/s."""
        if self.scheduler is None:
            raise RuntimeError("call load_data(dataset_uri) before train_model()")
        self.epoch += 1
        x, y = self.data["train_x"], self.data["train_y"]
        # Shuffle order depends only on (seed, epoch): a resumed run sees the same batches.
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        order = order.to(self.device)
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        hits = torch.zeros((), device=self.device, dtype=torch.int64)
        start = time.perf_counter()
        for i in range(0, len(y), self.batch_size):
            idx = order[i : i + self.batch_size]
            target = y[idx]
            logits = self.model(x[idx])
            loss = self.loss_fn(logits, target)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            loss_sum += loss.detach() * len(idx)
            hits += (logits.argmax(1) == target).sum()
        n = len(y)
        metrics = {"epoch": self.epoch, "loss": loss_sum.item() / n, "accuracy": hits.item() / n}
        metrics["samples_per_s"] = n / (time.perf_counter() - start)
        return metrics

    @torch.inference_mode()
    def test_model(self) -> dict:
        """Loss and accuracy on the held-out test split; appended to the history."""
        self.model.eval()
        x, y = self.data["test_x"], self.data["test_y"]
        loss_sum = torch.zeros((), device=self.device)
        hits = torch.zeros((), device=self.device, dtype=torch.int64)
        for i in range(0, len(y), EVAL_BATCH):
            logits = self.model(x[i : i + EVAL_BATCH])
            loss_sum += self.loss_fn(logits, y[i : i + EVAL_BATCH]) * len(logits)
            hits += (logits.argmax(1) == y[i : i + EVAL_BATCH]).sum()
        return {"epoch": self.epoch, "test_loss": loss_sum.item() / len(y), "test_accuracy": hits.item() / len(y)}

    def record(self, metrics: dict) -> list[dict]:
        """Add one epoch's metrics to the history the checkpoint carries."""
        self.history.append(metrics)
        return self.history

    @torch.inference_mode()
    def predict(self, images) -> list[int]:
        """Digits as raw pixels (0..255, 28x28 lists) -> predicted labels."""
        if self.mean is None:
            raise RuntimeError("call load_data(dataset_uri) or from_checkpoint(model) before predict()")
        self.model.eval()
        batch = normalize(images_to_tensor(images).to(self.device), self.mean, self.std)
        return self.model(batch).argmax(1).tolist()

    def save_checkpoint(self, uri: str) -> dict:
        """Everything needed to continue exactly: model, optimizer, scheduler, epoch, metrics."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "history": self.history,
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return {**storage.write_artifact(uri, buffer.getvalue()), "epoch": self.epoch}

    def load_checkpoint(self, entry: dict) -> dict:
        """Resume from a checkpoint entry (uri + sha256); call after load_data."""
        if self.scheduler is None:
            raise RuntimeError("call load_data(dataset_uri) before load_checkpoint()")
        blob = io.BytesIO(storage.read_artifact(entry))
        state = torch.load(blob, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.history = int(state["epoch"]), list(state["history"])
        return {"epoch": self.epoch, "history": self.history}

    def save_model(self, uri: str) -> dict:
        """The deployable model: weights and normalization constants only."""
        return save_model(self.model, self.mean, self.std, uri)

    @classmethod
    def from_checkpoint(cls, model: dict, device: str | None = None) -> "SimpleTrainer":
        """A trainer holding a saved model (``save_model``'s entry), ready to predict."""
        trainer = cls(device=device)
        trainer.model, trainer.mean, trainer.std = load_model(model, trainer.device)
        return trainer
# [END trainer]
