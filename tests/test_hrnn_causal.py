"""The streaming HRNN (models.causal.hrnn): its windowed recurrence streams exactly.

tests/test_causal.py and tests/test_incremental.py run every causal architecture, this one
included, at a small size. Here: the default size, decays near 1 (where the oldest feature row
still weighs and dropping it is what keeps the state equal to the window's), long streams
(the float64 state must not drift), several heads, and hypothesis over sizes and decays.
Tolerance: 1e-5 on probabilities against the eager model's softmax of the same window.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lobstream.models.causal.hrnn import HRNNCausal
from lobstream.models.causal.runner import IncrementalRunner
from lobstream.models.zoo import build_model, config_to_dict

ATOL = 1e-5


def _model(seed: int = 0, **cfg) -> HRNNCausal:
    torch.manual_seed(seed)
    model = build_model("hrnn_causal", **cfg)
    with torch.no_grad():  # biases away from 0 so no ReLU stays silent
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _manifest(model: HRNNCausal) -> dict:
    c = model.config
    return {"arch": "hrnn_causal", "config": config_to_dict(c), "T": c.T, "L": c.levels,
            "F": c.F, "heads": None}  # fmt: skip


def _reference(model: HRNNCausal, rows: np.ndarray, ends: np.ndarray) -> np.ndarray:
    T = model.config.T
    x = torch.from_numpy(np.stack([rows[e - T + 1 : e + 1] for e in ends]))[:, None]
    with torch.no_grad():
        logits = model(x)
    return torch.softmax(logits.reshape(len(ends), -1, 3), dim=2).reshape(len(ends), -1).numpy()


def test_registered_causal_and_checked() -> None:
    m = _model(T=100, levels=10)
    assert m.causal and m.receptive_field == m.config.kernel_t == 6
    assert not any(isinstance(x, torch.nn.modules.batchnorm._BatchNorm) for x in m.modules())
    lam = m.decays().detach()
    assert float(lam.min()) == pytest.approx(0.5) and float(lam.max()) == pytest.approx(0.98)
    with pytest.raises(ValueError, match="receptive field"):
        build_model("hrnn_causal", T=4, levels=2)
    with pytest.raises(ValueError, match="decay"):
        build_model("hrnn_causal", decay_min=0.5, decay_max=1.0)


def test_default_size_long_stream_equals_full_window() -> None:
    """T = 100, 10 levels, 3,000 rows (the n-row feature ring wraps 30 times); decays up to
    0.999, so a row 95 steps old still weighs 0.9 of a new one."""
    model = _model(1, T=100, levels=10, decay_min=0.9, decay_max=0.999)
    runner = IncrementalRunner(model, _manifest(model), n_slots=2)
    rows = np.random.default_rng(0).normal(size=(3000, 40)).astype(np.float32)
    out = runner.push_many(1, rows)
    assert np.isnan(out[:99]).all() and np.isfinite(out[99:]).all()
    ends = np.r_[99:140, 1000:1010, 2950:3000]
    np.testing.assert_allclose(out[ends], _reference(model, rows, ends), atol=ATOL, rtol=0)
    assert runner.counts.tolist() == [0, 3000]


def test_several_heads_and_keep_warm() -> None:
    model = _model(2, T=30, levels=3, n_classes=6)
    man = _manifest(model)
    man["heads"] = [{"label": {}}, {"label": {}}]
    runner = IncrementalRunner(model, man, n_slots=1)
    rows = np.random.default_rng(1).normal(size=(80, 12)).astype(np.float32)
    out = runner.push_many(0, rows[:50])
    runner.keep_warm()  # on a state of its own: the slot goes on as if it had not run
    out = np.concatenate([out, runner.push_many(0, rows[50:])])
    assert out.shape == (80, 2, 3)
    np.testing.assert_allclose(out.sum(axis=2)[29:], 1.0, atol=1e-6)
    ends = np.arange(29, 80)
    ref = _reference(model, rows, ends).reshape(-1, 2, 3)
    np.testing.assert_allclose(out[ends], ref, atol=ATOL, rtol=0)


@settings(max_examples=20, deadline=None)
@given(
    T=st.integers(2, 40),
    kernel_t=st.integers(1, 6),
    levels=st.integers(1, 4),
    lo=st.floats(0.01, 0.99),
    width=st.floats(0.0, 0.99),
    seed=st.integers(0, 2**31 - 1),
)
def test_any_size_and_decays_equal_full_window(T, kernel_t, levels, lo, width, seed) -> None:
    kernel_t = min(kernel_t, T)
    hi = min(lo + width * (1 - lo), 0.999)
    model = _model(seed % 1000, T=T, levels=levels, kernel_t=kernel_t, decay_min=lo,
                   decay_max=max(hi, lo), level_hidden=4, summary_dim=6, feature_dim=5,
                   hidden=7)  # fmt: skip
    runner = IncrementalRunner(model, _manifest(model), n_slots=3)
    rng = np.random.default_rng(seed)
    m = 3 * T + 5
    rows = rng.normal(size=(m, 4 * levels)).astype(np.float32)
    # two slots interleaved row by row, the same stream in each: the state is per slot
    ids = np.repeat([0, 2], m).reshape(2, m).T.ravel()
    out = runner.push(ids, np.repeat(rows, 2, axis=0))
    a, b = out[0::2], out[1::2]
    np.testing.assert_array_equal(a, b)
    ends = np.arange(T - 1, m)
    np.testing.assert_allclose(a[ends], _reference(model, rows, ends), atol=ATOL, rtol=0)
    assert np.isnan(a[: T - 1]).all()
