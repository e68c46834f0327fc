"""Pixel transforms, applied to whole tensors at once (on the training device).

The original tutorial ran ``ToTensor()`` and ``Normalize()`` per sample in a
DataLoader, through PIL. Doing it once for the whole dataset gives the same
numbers without the per-sample Python work.
"""

import torch

PIXEL_MAX = 255.0


# [START transforms]
def normalization_constants(images: torch.Tensor) -> tuple[float, float]:
    """Mean and std of the pixels scaled to [0, 1] (MNIST's are about 0.1307, 0.3081)."""
    scaled = images.to(torch.float64) / PIXEL_MAX
    return float(scaled.mean()), float(scaled.std())


def normalize(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 or float pixels in [0, 255], shape (N, 28, 28) -> float32 (N, 1, 28, 28), standardized.

    Equal to torchvision's ``Normalize((mean,), (std,))(ToTensor()(img))`` per image.
    """
    scaled = images.to(torch.float32) / PIXEL_MAX
    return ((scaled - mean) / std).unsqueeze(1)
# [END transforms]
