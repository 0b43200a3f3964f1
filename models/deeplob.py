"""DeepLOB (Zhang, Zohren and Roberts, 2019): convolutions, an inception module and an LSTM.

Follows the published network: three convolution blocks of 32 filters (a (1,2) stride-2
convolution that pairs price with size, then a pair of (4,1) convolutions along time), the
third block opening with a (1, L) convolution that merges all levels; an inception module of
three 64-channel branches; an LSTM of 64 units; a dense layer to 3 logits. "same" padding
along time is written as explicit integer padding, asymmetric for even kernels as TensorFlow
does it, so the module scripts and survives ``optimize_for_inference``. No softmax: the loss
takes logits and the model runner applies softmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DeepLOBConfig:
    """Sizes of a DeepLOB network; every layer size derives from these."""

    T: int = 100  # time steps in a window
    levels: int = 10  # book levels per side; F = 4 * levels
    conv_channels: int = 32
    inception_channels: int = 64
    lstm_hidden: int = 64
    n_classes: int = 3
    leaky_slope: float = 0.01

    @property
    def F(self) -> int:
        return 4 * self.levels


def _same_time_pad(k: int) -> nn.ZeroPad2d:
    # TensorFlow "same": the extra row for an even kernel goes after, not before.
    before = (k - 1) // 2
    return nn.ZeroPad2d((0, 0, before, k - 1 - before))  # (left, right, top, bottom)


def _conv_block(
    c_in: int, c_out: int, first: tuple[int, int], stride: tuple[int, int], slope: float
) -> nn.Sequential:
    """One block: ``first`` conv, then two (4,1) "same" convs, each LeakyReLU + BatchNorm."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=first, stride=stride),
        nn.LeakyReLU(slope),
        nn.BatchNorm2d(c_out),
        _same_time_pad(4),
        nn.Conv2d(c_out, c_out, kernel_size=(4, 1)),
        nn.LeakyReLU(slope),
        nn.BatchNorm2d(c_out),
        _same_time_pad(4),
        nn.Conv2d(c_out, c_out, kernel_size=(4, 1)),
        nn.LeakyReLU(slope),
        nn.BatchNorm2d(c_out),
    )


def _conv_bn(c_in: int, c_out: int, k: int, slope: float) -> list[nn.Module]:
    return [
        _same_time_pad(k),
        nn.Conv2d(c_in, c_out, kernel_size=(k, 1)),
        nn.LeakyReLU(slope),
        nn.BatchNorm2d(c_out),
    ]


class DeepLOB(nn.Module):
    """DeepLOB classifier.

    forward: ``x`` float32 (B, 1, T, F) -> logits float32 (B, n_classes), classes in the
    order down, flat, up. ``x`` is not modified.
    """

    def __init__(self, config: DeepLOBConfig) -> None:
        super().__init__()
        if config.levels < 1:
            raise ValueError(f"DeepLOB needs levels >= 1, got {config.levels}")
        self.config = config
        c, ci, s = config.conv_channels, config.inception_channels, config.leaky_slope
        # F = 4L -> 2L (price/size pairs) -> L (ask/bid pairs) -> 1 (all levels).
        self.block1 = _conv_block(1, c, (1, 2), (1, 2), s)
        self.block2 = _conv_block(c, c, (1, 2), (1, 2), s)
        self.block3 = _conv_block(c, c, (1, config.levels), (1, 1), s)
        self.branch1 = nn.Sequential(*_conv_bn(c, ci, 1, s), *_conv_bn(ci, ci, 3, s))
        self.branch2 = nn.Sequential(*_conv_bn(c, ci, 1, s), *_conv_bn(ci, ci, 5, s))
        self.branch3 = nn.Sequential(
            nn.MaxPool2d(kernel_size=(3, 1), stride=(1, 1), padding=(1, 0)),
            *_conv_bn(c, ci, 1, s),
        )
        self.lstm = nn.LSTM(3 * ci, config.lstm_hidden, num_layers=1, batch_first=True)
        self.fc = nn.Linear(config.lstm_hidden, config.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block1(x)  # (B, 32, T, 2L)
        x = self.block2(x)  # (B, 32, T, L)
        x = self.block3(x)  # (B, 32, T, 1)
        x = torch.cat([self.branch1(x), self.branch2(x), self.branch3(x)], dim=1)  # (B, 192, T, 1)
        x = x.squeeze(3).transpose(1, 2)  # (B, T, 192)
        out, _ = self.lstm(x)  # (B, T, 64)
        return self.fc(out[:, -1, :])  # (B, 3)
