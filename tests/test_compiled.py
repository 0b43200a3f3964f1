"""CompiledRunner (BiN-CTABL as a Numba kernel) against the torch module it was compiled from."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lobstream.engine.config import ConfigError, load_config
from lobstream.models.artifact import load_model
from lobstream.models.binctabl import BiNCTABL, BiNCTABLConfig
from lobstream.models.binctabl.compiled import CompiledRunner, compile_binctabl
from lobstream.models.manifest import LabelDef
from lobstream.models.runner import CompileError, ModelRunner, runner_kind, window_runner
from lobstream.models.zoo import config_to_dict
from lobstream.replay.samples import GOOG_MESSAGE_10
from lobstream.replay.training.dataset import build_dataset
from tests.conftest import REPO

ARTIFACT = REPO / "models" / "assets" / "binctabl_goog.pt"
# float32 in another summation order than torch's: differences are round-off
ATOL = 2e-6


def _model(T=12, levels=2, hidden1=(7, 3), hidden2=(5, 4), heads=1, seed=0) -> BiNCTABL:
    """An untrained BiN-CTABL with every parameter random: BiN's gammas, betas and mixing
    weights (some negative, which forward clamps) and TABL's lambda (outside [0, 1] too)."""
    torch.manual_seed(seed)
    cfg = BiNCTABLConfig(T=T, levels=levels, hidden1=hidden1, hidden2=hidden2,
                         n_classes=3 * heads)  # fmt: skip
    model = BiNCTABL(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * (0.5 if p.ndim > 1 else 1.0))
        model.tabl.w_att.add_(1.0)  # the attention's off-diagonal weights
    return model


def _manifest(model: BiNCTABL, heads: int = 1) -> dict:
    c = model.config
    man = {"arch": "binctabl", "config": config_to_dict(c), "T": c.T, "L": c.levels, "F": c.F}
    if heads > 1:
        man["heads"] = [{"label": {"horizon": 10 * (h + 1)}} for h in range(heads)]
    return man


def _torch_probs(model: BiNCTABL, x: np.ndarray, heads: int = 1) -> np.ndarray:
    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    p = torch.softmax(logits.reshape(len(x), heads, 3), dim=2).numpy()
    return p[:, 0] if heads == 1 else p


windows = st.builds(
    lambda seed, n, offset, spread, flat: _windows(seed, n, offset, spread, flat),
    st.integers(0, 2**31 - 1),
    st.integers(1, 9),
    st.floats(-50, 50),
    st.floats(1e-3, 10),
    st.booleans(),
)


def _windows(seed, n, offset, spread, flat, T=12, F=8) -> np.ndarray:
    # offset and small spreads: BiN's z-scores along time cancel badly if computed carelessly;
    # flat: a column and a step constant over the window (zero spread: eps decides)
    x = np.random.default_rng(seed).standard_normal((n, 1, T, F)) * spread + offset
    if flat:
        x[:, :, :, 0] = offset
        x[:, :, 3, :] = 1.0
    return x.astype(np.float32)


@settings(max_examples=40, deadline=None)
@given(windows, st.integers(0, 3))
def test_probabilities_match_the_module(x, seed):
    model = _model(seed=seed)
    runner = CompiledRunner(model, _manifest(model), max_batch=9)
    runner.input[: len(x)] = x
    p = runner.infer(len(x))
    assert p.shape == (len(x), 3) and p.dtype == np.float32
    # Windows of tiny spread far from zero are ill-conditioned in float32 (torch's own call
    # errs there): the kernel keeps BiN's statistics in float64 and is judged against float64.
    with torch.no_grad():
        exact = torch.softmax(model.double()(torch.from_numpy(x).double()), dim=1).numpy()
    np.testing.assert_allclose(p, exact, atol=1e-5)


@pytest.mark.parametrize(
    "T,levels,hidden1,hidden2",
    [(12, 2, (7, 3), (5, 4)), (100, 10, (120, 5), (120, 5)), (5, 1, (3, 1), (2, 1))],
)
def test_any_sizes(T, levels, hidden1, hidden2):
    model = _model(T, levels, hidden1, hidden2)
    runner = CompiledRunner(model, _manifest(model), max_batch=4)
    x = np.random.default_rng(1).standard_normal((4, 1, T, 4 * levels)).astype(np.float32)
    np.testing.assert_allclose(runner.predict(x), _torch_probs(model, x), atol=ATOL)


def test_multi_head_artifact():
    model = _model(heads=3)
    runner = CompiledRunner(model, _manifest(model, heads=3), max_batch=5)
    x = _windows(2, 5, 0.0, 1.0, False)
    p = runner.predict(x)
    assert p.shape == (5, 3, 3)
    np.testing.assert_allclose(p, _torch_probs(model, x, heads=3), atol=ATOL)
    np.testing.assert_allclose(p.sum(axis=2), 1.0, atol=1e-6)


def test_nan_in_a_window_stays_nan_there_only():
    model = _model()
    runner = CompiledRunner(model, _manifest(model), max_batch=3)
    x = _windows(3, 3, 0.0, 1.0, False)
    x[1, 0, 4, 2] = np.nan
    p = runner.predict(x)
    assert np.isnan(p[1]).all() and np.isfinite(p[[0, 2]]).all()
    assert np.isnan(_torch_probs(model, x)[1]).all()  # as torch does


def test_the_scripted_module_compiles_like_the_eager_one():
    from lobstream.models.artifact import script_module

    model = _model()
    for a, b in zip(compile_binctabl(script_module(model)), compile_binctabl(model), strict=True):
        np.testing.assert_array_equal(a, b)


def test_bundled_model_on_real_windows():
    """The bundled artifact on every test window of the bundled LOBSTER day, against the same
    weights in float64: a quarter of these windows hold a (nearly) constant column, which BiN
    divides by ~eps, so float32 round-off in a window's means is amplified there. The kernel
    keeps BiN's statistics in float64 and matches float64; torch's float32 call errs up to
    ~1e-3."""
    module, manifest = load_model(ARTIFACT)
    lab = manifest["label"]
    ds = build_dataset([GOOG_MESSAGE_10], LabelDef(lab["horizon"], lab["unit"], lab["alpha"],
                       lab.get("kind", "smoothed")), window=manifest["T"], levels=manifest["L"])  # fmt: skip
    test = ds.parts["test"]
    x = test.batch(np.arange(len(test)))
    got = CompiledRunner(module, manifest, max_batch=256).predict(x)
    c = manifest["config"]
    exact = BiNCTABL(BiNCTABLConfig(T=c["T"], levels=c["levels"], hidden1=tuple(c["hidden1"]),
                                    hidden2=tuple(c["hidden2"]))).eval()  # fmt: skip
    exact.load_state_dict(module.state_dict(), strict=False)  # the eye buffer is not saved
    with torch.no_grad():
        want = torch.softmax(exact.double()(torch.from_numpy(x).double()), dim=1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    torch32 = ModelRunner(module, manifest, device="cpu", max_batch=256, threads=1).predict(x)
    np.testing.assert_allclose(got, torch32, atol=5e-3)


def test_a_module_the_program_does_not_reproduce_is_refused(caplog):
    good = _model()
    bad = _model()
    bad.tabl.t1 = 1  # the pinned attention diagonal is then 1, which the program does not know
    with pytest.raises(CompileError, match="differs from the module"):
        CompiledRunner(bad, _manifest(good))
    with pytest.raises(CompileError):
        window_runner(bad, _manifest(good), runner="numba", device="cpu")
    with caplog.at_level(logging.WARNING, logger="lobstream.models.runner"):
        r = window_runner(bad, _manifest(good), runner="auto", device="cpu", max_batch=2)
    assert isinstance(r, ModelRunner) and "running the model with torch" in caplog.text


def test_runner_kind_choice():
    model = _model()
    man = _manifest(model)
    assert runner_kind(man, "auto", "cpu") == "numba"
    assert runner_kind(man, "torch", "cpu") == "torch"
    assert runner_kind({**man, "arch": "deeplob"}, "auto", "cpu") == "torch"
    assert isinstance(window_runner(model, man, device="cpu", max_batch=2), CompiledRunner)
    assert isinstance(window_runner(model, man, runner="torch", device="cpu", max_batch=2),
                      ModelRunner)  # fmt: skip
    with pytest.raises(ValueError, match="no compiled program for arch 'deeplob'"):
        runner_kind({**man, "arch": "deeplob"}, "numba", "cpu")
    with pytest.raises(ValueError, match="expected one of auto, torch, numba"):
        runner_kind(man, "jax", "cpu")
    with pytest.raises(ValueError, match="1 <= n <= max_batch=2"):
        window_runner(model, man, device="cpu", max_batch=2).infer(3)


def test_config_names_the_runner(tmp_path):
    path = tmp_path / "serve.toml"
    inst = '[[instruments.instrument]]\nsymbol = "X"\ntick_size = 0.01\n'
    path.write_text('[model]\npath = "m.pt"\nrunner = "jax"\n' + inst)
    with pytest.raises(ConfigError, match=r"model.runner = 'jax'; expected one of auto, torch"):
        load_config(path)
    path.write_text('[model]\npath = "m.pt"\nrunner = "torch"\n' + inst)
    assert load_config(path).model.runner == "torch"
