"""Architectures: shapes, sizes derived from config, scriptability, zoo round trips."""

from __future__ import annotations

import pytest
import torch

from lobstream.models.artifact import script_module
from lobstream.models.deeplob import DeepLOB, DeepLOBConfig
from lobstream.models.zoo import (
    ARCHITECTURES,
    arch_of,
    build_model,
    config_from_dict,
    config_to_dict,
    make_config,
)

ARCHS = sorted(ARCHITECTURES)


def _x(b: int, t: int, f: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 1, t, f, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("T", "levels"), [(100, 10), (40, 5), (16, 2)])
def test_forward_shape_and_finite(arch: str, T: int, levels: int) -> None:
    if arch == "deeplob_causal" and T < 23:
        pytest.skip("deeplob_causal needs T >= 23 (its receptive field)")
    torch.manual_seed(0)
    model = build_model(arch, T=T, levels=levels).eval()
    x = _x(3, T, 4 * levels)
    x0 = x.clone()
    with torch.no_grad():
        y = model(x)
    assert y.shape == (3, 3)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()
    assert torch.equal(x, x0), "forward must not modify its input"


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_not_probabilities(arch: str) -> None:
    # Softmax belongs to the runner; a model that normalises inside forward would be
    # double-softmaxed there and by CrossEntropyLoss in training.
    torch.manual_seed(1)
    model = build_model(arch).eval()
    with torch.no_grad():
        y = model(_x(16, 100, 40) * 3.0)
    sums = y.sum(dim=1)
    assert not torch.allclose(sums, torch.ones_like(sums), atol=1e-3)


@pytest.mark.parametrize("arch", ARCHS)
def test_batch_rows_are_independent(arch: str) -> None:
    # In eval mode, row i of a batch depends only on window i (BatchNorm uses running stats).
    torch.manual_seed(2)
    model = build_model(arch).eval()
    x = _x(5, 100, 40)
    with torch.no_grad():
        full = model(x)
        single = torch.cat([model(x[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(full, single, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_scripts_and_matches_eager(arch: str) -> None:
    torch.manual_seed(3)
    model = build_model(arch, T=50, levels=5).eval()
    scripted = script_module(model)
    x = _x(4, 50, 20)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_trains_one_step(arch: str) -> None:
    torch.manual_seed(4)
    model = build_model(arch, T=30, levels=3).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = _x(8, 30, 12), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    opt.step()


def test_deeplob_parameter_count_as_published() -> None:
    model = DeepLOB(DeepLOBConfig())
    # The published DeepLOB (T=100, 10 levels) has 143,907 trainable parameters.
    assert sum(p.numel() for p in model.parameters()) == 143_907


def test_deeplob_time_axis_kept_by_same_padding() -> None:
    # "same" padding along time: every step reaches the LSTM, as in the published network.
    model = DeepLOB(DeepLOBConfig()).eval()
    seen: list[torch.Size] = []
    h = model.lstm.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    with torch.no_grad():
        model(_x(2, 100, 40))
    h.remove()
    assert seen == [torch.Size([2, 100, 192])]


def test_deeplob_has_no_string_padding() -> None:
    model = DeepLOB(DeepLOBConfig())
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            assert not isinstance(m.padding, str)


@pytest.mark.parametrize("arch", ARCHS)
def test_config_dict_round_trip(arch: str) -> None:
    cfg = make_config(arch, T=30, levels=4)
    d = config_to_dict(cfg)
    assert config_from_dict(arch, d) == cfg
    model = build_model(arch, **d)
    assert arch_of(model) == arch and arch_of(model.config) == arch


def test_unknown_arch_and_key_refused() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'lstm'.*deeplob"):
        build_model("lstm")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['depth'\].*allowed"):
        build_model("cnn", depth=3)


def test_configs_are_frozen() -> None:
    cfg = make_config("deeplob")
    with pytest.raises(AttributeError):
        cfg.T = 5  # type: ignore[misc]


def test_cnn_too_small_window_refused() -> None:
    with pytest.raises(ValueError, match="pooling stages"):
        build_model("cnn", T=4, levels=1)
