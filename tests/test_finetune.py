"""``lobstream train --init``: fine-tuning starts from the parent's weights, records its SHA-256,
freezes what ``--freeze conv`` names, and refuses a parent of another window, levels or
feature kind, naming both values."""

from __future__ import annotations

import pytest
import torch

GOOG = "GOOG_2012-06-21_34200000_57600000_message_10.csv.gz"
# a tiny binctabl on a GOOG slice: seconds per run on one shared core
BASE = ["--horizon", "10", "--max-events", "6000", "--window", "20", "--device", "cpu"]


def _goog(data_dir):
    goog = data_dir / "lobster" / GOOG
    if not goog.is_file():
        pytest.skip(f"{goog} not found")
    return str(goog)


def _run(args):
    from click.testing import CliRunner

    from lobstream.cli.train import train

    return CliRunner().invoke(train, args)


@pytest.fixture(scope="module")
def parent(data_dir, tmp_path_factory):
    """A trained parent artifact (one short epoch) and its path."""
    out = tmp_path_factory.mktemp("ft") / "parent.pt"
    args = [_goog(data_dir), "--arch", "binctabl", *BASE, "--epochs", "1"]
    result = _run([*args, "--max-train-windows", "500", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _state(path):
    from lobstream.models.artifact import load_model

    module, _ = load_model(path)
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_init_starts_from_the_parents_weights(parent):
    from lobstream.models.finetune import init_from_artifact

    model, info = init_from_artifact(parent, {"T": 20, "L": 10, "feature_kind": "zscore"})
    want = _state(parent)
    got = model.state_dict()
    assert set(got) <= set(want)
    assert all(torch.equal(got[k], want[k]) for k in got)
    assert info["arch"] == "binctabl" and len(info["sha256"]) == 64


def test_init_records_the_parent_and_freeze_conv_keeps_features_bit_identical(
    data_dir, parent, tmp_path
):
    from lobstream.models.artifact import load_model, sha256_file
    from lobstream.models.finetune import FEATURE_LAYERS

    out = tmp_path / "child.pt"
    # no --arch: taken from the parent
    args = [_goog(data_dir), *BASE, "--init", str(parent), "--freeze", "conv"]
    result = _run([*args, "--epochs", "2", "--max-train-windows", "600", "--out", str(out)])
    assert result.exit_code == 0, result.output
    digest = sha256_file(parent)
    _, manifest = load_model(out, expect={"arch": "binctabl", "T": 20})
    init = manifest["trained_on"]["init"]
    assert init["sha256"] == digest and init["artifact"] == str(parent)
    assert init["freeze"] == "conv" and init["frozen_parameters"] > 0
    assert digest in result.output and "fine-tuned from" in result.output
    assert "--arch" not in manifest["reproduce"] and "--init" in manifest["reproduce"]

    before, after = _state(parent), _state(out)
    frozen = [k for k in before if k.split(".")[0] in FEATURE_LAYERS["binctabl"]]
    head = [k for k in before if k.startswith("tabl.") and k != "tabl.eye"]
    assert frozen and head
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in head)


def test_freeze_conv_freezes_only_the_feature_layers_of_every_arch():
    from lobstream.models.finetune import FEATURE_LAYERS, freeze
    from lobstream.models.zoo import ARCHITECTURES, build_model

    assert set(FEATURE_LAYERS) == set(ARCHITECTURES)
    for arch in ARCHITECTURES:
        model = build_model(arch, T=100, levels=10)
        names = set(freeze(model, "conv"))
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert names and trainable, arch
        assert names | trainable == {n for n, _ in model.named_parameters()}
        assert all(n.split(".")[0] in FEATURE_LAYERS[arch] for n in names), arch
        assert freeze(build_model(arch, T=100, levels=10), "none") == []


def test_frozen_batchnorm_keeps_the_parents_running_statistics():
    """deeplob's frozen conv blocks hold BatchNorm: training must not move its statistics."""
    import numpy as np

    from lobstream.models.finetune import freeze
    from lobstream.models.train import TrainConfig, Windows, train_model
    from lobstream.models.zoo import build_model

    model = build_model("deeplob", T=20, levels=2)
    freeze(model, "conv")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((300, 8)).astype(np.float32)
    ends = np.arange(19, 300)
    w = Windows(rows, ends, rng.integers(0, 3, ends.size), 20)
    train_model(model, w, w, TrainConfig(epochs=1, batch_size=32))
    after = model.state_dict()
    feature = [k for k in before if k.startswith(("block", "branch"))]
    assert any("running_mean" in k for k in feature)
    assert all(torch.equal(before[k], after[k]) for k in feature)
    assert not torch.equal(before["fc.weight"], after["fc.weight"])


@pytest.mark.parametrize(
    ("flag", "value", "have"),
    [
        ("--window", "30", "--window 20"),
        ("--levels", "5", "--levels 10"),
        ("--features", "ticks_from_mid", "--features zscore"),
        ("--arch", "deeplob", "--arch binctabl"),
    ],
)
def test_a_mismatched_parent_is_refused_naming_both_values(
    data_dir, parent, tmp_path, flag, value, have
):
    args = [_goog(data_dir), *BASE, "--init", str(parent), flag, value]
    result = _run([*args, "--out", str(tmp_path / "x.pt")])
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert have in result.output and f"{flag} {value}" in result.output
    assert not (tmp_path / "x.pt").exists()


def test_freeze_without_init_is_refused(data_dir, tmp_path):
    args = [_goog(data_dir), *BASE, "--arch", "binctabl", "--freeze", "conv"]
    result = _run([*args, "--out", str(tmp_path / "x.pt")])
    assert result.exit_code == 2 and "--freeze needs --init" in result.output
