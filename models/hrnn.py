"""A hierarchical RNN: one LSTM reads the levels of each time step, a second reads the steps.

The first LSTM treats the book of one time step as a sequence of levels, each level a vector
(ask price, ask size, bid price, bid size), and keeps its last hidden state (32) as the step's
summary; the second LSTM runs over the T summaries (64); a dense layer gives the logits. The
levels are fed deepest first so the touch comes last and weighs
most in the final hidden state. No softmax in forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class HRNNConfig:
    """Sizes of the hierarchical RNN; every layer size derives from these."""

    T: int = 100
    levels: int = 10
    level_hidden: int = 32
    time_hidden: int = 64
    n_classes: int = 3

    @property
    def F(self) -> int:
        return 4 * self.levels


class HRNN(nn.Module):
    """Hierarchical LSTM classifier.

    forward: ``x`` float32 (B, 1, T, F) -> logits float32 (B, n_classes); ``x`` unmodified.
    """

    def __init__(self, config: HRNNConfig) -> None:
        super().__init__()
        self.config = config
        self.levels = config.levels
        self.level_hidden = config.level_hidden
        self.level_lstm = nn.LSTM(4, config.level_hidden, batch_first=True)
        self.time_lstm = nn.LSTM(config.level_hidden, config.time_hidden, batch_first=True)
        self.fc = nn.Linear(config.time_hidden, config.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[0], x.shape[2]
        # Rows are level-major (ask px, ask sz, bid px, bid sz per level), so a reshape splits
        # them; flip puts level 1 (the touch) last, where the final hidden state remembers best.
        x = x.reshape(b * t, self.levels, 4).flip(1)  # (B*T, L, 4)
        h, _ = self.level_lstm(x)  # (B*T, L, 32)
        steps = h[:, -1, :].reshape(b, t, self.level_hidden)  # (B, T, 32)
        out, _ = self.time_lstm(steps)  # (B, T, 64)
        return self.fc(out[:, -1, :])  # (B, 3)
