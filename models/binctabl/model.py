"""BiN-CTABL (Tran, Kanniainen, Gabbouj and Iosifidis, 2021): bilinear input normalisation
followed by the C(TABL) network of bilinear layers and a temporal-attention bilinear layer.

A window is a matrix X of D features by T steps. Bilinear normalisation (BiN) z-scores X
along time (each feature over the window) and along features (each step over its features),
scales and shifts each with learned vectors and mixes the two with learned non-negative
weights, so the network needs no stored normalisation statistics. A bilinear layer maps
X (D1, T1) to act(W1 X W2 + B) of shape (D2, T2). The temporal attention bilinear layer (TABL)
first mixes features (W1 X), scores how each step relates to the others (softmax over
X W, W's diagonal fixed at 1/T1), blends attended and plain features with a learned
lambda in [0, 1], and maps time with W2. Default sizes are the C(TABL) topology of the
papers, 40x10 -> 120x5 -> 120x5 -> 3x1, with T and F taken from the config. The last layer
gives logits, no softmax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class BiNCTABLConfig:
    """Sizes of BiN-CTABL; the input size (F, T) derives from ``levels`` and ``T``."""

    T: int = 100
    levels: int = 10
    hidden1: tuple[int, int] = (120, 5)  # (features, steps) after the first bilinear layer
    hidden2: tuple[int, int] = (120, 5)  # after the second
    n_classes: int = 3
    dropout: float = 0.1

    @property
    def F(self) -> int:
        return 4 * self.levels


class BiN(nn.Module):
    """Bilinear normalisation of x (B, D, T) along time and along features (not in place)."""

    def __init__(self, d: int, t: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.gamma_time = nn.Parameter(torch.ones(d, 1))  # per feature, after time z-score
        self.beta_time = nn.Parameter(torch.zeros(d, 1))
        self.gamma_feat = nn.Parameter(torch.ones(1, t))  # per step, after feature z-score
        self.beta_feat = nn.Parameter(torch.zeros(1, t))
        self.mix = nn.Parameter(torch.full((2,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Population std (unbiased=False) so a constant row maps to 0, not NaN; eps keeps it so.
        # sqrt(mean(d^2)) rather than torch.std (aten::std alone took 4-5x the rest of the model
        # on CPU), and the mixing weights and gammas folded into small per-row/per-step scales,
        # so the (B, D, T) tensor is swept about half as often: the model is memory-bound.
        # The paper keeps the mixing weights non-negative; clamping here (not in the
        # optimiser) keeps the constraint inside the exported graph.
        w = torch.clamp(self.mix, min=0.0)
        d_t = x - x.mean(dim=2, keepdim=True)  # (B, D, T)
        sd_t = torch.sqrt((d_t * d_t).mean(dim=2, keepdim=True))  # (B, D, 1)
        d_f = x - x.mean(dim=1, keepdim=True)  # (B, D, T)
        sd_f = torch.sqrt((d_f * d_f).mean(dim=1, keepdim=True))  # (B, 1, T)
        scale_t = (w[0] * self.gamma_time) / (sd_t + self.eps)  # (B, D, 1)
        scale_f = (w[1] * self.gamma_feat) / (sd_f + self.eps)  # (B, 1, T)
        shift = w[0] * self.beta_time + w[1] * self.beta_feat  # (D, T)
        return torch.addcmul(torch.addcmul(shift, d_t, scale_t), d_f, scale_f)  # (B, D, T)


def _left_mul(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``w @ x`` for w (D2, D1) and x (B, D1, T) as one (B*T, D1) x (D1, D2) product."""
    return (x.transpose(1, 2) @ w.t()).transpose(1, 2)  # (B, D2, T)


class Bilinear(nn.Module):
    """x (B, D1, T1) -> relu(W1 x W2 + B) (B, D2, T2)."""

    def __init__(self, d1: int, t1: int, d2: int, t2: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(d2, d1))
        self.w2 = nn.Parameter(torch.empty(t1, t2))
        self.bias = nn.Parameter(torch.zeros(d2, t2))
        nn.init.kaiming_uniform_(self.w1, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.w2, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Time is mapped first (T2 << T1 makes the second product small), and W1 is applied
        # from the right on the transposed batch so the batch folds into one GEMM instead of
        # broadcasting W1 into B copies.
        x = x @ self.w2  # (B, D1, T2)
        x = _left_mul(self.w1, x)  # (B, D2, T2)
        return torch.relu(x + self.bias)


class TABL(nn.Module):
    """Temporal attention bilinear layer: x (B, D1, T1) -> (B, D2, T2), no activation."""

    def __init__(self, d1: int, t1: int, d2: int, t2: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(d2, d1))
        self.w_att = nn.Parameter(torch.full((t1, t1), 1.0 / t1))
        self.w2 = nn.Parameter(torch.empty(t1, t2))
        self.bias = nn.Parameter(torch.zeros(d2, t2))
        self.lam = nn.Parameter(torch.full((1,), 0.5))
        self.register_buffer("eye", torch.eye(t1), persistent=False)
        self.t1 = t1
        nn.init.kaiming_uniform_(self.w1, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.w2, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _left_mul(self.w1, x)  # (B, D2, T1)
        # The diagonal is pinned to 1/T1 so a step's score against itself is not learned.
        w = self.w_att * (1.0 - self.eye) + self.eye / self.t1  # (T1, T1)
        att = torch.softmax(x @ w, dim=-1)  # (B, D2, T1)
        lam = torch.clamp(self.lam, 0.0, 1.0)
        x = lam * x + (1.0 - lam) * x * att  # (B, D2, T1)
        return x @ self.w2 + self.bias  # (B, D2, T2)


class BiNCTABL(nn.Module):
    """BiN-CTABL classifier.

    forward: ``x`` float32 (B, 1, T, F) -> logits float32 (B, n_classes); ``x`` unmodified.
    """

    def __init__(self, config: BiNCTABLConfig) -> None:
        super().__init__()
        self.config = config
        d1, t1 = config.hidden1
        d2, t2 = config.hidden2
        self.bin = BiN(config.F, config.T)
        self.bl1 = Bilinear(config.F, config.T, d1, t1)
        self.bl2 = Bilinear(d1, t1, d2, t2)
        self.tabl = TABL(d2, t2, config.n_classes, 1)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.squeeze(1).transpose(1, 2)  # (B, F, T): features by steps, as in the paper
        x = self.bin(x)  # (B, F, T)
        x = self.dropout(self.bl1(x))  # (B, 120, 5)
        x = self.dropout(self.bl2(x))  # (B, 120, 5)
        return self.tabl(x).squeeze(2)  # (B, 3)
