"""A streaming hierarchical RNN: a level LSTM per row, a windowed linear recurrence over time.

The causal, streaming form of :mod:`lobstream.models.hrnn`. The full-window HRNN runs a time
LSTM from a zero state at the window's first row, so its state at the last row depends on
where the window starts, and a new event would need all T steps again. Here:

- per row (the hierarchy's lower level, as in the HRNN): an LSTM reads the row's levels as a
  sequence, deepest first, each level a vector (ask price, ask size, bid price, bid size); a
  linear map of its outputs at every level, ReLU, is the row's summary;
- a valid convolution along time over the last ``kernel_t`` summaries, ReLU, gives the feature
  row ``f_t`` (C channels): short-range change (order flow over a few rows) is read exactly
  here rather than approximated by decays; receptive field ``R = kernel_t``;
- the time level: a diagonal linear recurrence ``h_t = lam * h_{t-1} + (1 - lam) * f_t`` per
  channel (``lam`` learned in (0, 1)), restricted to the window's ``n = T - R + 1`` feature
  rows: ``h = sum_j (1 - lam) lam^(n-1-j) f_j``. Because it is linear with a fixed decay, the
  windowed state updates in one step per event, ``h <- lam h + (1 - lam)(f_new -
  lam^n f_old)`` with ``f_old`` the feature row leaving the window, and equals the
  full-window sum (:class:`HRNNStream`, the state ``IncrementalRunner`` keeps for it). An
  LSTM's state cannot drop its oldest input, so a time LSTM could not stream and still equal
  the window's call;
- head: an MLP on ``[h, f_last]``: the newest feature row goes to the head directly, so what
  the last few rows say is not diluted by the rest of the window.

The causal interface of :mod:`lobstream.models.causal.cnn` (``row_features``, ``head``,
``receptive_field``, ``feature_dim``), so sequence training and prediction apply. No
BatchNorm. forward: float32 (B, 1, T, F) -> logits (B, n_classes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class HRNNCausalConfig:
    """Sizes of the streaming HRNN; every layer size derives from these."""

    T: int = 100
    levels: int = 10
    level_hidden: int = 16  # the level LSTM's hidden size
    summary_dim: int = 32  # a row's summary, from the level LSTM's outputs at every level
    kernel_t: int = 6  # rows the time convolution sees (R): flow over the last 5 transitions
    feature_dim: int = 32  # C: channels of the linear recurrence
    decay_min: float = 0.5  # initial decays spread over [decay_min, decay_max] across channels
    decay_max: float = 0.98
    hidden: int = 64
    n_classes: int = 3
    dropout: float = 0.1

    @property
    def F(self) -> int:
        return 4 * self.levels

    @property
    def receptive_field(self) -> int:
        return self.kernel_t


class HRNNCausal(nn.Module):
    """Level LSTM -> time convolution -> windowed diagonal linear recurrence -> MLP head.

    forward: ``x`` float32 (B, 1, T, F) -> logits float32 (B, n_classes); ``x`` unmodified.
    """

    causal = True

    def __init__(self, config: HRNNCausalConfig) -> None:
        super().__init__()
        if config.kernel_t < 1:
            raise ValueError(f"hrnn_causal needs kernel_t >= 1, got {config.kernel_t}")
        if config.T < config.kernel_t:
            raise ValueError(
                f"hrnn_causal has a receptive field of {config.kernel_t} rows but "
                f"T={config.T}; use a longer window or a smaller kernel_t"
            )
        if not 0.0 < config.decay_min <= config.decay_max < 1.0:
            raise ValueError(
                f"decays must satisfy 0 < decay_min <= decay_max < 1, got "
                f"{config.decay_min}, {config.decay_max}"
            )
        self.config = config
        self.levels: int = config.levels
        self.receptive_field: int = config.kernel_t
        self.feature_dim: int = config.feature_dim
        self.n_window: int = config.T - config.kernel_t + 1
        self.level_lstm = nn.LSTM(4, config.level_hidden, batch_first=True)
        self.summary = nn.Linear(config.levels * config.level_hidden, config.summary_dim)
        self.time_conv = nn.Conv1d(config.summary_dim, config.feature_dim, config.kernel_t)
        lam = torch.linspace(config.decay_min, config.decay_max, config.feature_dim)
        self.decay_logit = nn.Parameter(torch.log(lam / (1.0 - lam)))
        self.mlp = nn.Sequential(
            nn.Dropout(config.dropout),
            nn.Linear(2 * config.feature_dim, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, config.n_classes),
        )

    @torch.jit.export
    def row_features(self, x: torch.Tensor) -> torch.Tensor:
        """Features of input rows R-1..M-1: (B, 1, M, F) -> (B, M - R + 1, C)."""
        b, m = x.shape[0], x.shape[2]
        # rows are level-major (ask px, ask sz, bid px, bid sz per level); the touch goes last
        lv = x.reshape(b * m, self.levels, 4).flip(1)
        out, _ = self.level_lstm(lv)  # (B*M, L, H)
        s = torch.relu(self.summary(out.reshape(b * m, -1)))  # (B*M, S)
        s = s.reshape(b, m, -1).transpose(1, 2)  # (B, S, M)
        return torch.relu(self.time_conv(s)).transpose(1, 2)  # (B, M - R + 1, C)

    def decays(self) -> torch.Tensor:
        """Per-channel decay ``lam`` in (0, 1), (C,)."""
        return torch.sigmoid(self.decay_logit)

    @torch.jit.export
    def head(self, feats: torch.Tensor) -> torch.Tensor:
        """Logits of windows from their feature rows: (B, n, C) -> (B, n_classes), n = T - R + 1."""
        n = feats.shape[1]
        lam = torch.sigmoid(self.decay_logit)
        age = torch.arange(n - 1, -1, -1, dtype=feats.dtype, device=feats.device)  # (n,)
        w = (1.0 - lam)[None, :] * torch.exp(age[:, None] * torch.log(lam)[None, :])  # (n, C)
        h = (feats * w[None]).sum(dim=1)  # (B, C)
        return self.mlp(torch.cat([h, feats[:, n - 1, :]], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.row_features(x))


# ---- incremental inference ----------------------------------------------------------------


def _weights(model: HRNNCausal) -> dict[str, np.ndarray]:
    """The model's weights as contiguous float32 arrays in the kernel's layout (the decays in
    float64, which the windowed recurrence runs in)."""
    sd = {k: v.detach().cpu().float().numpy() for k, v in model.state_dict().items()}
    lam = torch.sigmoid(model.decay_logit.detach().cpu().double()).numpy()
    mlp = [m for m in model.mlp if isinstance(m, nn.Linear)]
    w = {
        "w_ih": sd["level_lstm.weight_ih_l0"],  # (4H, 4)
        "w_hh": sd["level_lstm.weight_hh_l0"],  # (4H, H)
        "b_lstm": sd["level_lstm.bias_ih_l0"] + sd["level_lstm.bias_hh_l0"],
        "w_sum": sd["summary.weight"],  # (S, L*H)
        "b_sum": sd["summary.bias"],
        # (C, S, K) -> (K, C, S): tap k reads row t - K + 1 + k
        "w_conv": np.transpose(sd["time_conv.weight"], (2, 0, 1)),
        "b_conv": sd["time_conv.bias"],
        "lam": lam,
        "lam_n": lam**model.n_window,
        "w1": mlp[0].weight.detach().cpu().float().numpy(),
        "b1": mlp[0].bias.detach().cpu().float().numpy(),
        "w2": mlp[1].weight.detach().cpu().float().numpy(),
        "b2": mlp[1].bias.detach().cpu().float().numpy(),
    }
    return {k: np.ascontiguousarray(v) for k, v in w.items()}


class HRNNStream:
    """Per-slot state of a streaming HRNN and its kernel: the incremental path of
    ``hrnn_causal`` inside :class:`lobstream.models.causal.runner.IncrementalRunner`.

    Per slot: the last R - 1 row summaries (the time convolution's input), the last n feature
    rows (to drop the one leaving the window) and the recurrent state in float64. A row costs
    the level LSTM over its levels, one row of the time convolution, one recurrent step and
    the head; the probabilities equal the full-window call's to float32 round-off
    (tests/test_hrnn_causal.py).
    """

    def __init__(self, model: HRNNCausal, n_slots: int) -> None:
        from lobstream.models.causal.hrnn_kernel import push

        c = model.config
        self._push = push
        self.T, self.F = c.T, c.F
        self.R, self.C = c.kernel_t, c.feature_dim
        self.n_out = c.n_classes
        self.w = _weights(model)
        ring = max(self.R - 1, 1)
        self.summaries = np.zeros((n_slots, ring, c.summary_dim), np.float32)
        self.feats = np.zeros((n_slots, model.n_window, self.C), np.float32)
        self.h = np.zeros((n_slots, self.C), np.float64)
        self.floats_per_slot = (ring * c.summary_dim + model.n_window * self.C) + 2 * self.C
        # the kernel's scratch: LSTM gates, h, c and outputs; summary; feature row; head input;
        # hidden layer; logits
        hd = c.level_hidden
        n_scr = 6 * hd + c.levels * hd + c.summary_dim + 3 * self.C + c.hidden + self.n_out
        self.scratch = np.zeros(n_scr, np.float32)
        # keep_warm's own one-slot state, full, so its push runs the head
        self._spare = (
            np.zeros((1, ring, c.summary_dim), np.float32),
            np.zeros((1, model.n_window, self.C), np.float32),
            np.zeros((1, self.C), np.float64),
        )

    def _run(self, state, counts, ids, rows, want, out) -> None:
        w = self.w
        self._push(
            w["w_ih"], w["w_hh"], w["b_lstm"], w["w_sum"], w["b_sum"], w["w_conv"], w["b_conv"],
            w["lam"], w["lam_n"], w["w1"], w["b1"], w["w2"], w["b2"], *state, counts, ids,
            rows, want, out, self.scratch, self.T,
        )  # fmt: skip

    def push(self, counts, ids, rows, want, out) -> None:
        """Rows (n, F) float32 to slots ``ids`` (n,) int64; ``out`` (n, n_out) filled."""
        self._run((self.summaries, self.feats, self.h), counts, ids, rows, want, out)

    def reset(self, sel) -> None:
        self.summaries[sel] = 0.0
        self.feats[sel] = 0.0
        self.h[sel] = 0.0

    def keep_warm(self) -> None:
        """One row and the head on a state of its own: no slot changes."""
        out = np.empty((1, self.n_out), np.float32)
        self._run(self._spare, np.full(1, self.T, np.int64), np.zeros(1, np.int64),
                  np.zeros((1, self.F), np.float32), np.ones(1, np.bool_), out)  # fmt: skip
