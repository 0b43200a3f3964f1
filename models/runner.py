"""The whole-window model runners shared by the daemon and the backtest: one warm, batched
model call, and the choice of runner.

A whole-window runner (:class:`WindowRunner`) owns a preallocated input buffer of shape
(Bmax, 1, T, F) float32, exposed as a numpy array that the window copy
(:mod:`lobstream.kernels.windows`, e.g. ``kernels.ring.gather_windows``) writes into directly,
and turns ``infer(n)`` into class probabilities for the first ``n`` windows of that buffer.
:class:`ModelRunner` runs the module with torch; a compiled runner runs the forward pass as a
Numba kernel (BiN-CTABL: :class:`~lobstream.models.binctabl.compiled.CompiledRunner`).
:func:`window_runner` picks one: ``"auto"`` (the default everywhere) takes the compiled one on
the CPU for an architecture in :data:`COMPILED_ARCHS` and torch otherwise; ``"torch"`` and
``"numba"`` force one. A compiled program is checked against the module when it is built (one
window, both ways): a module it does not reproduce is refused, or under ``"auto"`` left to
torch with a warning, so an architecture change cannot silently change signals.

CPU: the module is frozen TorchScript (weights folded into the graph) by default, and a batch
is run as micro-batches whose activations stay cache-sized. Why: eager DeepLOB at B=256 makes
(256, 32, 100, 20) float32 activations of 65.5 MB; glibc serves any allocation above its
32 MiB mmap ceiling with a fresh ``mmap``, so every such tensor is page-faulted in (kernel
zeroing) and unmapped again, and each elementwise pass streams from DRAM instead of the L3
cache; micro-batches of 16 or 32 windows cost less CPU per window, with next to no system time
and no page faults (README, "Why eager DeepLOB gets slower with bigger batches"). A batch of
``n`` is cut into ``ceil(n / micro_batch)`` chunks of equal size (+-1: 100 = 50 + 50 at a
micro-batch of 64), never a small tail: a tail chunk costs nearly a whole call, and every call
returns to Python, so it must retake the GIL, which the daemon's loop thread holds between its
own calls. Every size up to ``micro_batch`` is warmed at construction (oneDNN primitives), and
the graph executor runs the frozen graph without profiling, so the first real window never
pays a profiling or re-specialisation run.

CUDA: the input buffer is pinned host memory, copies are non-blocking on a dedicated stream,
and with ``cuda_graphs`` each power-of-two batch size up to Bmax is captured once; ``infer(n)``
replays the graph of the smallest captured size >= n (rows past n hold stale windows, harmless
because rows are independent in eval mode, and their outputs are ignored).
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from lobstream.models.artifact import load_model, quiet_jit, resolve_device, script_module
from lobstream.models.heads import n_heads, out_shape, softmax_heads
from lobstream.models.manifest import RUNNER_KINDS

logger = logging.getLogger(__name__)

MODES = ("eager", "scripted", "frozen", "optimized")
# Fastest CPU mode per architecture in bench/inference.py: optimize_for_inference keeps the
# plain CNN's 3x3 conv+ReLU chain in oneDNN's blocked layout (less CPU per window than
# frozen); for the others it saved nothing or cost time (DeepLOB batch-1 latency up).
CPU_MODE_BY_ARCH = {"cnn": "optimized"}
DEFAULT_MODE = "frozen"
# Largest activation a micro-batch may make on CPU: well under glibc's 32 MiB mmap ceiling and
# half an 8 MB L3, so temporaries are reused from the heap and stay in cache.
ACTIVATION_BUDGET_BYTES = 4 << 20
# Calls per shape at construction: oneDNN builds and caches a primitive per input shape on the
# first call, and the allocator's pools settle on the second.
WARMUP_CALLS = 2


def _pow2_floor(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


def _pow2_ceil(n: int) -> int:
    return 1 << (max(1, n) - 1).bit_length()


def activation_bytes_per_window(manifest: dict[str, Any]) -> int:
    """Bytes of the largest activation one window makes in the manifest's architecture.

    An estimate from the config, used only to size CPU micro-batches.
    """
    cfg, arch = manifest.get("config", {}), manifest.get("arch")
    t, lv = int(manifest["T"]), int(manifest["L"])
    f = 4 * lv
    if arch in ("deeplob", "deeplob_causal"):  # the causal one has the same widths
        elems = max(cfg.get("conv_channels", 32) * t * 2 * lv,
                    3 * cfg.get("inception_channels", 64) * t)  # fmt: skip
    elif arch in ("cnn", "cnn_causal"):  # first conv output, (C0, T, F) at most
        elems = (cfg.get("channels") or [16])[0] * t * f
    elif arch == "hrnn":
        elems = 4 * cfg.get("level_hidden", 32) * t * lv  # LSTM gates over every level
    elif arch == "binctabl":
        elems = 3 * t * f
    else:
        elems = 32 * t * f
    return 4 * int(elems)


def default_micro_batch(manifest: dict[str, Any], max_batch: int) -> int:
    """The largest power of two whose activations fit ``ACTIVATION_BUDGET_BYTES``."""
    per = activation_bytes_per_window(manifest)
    return max(1, min(_pow2_floor(max(1, ACTIVATION_BUDGET_BYTES // per)), _pow2_ceil(max_batch)))


def _no_profiling() -> Any:
    # On CPU the profiling executor only re-specialises a frozen graph per input shape (it
    # fuses nothing there) and does so again when shapes alternate: a stall on a live call.
    # Running the frozen graph as is costs nothing (same per-call time).
    return torch.jit.optimized_execution(False)


def _prepare(module: nn.Module, mode: str, device: torch.device) -> nn.Module:
    """The callable for ``mode``: eager needs an ``nn.Module``, the others script it."""
    if mode not in MODES:
        raise ValueError(f"unknown runner mode {mode!r}; expected one of {MODES}")
    module = module.to(device).eval()
    if mode == "eager":
        if isinstance(module, torch.jit.ScriptModule):
            raise ValueError(
                "mode 'eager' needs a Python nn.Module, got a TorchScript module (an artifact); "
                "use mode 'scripted', 'frozen' or 'optimized'"
            )
        return module
    scripted = module if isinstance(module, torch.jit.ScriptModule) else script_module(module)
    if mode == "scripted":
        return scripted
    with quiet_jit():
        if mode == "frozen":
            return torch.jit.freeze(scripted)
        return torch.jit.optimize_for_inference(scripted)


class Inferable(Protocol):
    """A model call as the daemon and its inference thread make it: ``infer(n)`` gives the
    probabilities (n, 3), or (n, H, 3), of the first ``n`` windows it holds (a
    :class:`WindowRunner` on its input buffer, a :class:`~lobstream.models.scoring.
    IncrementalCall` on the rows it carries)."""

    def infer(self, n: int) -> np.ndarray: ...


class WindowRunner:
    """What a whole-window runner has: ``input`` (max_batch, 1, T, F) float32, ``infer(n)``
    on its first ``n`` rows, ``keep_warm()``; :class:`ModelRunner` (torch) and
    :class:`~lobstream.models.binctabl.compiled.CompiledRunner` (a Numba kernel) are the two."""

    input: np.ndarray
    arch: str
    T: int
    F: int
    max_batch: int
    out_shape: tuple[int, ...]

    def infer(self, n: int) -> np.ndarray:
        raise NotImplementedError

    def keep_warm(self) -> None:
        raise NotImplementedError

    def _check_n(self, n: int) -> None:
        if not 1 <= n <= self.max_batch:
            raise ValueError(
                f"infer(n) needs 1 <= n <= max_batch={self.max_batch}, got n={n}; "
                "build the runner with a larger max_batch or call in pieces"
            )

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """Probabilities for any number of windows, copied through ``input`` in batches.

        Parameters
        ----------
        windows : ndarray (N, 1, T, F) or (N, T, F), float32 (other floats are cast)
            Not modified.

        Returns
        -------
        ndarray (N, 3) float32, or (N, H, 3) for a multi-horizon artifact
        """
        w = np.asarray(windows)
        if w.ndim == 3:
            w = w[:, None]
        if w.ndim != 4 or w.shape[1:] != (1, self.T, self.F):
            raise ValueError(
                f"windows have shape {np.shape(windows)}; expected (N, 1, {self.T}, {self.F}) "
                f"or (N, {self.T}, {self.F}) for this {self.arch} model"
            )
        out = np.empty((len(w), *self.out_shape), dtype=np.float32)
        for s in range(0, len(w), self.max_batch):
            n = min(self.max_batch, len(w) - s)
            self.input[:n] = w[s : s + n]
            out[s : s + n] = self.infer(n)
        return out


class ModelRunner(WindowRunner):
    """A warm model with a preallocated input buffer; ``infer(n)`` gives probabilities.

    Parameters
    ----------
    module : nn.Module or torch.jit.ScriptModule
        forward: float32 (B, 1, T, F) -> logits (B, 3), or (B, 3 H) for the manifest's H
        heads. Moved to ``device``; not modified otherwise (freezing makes a new module).
    manifest : dict
        The artifact manifest (needs ``T``, ``F``, ``L``; ``arch`` and ``config`` size the
        CPU micro-batches).
    device : {"auto", "cpu", "cuda", "cuda:N"}
        ``"auto"`` takes CUDA when present.
    max_batch : int
        Bmax, the rows of the input buffer and the most windows one ``infer`` call takes.
    threads : int, optional
        ``torch.set_num_threads`` (process-wide) for CPU inference; None leaves it as is.
    mode : {"frozen", "scripted", "optimized", "eager"}, optional
        How to run the module. Default: ``CPU_MODE_BY_ARCH`` on CPU, else ``"frozen"``
        (the fastest in bench/inference.py).
    micro_batch : int, optional
        CPU chunk size (rounded down to a power of two); default from the activation budget.
        Ignored on CUDA, where large batches are what the device wants.
    cuda_graphs : bool, optional
        Capture CUDA graphs per power-of-two batch size (default: True on CUDA).
    warm : bool
        Run every shape ``infer`` can use ``WARMUP_CALLS`` times now (default True).

    Attributes
    ----------
    input : ndarray (max_batch, 1, T, F) float32
        Write windows here (for instance ``gather_windows(ring, ids, runner.input)``), then
        call ``infer(n)``. Pinned host memory on CUDA. Never reallocated.
    """

    def __init__(
        self,
        module: nn.Module,
        manifest: dict[str, Any],
        *,
        device: str | torch.device = "auto",
        max_batch: int = 256,
        threads: int | None = None,
        mode: str | None = None,
        micro_batch: int | None = None,
        cuda_graphs: bool | None = None,
        warm: bool = True,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be >= 1 or None, got {threads}")
            torch.set_num_threads(threads)
        self.manifest = manifest
        self.arch = manifest.get("arch", "?")
        self.T, self.F = int(manifest["T"]), int(manifest["F"])
        # probabilities per window: (3,), or (H, 3) for a multi-horizon artifact
        self.n_heads = n_heads(manifest)
        self.out_shape = out_shape(self.n_heads)
        self.max_batch = int(max_batch)
        self.device = resolve_device(device)
        self.is_cuda = self.device.type == "cuda"
        if mode is None:
            mode = DEFAULT_MODE if self.is_cuda else CPU_MODE_BY_ARCH.get(self.arch, DEFAULT_MODE)
        self.mode = mode
        self._fn = _prepare(module, mode, self.device)
        # A ScriptModule's forward called directly skips nn.Module.__call__ (hook checks, a
        # share of a batch-1 call); eager modules keep __call__ so their hooks still run.
        self._call = self._fn.forward if isinstance(self._fn, torch.jit.ScriptModule) else self._fn
        self._plans: dict[int, list[torch.Tensor]] = {}
        shape = (self.max_batch, 1, self.T, self.F)
        self._in_host = torch.zeros(shape, dtype=torch.float32, pin_memory=self.is_cuda)
        self.input: np.ndarray = self._in_host.numpy()
        self._out_host = torch.zeros(
            (self.max_batch, *self.out_shape), dtype=torch.float32, pin_memory=self.is_cuda
        )
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        if self.is_cuda:
            self.micro_batch = self.max_batch
            self.use_graphs = True if cuda_graphs is None else bool(cuda_graphs)
            self._stream = torch.cuda.Stream(self.device)
            self._in_dev = torch.zeros(shape, dtype=torch.float32, device=self.device)
            self._out_dev = torch.zeros((self.max_batch, *self.out_shape), dtype=torch.float32,
                                        device=self.device)  # fmt: skip
            self.sizes = self._bucket_sizes() if self.use_graphs else []
        else:
            if micro_batch is not None and micro_batch < 1:
                raise ValueError(f"micro_batch must be >= 1 or None, got {micro_batch}")
            mb = micro_batch or default_micro_batch(manifest, self.max_batch)
            self.micro_batch = min(_pow2_floor(mb), _pow2_floor(self.max_batch))
            self.use_graphs = False
            self.sizes = list(range(1, self.micro_batch + 1))
        if warm:
            self._warm()
        logger.info(
            "model runner: %s %s on %s, Bmax %d, micro-batch %d, threads %d, cuda graphs %s",
            self.arch, mode, self.device, self.max_batch, self.micro_batch,
            torch.get_num_threads(), self.use_graphs,
        )  # fmt: skip

    @classmethod
    def from_artifact(
        cls,
        path: str | os.PathLike,
        *,
        expect: dict[str, Any] | None = None,
        sha256: str | None = None,
        device: str | torch.device = "auto",
        **kwargs: Any,
    ) -> ModelRunner:
        """Load and check an artifact (see ``load_model``) and build its runner."""
        module, manifest = load_model(path, expect=expect, sha256=sha256, device=device)
        return cls(module, manifest, device=device, **kwargs)

    # ---- CPU --------------------------------------------------------------------------------

    def _chunks(self, n: int) -> list[tuple[int, int]]:
        # As few calls as the micro-batch allows, of equal size (the first n % k one larger).
        k = n_chunks(n, self.micro_batch)
        size, extra = divmod(n, k)
        out, s = [], 0
        for j in range(k):
            c = size + (j < extra)
            out.append((s, c))
            s += c
        return out

    def _chunk_views(self, n: int) -> list[torch.Tensor]:
        # Tensor views of the input per chunk, made once per n: slicing a tensor from Python
        # costs microseconds, which a batch-1 call on the daemon's hot path pays every time.
        views = self._plans.get(n)
        if views is None:
            views = self._plans[n] = [self._in_host[s : s + c] for s, c in self._chunks(n)]
        return views

    def _infer_cpu(self, n: int) -> np.ndarray:
        call = self._call
        with torch.inference_mode(), _no_profiling():
            views = self._chunk_views(n)
            if len(views) == 1:
                logits = call(views[0])
            else:
                logits = torch.cat([call(v) for v in views])
            # a fresh tensor each call, so its numpy view is the caller's to keep
            return softmax_heads(logits, self.n_heads).numpy()

    # ---- CUDA -------------------------------------------------------------------------------

    def _bucket_sizes(self) -> list[int]:
        sizes = [1 << k for k in range(self.max_batch.bit_length())]
        return [s for s in sizes if s < self.max_batch] + [self.max_batch]

    def _bucket(self, n: int) -> int:
        for s in self.sizes:
            if s >= n:
                return s
        return self.max_batch

    def _forward_dev(self, b: int) -> None:
        self._out_dev[:b] = softmax_heads(self._fn(self._in_dev[:b]), self.n_heads)

    def _capture(self) -> None:
        # Capture on a side stream after warm-up runs there, as CUDA graph capture requires;
        # the graphs share one memory pool since they never run concurrently.
        pool = None
        for b in self.sizes:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool, stream=self._stream):
                self._forward_dev(b)
            pool = g.pool()
            self._graphs[b] = g

    def _infer_cuda(self, n: int) -> np.ndarray:
        stream = self._stream
        with torch.inference_mode(), torch.cuda.stream(stream):
            # Pinned source + non_blocking: the copy is a DMA queued on our stream.
            self._in_dev[:n].copy_(self._in_host[:n], non_blocking=True)
            if self.use_graphs:
                self._graphs[self._bucket(n)].replay()
            else:
                self._forward_dev(n)
            self._out_host[:n].copy_(self._out_dev[:n], non_blocking=True)
        stream.synchronize()
        return self._out_host[:n].numpy().copy()

    # ---- both -------------------------------------------------------------------------------

    def _warm(self) -> None:
        with torch.inference_mode():
            if self.is_cuda:
                with torch.cuda.stream(self._stream):
                    for b in self.sizes or [self.max_batch]:
                        for _ in range(WARMUP_CALLS):
                            self._forward_dev(b)
                self._stream.synchronize()
            else:
                with _no_profiling():
                    for b in self.sizes:
                        for _ in range(WARMUP_CALLS):
                            self._fn(self._in_host[:b])
            if self.use_graphs:
                self._capture()
                torch.cuda.synchronize(self.device)

    def keep_warm(self) -> None:
        """A throwaway batch-1 call on whatever ``input[0]`` holds (read only), so that the
        weights and the call's code stay in cache while a quiet market sends nothing; a no-op
        on CUDA, where the call is the device's."""
        if self.is_cuda:
            return
        with torch.inference_mode(), _no_profiling():
            self._call(self._chunk_views(1)[0])

    def infer(self, n: int) -> np.ndarray:
        """Class probabilities of the first ``n`` windows of ``input``.

        Parameters
        ----------
        n : int
            1 <= n <= max_batch; rows ``input[:n]`` must hold windows (not modified).

        Returns
        -------
        ndarray (n, 3) float32, or (n, H, 3) for a multi-horizon artifact
            Softmax probabilities, columns down, flat, up (per head); a new array the caller
            may keep.
        """
        self._check_n(n)
        return self._infer_cuda(n) if self.is_cuda else self._infer_cpu(n)

    def __repr__(self) -> str:
        return (
            f"ModelRunner({self.arch}, mode={self.mode}, device={self.device}, "
            f"max_batch={self.max_batch}, micro_batch={self.micro_batch})"
        )


def n_chunks(n: int, micro_batch: int) -> int:
    """How many model calls ``infer(n)`` makes on CPU with this micro-batch (for reports)."""
    return max(1, -(-n // micro_batch))


# ---- the choice of whole-window runner ---------------------------------------------------

# arch -> the module of its compiled runner (``CompiledRunner``), imported when one is built:
# it imports this module. A compiled architecture adds one line here.
_COMPILED = {"binctabl": "lobstream.models.binctabl.compiled"}
COMPILED_ARCHS = tuple(_COMPILED)


class CompileError(ValueError):
    """The compiled program does not reproduce the module."""


def runner_kind(manifest: dict[str, Any], wanted: str, device: str | torch.device) -> str:
    """``"numba"`` or ``"torch"``: what :func:`window_runner` builds for ``wanted``.

    Raises ValueError for an unknown kind, or ``"numba"`` for an architecture without a
    compiled program or on a GPU.
    """
    if wanted not in RUNNER_KINDS:
        raise ValueError(f"model runner {wanted!r}; expected one of {', '.join(RUNNER_KINDS)}")
    arch, dev = manifest.get("arch"), resolve_device(device)
    if wanted == "numba":
        if arch not in _COMPILED:
            raise ValueError(f"model runner 'numba' has no compiled program for arch {arch!r} "
                             f"(only {', '.join(COMPILED_ARCHS)}); use 'auto' or 'torch'")  # fmt: skip
        if dev.type != "cpu":
            raise ValueError(f"model runner 'numba' runs on the CPU, not on {dev}; "
                             "use 'auto' or 'torch'")  # fmt: skip
        return "numba"
    return "numba" if wanted == "auto" and arch in _COMPILED and dev.type == "cpu" else "torch"


def window_runner(
    module: nn.Module,
    manifest: dict[str, Any],
    *,
    runner: str = "auto",
    device: str | torch.device = "auto",
    max_batch: int = 256,
    threads: int | None = None,
) -> WindowRunner:
    """The whole-window runner of a loaded model: a compiled runner or a :class:`ModelRunner`
    (see :func:`runner_kind`). ``threads`` is torch's; the compiled kernels are
    single-threaded."""
    if runner_kind(manifest, runner, device) == "numba":
        compiled = importlib.import_module(_COMPILED[manifest["arch"]])
        try:
            return compiled.CompiledRunner(module, manifest, max_batch=max_batch)
        except CompileError as exc:
            if runner == "numba":
                raise
            logger.warning("%s; running the model with torch", exc)
    return ModelRunner(module, manifest, device=device, max_batch=max_batch, threads=threads)
