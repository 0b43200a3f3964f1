"""Incremental inference (models.causal.runner) equals a full recompute of the same causal model.

Every test runs on each causal architecture of the zoo. BatchNorm layers get random running
statistics and affine weights (negative scales included), so its folding is exercised; the
reference is the eager model in eval mode on the window of the last T rows, softmaxed.

Tolerance: ``ATOL`` = 2e-6 on probabilities. Both sides are float32; they differ by the order
of the float32 sums (Numba re-associates to vectorise, oneDNN blocks differently: ~1e-7
relative per layer) and by the kernels' rational tanh (3.4e-7 abs at most, see
``test_tanh_approximation``), which the LSTM meets 5 x 64 times per step. Measured here: at
most 6e-8 (both archs, T=30 and default size, 300 windows each), about what float32 and
float64 torch differ by (5e-8), so 2e-6 leaves a wide margin while still catching any wrong
row or weight (those moved probabilities by 1e-3 to 2e-2 in development).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lobstream.models.artifact import export_model
from lobstream.models.causal.kernel import tanh_approx
from lobstream.models.causal.runner import IncrementalRunner, is_causal
from lobstream.models.runner import ModelRunner
from lobstream.models.zoo import ARCHITECTURES, arch_of, build_model, config_to_dict

CAUSAL = sorted(a for a, (_, m) in ARCHITECTURES.items() if getattr(m, "causal", False))
T, LEVELS = 30, 2
F = 4 * LEVELS
SLOTS = 4
ATOL = 2e-6


def _randomise_batchnorm(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.5 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
            m.weight.data.copy_(torch.randn(n, generator=g))  # some scales negative
            m.bias.data.copy_(0.5 * torch.randn(n, generator=g))


def _model(arch: str, seed: int = 0, **cfg) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(arch, **{"T": T, "levels": LEVELS, **cfg})
    with torch.no_grad():
        _randomise_batchnorm(model, seed)
    return model.eval()


def _manifest(model: torch.nn.Module) -> dict:
    c = model.config
    return {"arch": arch_of(model), "config": config_to_dict(c), "T": c.T, "L": c.levels,
            "F": c.F}  # fmt: skip


def _reference(model: torch.nn.Module, windows: np.ndarray) -> np.ndarray:
    """Softmax of the eager model on windows (N, T, F)."""
    if len(windows) == 0:
        return np.zeros((0, 3), np.float32)
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))[:, None]
        return torch.softmax(model(x), dim=1).numpy()


@pytest.fixture(scope="module", params=CAUSAL)
def case(request) -> tuple[torch.nn.Module, IncrementalRunner]:
    model = _model(request.param, seed=1)
    return model, IncrementalRunner(model, _manifest(model), n_slots=SLOTS)


def test_tanh_approximation() -> None:
    x = np.linspace(-12.0, 12.0, 200_001, dtype=np.float32)
    err = np.abs(tanh_approx(x).astype(np.float64) - np.tanh(x.astype(np.float64)))
    assert err.max() <= 4e-7
    assert tanh_approx(np.array([0.0], np.float32))[0] == 0.0


def test_one_long_stream_wraps_every_ring(case) -> None:
    model, runner = case
    runner.reset()
    rows = np.random.default_rng(0).normal(size=(20 * T, F)).astype(np.float32)
    out = runner.push_many(2, rows)
    assert out.shape == (len(rows), 3) and out.dtype == np.float32
    assert np.isnan(out[: T - 1]).all() and np.isfinite(out[T - 1 :]).all()
    ends = np.arange(T - 1, len(rows))
    ref = _reference(model, np.stack([rows[e - T + 1 : e + 1] for e in ends]))
    np.testing.assert_allclose(out[T - 1 :], ref, atol=ATOL, rtol=0)
    assert runner.counts[2] == len(rows) and runner.ready([2])[0]
    assert not runner.ready([0])[0]  # other slots untouched


def test_reset_then_not_ready_for_t_minus_one_rows(case) -> None:
    model, runner = case
    rng = np.random.default_rng(1)
    runner.reset()
    runner.push_many(1, rng.normal(size=(3 * T + 5, F)).astype(np.float32))
    runner.reset([1])
    assert runner.counts[1] == 0 and not runner.ready([1])[0]
    fresh = rng.normal(size=(T + 3, F)).astype(np.float32)
    got = np.concatenate([runner.push([1], fresh[i : i + 1]) for i in range(len(fresh))])
    assert np.isnan(got[: T - 1]).all()
    ref = _reference(model, np.stack([fresh[e - T + 1 : e + 1] for e in range(T - 1, T + 3)]))
    np.testing.assert_allclose(got[T - 1 :], ref, atol=ATOL, rtol=0)


_step = st.one_of(
    st.tuples(st.just("reset"), st.integers(0, SLOTS - 1)),
    st.tuples(
        st.just("push"),
        st.lists(st.tuples(st.integers(0, SLOTS - 1), st.booleans()), min_size=1, max_size=6),
    ),
    st.tuples(st.just("many"), st.integers(0, SLOTS - 1), st.integers(1, 2 * T)),
)


@settings(max_examples=25)
@given(steps=st.lists(_step, min_size=1, max_size=16), seed=st.integers(0, 2**32 - 1))
def test_random_streams_equal_full_recompute(case, steps, seed) -> None:
    """Interleaved pushes across slots (a slot may repeat within one call), runs of rows,
    resets and skipped heads: every output is NaN until the slot has T rows since its reset,
    then the full model's probabilities on its last T rows."""
    model, runner = case
    runner.reset()
    rng = np.random.default_rng(seed)
    hist: list[list[np.ndarray]] = [[] for _ in range(SLOTS)]
    got, windows, nan_rows = [], [], []
    for step in steps:
        if step[0] == "reset":
            runner.reset([step[1]])
            hist[step[1]] = []
            continue
        if step[0] == "push":
            ids = np.array([s for s, _ in step[1]], dtype=np.int64)
            want = np.array([w for _, w in step[1]], dtype=bool)
        else:
            ids = np.full(step[2], step[1], dtype=np.int64)
            want = np.ones(step[2], dtype=bool)
        rows = rng.normal(size=(len(ids), F)).astype(np.float32)
        out = runner.push(ids, rows, want) if step[0] == "push" else runner.push_many(step[1], rows)
        for i, s in enumerate(ids):
            hist[s].append(rows[i])
            if len(hist[s]) >= T and want[i]:
                got.append(out[i])
                windows.append(np.stack(hist[s][-T:]))
            else:
                nan_rows.append(out[i])
    for s in range(SLOTS):
        assert runner.counts[s] == len(hist[s])
    assert np.isnan(np.array(nan_rows)).all()
    if windows:
        ref = _reference(model, np.stack(windows))
        np.testing.assert_allclose(np.array(got), ref, atol=ATOL, rtol=0)


def test_default_size_deeplob_causal() -> None:
    model = _model("deeplob_causal", seed=2, T=100, levels=10)
    runner = IncrementalRunner(model, _manifest(model), n_slots=2)
    rows = np.random.default_rng(3).normal(size=(160, 40)).astype(np.float32)
    out = runner.push_many(1, rows)
    ends = np.arange(99, 160, 3)
    ref = _reference(model, np.stack([rows[e - 99 : e + 1] for e in ends]))
    np.testing.assert_allclose(out[ends], ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", CAUSAL)
def test_from_artifact_equals_model_runner(arch: str, tmp_path: Path) -> None:
    model = _model(arch, seed=4)
    meta = {"feature": {"kind": "zscore", "params": [0.0, 1.0, 0.0, 1.0]}, "label": {},
            "trained_on": {}, "metrics": {}}  # fmt: skip
    export_model(model, tmp_path / "c.pt", meta)
    inc = IncrementalRunner.from_artifact(tmp_path / "c.pt", n_slots=1)
    assert is_causal(inc.manifest) and inc.R == model.receptive_field
    full = ModelRunner.from_artifact(tmp_path / "c.pt", device="cpu", max_batch=8)
    rows = np.random.default_rng(5).normal(size=(T + 7, F)).astype(np.float32)
    out = inc.push_many(0, rows)
    windows = np.stack([rows[e - T + 1 : e + 1] for e in range(T - 1, T + 7)])
    np.testing.assert_allclose(out[T - 1 :], full.predict(windows), atol=ATOL, rtol=0)


def test_refuses_non_causal_and_bad_input(tmp_path: Path) -> None:
    plain = build_model("cnn", T=T, levels=LEVELS).eval()
    with pytest.raises(ValueError, match="not causal"):
        IncrementalRunner(plain, _manifest(plain), n_slots=1)
    meta = {"feature": {"kind": "zscore", "params": [0.0, 1.0, 0.0, 1.0]}, "label": {},
            "trained_on": {}, "metrics": {}}  # fmt: skip
    export_model(plain, tmp_path / "p.pt", meta)
    with pytest.raises(ValueError, match="not causal"):
        IncrementalRunner.from_artifact(tmp_path / "p.pt", n_slots=1)
    model = _model("cnn_causal")
    runner = IncrementalRunner(model, _manifest(model), n_slots=2)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        runner.push([2], np.zeros((1, F), np.float32))
    with pytest.raises(ValueError, match="expected"):
        runner.push([0, 1], np.zeros((2, F + 1), np.float32))
    assert runner.counts.sum() == 0  # nothing was pushed by the refused calls
