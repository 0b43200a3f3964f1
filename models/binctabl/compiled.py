"""Whole-window CPU inference without torch: BiN-CTABL compiled for a Numba kernel.

``CompiledRunner`` has the :class:`~lobstream.models.runner.ModelRunner` interface (an
``input`` buffer the ring kernel gathers into, ``infer(n)``, ``predict``, ``keep_warm``) and
runs the forward pass in one Numba call (:mod:`lobstream.models.binctabl.kernel`). Why: a
batch-1 torch call is tens of dispatched operators, and on a quiet market, when the code has
left the caches since the last message, it costs several times its back-to-back time; the
kernel costs a fraction of either, and less CPU per window than torch at every batch size
(README; ``python -m bench.inference --archs binctabl --modes runner,compiled``).

:func:`lobstream.models.runner.window_runner` picks it (``model.runner = "auto"`` on the CPU)
and checks it against the module when it is built: a module the program does not reproduce
raises :class:`~lobstream.models.runner.CompileError`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from lobstream.models.binctabl import kernel as K
from lobstream.models.heads import n_heads, out_shape
from lobstream.models.runner import CompileError, WindowRunner

__all__ = ["CompiledRunner", "CompileError", "compile_binctabl"]

# Largest difference from the module's probabilities on the check window: float32 round-off
# in another summation order is ~1e-6.
CHECK_TOLERANCE = 1e-4


def _f32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)


def compile_binctabl(module: nn.Module) -> tuple[np.ndarray, ...]:
    """The parameter tuple of :func:`lobstream.models.binctabl.kernel.binctabl_forward` for a
    BiN-CTABL module (an ``nn.Module`` or its TorchScript export), in eval mode."""
    p = {name: _f32(v) for name, v in module.named_parameters()}
    mix = np.maximum(p["bin.mix"], 0.0)  # the module clamps these in forward
    k2 = p["tabl.w_att"].shape[0]
    eye = np.eye(k2, dtype=np.float32)
    shift = (mix[0] * p["bin.beta_time"] + mix[1] * p["bin.beta_feat"]).T  # (T, F)
    return (
        (mix[0] * p["bin.gamma_time"][:, 0]).astype(np.float32),
        (mix[1] * p["bin.gamma_feat"][0]).astype(np.float32),
        np.ascontiguousarray(shift, dtype=np.float32),
        np.ascontiguousarray(p["bl1.w2"].T),
        p["bl1.w1"],
        p["bl1.bias"],
        p["bl2.w2"],
        p["bl2.w1"],
        p["bl2.bias"],
        (p["tabl.w_att"] * (1 - eye) + eye / k2).astype(np.float32),
        np.clip(p["tabl.lam"], 0.0, 1.0).astype(np.float32),
        p["tabl.w1"],
        np.ascontiguousarray(p["tabl.w2"][:, 0]),
        np.ascontiguousarray(p["tabl.bias"][:, 0]),
        np.array([float(module.bin.eps)], dtype=np.float32),
    )


# arch -> (compile the module into kernel parameters, the kernel, its scratch size); the
# architectures here are models.runner.COMPILED_ARCHS
_PROGRAMS: dict[str, tuple[Callable, Callable, Callable]] = {
    "binctabl": (compile_binctabl, K.binctabl_forward, K.scratch_sizes),
}


class CompiledRunner(WindowRunner):
    """A model compiled for a Numba kernel, with a preallocated input buffer (CPU only).

    Parameters
    ----------
    module : nn.Module or torch.jit.ScriptModule
        A BiN-CTABL module (an architecture of ``_PROGRAMS``); read once, not kept.
    manifest : dict
        The artifact manifest (``arch``, ``T``, ``F``, heads).
    max_batch : int
        Rows of ``input``, the most windows one ``infer`` call takes.
    check : bool
        Compare one random window with the module now; raise :class:`CompileError` if the
        probabilities differ by more than ``CHECK_TOLERANCE`` (default True).

    Attributes
    ----------
    input : ndarray (max_batch, 1, T, F) float32
        Write windows here, then call ``infer(n)``. Never reallocated.
    kernel, params, scratch
        The forward kernel, its parameter tuple and its two scratch buffers:
        ``kernel(x, n, out, params, *scratch)`` (the daemon's fused quiet call runs it too).
    """

    device = torch.device("cpu")
    mode = "numba"
    is_cuda = False
    use_graphs = False

    def __init__(
        self, module: nn.Module, manifest: dict[str, Any], *, max_batch: int = 256,
        check: bool = True,
    ) -> None:  # fmt: skip
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.manifest = manifest
        self.arch = manifest.get("arch", "?")
        if self.arch not in _PROGRAMS:
            raise ValueError(f"no compiled program for arch {self.arch!r}")
        self.T, self.F = int(manifest["T"]), int(manifest["F"])
        self.n_heads = n_heads(manifest)
        self.out_shape = out_shape(self.n_heads)
        self.max_batch = self.micro_batch = int(max_batch)
        build, self.kernel, size = _PROGRAMS[self.arch]
        self.params = build(module)
        n32, n64 = size(self.T, self.F, self.params)
        self.scratch = (np.zeros(n32, dtype=np.float32), np.zeros(n64, dtype=np.float64))
        self.input = np.zeros((self.max_batch, 1, self.T, self.F), dtype=np.float32)
        self._out = np.zeros((self.max_batch, 3 * self.n_heads), dtype=np.float32)
        self.kernel(self.input, 1, self._out, self.params, *self.scratch)  # compile or load
        if check:
            self._check(module)

    def _check(self, module: nn.Module) -> None:
        window = np.random.default_rng(0).standard_normal((1, 1, self.T, self.F), np.float32)
        with torch.inference_mode():
            logits = module.eval()(torch.from_numpy(window)).reshape(self.n_heads, 3)
            want = torch.softmax(logits, dim=1).numpy().reshape(1, -1)
        got = np.zeros_like(want)
        self.kernel(window, 1, got, self.params, *self.scratch)
        diff = float(np.abs(got - want).max())
        if not diff <= CHECK_TOLERANCE:
            raise CompileError(f"the compiled {self.arch} program differs from the module by "
                               f"{diff:.3g} on a check window (tolerance {CHECK_TOLERANCE})")  # fmt: skip

    def keep_warm(self) -> None:
        """A throwaway batch-1 call on whatever ``input[0]`` holds (read only)."""
        self.kernel(self.input, 1, self._out, self.params, *self.scratch)

    def infer(self, n: int) -> np.ndarray:
        """Class probabilities of the first ``n`` windows of ``input``: (n, 3) float32, or
        (n, H, 3) for H heads; a new array the caller may keep."""
        self._check_n(n)
        out = np.empty((n, 3 * self.n_heads), dtype=np.float32)
        self.kernel(self.input, n, out, self.params, *self.scratch)
        return out.reshape(n, *self.out_shape)

    def __repr__(self) -> str:
        return f"CompiledRunner({self.arch}, max_batch={self.max_batch})"
