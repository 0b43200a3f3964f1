"""Incremental inference for causal models: per-instrument ring caches, one row per event.

A causal model (``manifest["causal"]``, see :mod:`lobstream.models.causal.cnn`) computes a
window's logits as ``head(row_features(x))`` where feature row t depends on input rows
t-R+1..t only. So an instrument's state can be kept between events: per conv layer, the few
input rows its time kernel still needs; the per-row features (or, for an LSTM head, their input
projections ``W_ih f + b``); and a new row costs one output row per layer plus the head.
``IncrementalRunner`` holds that state for ``n_slots`` instruments and returns, for each pushed
row, the probabilities of the window of the last T rows ending there: the same numbers as
``ModelRunner`` on that window, to float32 round-off (see tests/test_incremental.py).

The model is compiled once into a flat program (:mod:`lobstream.models.causal.kernel`): conv
weights as (KT, KW, C_in, C_out) so the inner loop runs over output channels, eval-mode
BatchNorm as a per-channel scale and shift (applied after the activation it follows, or folded
into the conv before it), the LSTM's two biases summed. Rows are pushed in the same form the
ModelRunner's windows hold: the normalised feature rows the ring kernel writes (normalisation
happens upstream, in ``kernels.features``; the runner applies none).

Which state an architecture keeps and which kernel advances it is its entry in ``_ARCHS``:
:class:`ProgramStream` (the compiled program above) for cnn_causal and deeplob_causal,
:class:`~lobstream.models.causal.hrnn.HRNNStream` (a windowed linear recurrence, one step a
row) for hrnn_causal. The runner itself is the same for all: slot ids, row checks, counts.

Rows since reset < T: the window is not full, and the row's probabilities are NaN (``ready``
says which slots are full). The ModelRunner would instead see a window that starts with zero
rows; the incremental runner refuses to guess.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from lobstream.models.artifact import load_model
from lobstream.models.causal import cnn, deeplob, hrnn
from lobstream.models.causal import kernel as K
from lobstream.models.heads import n_heads, out_shape
from lobstream.models.zoo import arch_of, build_from_config, config_from_dict

logger = logging.getLogger(__name__)

__all__ = [
    "IncrementalRunner",
    "Program",
    "ProgramBuilder",
    "ProgramStream",
    "compile_program",
    "is_causal",
]


def is_causal(manifest: dict[str, Any]) -> bool:
    """Whether an artifact's manifest describes a causal model (incremental inference works)."""
    return isinstance(manifest.get("causal"), dict)


# ---- the program ---------------------------------------------------------------------------


@dataclass
class Program:
    """A causal model compiled for the kernels (see :mod:`lobstream.models.causal.kernel`)."""

    params: np.ndarray  # float32 (P,)
    ops: np.ndarray  # int64 (n_ops, N_OP_FIELDS)
    slopes: np.ndarray  # float32 (n_ops,)
    bufs: np.ndarray  # int64 (n_bufs, N_BUF_FIELDS)
    head: np.ndarray  # int64 (N_HEAD_FIELDS,)
    state_size: int  # floats per slot
    scratch_size: int
    T: int
    F: int


@dataclass
class _Buf:
    width: int
    channels: int
    depth: int = 1  # raised to the widest time kernel that reads it


@dataclass
class _Op:
    kind: int
    src: int
    dst: int
    kt: int
    w_in: int
    c_in: int
    kw: int = 1
    sw: int = 1
    pw: int = 0
    wconv: int = 0
    cout: int = 0
    coff: int = 0
    weight: np.ndarray | None = None  # (KT, KW, C_in, C_out)
    bias: np.ndarray | None = None
    act: int = K.ACT_NONE
    slope: float = 0.0
    scale: np.ndarray | None = None
    shift: np.ndarray | None = None
    pool: int = 1

    @property
    def w_out(self) -> int:
        return self.wconv // self.pool if self.kind == K.OPK_CONV else self.w_in


@dataclass
class ProgramBuilder:
    """Collects ring buffers and ops while walking a model's layers (what each causal model's
    ``incremental_trunk`` calls: ``buf``, ``chain``, ``retarget``)."""

    bufs: list[_Buf] = field(default_factory=list)
    ops: list[_Op] = field(default_factory=list)

    def buf(self, width: int, channels: int) -> int:
        self.bufs.append(_Buf(width, channels))
        return len(self.bufs) - 1

    def chain(self, layers: nn.Module, src: int, name: str) -> int:
        """Ops for an ``nn.Sequential`` of Conv2d / ReLU / LeakyReLU / BatchNorm2d / MaxPool2d
        reading buffer ``src``; returns the buffer of its output."""
        cur: _Op | None = None
        for i, m in enumerate(layers):
            where = f"{name}[{i}] ({type(m).__name__})"
            if isinstance(m, nn.Conv2d):
                cur = self._conv(m, src, where)
                self.ops.append(cur)
                src = cur.dst
            elif isinstance(m, nn.MaxPool2d) and _pair(m.kernel_size)[1] == 1:
                kt = _pair(m.kernel_size)[0]
                if _pair(m.stride) != (1, 1) or _pair(m.padding) != (0, 0):
                    raise NotImplementedError(f"{where}: only a valid, stride-1 pool along time")
                b = self.bufs[src]
                cur = _Op(K.OPK_TMAXPOOL, src, self.buf(b.width, b.channels), kt, b.width,
                          b.channels, cout=b.channels)  # fmt: skip
                self.ops.append(cur)
                src = cur.dst
            elif cur is None or cur.kind != K.OPK_CONV:
                raise NotImplementedError(f"{where}: expected a Conv2d before it")
            elif isinstance(m, nn.ReLU | nn.LeakyReLU):
                if cur.act != K.ACT_NONE or cur.scale is not None or cur.pool != 1:
                    raise NotImplementedError(f"{where}: only one activation, right after a conv")
                leaky = isinstance(m, nn.LeakyReLU)
                cur.act = K.ACT_LEAKY if leaky else K.ACT_RELU
                cur.slope = float(m.negative_slope) if leaky else 0.0
            elif isinstance(m, nn.BatchNorm2d):
                scale, shift = _bn_affine(m)
                if cur.act == K.ACT_NONE and cur.pool == 1:
                    # right after the conv: fold it in, exactly
                    cur.weight = cur.weight * scale
                    cur.bias = cur.bias * scale + shift
                elif cur.scale is None and cur.pool == 1:
                    cur.scale, cur.shift = scale, shift  # after the activation: its own step
                else:
                    raise NotImplementedError(f"{where}: a second affine or one after a pool")
            elif isinstance(m, nn.MaxPool2d):
                kt, kw = _pair(m.kernel_size)
                if (kt, kw) != (1, _pair(m.stride)[1]) or _pair(m.padding) != (0, 0):
                    raise NotImplementedError(f"{where}: only a (1, k) level pool of stride k")
                if cur.pool != 1:
                    raise NotImplementedError(f"{where}: a second level pool")
                cur.pool = kw
                self.bufs[cur.dst].width = cur.wconv // kw
            elif isinstance(m, nn.Dropout | nn.Identity):
                continue  # eval mode
            else:
                raise NotImplementedError(f"{where}: no incremental kernel for this layer")
        return src

    def _conv(self, m: nn.Conv2d, src: int, where: str) -> _Op:
        b = self.bufs[src]
        kt, kw = _pair(m.kernel_size)
        pt, pw = _pair(m.padding)
        st, sw = _pair(m.stride)
        if pt != 0 or st != 1 or _pair(m.dilation) != (1, 1) or m.groups != 1:
            raise NotImplementedError(
                f"{where}: incremental inference needs valid, stride-1, undilated convolutions "
                f"along time and groups=1; got padding {m.padding}, stride {m.stride}"
            )
        if m.in_channels != b.channels:
            raise ValueError(f"{where}: {m.in_channels} input channels, buffer has {b.channels}")
        w = m.weight.detach().double().numpy()  # (C_out, C_in, KT, KW)
        bias = m.bias.detach().double().numpy() if m.bias is not None else np.zeros(len(w))
        wconv = (b.width + 2 * pw - kw) // sw + 1
        dst = self.buf(wconv, m.out_channels)
        weight = w.transpose(2, 3, 1, 0)  # (KT, KW, C_in, C_out): C_out innermost
        return _Op(K.OPK_CONV, src, dst, kt, b.width, b.channels, kw=kw, sw=sw, pw=pw,
                   wconv=wconv, cout=m.out_channels, weight=weight, bias=bias)  # fmt: skip

    def retarget(self, op: _Op, dst: int, coff: int) -> None:
        """Write ``op``'s output into channels ``coff..`` of ``dst`` instead (a concat)."""
        old = self.bufs[op.dst]
        new = self.bufs[dst]
        if old.width != new.width or coff + op.cout > new.channels:
            raise ValueError("concatenated branch does not fit its output buffer")
        op.dst, op.coff = dst, coff


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _bn_affine(m: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode BatchNorm as y = scale * x + shift, per channel (float64)."""
    mean = m.running_mean.detach().double().numpy()
    var = m.running_var.detach().double().numpy()
    gamma = m.weight.detach().double().numpy() if m.weight is not None else np.ones_like(mean)
    beta = m.bias.detach().double().numpy() if m.bias is not None else np.zeros_like(mean)
    scale = gamma / np.sqrt(var + m.eps)
    return scale, beta - mean * scale


def _head_lstm(model: nn.Module, nf: int, C: int) -> tuple[int, int, list[np.ndarray]]:
    lstm, fc = model.lstm, model.fc
    if lstm.num_layers != 1 or lstm.bidirectional or not lstm.batch_first:
        raise NotImplementedError("incremental LSTM head: one unidirectional batch_first layer")
    H = lstm.hidden_size
    wih = lstm.weight_ih_l0.detach().double().numpy()  # (4H, C)
    whh = lstm.weight_hh_l0.detach().double().numpy()  # (4H, H)
    bias = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach().double().numpy()
    w = [wih.T, bias, whh.T, np.zeros(0), fc.weight.detach().double().numpy(),
         fc.bias.detach().double().numpy()]  # fmt: skip
    return K.HEAD_LSTM, H, w


def _head_mlp(model: nn.Module, nf: int, C: int) -> tuple[int, int, list[np.ndarray]]:
    lin = [m for m in model.mlp if isinstance(m, nn.Linear)]
    if len(lin) != 2:
        raise NotImplementedError("incremental MLP head: Linear, ReLU, Linear")
    l1, l2 = lin
    H = l1.out_features
    w1 = l1.weight.detach().double().numpy().reshape(H, nf, C).transpose(1, 2, 0)  # (T', C, H)
    # cnn_causal's head: flattened rows scaled by flat_scale, the newest row also through
    # ``newest`` (C -> H, no bias), which is the same as adding its weights to the last row's
    w1 = w1 * float(getattr(model, "flat_scale", 1.0))
    newest = getattr(model, "newest", None)
    if newest is not None:
        w1[nf - 1] += newest.weight.detach().double().numpy().T
    w = [w1, l1.bias.detach().double().numpy(), l2.weight.detach().double().numpy(),
         l2.bias.detach().double().numpy(), np.zeros(0), np.zeros(0)]  # fmt: skip
    return K.HEAD_MLP, H, w


# arch -> (trunk builder, beside the model; head builder): the architectures compiled into a
# program for the conv kernels (a new one of that kind adds one line here)
_PROGRAMS = {
    "deeplob_causal": (deeplob.incremental_trunk, _head_lstm),
    "cnn_causal": (cnn.incremental_trunk, _head_mlp),
}


def compile_program(model: nn.Module) -> Program:
    """The kernels' program for an eager causal zoo model in eval mode (not modified)."""
    arch = arch_of(model)
    if arch not in _PROGRAMS:
        raise ValueError(
            f"architecture {arch!r} has no program; compiled ones are {sorted(_PROGRAMS)}"
        )
    cfg = model.config
    T, F, R, C = int(cfg.T), int(cfg.F), int(model.receptive_field), int(model.feature_dim)
    nf = T - R + 1
    trunk, head_fn = _PROGRAMS[arch]
    b = ProgramBuilder()
    x = b.buf(F, 1)
    feat = trunk(model, b, x)
    fb = b.bufs[feat]
    if fb.width != 1 or fb.channels != C:
        raise ValueError(f"{arch}: feature rows are ({fb.width}, {fb.channels}), expected (1, {C})")
    kind, H, hw = head_fn(model, nf, C)
    for op in b.ops:
        b.bufs[op.src].depth = max(b.bufs[op.src].depth, op.kt)
    if kind == K.HEAD_MLP:
        fb.depth = max(fb.depth, nf)  # the feature ring is the MLP head's input
    reach = 1 + _reach(b, feat)
    if reach != R:
        raise ValueError(f"{arch}: the layers reach {reach} rows back, the model says R={R}")

    chunks: list[np.ndarray] = []
    size = 0

    def put(a: np.ndarray | None) -> int:
        nonlocal size
        if a is None or a.size == 0:
            return -1
        chunks.append(np.ascontiguousarray(a, dtype=np.float32).ravel())
        size += a.size
        return size - a.size

    ops = np.zeros((len(b.ops), K.N_OP_FIELDS), dtype=np.int64)
    slopes = np.zeros(len(b.ops), dtype=np.float32)
    for i, op in enumerate(b.ops):
        o = ops[i]
        o[K.OP_KIND], o[K.OP_IN], o[K.OP_OUT], o[K.OP_COFF] = op.kind, op.src, op.dst, op.coff
        o[K.OP_KT], o[K.OP_KW], o[K.OP_SW], o[K.OP_PW] = op.kt, op.kw, op.sw, op.pw
        o[K.OP_WCONV], o[K.OP_COUT], o[K.OP_POOL], o[K.OP_ACT] = op.wconv, op.cout, op.pool, op.act
        o[K.OP_WOFF], o[K.OP_BOFF] = put(op.weight), put(op.bias)
        aff = None if op.scale is None else np.concatenate([op.scale, op.shift])
        o[K.OP_AOFF] = put(aff)
        slopes[i] = op.slope
    bufs = np.zeros((len(b.bufs), K.N_BUF_FIELDS), dtype=np.int64)
    off = 0
    for i, bf in enumerate(b.bufs):
        bufs[i] = (off, bf.depth, bf.width, bf.channels)
        off += bf.depth * bf.width * bf.channels
    head = np.zeros(K.N_HEAD_FIELDS, dtype=np.int64)
    head[K.HD_KIND], head[K.HD_T], head[K.HD_NF], head[K.HD_C] = kind, T, nf, C
    head[K.HD_H], head[K.HD_NC], head[K.HD_FEAT] = H, int(cfg.n_classes), feat
    for fld, a in zip((K.HD_W1, K.HD_B1, K.HD_W2, K.HD_B2, K.HD_W3, K.HD_B3), hw, strict=True):
        head[fld] = put(a)
    head[K.HD_XP] = off if kind == K.HEAD_LSTM else -1
    if kind == K.HEAD_LSTM:
        # deeplob_causal's LSTM reads every lstm_stride-th feature row from lstm_first, so
        # that its last step is the window's newest row
        stride = int(getattr(model, "lstm_stride", 1))
        first = int(getattr(model, "lstm_first", 0))
        steps = (nf - 1 - first) // stride + 1
        head[K.HD_STEPS], head[K.HD_STRIDE] = steps, stride
        head[K.HD_XPD] = (steps - 1) * stride + 1  # the oldest projection a window reads
        off += int(head[K.HD_XPD]) * 4 * H
    wide = max((op.wconv * op.cout for op in b.ops if op.kind == K.OPK_CONV), default=1)
    params = np.concatenate(chunks) if chunks else np.zeros(1, np.float32)
    return Program(params, ops, slopes, bufs, head, off, wide + 6 * H + int(cfg.n_classes), T, F)


def _reach(b: ProgramBuilder, dst: int) -> int:
    """Rows back the output of buffer ``dst`` depends on (widest path through the ops)."""
    best = 0
    for op in b.ops:
        if op.dst == dst:
            best = max(best, op.kt - 1 + _reach(b, op.src))
    return best


class ProgramStream:
    """Per-slot state of a compiled program and its kernel (:func:`compile_program`,
    :mod:`lobstream.models.causal.kernel`): the incremental path of the conv architectures.

    What :class:`IncrementalRunner` needs of a causal architecture's path: ``T, F, R, C,
    n_out, floats_per_slot``, ``push(counts, ids, rows, want, out)`` (advances ``counts``),
    ``reset(sel)`` and ``keep_warm()``.
    """

    def __init__(self, model: nn.Module, n_slots: int) -> None:
        self.program = p = compile_program(model)
        self.T, self.F = p.T, p.F
        self.R, self.C = int(model.receptive_field), int(model.feature_dim)
        self.n_out = int(p.head[K.HD_NC])  # logits per window: 3 per head (models.heads)
        self.state = np.zeros((n_slots, p.state_size), dtype=np.float32)
        self.floats_per_slot = int(p.state_size)
        self.scratch = np.zeros(p.scratch_size, dtype=np.float32)
        # keep_warm's own one-slot state
        self._spare = np.zeros((1, p.state_size), dtype=np.float32)

    def _run(self, state, counts, ids, rows, want, out) -> None:
        p = self.program
        K.push(p.params, p.ops, p.slopes, p.bufs, p.head, state, counts, ids, rows, want, out,
               self.scratch)  # fmt: skip

    def push(self, counts, ids, rows, want, out) -> None:
        self._run(self.state, counts, ids, rows, want, out)

    def reset(self, sel) -> None:
        self.state[sel] = 0.0

    def keep_warm(self) -> None:
        """A throwaway push (one row and the head) on a state of its own."""
        out = np.empty((1, self.n_out), dtype=np.float32)
        self._run(self._spare, np.full(1, self.T, np.int64), np.zeros(1, np.int64),
                  np.zeros((1, self.F), np.float32), np.ones(1, np.bool_), out)  # fmt: skip


# arch -> its incremental path (what the runner keeps per slot and the kernel that advances
# it); a causal architecture streams once it is here. The streaming HRNN's state is a windowed
# recurrence, not ring caches of conv rows, so it has a kernel of its own.
_ARCHS: dict[str, type] = {
    "deeplob_causal": ProgramStream,
    "cnn_causal": ProgramStream,
    "hrnn_causal": hrnn.HRNNStream,
}


# ---- the runner ----------------------------------------------------------------------------


def _eager(module: nn.Module, manifest: dict[str, Any]) -> nn.Module:
    """An eager CPU copy of ``module`` in eval mode (a scripted artifact is rebuilt from the
    manifest's config and loaded with its weights)."""
    if isinstance(module, torch.jit.ScriptModule):
        model = build_from_config(config_from_dict(manifest["arch"], manifest["config"]))
        model.load_state_dict({k: v.cpu() for k, v in module.state_dict().items()})
    else:
        import copy

        model = copy.deepcopy(module).cpu()
    return model.eval()


class IncrementalRunner:
    """Per-instrument caches of a causal model: ``push`` a row, get its window's probabilities.

    Parameters
    ----------
    module : nn.Module or torch.jit.ScriptModule
        A causal zoo model (``causal = True``) or its artifact's module; not modified (the
        weights are copied into the program).
    manifest : dict
        The artifact manifest; needs ``arch``, ``config``, ``T``, ``F`` and, for a scripted
        module, ``causal``.
    n_slots : int
        Instruments the runner keeps state for (ids 0..n_slots-1).
    warm : bool
        Compile (or load from Numba's disk cache) and run the kernel once now, so the first
        event never pays it (default True).

    Attributes
    ----------
    counts : ndarray (n_slots,) int64
        Rows pushed per slot since its reset; read-only for callers.
    T, F, R, C : int
        Window rows, features per row, receptive field, feature width.
    stream : the architecture's per-slot state and kernel (``_ARCHS``)
    """

    def __init__(
        self, module: nn.Module, manifest: dict[str, Any], *, n_slots: int, warm: bool = True
    ) -> None:
        if n_slots < 1:
            raise ValueError(f"n_slots must be >= 1, got {n_slots}")
        if isinstance(module, torch.jit.ScriptModule) and not is_causal(manifest):
            raise ValueError(
                f"the {manifest.get('arch', '?')} artifact is not causal (its manifest has no "
                "'causal' entry); incremental inference needs a causal model such as "
                f"{sorted(_ARCHS)}: use ModelRunner for this one"
            )
        model = _eager(module, manifest)
        if not getattr(model, "causal", False):
            raise ValueError(
                f"{type(model).__name__} is not causal; incremental inference needs one of "
                f"{sorted(_ARCHS)} (use ModelRunner otherwise)"
            )
        self.arch = arch_of(model)
        if self.arch not in _ARCHS:
            raise ValueError(
                f"architecture {self.arch!r} has no incremental path; causal ones are "
                f"{sorted(_ARCHS)}"
            )
        self.manifest = manifest
        self.stream = _ARCHS[self.arch](model, int(n_slots))
        st = self.stream
        self.T, self.F, self.R, self.C = st.T, st.F, st.R, st.C
        # logits per window: 3 per head (models.heads); push returns (n, 3) or (n, H, 3)
        self.n_out = st.n_out
        self.n_heads = self.n_out // 3
        self.out_shape = out_shape(self.n_heads)
        if self.n_heads != n_heads(manifest):
            raise ValueError(
                f"the model has {self.n_heads} head(s) but the manifest lists {n_heads(manifest)}"
            )
        if is_causal(manifest) and manifest["causal"].get("receptive_field", self.R) != self.R:
            raise ValueError(
                f"manifest says receptive_field={manifest['causal']['receptive_field']} but "
                f"the model has {self.R}; re-export the artifact"
            )
        if int(manifest.get("T", self.T)) != self.T or int(manifest.get("F", self.F)) != self.F:
            raise ValueError(
                f"manifest T={manifest.get('T')}, F={manifest.get('F')} but the model has "
                f"T={self.T}, F={self.F}"
            )
        self.n_slots = int(n_slots)
        self.counts = np.zeros(self.n_slots, dtype=np.int64)
        self._all_want = np.ones(1, dtype=np.bool_)
        if warm:
            # one compile (or cache load) covers push and push_many
            self.keep_warm()
        logger.info(
            "incremental runner: %s, T=%d R=%d C=%d, %d slots",
            self.arch, self.T, self.R, self.C, self.n_slots,
        )  # fmt: skip

    @classmethod
    def from_artifact(
        cls,
        path: str | os.PathLike,
        *,
        n_slots: int,
        expect: dict[str, Any] | None = None,
        sha256: str | None = None,
        warm: bool = True,
    ) -> IncrementalRunner:
        """Load and check an artifact (see ``load_model``) and build its incremental runner."""
        module, manifest = load_model(path, expect=expect, sha256=sha256, device="cpu")
        return cls(module, manifest, n_slots=n_slots, warm=warm)

    def keep_warm(self) -> None:
        """A throwaway push (one row and the head) on a state of its own: the weights and the
        kernel stay in cache while a quiet market sends nothing; no slot changes."""
        self.stream.keep_warm()

    def _ids(self, ids: Any) -> np.ndarray:
        a = np.asarray(ids)
        if a.ndim == 0:
            a = a.reshape(1)
        if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
            raise ValueError(f"ids must be a 1-D integer array, got shape {a.shape} {a.dtype}")
        if a.size and (a.min() < 0 or a.max() >= self.n_slots):
            raise ValueError(
                f"ids must lie in [0, {self.n_slots}), got {a.min()}..{a.max()}; build the "
                "runner with more n_slots"
            )
        return np.ascontiguousarray(a, dtype=np.int64)

    def push(self, ids: Any, rows: np.ndarray, want: np.ndarray | None = None) -> np.ndarray:
        """Append ``rows[i]`` to slot ``ids[i]``, in order; probabilities of each new window.

        Parameters
        ----------
        ids : int array (n,)
            Slots, each in [0, n_slots); a slot may repeat (its rows are taken in order).
        rows : float32 array (n, F)
            Normalised feature rows, as the ModelRunner's windows hold them; not modified.
        want : bool array (n,), optional
            False skips the head (the costly part) for that row: its state is updated, its
            output is NaN. Default: every row.

        Returns
        -------
        ndarray (n, 3) float32, or (n, H, 3) for a multi-horizon artifact
            Softmax probabilities (down, flat, up) of the window of the slot's last T rows
            ending at each pushed row; NaN rows where the slot had fewer than T rows since its
            reset (see ``ready``) or ``want`` is False. A new array.
        """
        ids = self._ids(ids)
        x = np.ascontiguousarray(rows, dtype=np.float32)
        if x.ndim == 1 and len(ids) == 1:
            x = x.reshape(1, -1)
        if x.shape != (len(ids), self.F):
            raise ValueError(
                f"rows have shape {np.shape(rows)}; expected ({len(ids)}, {self.F}): one row of "
                f"F={self.F} features per id"
            )
        if want is None:
            w = self._all_want if len(ids) == 1 else np.ones(len(ids), dtype=np.bool_)
        else:
            w = np.ascontiguousarray(want, dtype=np.bool_)
            if w.shape != (len(ids),):
                raise ValueError(f"want has shape {w.shape}; expected ({len(ids)},)")
        out = np.empty((len(ids), self.n_out), dtype=np.float32)
        self.stream.push(self.counts, ids, x, w, out)
        return out if self.n_heads == 1 else out.reshape(len(ids), *self.out_shape)

    def push_many(self, slot: int, rows: np.ndarray, want: np.ndarray | None = None) -> np.ndarray:
        """``push`` a run of consecutive rows (m, F) of one slot; returns (m, 3) (see push)."""
        x = np.asarray(rows)
        if x.ndim != 2:
            raise ValueError(f"rows have shape {x.shape}; expected (m, {self.F})")
        return self.push(np.full(len(x), slot, dtype=np.int64), x, want)

    def ready(self, ids: Any = None) -> np.ndarray:
        """bool (n,) (all slots when ``ids`` is None): the slot has at least T rows since its
        reset, so its last push (if wanted) and every later one return probabilities."""
        c = self.counts if ids is None else self.counts[self._ids(ids)]
        return c >= self.T

    def reset(self, ids: Any = None) -> None:
        """Forget the rows of ``ids`` (all slots when None), after a snapshot or a stale gap:
        their next T - 1 pushes return NaN, then full windows of rows after the reset."""
        sel = slice(None) if ids is None else self._ids(ids)
        self.stream.reset(sel)
        self.counts[sel] = 0

    def __repr__(self) -> str:
        return f"IncrementalRunner({self.arch}, T={self.T}, R={self.R}, n_slots={self.n_slots})"
