"""Attribution of a model's predicted class to the cells of its input window (no file I/O).

Two methods, chosen by architecture (:func:`method_for`):

- **Grad-CAM** (Selvaraju et al., 2017) for the CNN-type models (``cnn``, ``deeplob``,
  ``cnn_causal``, ``deeplob_causal``): the activations ``A`` of the last convolution block that
  still has a level axis, weighted per channel by the mean gradient of the target over that
  block's (time, level) cells, summed over channels, ReLU. The later layers of these models merge
  all levels into one column (DeepLOB's (1, L) block, the causal CNN's (1, F') merge), and a map
  taken there could not say *which* level mattered; so the layer is (:data:`GRADCAM_LAYERS`):
  cnn: the ReLU of the last conv stage (before its pool); cnn_causal: the ReLU of the last
  level-pooled stage; deeplob, deeplob_causal: the output of block 2 (one column per level, ask
  and bid merged). The coarse map is then brought back to the (T, F) input grid: levels by
  repetition (each block column covers ``F // W'`` input columns), time by repetition after
  pooling (cnn) or, for convolutions valid along time (the causal models), by spreading each
  feature row over the input rows it sees, so a map cell is never placed at a row its feature
  cannot have looked at.
- **Input x gradient** for the others (``binctabl``, ``hrnn``): ``x * d target / d x``, signed
  (positive: the cell's value pushed towards the predicted class).

The target is the log-probability of the predicted class rather than its logit: with three
classes a cell that raises every logit alike changes no probability, and what a desk asks is
why this class and not the other two.

Maps are (T, F) in the feature-row layout of :mod:`lobstream.kernels.features` (per level k:
ask px, ask sz, bid px, bid sz at columns 4k..4k+3); :func:`book_grid` folds a (T, F) array into
the (2L, T) picture of the book (asks above bids) for plotting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from lobstream.models.heads import n_heads
from lobstream.models.zoo import build_from_config, config_from_dict

GRAD_CAM = "grad_cam"
INPUT_X_GRADIENT = "input_x_gradient"
METHODS = (GRAD_CAM, INPUT_X_GRADIENT)


def _cnn_layer(m: nn.Module) -> nn.Module:
    return m.features[-2]  # ReLU of the last stage, before its 2x2 pool


def _cnn_causal_layer(m: nn.Module) -> nn.Module:
    # convs = n x (conv, ReLU, level pool) + (merge conv, ReLU): the last stage's ReLU
    return m.convs[3 * (len(m.config.channels) - 1) + 1]


def _deeplob_layer(m: nn.Module) -> nn.Module:
    return m.block2  # (B, C, T', L): the last block with a level axis


# arch -> (layer of an eager model, how its time axis maps to the input's: "same" or "valid")
GRADCAM_LAYERS: dict[str, tuple[Callable[[nn.Module], nn.Module], str]] = {
    "cnn": (_cnn_layer, "same"),
    "cnn_causal": (_cnn_causal_layer, "valid"),
    "deeplob": (_deeplob_layer, "same"),
    "deeplob_causal": (_deeplob_layer, "valid"),
}


def method_for(arch: str) -> str:
    """:data:`GRAD_CAM` for the CNN-type architectures, else :data:`INPUT_X_GRADIENT`."""
    return GRAD_CAM if arch in GRADCAM_LAYERS else INPUT_X_GRADIENT


def eager_model(module: nn.Module | torch.jit.ScriptModule, manifest: dict[str, Any]) -> nn.Module:
    """The eager zoo module of a loaded artifact, same weights, eval mode, on the CPU.

    Grad-CAM needs forward hooks on a named layer, which a scripted module does not run; the
    manifest's ``arch`` and ``config`` rebuild the eager module and the scripted one gives the
    weights.
    """
    model = build_from_config(config_from_dict(manifest["arch"], manifest["config"]))
    # a scripted module lists non-persistent buffers too (TABL's eye), which the eager one
    # rebuilds itself: take only the keys the eager module expects, all of them (strict)
    want = model.state_dict().keys()
    state = {k: v.detach().cpu() for k, v in module.state_dict().items() if k in want}
    model.load_state_dict(state)
    return model.eval()


class HeadOf(nn.Module):
    """Head ``h`` of a multi-horizon model as a 3-class model: logits (B, 3) of columns
    ``3h .. 3h + 2`` (see :mod:`lobstream.models.heads`); ``base`` keeps its layers, so
    Grad-CAM hooks them as usual."""

    def __init__(self, base: nn.Module, h: int) -> None:
        super().__init__()
        self.base = base
        self.h = int(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x)[:, 3 * self.h : 3 * self.h + 3]


def select_head(model: nn.Module, manifest: dict[str, Any], head: int) -> nn.Module:
    """``model`` itself for a single-head artifact (head 0), else :class:`HeadOf` head."""
    n = n_heads(manifest)
    if not 0 <= head < n:
        raise ValueError(f"head {head}: the artifact has {n} head(s) (0 .. {n - 1})")
    return model if n == 1 else HeadOf(model, head)


@dataclass(frozen=True)
class Explanation:
    """Attribution of a batch of windows.

    Attributes
    ----------
    probs : (B, 3) float32 class probabilities (down, flat, up).
    target : (B,) int64 the class explained (the predicted one unless given).
    maps : (B, T, F) float32, finite; Grad-CAM maps are >= 0, input x gradient is signed.
    method : one of :data:`METHODS`.
    """

    probs: np.ndarray
    target: np.ndarray
    maps: np.ndarray
    method: str


def explain(
    model: nn.Module,
    arch: str,
    windows: np.ndarray,
    target: np.ndarray | None = None,
    method: str | None = None,
) -> Explanation:
    """Attribute the target class of each window (default: the predicted class).

    Parameters
    ----------
    model : eager zoo model in eval mode (:func:`eager_model`); input x gradient also works on
        a scripted module.
    arch : its zoo name (picks the method and the Grad-CAM layer).
    windows : (B, T, F) or (T, F) float32 normalised feature rows; not modified.
    target : (B,) classes to explain; default the argmax of each window's probabilities.
    method : override :func:`method_for` (Grad-CAM needs an arch of :data:`GRADCAM_LAYERS`).
    """
    w = np.asarray(windows, np.float32)
    if w.ndim == 2:
        w = w[None]
    if w.ndim != 3:
        raise ValueError(f"windows must be (B, T, F) or (T, F), got shape {np.shape(windows)}")
    method = method or method_for(arch)
    if method not in METHODS:
        raise ValueError(f"method {method!r}: expected one of {METHODS}")
    if method == GRAD_CAM and arch not in GRADCAM_LAYERS:
        raise ValueError(f"Grad-CAM has no layer for {arch!r}; it has {sorted(GRADCAM_LAYERS)}")
    x = torch.from_numpy(w.copy()).unsqueeze(1)  # (B, 1, T, F)
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=1)
    tgt = probs.argmax(dim=1) if target is None else torch.as_tensor(target, dtype=torch.int64)
    if method == GRAD_CAM:
        get_layer, time_mode = GRADCAM_LAYERS[arch]
        base = model.base if isinstance(model, HeadOf) else model
        maps = grad_cam(model, get_layer(base), x, tgt, time_mode)
    else:
        maps = input_x_gradient(model, x, tgt)
    return Explanation(probs.numpy(), tgt.numpy(), maps, method)


def _target_logp(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # summed over the batch: each window's gradient is its own (no cross-window terms in eval)
    return torch.log_softmax(logits, dim=1).gather(1, target[:, None]).sum()


def input_x_gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """``x * d log p(target) / d x``: (B, 1, T, F) -> (B, T, F) float32."""
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(_target_logp(model(x), target), x)
    return (x * grad).detach()[:, 0].numpy().astype(np.float32)


def grad_cam(
    model: nn.Module, layer: nn.Module, x: torch.Tensor, target: torch.Tensor, time_mode: str
) -> np.ndarray:
    """Grad-CAM at ``layer`` brought to the input grid: (B, 1, T, F) -> (B, T, F) float32.

    ``time_mode`` "same": the layer's time axis is the input's (or pooled from it); "valid":
    feature row j summarises input rows j .. j + T - T' (valid convolutions along time).
    """
    acts: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: acts.append(out))
    try:
        logits = model(x.detach())
    finally:
        handle.remove()
    a = acts[0]  # (B, C, T', W')
    (g,) = torch.autograd.grad(_target_logp(logits, target), a)
    weights = g.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    cam = torch.relu((weights * a).sum(dim=1)).detach().numpy()  # (B, T', W')
    T, F = x.shape[2], x.shape[3]
    return to_input_grid(cam, T, F, time_mode)


def to_input_grid(cam: np.ndarray, T: int, F: int, time_mode: str) -> np.ndarray:
    """(B, T', W') coarse maps -> (B, T, F) float32 on the input's cells (see the module doc)."""
    B, t1, w1 = cam.shape
    # levels: block column c covers input columns c*r .. c*r + r - 1; floor pools leave a tail
    r = max(1, F // w1)
    cols = np.minimum(np.arange(F) // r, w1 - 1)
    cam = cam[:, :, cols]  # (B, T', F)
    if time_mode == "same":
        s = max(1, T // t1)
        return cam[:, np.minimum(np.arange(T) // s, t1 - 1)].astype(np.float32)
    if time_mode != "valid":
        raise ValueError(f"time_mode {time_mode!r}: expected 'same' or 'valid'")
    reach = T - t1 + 1  # input rows each feature row sees
    out = np.zeros((B, T, F), np.float64)
    count = np.zeros(T, np.float64)
    for k in range(reach):  # feature row j spread over input rows j .. j + reach - 1
        out[:, k : k + t1] += cam
        count[k : k + t1] += 1
    return (out / count[None, :, None]).astype(np.float32)


def book_grid(a: np.ndarray, levels: int, part: str = "both") -> np.ndarray:
    """A (T, F) feature-layout array as the book picture (2L, T), asks above bids.

    Row 0 is ask level L, row L - 1 ask 1 (the touch), row L bid 1, row 2L - 1 bid L.
    ``part``: "size" or "price" takes that column of each (side, level); "both" sums the two
    (an attribution per book cell).
    """
    a = np.asarray(a)
    T, F = a.shape
    if F != 4 * levels:
        raise ValueError(f"array has {F} columns; {levels} levels need {4 * levels}")
    cells = a.reshape(T, levels, 2, 2)  # (T, level, side ask/bid, px/sz)
    if part == "both":
        v = cells.sum(axis=3)
    elif part in ("price", "size"):
        v = cells[..., 0 if part == "price" else 1]
    else:
        raise ValueError(f"part {part!r}: expected 'price', 'size' or 'both'")
    asks = v[:, ::-1, 0].T  # (L, T): deepest ask on top
    bids = v[:, :, 1].T  # (L, T): touch first
    return np.concatenate([asks, bids], axis=0)


def top_cells(attribution: np.ndarray, frac: float) -> np.ndarray:
    """Boolean mask (same shape) of the ``ceil(frac * size)`` largest attribution cells."""
    a = np.asarray(attribution).ravel()
    k = max(1, int(np.ceil(frac * a.size)))
    mask = np.zeros(a.size, bool)
    mask[np.argsort(a)[-k:]] = True
    return mask.reshape(np.shape(attribution))


def confident_rows(probs: np.ndarray, n: int, min_gap: int = 0) -> np.ndarray:
    """Row indices of the ``n`` most confident directional signals, best first.

    Confidence is ``max(p_down, p_up)`` (flat is no signal); NaN rows (no window) never count.
    A row within ``min_gap`` rows of one already taken is skipped: neighbouring windows share
    all but a few rows and would explain the same moment.
    """
    p = np.asarray(probs, np.float64)
    conf = np.maximum(p[:, 0], p[:, 2])
    conf = np.where(np.isnan(conf), -np.inf, conf)
    taken: list[int] = []
    for i in np.argsort(-conf, kind="stable"):
        if len(taken) == n or conf[i] == -np.inf:
            break
        if all(abs(int(i) - j) > min_gap for j in taken):
            taken.append(int(i))
    return np.asarray(taken, np.int64)
