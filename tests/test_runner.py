"""ModelRunner: parity with eager softmax, buffer contract, chunking, artifacts, CUDA paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lobstream.models.artifact import ArtifactError, export_model, load_model
from lobstream.models.runner import (
    ACTIVATION_BUDGET_BYTES,
    MODES,
    ModelRunner,
    activation_bytes_per_window,
    default_micro_batch,
    n_chunks,
)
from lobstream.models.zoo import ARCHITECTURES, build_model, config_to_dict

# Runner (frozen TorchScript, micro-batched) vs eager softmax, float32 on CPU: the same ops in
# a different batching, so differences are re-association noise.
ATOL = 1e-5


def _manifest(model) -> dict:
    c = model.config
    return {
        "arch": next(a for a, (_, m) in ARCHITECTURES.items() if type(model) is m),
        "config": config_to_dict(c),
        "T": c.T,
        "L": c.levels,
        "F": c.F,
    }


def _model(arch: str, T: int = 8, levels: int = 2, seed: int = 0):
    if arch == "deeplob_causal":
        T = max(T, 24)  # its receptive field is 23 rows
    torch.manual_seed(seed)
    return build_model(arch, T=T, levels=levels).eval()


def _fill(runner: ModelRunner, seed: int = 0) -> None:
    runner.input[...] = np.random.default_rng(seed).standard_normal(runner.input.shape)


def _eager_probs(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(np.array(x))), dim=1).numpy()


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_infer_matches_eager_softmax(arch: str) -> None:
    model = _model(arch)
    runner = ModelRunner(model, _manifest(model), device="cpu", max_batch=13, micro_batch=4)
    _fill(runner)
    for n in (1, 5, 13):
        p = runner.infer(n)
        assert p.shape == (n, 3) and p.dtype == np.float32
        np.testing.assert_allclose(p, _eager_probs(model, runner.input[:n]), atol=ATOL)
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_agrees(mode: str) -> None:
    model = _model("deeplob")
    runner = ModelRunner(model, _manifest(model), device="cpu", max_batch=6, mode=mode)
    _fill(runner, 1)
    np.testing.assert_allclose(runner.infer(6), _eager_probs(model, runner.input[:6]), atol=ATOL)


def test_input_buffer_contract() -> None:
    model = _model("cnn")
    runner = ModelRunner(model, _manifest(model), device="cpu", max_batch=8)
    buf = runner.input
    assert buf.shape == (8, 1, 8, 8) and buf.dtype == np.float32
    assert buf.flags.c_contiguous and buf.flags.writeable
    _fill(runner, 2)
    first = runner.infer(3)
    assert runner.input is buf  # never reallocated: callers may keep the reference
    buf[:3] = buf[3:6]  # writing the buffer is what changes the answer
    np.testing.assert_allclose(runner.infer(3), runner.infer(6)[3:6], atol=ATOL)
    assert not np.allclose(first, runner.infer(3))


def test_result_is_owned_by_caller() -> None:
    model = _model("hrnn")
    runner = ModelRunner(model, _manifest(model), device="cpu", max_batch=4, warm=False)
    _fill(runner)
    a = runner.infer(2)
    keep = a.copy()
    runner.input[...] = 0
    runner.infer(2)
    np.testing.assert_array_equal(a, keep)


@pytest.mark.parametrize("n", [0, -1, 9])
def test_infer_bounds(n: int) -> None:
    model = _model("binctabl")
    runner = ModelRunner(model, _manifest(model), device="cpu", max_batch=8, warm=False)
    with pytest.raises(ValueError, match=f"1 <= n <= max_batch=8, got n={n}"):
        runner.infer(n)


def test_predict_any_length_and_shape_check() -> None:
    model = _model("cnn")
    runner = ModelRunner(model, _manifest(model), device="cpu", max_batch=4)
    w = np.random.default_rng(3).standard_normal((11, 8, 8)).astype(np.float32)
    p = runner.predict(w)
    np.testing.assert_allclose(p, _eager_probs(model, w[:, None]), atol=ATOL)
    np.testing.assert_allclose(runner.predict(w[:, None]), p, atol=0)
    with pytest.raises(ValueError, match=r"expected \(N, 1, 8, 8\)"):
        runner.predict(np.zeros((2, 8, 9), np.float32))


@given(n=st.integers(1, 300), mb_exp=st.integers(0, 6))
def test_chunks_are_few_equal_and_warm(n: int, mb_exp: int) -> None:
    runner = ModelRunner.__new__(ModelRunner)
    runner.micro_batch = 1 << mb_exp
    chunks = runner._chunks(n)
    assert len(chunks) == n_chunks(n, runner.micro_batch) == -(-n // runner.micro_batch)
    sizes = [c for _, c in chunks]
    assert max(sizes) - min(sizes) <= 1  # no small tail call
    assert max(sizes) <= runner.micro_batch  # a warmed shape
    pos = 0
    for s, c in chunks:
        assert s == pos
        pos += c
    assert pos == n


def test_default_micro_batch_respects_budget() -> None:
    man = _manifest(_model("deeplob", T=100, levels=10))
    per = activation_bytes_per_window(man)
    assert per == 4 * 32 * 100 * 20  # the (32, T, 2L) block-1 activation of one window
    mb = default_micro_batch(man, 1024)
    assert mb * per <= ACTIVATION_BUDGET_BYTES < 2 * mb * per
    assert default_micro_batch(man, 3) == 4  # never above the batch rounded up
    model = _model("deeplob")
    r = ModelRunner(
        model, _manifest(model), device="cpu", max_batch=100, micro_batch=24, warm=False
    )
    assert r.micro_batch == 16 and r.sizes == list(range(1, 17))


def test_eager_mode_needs_python_module(tmp_path: Path) -> None:
    model = _model("cnn")
    man = {"feature": {"kind": "zscore", "params": [0, 1, 0, 1]}, "label": {},
           "trained_on": "test", "metrics": {}}  # fmt: skip
    path = tmp_path / "cnn.pt"
    export_model(model, path, man)
    module, manifest = load_model(path)
    with pytest.raises(ValueError, match="mode 'eager' needs a Python nn.Module"):
        ModelRunner(module, manifest, device="cpu", mode="eager")
    with pytest.raises(ValueError, match="unknown runner mode"):
        ModelRunner(module, manifest, device="cpu", mode="fast")
    runner = ModelRunner.from_artifact(path, device="cpu", max_batch=5, expect={"T": 8})
    _fill(runner)
    np.testing.assert_allclose(runner.infer(5), _eager_probs(model, runner.input[:5]), atol=ATOL)
    with pytest.raises(ArtifactError, match="has T=8 but the config expects T=100"):
        ModelRunner.from_artifact(path, device="cpu", expect={"T": 100})


def test_threads_setting() -> None:
    before = torch.get_num_threads()
    try:
        model = _model("hrnn")
        ModelRunner(model, _manifest(model), device="cpu", max_batch=2, threads=1, warm=False)
        assert torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="threads must be >= 1"):
            ModelRunner(model, _manifest(model), device="cpu", threads=0)
    finally:
        torch.set_num_threads(before)


def test_gather_windows_writes_straight_into_input() -> None:
    ring_mod = pytest.importorskip("lobstream.kernels.ring")
    model = _model("deeplob")
    runner = ModelRunner(model, _manifest(model), device="cpu", max_batch=4)
    ring = ring_mod.new_ring(3, window=8, levels=2)
    ring.rows[...] = np.random.default_rng(4).standard_normal(ring.rows.shape)
    ring.rows[:, 8:] = ring.rows[:, :8]  # mirrored, as the writer keeps it
    ring.count[:] = [8, 13, 30]
    ids = np.array([2, 0], dtype=np.int64)
    ring_mod.gather_windows(ring, ids, runner.input)
    expect = np.stack([ring_mod.window_view(ring, int(i)) for i in ids])[:, None]
    np.testing.assert_allclose(runner.infer(2), _eager_probs(model, expect), atol=ATOL)


def test_auto_device_without_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    model = _model("cnn")
    runner = ModelRunner(model, _manifest(model), device="auto", max_batch=2, warm=False)
    assert runner.device.type == "cpu" and not runner.use_graphs


# ---- CUDA (skipped without a device) -------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("graphs", [True, False])
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_cuda_matches_cpu(arch: str, graphs: bool) -> None:
    model = _model(arch)
    cpu = ModelRunner(model, _manifest(model), device="cpu", max_batch=37)
    gpu = ModelRunner(_model(arch), _manifest(model), device="cuda", max_batch=37,
                      cuda_graphs=graphs)  # fmt: skip
    assert gpu.use_graphs is graphs
    assert gpu._in_host.is_pinned()
    _fill(cpu, 5)
    gpu.input[...] = cpu.input
    for n in (1, 3, 16, 17, 37):  # 3 and 17 replay the graphs of 4 and 32 with stale rows
        np.testing.assert_allclose(gpu.infer(n), cpu.infer(n), atol=1e-4)


@pytest.mark.gpu
@needs_cuda
def test_cuda_graph_buckets_and_fresh_input() -> None:
    model = _model("deeplob")
    r = ModelRunner(model, _manifest(model), device="cuda", max_batch=40)
    assert r.sizes == [1, 2, 4, 8, 16, 32, 40]
    assert [r._bucket(n) for n in (1, 3, 32, 33, 40)] == [1, 4, 32, 40, 40]
    _fill(r, 6)
    a = r.infer(5)
    r.input[:5] = r.input[5:10]  # a replay must see the new host data, not the captured data
    np.testing.assert_allclose(r.infer(5), r.infer(10)[5:10], atol=1e-5)
    assert not np.allclose(a, r.infer(5))


def test_default_mode_per_arch() -> None:
    for arch, want in (("cnn", "optimized"), ("deeplob", "frozen"), ("hrnn", "frozen")):
        model = _model(arch)
        r = ModelRunner(model, _manifest(model), device="cpu", max_batch=2, warm=False)
        assert r.mode == want
