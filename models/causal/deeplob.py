"""A causal DeepLOB: the published widths, every convolution along time valid, the LSTM head
over a window's feature rows.

The streaming-native variant of :mod:`lobstream.models.deeplob`, with the causal interface of
:mod:`lobstream.models.causal.cnn` (``causal``, ``receptive_field`` R, ``feature_dim`` C,
``row_features``, ``head``). What changes against DeepLOB:

- The (4, 1) convolutions of the three blocks and the (3, 1) / (5, 1) convolutions of the
  inception branches are *valid* along time instead of "same": no padding, so a feature row
  never depends on where a window starts or on rows after it. The pool branch's (3, 1) max-pool
  is valid too. Each valid kernel k reaches k - 1 rows further back: 6 x 3 in the blocks, then
  the widest branch (5, 1) adds 4, so R = 1 + 18 + 4 = 23; the two narrower branches are cut by
  2 rows at the start so the three line up on the same rows.
- ``row_features`` returns the inception output (C = 3 x inception_channels = 192), the LSTM's
  input; ``head`` runs the 64-unit LSTM from a zero state over every ``lstm_stride``-th of the
  window's T - R + 1 feature rows, ending at the last (20 of 78 at T = 100, stride 4), and maps
  its last output to 3 logits. DeepLOB runs it over all T rows; the stride is what lets
  sequence training share most of a window's cost (see the config), and since each feature row
  already summarises 23 input rows, every input row still reaches some LSTM step.

So a new event costs one row of convolutions (~0.3 M multiply-adds), one LSTM input projection
and the 20 recurrent steps of the head (~0.33 M), against ~35 M for a whole window
(:func:`incremental_trunk` below, :mod:`lobstream.models.causal.runner`). BatchNorm stays as
published: in eval mode it is a per-channel affine map and folds away; in sequence training it
normalises over a chunk's rows (each row once) rather than a batch's windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # the runner imports the zoo, which imports this module
    from lobstream.models.causal.runner import ProgramBuilder


@dataclass(frozen=True)
class DeepLOBCausalConfig:
    """Sizes of a causal DeepLOB network; every layer size derives from these."""

    T: int = 100
    levels: int = 10
    conv_channels: int = 32
    inception_channels: int = 64
    lstm_hidden: int = 64
    # The LSTM reads every lstm_stride-th feature row of the window, ending at its last row.
    # Its recurrence is the one cost that sequence training cannot share between windows: at
    # stride 1 (78 steps) it took most of a window's cost (bench.training), so sequence
    # training could not be much faster than per-window. A stride up to R (23) still
    # lets every input row reach some step's feature; 4 gives 20 steps.
    lstm_stride: int = 4
    n_classes: int = 3
    leaky_slope: float = 0.01

    @property
    def F(self) -> int:
        return 4 * self.levels

    @property
    def receptive_field(self) -> int:
        return RECEPTIVE_FIELD


# 3 blocks x two valid (4, 1) convs, then the (5, 1) branch: rows reached back, plus the row itself
_BLOCKS_REACH = 3 * 2 * (4 - 1)
_INCEPTION_REACH = 5 - 1
RECEPTIVE_FIELD = 1 + _BLOCKS_REACH + _INCEPTION_REACH


def _act_bn(c: int, slope: float) -> list[nn.Module]:
    return [nn.LeakyReLU(slope), nn.BatchNorm2d(c)]


def _conv_block(
    c_in: int, c_out: int, first: tuple[int, int], stride: tuple[int, int], slope: float
) -> nn.Sequential:
    """``first`` conv (within a row), then two valid (4, 1) convs, each LeakyReLU + BatchNorm."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=first, stride=stride),
        *_act_bn(c_out, slope),
        nn.Conv2d(c_out, c_out, kernel_size=(4, 1)),
        *_act_bn(c_out, slope),
        nn.Conv2d(c_out, c_out, kernel_size=(4, 1)),
        *_act_bn(c_out, slope),
    )


@torch.no_grad()
def _newest_tap_init(model: nn.Module) -> None:
    """Add the identity to the newest tap of every valid time convolution with as many
    outputs as inputs.

    With the default (random) init each of the seven (k, 1) convolutions on a path mixes its k
    rows at random, so a feature row is a blur of 23 input rows in which the newest row, the
    one a one-event label depends on most, is a small part: the network then stayed at the loss
    of a constant guess on the planted signals (bench.learn). The identity on the newest tap
    lets that row through every layer at init, as a residual connection would, and the random
    part still reaches the older rows. Only the initial weights change, not the layers."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1 and m.kernel_size[1] == 1:
            c_out, c_in = m.weight.shape[:2]
            if c_out == c_in:
                m.weight[:, :, -1, 0] += torch.eye(c_out, dtype=m.weight.dtype)


class DeepLOBCausal(nn.Module):
    """Causal DeepLOB classifier.

    forward: ``x`` float32 (B, 1, T, F) -> logits float32 (B, n_classes), classes down, flat,
    up; ``x`` unmodified.
    """

    causal = True

    def __init__(self, config: DeepLOBCausalConfig) -> None:
        super().__init__()
        if config.levels < 1:
            raise ValueError(f"deeplob_causal needs levels >= 1, got {config.levels}")
        if not 1 <= config.lstm_stride <= RECEPTIVE_FIELD:
            raise ValueError(
                f"deeplob_causal needs 1 <= lstm_stride <= {RECEPTIVE_FIELD} (beyond its "
                f"receptive field some rows would reach no LSTM step), got {config.lstm_stride}"
            )
        r = config.receptive_field
        if config.T < r:
            raise ValueError(
                f"deeplob_causal has a receptive field of {r} rows but T={config.T}; "
                f"use a window of at least {r} rows"
            )
        self.config = config
        self.receptive_field: int = r
        self.lstm_stride: int = config.lstm_stride
        # first feature row the LSTM reads, so that its last step is the window's last row
        self.lstm_first: int = (config.T - r) % config.lstm_stride
        c, ci, s = config.conv_channels, config.inception_channels, config.leaky_slope
        self.feature_dim: int = 3 * ci
        # F = 4L -> 2L (price/size pairs) -> L (ask/bid pairs) -> 1 (all levels).
        self.block1 = _conv_block(1, c, (1, 2), (1, 2), s)
        self.block2 = _conv_block(c, c, (1, 2), (1, 2), s)
        self.block3 = _conv_block(c, c, (1, config.levels), (1, 1), s)
        self.branch1 = nn.Sequential(
            nn.Conv2d(c, ci, 1), *_act_bn(ci, s), nn.Conv2d(ci, ci, (3, 1)), *_act_bn(ci, s)
        )
        self.branch2 = nn.Sequential(
            nn.Conv2d(c, ci, 1), *_act_bn(ci, s), nn.Conv2d(ci, ci, (5, 1)), *_act_bn(ci, s)
        )
        self.branch3 = nn.Sequential(
            nn.MaxPool2d(kernel_size=(3, 1), stride=(1, 1)), nn.Conv2d(c, ci, 1), *_act_bn(ci, s)
        )
        self.lstm = nn.LSTM(3 * ci, config.lstm_hidden, num_layers=1, batch_first=True)
        self.fc = nn.Linear(config.lstm_hidden, config.n_classes)
        _newest_tap_init(self)

    @torch.jit.export
    def row_features(self, x: torch.Tensor) -> torch.Tensor:
        """Features of input rows R-1..M-1: (B, 1, M, F) -> (B, M - R + 1, C)."""
        z = self.block3(self.block2(self.block1(x)))  # (B, 32, M - 18, 1)
        # the (3, 1) branches reach 2 rows back, the (5, 1) one 4: drop their first 2 rows
        z = torch.cat([self.branch1(z)[:, :, 2:], self.branch2(z), self.branch3(z)[:, :, 2:]], 1)
        return z.squeeze(3).transpose(1, 2)  # (B, M - R + 1, 192)

    @torch.jit.export
    def head(self, feats: torch.Tensor) -> torch.Tensor:
        """Logits of windows from their feature rows: (B, T - R + 1, C) -> (B, n_classes)."""
        # zero initial state: a window's head sees only its own rows
        out, _ = self.lstm(feats[:, self.lstm_first :: self.lstm_stride])
        return self.fc(out[:, -1, :])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.row_features(x))  # (B, 3)


def incremental_trunk(model: DeepLOBCausal, b: ProgramBuilder, x: int) -> int:
    """``row_features`` as ops of an incremental program (:mod:`lobstream.models.causal.runner`):
    reads the input rows of buffer ``x``, returns the buffer of the feature rows (the three
    inception branches side by side)."""
    z = b.chain(model.block1, x, "block1")
    z = b.chain(model.block2, z, "block2")
    z = b.chain(model.block3, z, "block3")  # (1, 32) per row
    outs = [b.chain(getattr(model, f"branch{k}"), z, f"branch{k}") for k in (1, 2, 3)]
    width = b.bufs[outs[0]].width
    feat = b.buf(width, sum(b.bufs[o].channels for o in outs))
    coff = 0
    # each branch's output for input row c already ends at row c: the full model's [:, :, 2:]
    # only lines the shorter branches up with the (5, 1) one, which streaming does by itself
    for o in outs:
        last = next(op for op in reversed(b.ops) if op.dst == o)
        b.retarget(last, feat, coff)
        coff += last.cout
    return feat
