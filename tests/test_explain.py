"""Attribution maps (models.explain) and ``lobstream explain``.

The masking test is the honest check of an attribution: replacing the cells it ranks highest
must lower the predicted-class probability more than replacing as many random cells. Cells are
replaced by 0, the reference point of input x gradient (x * grad is the first-order change of
the target when x goes to 0) and, for z-scored rows, the training mean. Replacing them by the
window's column means instead leaves BiN-CTABL unmoved (its BiN layer subtracts those means
first), so that would test nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lobstream.cli import main
from lobstream.kernels.registry import Registry
from lobstream.models import explain as ex
from lobstream.models.artifact import load_model
from lobstream.models.manifest import spec_from_manifest
from lobstream.models.train import TrainConfig, Windows, train_model
from lobstream.models.zoo import ARCHITECTURES, build_model
from lobstream.replay.backtest.run import rows_from_events
from lobstream.replay.readers import read_events
from lobstream.replay.samples import GOOG_MESSAGE_10
from tests.conftest import REPO

ARTIFACT = REPO / "models" / "assets" / "binctabl_goog.pt"
FRAC = 0.05  # share of the window's cells masked


@pytest.fixture(scope="module")
def goog():
    torch.set_num_threads(1)
    module, manifest = load_model(ARTIFACT)
    spec = spec_from_manifest(manifest)
    batches = read_events([GOOG_MESSAGE_10], Registry())
    rows = np.concatenate([r.copy() for r, _, _ in rows_from_events(batches, spec, 1)])
    ends = np.random.default_rng(1).integers(manifest["T"], len(rows), 32)
    windows = np.stack([rows[e - manifest["T"] + 1 : e + 1] for e in ends])
    return ex.eager_model(module, manifest), module, manifest, windows


def _masking_drops(model, arch: str, windows: np.ndarray, seeds: int = 5) -> tuple[float, float]:
    """Mean drop of the predicted-class probability: top cells masked, random cells masked."""
    e = ex.explain(model, arch, windows)
    pick = np.arange(len(windows))

    def p_target(w: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            p = torch.softmax(model(torch.from_numpy(w)[:, None]), dim=1).numpy()
        return p[pick, e.target]

    p0 = e.probs[pick, e.target]
    top = np.stack([ex.top_cells(a, FRAC) for a in e.maps])
    drop_top = float((p0 - p_target(np.where(top, 0.0, windows).astype(np.float32))).mean())
    rng = np.random.default_rng(0)
    drops = []
    for _ in range(seeds):
        rand = np.stack([rng.permutation(m.ravel()).reshape(m.shape) for m in top])
        drops.append((p0 - p_target(np.where(rand, 0.0, windows).astype(np.float32))).mean())
    return drop_top, float(np.mean(drops))


def test_method_per_architecture() -> None:
    assert {a: ex.method_for(a) for a in ARCHITECTURES} == {
        "cnn": ex.GRAD_CAM,
        "deeplob": ex.GRAD_CAM,
        "cnn_causal": ex.GRAD_CAM,
        "deeplob_causal": ex.GRAD_CAM,
        "binctabl": ex.INPUT_X_GRADIENT,
        "hrnn": ex.INPUT_X_GRADIENT,
        "hrnn_causal": ex.INPUT_X_GRADIENT,
    }


def test_eager_rebuild_matches_the_artifact(goog) -> None:
    model, module, _, windows = goog
    x = torch.from_numpy(windows[:4])[:, None]
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), module(x).numpy(), atol=1e-5)


def test_bundled_map_shape_finite_and_probs(goog) -> None:
    model, _, manifest, windows = goog
    e = ex.explain(model, "binctabl", windows[:4])
    assert e.method == ex.INPUT_X_GRADIENT
    assert e.maps.shape == (4, manifest["T"], manifest["F"])
    assert np.isfinite(e.maps).all() and np.abs(e.maps).max() > 0
    np.testing.assert_allclose(e.probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(e.target, e.probs.argmax(axis=1))


def test_masking_input_x_gradient_bundled(goog) -> None:
    model, _, _, windows = goog
    top, rand = _masking_drops(model, "binctabl", windows)
    # measured: top 0.40, random 0.085 (32 windows, 5 random masks each)
    assert top > 2 * rand and top > 0.1, (top, rand)


def _planted(n_rows: int, seed: int, T: int, F: int) -> Windows:
    """Rows whose window mean of column 0 decides the class (as tests/test_causal.py)."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(n_rows, F)).astype(np.float32)
    m = np.convolve(rows[:, 0], np.ones(T) / T, mode="valid")
    labels = np.where(m > 0.12, 2, np.where(m < -0.12, 0, 1)).astype(np.int8)
    return Windows(rows, np.arange(T - 1, n_rows), labels, T)


def test_masking_grad_cam_trained_cnn_causal() -> None:
    # an untrained net's Grad-CAM explains noise; a tiny one trained on the planted signal
    # (3 s on one thread) has something to find
    torch.set_num_threads(1)
    T, levels = 40, 2
    torch.manual_seed(0)
    model = build_model("cnn_causal", T=T, levels=levels, channels=(8, 8), hidden=16, dropout=0.0)
    cfg = TrainConfig(
        epochs=6, lr=3e-3, max_train_windows=3000, chunk_rows=48, chunks_per_step=7, patience=6
    )
    train_model(model, _planted(8000, 1, T, 4 * levels), _planted(1500, 2, T, 4 * levels), cfg)
    model.eval()
    val = _planted(1000, 3, T, 4 * levels)
    ends = np.random.default_rng(0).choice(np.arange(T - 1, 1000), 32, replace=False)
    windows = np.stack([val.rows[e - T + 1 : e + 1] for e in ends])
    e = ex.explain(model, "cnn_causal", windows)
    assert e.method == ex.GRAD_CAM and e.maps.shape == (32, T, 4 * levels)
    assert np.isfinite(e.maps).all() and (e.maps >= 0).all()
    top, rand = _masking_drops(model, "cnn_causal", windows)
    # measured: top 0.37, random 0.05
    assert top > 2 * rand and top > 0.1, (top, rand)


@pytest.mark.parametrize("arch", sorted(ex.GRADCAM_LAYERS))
def test_grad_cam_shape_every_cnn_type(arch: str) -> None:
    torch.manual_seed(0)
    T, levels = 40, 2
    model = build_model(arch, T=T, levels=levels).eval()
    w = np.random.default_rng(0).normal(size=(3, T, 4 * levels)).astype(np.float32)
    e = ex.explain(model, arch, w)
    assert e.maps.shape == (3, T, 4 * levels)
    assert np.isfinite(e.maps).all() and (e.maps >= 0).all()


def test_valid_time_spread_covers_each_feature_rows_inputs() -> None:
    # one hot feature row j of a valid conv reaches input rows j .. j + T - T'
    cam = np.zeros((1, 6, 2), np.float32)
    cam[0, 2, 1] = 1.0
    out = ex.to_input_grid(cam, 10, 4, "valid")[0]
    assert out.shape == (10, 4)
    assert set(np.flatnonzero(out[:, 3])) == set(range(2, 7)) and not out[:, :2].any()


def test_book_grid_puts_asks_above_bids() -> None:
    levels = 3
    row = np.arange(4 * levels, dtype=np.float32)  # ask px, ask sz, bid px, bid sz per level
    g = ex.book_grid(row[None], levels, "size")[:, 0]
    # ask 3, ask 2, ask 1, bid 1, bid 2, bid 3 sizes
    assert g.tolist() == [9, 5, 1, 3, 7, 11]


def test_confident_rows_skip_neighbours_and_nan() -> None:
    p = np.full((10, 3), np.nan, np.float32)
    p[3:] = [[0.2, 0.6, 0.2]] * 7
    p[5], p[6], p[9] = [0.9, 0.05, 0.05], [0.85, 0.1, 0.05], [0.1, 0.1, 0.8]
    assert ex.confident_rows(p, 2, min_gap=2).tolist() == [5, 9]
    assert ex.confident_rows(p, 2, min_gap=0).tolist() == [5, 6]


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_row_writes_png(tmp_path) -> None:
    out = tmp_path / "x.png"
    res = CliRunner().invoke(
        main,
        ["explain", "--model", str(ARTIFACT), str(GOOG_MESSAGE_10), "--row", "5000", "--out", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert _is_png(out) and out.stat().st_size > 20_000
    assert "row 5000" in res.output and "input_x_gradient" in res.output
    # a UTC time of day on the file's date: the market opened at 13:30 UTC
    at = tmp_path / "at.png"
    res = CliRunner().invoke(
        main,
        ["explain", "--model", str(ARTIFACT), str(GOOG_MESSAGE_10), "--at", "13:31:00", "--out", str(at)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert _is_png(at)
    # the last row not after the time: 13:30:59.58, not one after 13:31:00
    assert "2012-06-21 13:30:59" in res.output, res.output


def test_cli_errors_are_clear(tmp_path) -> None:
    run = CliRunner().invoke
    base = ["explain", "--model", str(ARTIFACT), str(GOOG_MESSAGE_10), "--out", str(tmp_path / "e.png")]  # fmt: skip
    res = run(main, [*base, "--row", "99999999"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "out of range" in res.output and GOOG_MESSAGE_10.name in res.output
    assert "feature rows" in res.output
    res = run(main, [*base, "--row", "10"])
    assert res.exit_code != 0 and "window needs T - 1 = 99" in res.output
    res = run(main, [*base, "--at", "2012-06-21T10:00:00"])  # before the 13:30 UTC open
    assert res.exit_code != 0 and "no row at or before" in res.output
    res = run(main, [*base, "--at", "not-a-time"])
    assert res.exit_code != 0 and "expected ns since the epoch" in res.output
    res = run(main, [*base, "--row", "5", "--top", "1"])
    assert res.exit_code != 0 and "exactly one of" in res.output
    assert not (tmp_path / "e.png").exists()
