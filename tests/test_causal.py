"""Causal models: causality, window = slice of stream features, artifact round trip,
and sequence training (models.causal.seqtrain) giving per-window training's loss and gradients.

Every test runs on each causal architecture of the zoo (``causal = True``), so a new one is
covered by registering it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lobstream.models.artifact import export_model, load_model
from lobstream.models.causal import seqtrain
from lobstream.models.train import TrainConfig, Windows, predict, train_model
from lobstream.models.zoo import ARCHITECTURES, build_model

CAUSAL = sorted(a for a, (_, m) in ARCHITECTURES.items() if getattr(m, "causal", False))
T, LEVELS = 40, 2
F = 4 * LEVELS
# float32 sums in a different order (a (1, M) batch vs (B, T) batches): re-association noise
ATOL = 1e-5


def _model(arch: str, seed: int = 0, **cfg) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(arch, T=T, levels=LEVELS, **cfg)


def _stream(m: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 1, m, F, generator=torch.Generator().manual_seed(seed))  # (1, 1, M, F)


def _has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_cnn_causal_is_registered_and_causal() -> None:
    assert "cnn_causal" in CAUSAL
    m = _model("cnn_causal")
    assert m.receptive_field == 1 + 3 * (3 - 1) and m.feature_dim == 32
    assert not _has_batchnorm(m)
    with pytest.raises(ValueError, match="receptive field"):
        build_model("cnn_causal", T=5, levels=2)


def test_deeplob_causal_is_registered_and_causal() -> None:
    assert "deeplob_causal" in CAUSAL
    m = _model("deeplob_causal")
    assert m.receptive_field == 1 + 3 * 2 * 3 + 4 and m.feature_dim == 3 * 64
    with pytest.raises(ValueError, match="receptive field"):
        build_model("deeplob_causal", T=20, levels=2)


@pytest.mark.parametrize("arch", CAUSAL)
def test_rows_depend_only_on_past_rows(arch: str) -> None:
    model = _model(arch).eval()
    r, m, j = model.receptive_field, 3 * T, 2 * T
    x = _stream(m)
    y = x.clone()
    y[0, 0, j] += 5.0  # change input row j only
    with torch.no_grad():
        fx, fy = model.row_features(x), model.row_features(y)  # (1, M - R + 1, C)
    assert fx.shape == (1, m - r + 1, model.feature_dim)
    # feature index i is input row i + R - 1: rows before j are bit-identical
    assert torch.equal(fx[:, : j - r + 1], fy[:, : j - r + 1])
    assert not torch.equal(fx[:, j - r + 1 : j + 1], fy[:, j - r + 1 : j + 1])
    # rows more than R - 1 after j no longer see it
    torch.testing.assert_close(fx[:, j + 1 :], fy[:, j + 1 :], atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", CAUSAL)
def test_features_do_not_depend_on_window_start(arch: str) -> None:
    model = _model(arch).eval()
    x = _stream(3 * T, seed=1)
    with torch.no_grad():
        full = model.row_features(x)
        for s in (1, 7, T):
            torch.testing.assert_close(model.row_features(x[:, :, s:]), full[:, s:], atol=ATOL,
                                       rtol=1e-5)  # fmt: skip


@pytest.mark.parametrize("arch", CAUSAL)
def test_forward_is_head_over_stream_feature_slice(arch: str) -> None:
    model = _model(arch).eval()
    r, m = model.receptive_field, 3 * T
    x = _stream(m, seed=2)
    ends = [T - 1, T + 3, m - 1]
    with torch.no_grad():
        feats = model.row_features(x)  # (1, M - R + 1, C): index i is input row i + R - 1
        sliced = torch.cat([feats[:, e - T + 1 : e - T + 1 + T - r + 1] for e in ends])
        windows = torch.cat([x[:, :, e - T + 1 : e + 1] for e in ends])  # (3, 1, T, F)
        torch.testing.assert_close(model.head(sliced), model(windows), atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("arch", CAUSAL)
def test_artifact_round_trip_carries_causal(arch: str, tmp_path: Path) -> None:
    model = _model(arch).eval()
    meta = {"feature": {"kind": "zscore", "params": [0.0, 1.0, 0.0, 1.0]}, "label": {},
            "trained_on": {}, "metrics": {}}  # fmt: skip
    export_model(model, tmp_path / "c.pt", meta)
    loaded, manifest = load_model(tmp_path / "c.pt")
    assert manifest["causal"] == {
        "receptive_field": model.receptive_field,
        "feature_dim": model.feature_dim,
    }
    x = _stream(2 * T, seed=3)
    with torch.no_grad():
        f = loaded.row_features(x)
        torch.testing.assert_close(f, model.row_features(x), atol=ATOL, rtol=1e-5)
        n = T - manifest["causal"]["receptive_field"] + 1
        torch.testing.assert_close(loaded.head(f[:, :n]), model(x[:, :, :T]), atol=ATOL, rtol=1e-5)
    # a non-causal artifact has no causal field and loads as before
    export_model(build_model("cnn", T=T, levels=LEVELS), tmp_path / "p.pt", meta)
    assert "causal" not in load_model(tmp_path / "p.pt")[1]


def _windows(seed: int = 0) -> Windows:
    """Two streams of rows back to back (a boundary at row 300), some labels missing (gaps of
    a few rows inside a stream) and a sparse tail (gaps of T or more)."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(900, F)).astype(np.float32)
    ends = np.concatenate([
        np.arange(T - 1, 300), np.arange(300 + T - 1, 700), np.arange(700 + T - 1, 900, T + 5),
    ])  # fmt: skip
    ends = ends[rng.random(len(ends)) > 0.1]
    rng.shuffle(ends)  # plan_chunks must not rely on sorted ends
    return Windows(rows, ends, rng.integers(0, 3, len(ends)), T)


def test_plan_chunks_covers_each_window_once_within_limits() -> None:
    w = _windows()
    chunks = seqtrain.plan_chunks(w, 128)
    got = np.sort(np.concatenate([c.windows for c in chunks]))
    np.testing.assert_array_equal(got, np.arange(len(w)))
    for c in chunks:
        e = w.ends[c.windows]
        assert c.stop - c.start <= 128 and c.start == e[0] - T + 1 and c.stop == e[-1] + 1
        np.testing.assert_array_equal(c.offsets, e - e[0])
        assert np.all(np.diff(e) >= 0) and np.all(np.diff(e) < T)  # no boundary inside
        assert not (c.start < 300 < c.stop) or c.stop <= 300  # never across the stream edge
    rng = np.random.default_rng(0)
    ep = seqtrain.epoch_chunks(chunks, rng, 200)
    assert sum(len(c) for c in ep) == 200
    assert sum(len(c) for c in seqtrain.epoch_chunks(chunks, rng)) == len(w)


@pytest.mark.parametrize("arch", CAUSAL)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_sequence_loss_and_gradients_equal_per_window(arch: str, mode: str) -> None:
    model = _model(arch, seed=5)
    if mode == "train" and _has_batchnorm(model):
        pytest.skip("BatchNorm in train mode uses batch statistics: compared in eval mode")
    model.train(mode == "train")
    w = _windows(1)
    chunk = max(seqtrain.plan_chunks(w, 256), key=len)
    assert len(chunk) > 100
    y = torch.from_numpy(w.labels[chunk.windows].astype(np.int64))
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.3, 0.7, 1.1]))

    def loss_and_grads(fn) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(123)  # same dropout masks: the head sees the same (N, T', C) shape
        loss = loss_fn(fn(), y)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    per_window = loss_and_grads(lambda: model(torch.from_numpy(w.batch(chunk.windows))))
    sequence = loss_and_grads(
        lambda: seqtrain.chunk_logits(model, w.rows, chunk, T, torch.device("cpu"))
    )
    # loss: float32 re-association only, to 1e-6 relative
    torch.testing.assert_close(sequence[0], per_window[0], rtol=1e-6, atol=1e-6)
    for gs, gw in zip(sequence[1], per_window[1], strict=True):
        torch.testing.assert_close(gs, gw, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", CAUSAL)
def test_predict_by_sequence_equals_per_window(arch: str) -> None:
    model = _model(arch, seed=6).eval()
    w = _windows(2)
    _, probs = predict(model, w, batch_size=64)  # causal: sequence path, several chunks
    with torch.no_grad():
        ref = torch.softmax(model(torch.from_numpy(w.batch(np.arange(len(w))))), 1).numpy()
    np.testing.assert_allclose(probs, ref, atol=1e-5)


def _planted(n_rows: int, seed: int) -> Windows:
    """Rows whose window mean of column 0 decides the class (as tests/test_train.py)."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(n_rows, F)).astype(np.float32)
    m = np.convolve(rows[:, 0], np.ones(T) / T, mode="valid")
    labels = np.where(m > 0.12, 2, np.where(m < -0.12, 0, 1)).astype(np.int8)
    return Windows(rows, np.arange(T - 1, n_rows), labels, T)


def test_train_model_uses_sequence_path(monkeypatch) -> None:
    import lobstream.models.train as train_mod

    calls = []

    def spy(model, rows, chunks, window, device):
        calls.append(sum(len(c) for c in chunks))  # windows of this optimizer step
        return seqtrain.chunk_logits(model, rows, chunks, window, device)

    monkeypatch.setattr(train_mod, "chunk_logits", spy)
    model = _model("cnn_causal", channels=(8, 8), hidden=16, dropout=0.0)
    cfg = TrainConfig(
        epochs=6, lr=3e-3, max_train_windows=3000, chunk_rows=48, chunks_per_step=7, patience=6
    )  # ~63 windows a step, ~48 steps an epoch
    res = train_model(model, _planted(8000, 1), _planted(1500, 2), cfg)
    assert all(e["windows"] == 3000 for e in res.history)
    assert sum(calls) == 6 * 3000 and max(calls) <= 7 * (48 - T + 1)
    assert res.val_metrics["f1_macro"] > 0.5  # learns the planted signal; chance is ~1/3
