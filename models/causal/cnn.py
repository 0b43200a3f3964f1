"""A causal plain CNN: per-row features from valid convolutions along time, a dense head.

The streaming-native variant of :mod:`lobstream.models.cnn`. Each stage is a
(kernel_t, 3) convolution, *valid* along time (no time padding, so a feature row never
depends on where a window starts) and padded by 1 along the level axis, LeakyReLU, and a max-pool
along levels only (pooling along time would tie a row's feature to the pool's phase). A
(1, F') convolution then merges what is left of the level axis into ``feature_dim`` channels,
so a row's feature is a C-vector.

The causal interface (shared with ``deeplob_causal``, used by sequence training and by
incremental inference):

- ``causal = True``; ``receptive_field`` R: feature row t depends on input rows t-R+1..t only;
  ``feature_dim`` C.
- ``row_features(x (B, 1, M, F)) -> (B, M - R + 1, C)``: features of input rows R-1..M-1.
- ``head(feats (B, T - R + 1, C)) -> logits (B, 3)``.
- ``forward(x (B, 1, T, F)) = head(row_features(x))``.

Head: a small MLP over the flattened T - R + 1 feature rows (scaled by 1 / (T - R + 1)) plus a
direct path from the newest feature row to its hidden layer. Unlike last-row or pooled
features it keeps *when* in the window something happened (the recent path matters for a
short-horizon label), and it is cheap: T' x C x hidden multiply-adds per window (192 k at the
defaults), about what the convolutions of one input row cost, and one matrix-vector product per
event for incremental inference. No BatchNorm, so a window's logits never depend on which
other windows share its batch (sequence training then gives exactly per-window's loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # the runner imports the zoo, which imports this module
    from lobstream.models.causal.runner import ProgramBuilder


# LeakyReLU in the trunk: on a signal that no single input predicts (a product) the loss sits
# at chance first, and plain ReLU stages could switch off there for good (outputs all zero)
NEGATIVE_SLOPE = 0.1


@dataclass(frozen=True)
class CNNCausalConfig:
    """Sizes of the causal CNN; every layer size derives from these."""

    T: int = 100
    levels: int = 10
    channels: tuple[int, ...] = (16, 32, 32)  # one conv + level-pool stage per entry
    kernel_t: int = 3  # rows each conv sees along time (3x3 as cnn.py; R = 7 fits T >= 7)
    feature_dim: int = 32  # C: per-row feature width
    hidden: int = 64
    n_classes: int = 3
    dropout: float = 0.1

    @property
    def F(self) -> int:
        return 4 * self.levels

    @property
    def receptive_field(self) -> int:
        # each valid conv of kernel k reaches k - 1 rows further back
        return 1 + len(self.channels) * (self.kernel_t - 1)

    def levels_out(self) -> int:
        """Width of the level axis after the pools (floor halving, as MaxPool2d does)."""
        f = self.F
        for _ in self.channels:
            f //= 2
        if f < 1:
            raise ValueError(
                f"cnn_causal with {len(self.channels)} level-pooling stages needs F of at least "
                f"{2 ** len(self.channels)}, got F={self.F}; use fewer channels or more levels"
            )
        return f


class CNNCausal(nn.Module):
    """Causal conv / level-pool feature rows, MLP head over a window's feature rows.

    forward: ``x`` float32 (B, 1, T, F) -> logits float32 (B, n_classes); ``x`` unmodified.
    """

    causal = True

    def __init__(self, config: CNNCausalConfig) -> None:
        super().__init__()
        if not config.channels:
            raise ValueError("cnn_causal needs at least one entry in channels")
        if config.kernel_t < 1:
            raise ValueError(f"cnn_causal needs kernel_t >= 1, got {config.kernel_t}")
        r = config.receptive_field
        if config.T < r:
            raise ValueError(
                f"cnn_causal has a receptive field of {r} rows but T={config.T}; "
                "use a longer window, fewer channels or a smaller kernel_t"
            )
        self.config = config
        self.receptive_field: int = r
        self.feature_dim: int = config.feature_dim
        layers: list[nn.Module] = []
        c_in = 1
        for c_out in config.channels:
            layers += [
                nn.Conv2d(c_in, c_out, (config.kernel_t, 3), padding=(0, 1)),  # valid in time
                nn.LeakyReLU(NEGATIVE_SLOPE),
                nn.MaxPool2d((1, 2)),  # levels only
            ]
            c_in = c_out
        layers += [
            nn.Conv2d(c_in, config.feature_dim, (1, config.levels_out())),
            nn.LeakyReLU(NEGATIVE_SLOPE),
        ]
        self.convs = nn.Sequential(*layers)
        self.mlp = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(config.dropout),
            nn.Linear((config.T - r + 1) * config.feature_dim, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, config.n_classes),
        )
        # the flattened rows enter scaled by 1 / T': with T' x C inputs, AdamW's per-weight
        # steps otherwise move the hidden layer T' times as fast as one row's path does, and the
        # head learns to output a constant before the signal is found
        self.flat_scale: float = 1.0 / (config.T - r + 1)
        # the newest feature row straight to the hidden layer: the label depends on it most
        # (incremental inference folds it into the first Linear's last-row weights)
        self.newest = nn.Linear(config.feature_dim, config.hidden, bias=False)

    @torch.jit.export
    def row_features(self, x: torch.Tensor) -> torch.Tensor:
        """Features of input rows R-1..M-1: (B, 1, M, F) -> (B, M - R + 1, C)."""
        z = self.convs(x)  # (B, C, M - R + 1, 1)
        return z.squeeze(3).transpose(1, 2)  # (B, M - R + 1, C)

    @torch.jit.export
    def head(self, feats: torch.Tensor) -> torch.Tensor:
        """Logits of windows from their feature rows: (B, T - R + 1, C) -> (B, n_classes)."""
        flat = self.mlp[0](feats) * self.flat_scale  # Flatten copies a gathered input
        z = self.mlp[2](self.mlp[1](flat)) + self.newest(feats[:, -1])
        return self.mlp[4](self.mlp[3](z))  # ReLU, Linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.row_features(x))  # (B, 3)


def incremental_trunk(model: CNNCausal, b: ProgramBuilder, x: int) -> int:
    """``row_features`` as ops of an incremental program (:mod:`lobstream.models.causal.runner`):
    reads the input rows of buffer ``x``, returns the buffer of the feature rows."""
    return b.chain(model.convs, x, "convs")
