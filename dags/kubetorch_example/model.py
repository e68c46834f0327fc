"""The model: a small fully connected network, exactly as in the original tutorial."""

import torch
from torch import nn


# [START model]
class SimpleNN(nn.Module):
    """784 -> 128 -> 64 -> 10 with ReLU. Device placement is the trainer's job."""

    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(28 * 28, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 10)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.fc3(x)
# [END model]
