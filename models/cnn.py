"""A plain CNN for LOB images: convolution / max-pooling stages, then a dense head.

The baseline deep model of the course notes this project grew from: no recurrence, no
inception, so it is cheap and shows what the extra machinery of DeepLOB buys. Each stage is a
3x3 convolution (integer padding 1, so sizes only change at the pools), ReLU and a 2x2
max-pool; sizes after the pools derive from the config. No softmax in forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class CNNConfig:
    """Sizes of the plain CNN; every layer size derives from these."""

    T: int = 100
    levels: int = 10
    channels: tuple[int, ...] = (16, 32, 32)  # one conv + pool stage per entry
    hidden: int = 64
    n_classes: int = 3
    dropout: float = 0.1

    @property
    def F(self) -> int:
        return 4 * self.levels

    def flat_size(self) -> int:
        t, f = self.T, self.F
        for _ in self.channels:
            t, f = t // 2, f // 2  # floor, as MaxPool2d(2) does
        if t < 1 or f < 1:
            raise ValueError(
                f"CNN with {len(self.channels)} pooling stages needs T and F of at least "
                f"{2 ** len(self.channels)}, got T={self.T}, F={self.F}; use fewer channels"
            )
        return self.channels[-1] * t * f


class CNN(nn.Module):
    """Plain conv / max-pool / dense classifier.

    forward: ``x`` float32 (B, 1, T, F) -> logits float32 (B, n_classes); ``x`` unmodified.
    """

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        if not config.channels:
            raise ValueError("CNN needs at least one entry in channels")
        self.config = config
        layers: list[nn.Module] = []
        c_in = 1
        for c_out in config.channels:
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(config.dropout),
            nn.Linear(config.flat_size(), config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, config.n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, C, T // 2^n, F // 2^n)
        return self.head(x)  # (B, 3)
